"""
Elastic-dLLM (Wu et al., arXiv 2605.18165): most future [MASK] tokens carry the same features and need not
be computed, but their *positions*, the last ones above all, steer what gets generated. Training-free.
No official code is public; where the paper leaves a choice open, the reading below is a flag.

  compression (Sec. 4.1, full-sequence models: LLaDA)   while block c of M is decoded, a forward sees
        prompt | decoded history | block c | r [MASK]s from each later block c < j < M | the terminal block M
        and every kept token keeps its original RoPE position (dropped positions simply are not fed).
        `elastic_feed` builds that column set for decode.generate's `feed=`: plain, threshold and Fast-dLLM
        cached decoding all run unchanged on it (the prefix/dual caches cache the compressed layout).
  terminal anchor (Sec. 4.3, block models: the paper's LLaDA2.0-mini, and SDAR)   one [MASK] at the last
        position of the planned window, visible to the sequence but seeing only itself ("main-only-sees"),
        never decoded: `TerminalAnchor`, a `forward=` hook for decode.block_generate.
  folding (Sec. 4.2)   generation longer than the model's input budget: the active set also keeps only
        the most recent history blocks in full and a strided sample of older history, so it never exceeds
        `budget` tokens; positions stay the original ones (RoPE extrapolates).

Readings of what the paper does not state: r = 4, evenly spaced ("stride"; "random" is seeded), the whole
terminal block, one draw per block, original positions, anchor at the last slot of the block-aligned window
(anchor_at="gen_end": prompt + gen_length - 1). Table 6's harmful anchor ablations are flags too
(bidirectional=True, anchor_token="eos"). With r >= block_length nothing is dropped and decoding equals plain
decoding token for token.

Beyond the paper (after its code, at the end of this file; off by default):
  window              keep the first N masks after the current block in full (DPad's near window). The
                      embedded 6-layer model uses those masks as working space for the next line, so the
                      paper's layout costs it 19 points on the built-in task, and a window of 16 brings that
                      back to no loss (RESULTS.md, "Elastic-dLLM"). Default 0: the paper's layout.
  positions="folded"  number the active set 0..n-1 instead of keeping the original RoPE positions (the
                      re-indexing that Table 5 ablates); with `budget`, a way to stay inside the positions the
                      model was trained on.
"""
import argparse
import json
import math

import torch

import decode
import model as M


def sample_block(lo, L, r, sampler, generator):
    """r positions of the future block [lo, lo + L): evenly spaced, or uniformly at random."""
    if r >= L:
        return list(range(lo, lo + L))
    if sampler == "stride":
        return sorted({lo + round(i * (L - 1) / max(1, r - 1)) for i in range(r)}) if r > 1 else [lo + L - 1]
    return sorted((lo + torch.randperm(L, generator=generator)[:r]).tolist())


def compressed_columns(T, lo, hi, r, sampler, terminal, generator):
    """Sec. 4.1's layout after the history, for block [lo, hi) of a canvas of T: the block, r samples of
    each later block, and the whole terminal block."""
    L = hi - lo
    future = list(range(hi, T - L if terminal else T, L))  # intermediate future blocks
    cols = list(range(lo, hi))
    for j in future:
        cols += sample_block(j, min(L, T - j), r, sampler, generator)
    if terminal and hi < T:
        cols += range(T - L, T)
    return cols


def fold_history(history, start, n_cols, budget, keep_recent, L):
    """Sec. 4.2's folding (our reading): keep the `keep_recent` latest history blocks in full and an evenly
    strided share of older history, so the prompt (`start` tokens), history and n_cols columns fit
    `budget`."""
    recent = history[max(0, len(history) - keep_recent * L):]
    room = budget - start - len(recent) - n_cols
    older = history[:len(history) - len(recent)]
    if room < 0:
        raise ValueError(f"budget {budget}: the prompt, {keep_recent} recent blocks and the compressed "
                         f"future need {budget - room} tokens; lower r or keep_recent")
    if len(older) > room:
        older = [older[round(i * (len(older) - 1) / max(1, room - 1))] for i in range(room)]
    return older + recent


def elastic_feed(r=4, sampler="stride", terminal=True, budget=None, keep_recent=2, positions="original",
                 seed=0, stats=None, window=0):
    """decode.generate's `feed`: the compressed columns for block [lo, hi) (one draw per block). With a
    `budget`, older history is thinned (strided) until the active set fits: context folding. `window`
    (beyond the paper, 0 = its layout) also keeps the first `window` masks after the block in full."""
    if sampler not in ("stride", "random") or positions not in ("original", "folded") or r < 0 or window < 0:
        raise ValueError(f"sampler {sampler!r} / positions {positions!r} / r {r} / window {window}: expected "
                         "stride|random, original|folded, r >= 0, window >= 0")
    generator = torch.Generator().manual_seed(seed)

    def feed(x, lo, hi, start):
        T = x.shape[1]
        cols = compressed_columns(T, lo, hi, r, sampler, terminal, generator)
        cols += range(hi, min(T, hi + window))  # beyond the paper: the near window (none by default)
        history = list(range(start, lo))
        if budget is not None:  # fold: keep the prompt, recent blocks, and a strided share of older history
            history = fold_history(history, start, len(cols), budget, keep_recent, hi - lo)
        active = torch.tensor(sorted(set(range(start)) | set(history) | set(cols)), device=x.device)
        if stats is not None:
            stats.setdefault("active", []).append(len(active))
        return active
    return feed


class TerminalAnchor:
    """decode.block_generate `forward=` hook: append one [MASK] at `position` (per sample) to every forward.
    Every real token may attend to it; it attends only to itself (or, with bidirectional=True, the paper's
    harmful ablation, to everything the block sees). Its logits are dropped, so it is never decoded; it
    takes one spare KV-cache slot after each forward's chunk (block_generate(cache_spare=1)) and is
    overwritten by the next block, so the prefix cache never holds it."""

    def __init__(self, position, token, bidirectional=False):
        self.position, self.token, self.bidirectional = position, token, bidirectional

    def mask(self, pos, valid, cache, cache_start, block_size):
        """(B, 1, T+1, Tk+1): the model's own rule among the real tokens and cached keys, plus the anchor's
        column (visible to all) and row (itself only, or with bidirectional=True all the chunk may see)."""
        B, T = pos.shape
        k_pos, k_valid = pos, valid
        if cache is not None:  # keys: the cached prefix, then this chunk
            k_pos = torch.cat([cache.pos[:, :cache_start], pos], 1)
            k_valid = torch.cat([cache.valid[:, :cache_start], valid], 1)
        main = M.attention_rule(pos, k_pos, k_valid, block_size)
        if main is None:  # no rule: every query sees every key
            main = torch.ones(B, 1, T, k_pos.shape[1], dtype=torch.bool, device=pos.device)
        main = main.expand(B, 1, T, -1)
        sees = torch.zeros(B, 1, 1, k_pos.shape[1] + 1, dtype=torch.bool, device=pos.device)
        sees[..., -1] = True
        if self.bidirectional:
            sees[..., :-1] = main.any(2, keepdim=True)
        return torch.cat([torch.cat([main, torch.ones_like(main[..., :1])], -1), sees], 2)

    def __call__(self, model, ids, attention_mask=None, position_ids=None, cache=None, cache_start=0,
                 kv_end=None, block_size=None, return_hidden=False, **kw):
        B, T = ids.shape
        pos = position_ids.expand(B, T)
        valid = (torch.ones(B, T, dtype=torch.bool, device=ids.device) if attention_mask is None
                 else attention_mask.bool())
        mask = self.mask(pos, valid, cache, cache_start, block_size or model.config.block_size)
        anchor = torch.tensor(self.position, device=ids.device)[:, None]
        ones = torch.ones(B, 1, dtype=torch.bool, device=ids.device)
        kv_end = None if cache is None else cache_start + T + 1  # the chunk and the anchor's spare slot
        out = model(torch.cat([ids, torch.full((B, 1), self.token, device=ids.device)], 1),
                    attention_mask=torch.cat([valid, ones], 1).long(),
                    position_ids=torch.cat([pos, anchor], 1), cache=cache, cache_start=cache_start,
                    kv_end=kv_end, block_size=block_size, attn_mask=mask, return_hidden=return_hidden, **kw)
        return tuple(o[:, :T] for o in out) if return_hidden else out[:, :T]


def decode_elastic(model, prompt, *, gen_length, block_length, steps=None, threshold=None, r=4,
                   sampler="stride", terminal=True, window=0, budget=None, keep_recent=2,
                   positions="original", cache=None, anchor=True, anchor_at="window", anchor_token="mask",
                   bidirectional=False, seed=0, **kw):
    """Elastic-dLLM on the family's decoder. LLaDA: compressed feeding (and folding when `budget` is set);
    SDAR: the terminal anchor (anchor_at "window" = the last slot of the block-aligned window, "gen_end" =
    prompt + gen_length - 1; anchor_token "mask" or the paper's harmful "eos"). stats["active"]: the active
    set's length at each block (LLaDA)."""
    rows = decode.as_rows(prompt)
    if model.config.family == "llada":
        if max(map(len, rows)) + gen_length > len(model.rope_cos):  # original positions may pass max_seq_len
            model.build_rope(max(map(len, rows)) + gen_length)        # (RoPE extrapolates): longer tables
        info = {}
        feed = elastic_feed(r, sampler, terminal, budget, keep_recent, positions, seed, info, window)
        # positions "folded" is beyond the paper (see folded_forward)
        forward = folded_forward if positions == "folded" else decode.model_forward
        x, stats = decode.generate(model, rows, steps=steps or gen_length, gen_length=gen_length,
                                   block_length=block_length, threshold=threshold, cache=cache, feed=feed,
                                   forward=forward, **kw)
        act = info.get("active", [0])
        return x, {**stats, "active": act, "active_mean": sum(act) / len(act), "active_max": max(act),
                   "canvas": x.shape[1]}
    if cache is not None:
        raise ValueError("cache: SDAR always decodes with its exact KV cache")
    layout = (budget, positions, r, sampler, terminal, window)
    if layout != (None, "original", 4, "stride", True, 0):
        raise ValueError(f"budget {budget} / positions {positions!r} / r {r} / sampler {sampler!r} / "
                         f"terminal {terminal} / window {window}: compression and folding are for "
                         "full-sequence (LLaDA) models; an SDAR model gets the terminal anchor only")
    L = block_length
    ends = [math.ceil((len(p) + gen_length) / L) * L - 1 if anchor_at == "window" else len(p) + gen_length - 1
            for p in rows]
    token = model.config.mask_token_id if anchor_token == "mask" else model.config.eos_token_id
    forward = TerminalAnchor(ends, token, bidirectional) if anchor else decode.model_forward
    return decode.block_generate(model, rows, gen_length=gen_length, block_length=L,
                                 denoising_steps=steps or L, threshold=threshold or 1.0, forward=forward,
                                 cache_spare=1, **kw)


# ---- Beyond the paper (this project's diagnostics; off by default) ----
# `window` is a parameter of elastic_feed (0 = the paper's layout); folded positions are a forward:


def folded_forward(model, ids, position_ids=None, cache_start=0, **kw):
    """positions="folded": the active set numbered 0..n-1 (a cached chunk: by its cache slots) instead of its
    original RoPE positions."""
    folded = torch.arange(cache_start, cache_start + ids.shape[1], device=ids.device)
    return model(ids, position_ids=folded, cache_start=cache_start, **kw)


def main():
    from tokenizer import load_tokenizer
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/tiny-llada", help="checkpoint folder or Hugging Face repo id")
    ap.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    ap.add_argument("--gen-length", type=int, default=256, help="tokens to generate")
    ap.add_argument("--block-length", type=int, default=32, help="block length")
    ap.add_argument("--threshold", type=float, default=None, help="Fast-dLLM / SDAR dynamic threshold")
    ap.add_argument("--r", type=int, default=4, help="[MASK] tokens kept per intermediate future block")
    ap.add_argument("--sampler", choices=["stride", "random"], default="stride",
                    help="which future masks are kept")
    ap.add_argument("--budget", type=int, default=None, help="fold the context to at most this many tokens")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    beyond = ap.add_argument_group("beyond the paper")
    beyond.add_argument("--window", type=int, default=0,
                        help="masks right after the current block kept in full (0 = the paper)")
    beyond.add_argument("--positions", choices=["original", "folded"], default="original",
                        help="RoPE positions of kept tokens: original (the paper; may extrapolate) or "
                             "renumbered 0..n-1")
    args = ap.parse_args()
    net = M.from_pretrained(args.model, args.device)
    tok = load_tokenizer(M.resolve(args.model))
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": args.prompt}]))
    try:
        x, stats = decode_elastic(net, ids, gen_length=args.gen_length, block_length=args.block_length,
                                  threshold=args.threshold, r=args.r, sampler=args.sampler,
                                  window=args.window, budget=args.budget, positions=args.positions)
    except ValueError as e:  # a refused setting (r, window, lengths, budget, an SDAR model's flags): one line
        raise SystemExit(f"mask_compress.py: {e}") from None
    s, n = stats["gen_start"][0], stats["gen_tokens"][0]
    print(tok.decode(x[0, s:s + n].tolist()))
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
