"""
Remasking decoders for masked diffusion language models: start from a canvas of [MASK] tokens after the
prompt and, step by step, commit the predictions the model is most sure of.

  call                               method                     commit rule per step               official source
  generate(...)                      LLaDA semi-AR remasking    the k most confident masks         ML-GSAI/LLaDA generate.py
                                     (arXiv 2502.09992)         (or k random ones), k uniform      (b7e6c35)
  generate(threshold=0.9)            Fast-dLLM parallel         the most confident mask + every    NVlabs/Fast-dLLM
                                     (arXiv 2505.22618)         mask with confidence >= threshold  llada/generate.py (24cc59e)
  generate(cache="prefix"|"dual")    Fast-dLLM KV caches        (either rule)                      generate_with_{prefix,dual}_cache
  block_generate(...)                SDAR block diffusion       static quota, or dynamic: all      JetAstra/SDAR
                                     (exact KV cache)           masks above threshold, else quota  huggingface_bd3.py (eval sampler)

Both return (x, stats): the full canvas (prompt included) and a dict with `nfe` (forwards whose logits
decide tokens), per-sample counts, generated tokens up to the first stop id, tokens per forward, seconds.
Both are batched: `generate` left-pads with EOS and an attention mask (LLaDA's Oct-2025 convention);
`block_generate` lays each prompt on the block grid of its own position 0 (see its docstring).

How they differ from the official code (token-for-token parity is checked by ../shared/parity/check.py):
  - Fast-dLLM's caches work for batches and with classifier-free guidance (the official: batch 1, no CFG);
  - a cached block that completes on its first step does not spend one more forward (nfe may be lower);
  - SDAR sampling draws with float64 Gumbel-max instead of torch.multinomial (same distribution).
Extension points, used by the method files (they import from here, never the reverse):
  forward=  wraps every model call (RCD mixes residuals into the embeddings; Elastic-dLLM adds an anchor)
  feed=     chooses which canvas columns a LLaDA forward sees (Elastic-dLLM's compression)
  denoise=, store=  replace SDAR's per-block loop and its cache write (MRP's direct/speculative/remask)
"""
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

REMASKING = ("low_confidence", "random", "sequential")  # "sequential": left to right (SDAR only)
CACHES = (None, "prefix", "dual")

# -----------------------------------------------------------------------------
# Shared pieces: schedule, sampling, commit rules


def get_num_transfer_tokens(mask_index, steps):
    """Masks to commit at each step, (B, steps): m // steps each, +1 for the first m % steps steps. A uniform
    count per step is the linear noise schedule of LLaDA's Eq. 8 seen from the sampler."""
    m = mask_index.sum(dim=1, keepdim=True)
    return m // steps + (torch.arange(steps, device=m.device) < m % steps).long()


def add_gumbel_noise(logits, temperature):
    """Gumbel-max in float64: argmax(exp(l) / (-log u)^T) samples softmax(l / T). Low-precision Gumbel noise
    hurts generation quality (LLaDA cites arXiv:2409.02908). At T = 0 this returns `logits` itself."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    return logits.exp() / (-torch.log(noise)) ** temperature


def propose(logits, x, mask_index, temperature, remasking, conf_dtype, eos_id, eot_id,
            logits_eos_inf=False, confidence_eos_eot_inf=False):
    """LLaDA's step: proposed tokens x0 and their confidence (-inf where nothing may be committed)."""
    if logits_eos_inf:  # HumanEval setting: EOS can never be proposed
        logits[..., eos_id] = -torch.inf
    logits_with_noise = add_gumbel_noise(logits, temperature)
    x0 = torch.argmax(logits_with_noise, dim=-1)
    if confidence_eos_eot_inf:
        # The official line is a chained assignment, replicated on purpose: at T == 0 `logits_with_noise`
        # *is* `logits`, so EOS and EoT both get confidence 0; at T > 0 it is a separate float64 tensor and
        # only EoT does. Either way x0 was chosen before, so content is committed before trailing EOS/EoT.
        logits_with_noise[..., eos_id] = logits[..., eot_id] = -torch.inf
    if remasking == "low_confidence":  # LLaDA: softmax in the logits' dtype; Fast-dLLM: in float64
        x0_p = torch.gather(F.softmax(logits.to(conf_dtype), dim=-1), -1, x0[..., None])[..., 0]
    else:  # "random"
        x0_p = torch.rand(x0.shape, device=x0.device)
    return torch.where(mask_index, x0, x), torch.where(mask_index, x0_p, -torch.inf)


def sample_tokens(logits, temperature=0.0, top_k=0, top_p=1.0):
    """SDAR's evaluation sampler: x0 from the top-k/top-p filtered softmax(logits / T), greedy at T = 0;
    confidence = probability of x0 under the *unfiltered* softmax(logits / T), so a dynamic threshold
    still means something under greedy (top_k = 1) decoding."""
    scaled = logits.float() / (temperature or 1.0)
    probs = F.softmax(scaled, dim=-1)
    if temperature == 0:
        x0 = probs.argmax(-1)
    else:
        if top_k > 0:
            scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[..., -1:], -torch.inf)
        if top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cum = F.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], -1) > top_p  # keep the one crossing top_p
            scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), -torch.inf)
        x0 = add_gumbel_noise(scaled, 1.0).argmax(-1)
    return x0, torch.gather(probs, -1, x0[..., None])[..., 0]


def commit_topk(confidence, k):
    """The k most confident positions of each row; k is an int (the same for every row) or one per row.
    torch.topk's choice among tied confidences (common with the bf16 softmax, or EOS confidences of
    exactly 0) depends on k, so rows are batched only with rows of the same k: a batched topk gives each
    row what the official per-row call gives. An int k costs no host sync; a tensor of counts costs one
    read (decoders whose rows share a schedule pass an int)."""
    transfer = torch.zeros_like(confidence, dtype=torch.bool)
    counts = [k] if isinstance(k, int) else k.tolist() if torch.is_tensor(k) else list(k)
    if len(set(counts)) == 1:
        return transfer.scatter_(1, torch.topk(confidence, counts[0], dim=1).indices, True)
    k = torch.as_tensor(counts, device=confidence.device)
    for n in set(counts):  # one topk per distinct count (usually two), not per row
        pick = torch.zeros_like(transfer).scatter_(1, torch.topk(confidence, n, dim=1).indices, True)
        transfer |= pick & (k == n)[:, None]
    return transfer


def commit_threshold(confidence, threshold, counts=None):
    """Fast-dLLM: the most confident mask always, plus every other mask with confidence >= threshold.
    "The most confident" is rank 0 of the official topk over the row's masks (k = their count), and which
    of several equal maxima that is depends on k, so it is taken the same way. counts: each row's masks on
    the host, if the caller has them; otherwise they are read once (the only host sync here)."""
    n = torch.isfinite(confidence).sum(1)
    first = torch.zeros_like(n)
    for k in set(n.tolist() if counts is None else counts) - {0}:
        first = torch.where(n == k, torch.topk(confidence, k, dim=1).indices[:, 0], first)
    return (confidence >= threshold).scatter_(1, first[:, None], (n > 0)[:, None])


def commit_dynamic(confidence, threshold, quota):
    """SDAR: every mask with confidence strictly above threshold if there are at least `quota` of them,
    else the top `quota`. threshold >= 1 is the static rule (probabilities never exceed 1). No host sync."""
    hot = confidence > threshold
    return torch.where(hot.sum(1, keepdim=True) >= quota, hot, commit_topk(confidence, int(quota)))


def model_forward(model, ids, **kw):
    return model(ids, **kw)


def as_rows(prompt):
    """A prompt as a list of 1-D LongTensors: accepts a 1-D/2-D tensor, a list of ids, or a list of lists."""
    if torch.is_tensor(prompt):
        return list(prompt.long().reshape(-1, prompt.shape[-1]))
    if len(prompt) and isinstance(prompt[0], int):
        prompt = [prompt]
    return [torch.as_tensor(p, dtype=torch.long) for p in prompt]


def check_prompt(rows, mask_id, gen_length, limit):
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("prompt: empty")
    if any(bool((r == mask_id).any()) for r in rows):
        raise ValueError(f"prompt: contains the mask id {mask_id}")
    if limit and max(len(r) for r in rows) + gen_length > limit:
        raise ValueError(f"prompt: {max(len(r) for r in rows)} tokens + gen_length {gen_length} exceed the "
                         f"model's maximum of {limit} positions")


def finish(stats, x, gen_start, gen_length, stop_ids, nfe_rows, t0):
    """Per-sample generated-token counts (up to the first stop id, which is not counted) and rates. The
    canvas is read back once, here, at the end of a generation."""
    x = x.cpu()  # waits for the device, so the clock below includes all queued work
    cols = torch.tensor(gen_start)[:, None] + torch.arange(gen_length)  # (B, gen_length) canvas columns
    inside = cols < x.shape[1]
    tokens = x.gather(1, cols.clamp(max=x.shape[1] - 1))
    stop = torch.isin(tokens, torch.tensor(sorted(stop_ids), dtype=torch.long)) & inside
    gen = torch.where(stop.any(1), stop.long().argmax(1), inside.sum(1)).tolist()  # argmax: the first stop
    stats.update(nfe_per_sample=nfe_rows.tolist(), gen_start=list(gen_start), gen_tokens=gen,
                 tokens_per_forward=sum(gen) / max(1, int(nfe_rows.sum())), seconds=time.time() - t0)
    return stats

# -----------------------------------------------------------------------------
# LLaDA and Fast-dLLM


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", mask_id=None, logits_eos_inf=False, confidence_eos_eot_inf=False,
             attention_mask=None, threshold=None, cache=None, feed=None, forward=model_forward, on_step=None):
    """LLaDA's sampler (threshold=None, cache=None), or Fast-dLLM's (a threshold and/or a KV cache).
    The canvas is [prompt | gen_length x MASK]; blocks of block_length are counted from the end of the
    prompt and decoded left to right, `steps` in total (steps // blocks per block), or until the block is
    full under a threshold. Ragged prompts are left-padded with EOS and masked (attention_mask).
    feed(x, lo, hi, start) -> sorted canvas columns a forward sees while block [lo, hi) is decoded (default
    all; start = the first generated column); the caches then feed sub-spans of those columns. Greedy at
    temperature 0."""
    t0, cfg = time.time(), model.config
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    eos_id, eot_id = cfg.eos_token_id, cfg.stop_ids[-1]  # LLaDA: stop_ids = (EOS, <|eot_id|>)
    if remasking not in REMASKING[:2] or cache not in CACHES:
        raise ValueError(f"remasking {remasking!r} / cache {cache!r}: expected one of {REMASKING[:2]} / {CACHES}")
    if block_length <= 0 or gen_length <= 0 or gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if threshold is None and (steps <= 0 or steps % num_blocks):
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks ({num_blocks})")
    if threshold is not None and not 0 < threshold <= 1 or temperature < 0 or cfg_scale < 0:
        raise ValueError(f"threshold {threshold} must be in (0, 1]; temperature {temperature}, cfg_scale {cfg_scale} >= 0")
    rows = as_rows(prompt)
    check_prompt(rows, mask_id, gen_length, None if feed else cfg.max_seq_len)
    device = model.lm_head.weight.device
    B, P = len(rows), max(len(r) for r in rows)
    T = P + gen_length
    x = torch.full((B, T), mask_id, dtype=torch.long, device=device)
    pad = torch.zeros(B, T, dtype=torch.long, device=device)
    for r, p in enumerate(rows):  # left-pad with EOS, like the official batched evaluation
        x[r, :P - len(p)], x[r, P - len(p):P], pad[r, :P - len(p)] = eos_id, p, 1
    if attention_mask is None and pad.any():
        attention_mask = 1 - pad[:, :P]
    if attention_mask is not None:
        attention_mask = torch.cat([torch.as_tensor(attention_mask, device=device).reshape(B, -1),
                                    torch.ones(B, gen_length, dtype=torch.long, device=device)], 1)
    prompt_index = x != mask_id  # prompt and pads: what classifier-free guidance masks out
    fast = threshold is not None or cache is not None       # Fast-dLLM semantics
    conf_dtype = torch.float64 if fast else None             # ... including its float64 confidence
    kv = model.new_cache(B * (2 if cfg_scale else 1), T) if cache else None
    stats, nfe_rows = {"nfe": 0}, torch.zeros(B, dtype=torch.long)

    def logits_for(cols, start, n):
        # one forward over canvas columns cols[start:]; with a cache they go to slots start.. and attend to 0..n
        ids, am = x[:, cols], None if attention_mask is None else attention_mask[:, cols]
        if cfg_scale > 0:  # conditional and unconditional (prompt masked) copies in one batch
            un = torch.where(prompt_index[:, cols], mask_id, ids)
            ids, am = torch.cat([ids, un]), None if am is None else torch.cat([am, am])
        logits = forward(model, ids, attention_mask=am, position_ids=cols, cache=kv, cache_start=start,
                         kv_end=n if kv is not None else None)
        if cfg_scale > 0:
            cond, un = logits.chunk(2)
            logits = un + (cfg_scale + 1) * (cond - un)
        return logits

    for b in range(num_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        cols = feed(x, lo, hi, P) if feed else torch.arange(T, device=device)
        a, e = int(torch.searchsorted(cols, lo)), int(torch.searchsorted(cols, hi))  # the block within cols
        num_transfer_tokens = get_num_transfer_tokens(x[:, lo:hi] == mask_id, steps // num_blocks if threshold is None else 1)
        for i in range(steps // num_blocks if threshold is None else block_length):
            block_masks = (x[:, lo:hi] == mask_id).any(1)
            if fast and not block_masks.any():
                break
            # what this forward feeds: everything (no cache, or a block's first step, which fills the cache);
            # the prefix cache then feeds the block and all after it, the dual cache the block alone
            s, t = (0, len(cols)) if kv is None or i == 0 else (a, len(cols)) if cache == "prefix" else (a, e)
            span = cols[s:t]
            logits = logits_for(span, s, len(cols))
            mask_index = (x[:, span] == mask_id) & (span >= lo) & (span < hi)  # only the current block
            x0, confidence = propose(logits, x[:, span], mask_index, temperature, remasking, conf_dtype or logits.dtype,
                                     eos_id, eot_id, logits_eos_inf, confidence_eos_eot_inf)
            transfer = commit_threshold(confidence, threshold) if threshold is not None \
                else commit_topk(confidence, num_transfer_tokens[:, i])
            x[:, span] = torch.where(transfer, x0, x[:, span])
            stats["nfe"] += 1
            nfe_rows += block_masks.cpu()
            if on_step:
                on_step(x)
    return x, finish(stats, x, [P] * B, gen_length, set(cfg.stop_ids), nfe_rows, t0)

# -----------------------------------------------------------------------------
# SDAR block diffusion


@dataclass
class BlockState:
    """What an SDAR per-block loop needs; passed to `denoise` and `store` so methods can replace them."""
    model: object
    x: torch.Tensor            # (B, T) canvas
    pos: torch.Tensor          # (B, T) each sample's own absolute positions
    valid: torch.Tensor        # (B, T) False on padding and beyond a sample's window
    active: torch.Tensor       # (B,) still decoding (not stopped, window not finished)
    cache: object              # KVCache, or None to recompute the prefix every step
    block_length: int
    quota: list                # masks to commit at each denoising step
    threshold: float
    temperature: float
    top_k: int
    top_p: float
    remasking: str
    forward: object
    on_step: object = None
    stats: dict = field(default_factory=lambda: {"nfe": 0, "prefill_forwards": 0, "store_forwards": 0})
    nfe_rows: torch.Tensor = None


def block_logits(st, lo, hi, return_hidden=False):
    """One forward for canvas block [lo, hi): against the cache (which it also writes at slots lo..hi), or,
    without a cache, by recomputing [0, hi) under the block-causal mask. Same logits either way."""
    if st.cache is None:
        out = st.forward(st.model, st.x[:, :hi], attention_mask=st.valid[:, :hi], position_ids=st.pos[:, :hi],
                         block_size=st.block_length, return_hidden=return_hidden)
        return tuple(o[:, lo:hi] for o in out) if return_hidden else out[:, lo:hi]
    return st.forward(st.model, st.x[:, lo:hi], attention_mask=st.valid[:, lo:hi], position_ids=st.pos[:, lo:hi],
                      cache=st.cache, cache_start=lo, block_size=st.block_length, return_hidden=return_hidden)


def store_block(st, lo, hi):
    """SDAR's store-KV pass: forward the finished (or prompt) blocks once more so the cache holds their
    clean K/V. Not counted in nfe: its logits decide nothing. Returns (logits, hidden) of that forward
    (MRP writes its own cache from the hidden state); nothing to do, and None, without a cache."""
    if st.cache is not None:
        st.stats["store_forwards" if lo else "prefill_forwards"] += 1
        return block_logits(st, lo, hi, return_hidden=True)


def block_confidence(st, logits, lo, hi, state=None):
    """x0 and confidence for block [lo, hi) (or for another `state` of it, as MRP's drafts need): -inf off
    the masks and for stopped samples."""
    state = st.x[:, lo:hi] if state is None else state
    mask_index = (state == st.model.config.mask_token_id) & st.active[:, None]
    x0, x0_p = sample_tokens(logits, st.temperature, st.top_k, st.top_p)
    if st.remasking == "sequential":  # leftmost masks first
        x0_p = -torch.arange(hi - lo, device=x0.device, dtype=torch.float).expand_as(x0_p)
    return torch.where(mask_index, x0, state), torch.where(mask_index, x0_p, -torch.inf)


def denoise_block(st, lo, hi):
    """The official per-block loop: up to `steps` denoising forwards, each committing by the dynamic rule
    (static when threshold >= 1), then the store pass."""
    for quota in st.quota:
        block_masks = ((st.x[:, lo:hi] == st.model.config.mask_token_id) & st.active[:, None]).any(1)
        if not block_masks.any():
            break
        x0, confidence = block_confidence(st, block_logits(st, lo, hi), lo, hi)
        transfer = commit_dynamic(confidence, st.threshold, quota)
        st.x[:, lo:hi] = torch.where(transfer, x0, st.x[:, lo:hi])
        st.stats["nfe"] += 1
        st.nfe_rows += block_masks.cpu()
        if st.on_step:
            st.on_step(st.x)
    store_block(st, lo, hi)


@torch.no_grad()
def block_generate(model, prompt, gen_length=128, block_length=4, denoising_steps=4, threshold=1.0, temperature=0.0,
                   top_k=0, top_p=1.0, remasking="low_confidence", stop_ids=None, mask_id=None, use_cache=True,
                   forward=model_forward, denoise=denoise_block, store=store_block, on_step=None, cache_spare=0):
    """SDAR block diffusion (the evaluation sampler behind the published numbers). Blocks of block_length are
    aligned to absolute position 0, so the whole-block part of the prompt is prefilled into the KV cache
    and the first decoded block may still hold the prompt's tail. Each block takes up to denoising_steps
    forwards; a sample stops after a block once a stop id appears in its generated region (later blocks
    stay [MASK]). Batches: each prompt keeps its own position 0 and is shifted right by whole blocks so
    that every sample's first decoding block is the same canvas block; padding is masked out.
    cache_spare: extra KV-cache slots after the canvas (MRP's verification forward packs candidates there)."""
    t0, cfg = time.time(), model.config
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    stop_ids = set(cfg.stop_ids if stop_ids is None else stop_ids)
    L = block_length
    if remasking not in ("low_confidence", "sequential"):
        raise ValueError(f"remasking {remasking!r}: expected 'low_confidence' (static/dynamic by threshold) or 'sequential'")
    if L <= 0 or gen_length <= 0 or not 0 < denoising_steps <= L:
        raise ValueError(f"need gen_length ({gen_length}) > 0 and 0 < denoising_steps ({denoising_steps}) <= block_length ({L})")
    if not 0 < threshold <= 1 or temperature < 0:
        raise ValueError(f"threshold {threshold} must be in (0, 1] and temperature {temperature} >= 0")
    rows = as_rows(prompt)
    check_prompt(rows, mask_id, gen_length, cfg.max_seq_len)
    device = model.lm_head.weight.device
    c0 = max(len(p) // L for p in rows)                     # the first decoding block, shared by all samples
    shift = [L * (c0 - len(p) // L) for p in rows]          # whole blocks of padding keep each grid aligned
    ends = [s + math.ceil((len(p) + gen_length) / L) * L for s, p in zip(shift, rows)]
    B, T = len(rows), max(ends)
    x = torch.full((B, T), mask_id, dtype=torch.long, device=device)
    pos = (torch.arange(T, device=device) - torch.tensor(shift, device=device)[:, None]).clamp(min=0)
    valid = torch.zeros(B, T, dtype=torch.bool, device=device)
    for r, (s, p, end) in enumerate(zip(shift, rows, ends)):
        x[r, :s], x[r, s:s + len(p)], x[r, end:], valid[r, s:end] = cfg.eos_token_id, p, cfg.eos_token_id, True
    st = BlockState(model, x, pos, valid, torch.ones(B, dtype=torch.bool, device=device), model.new_cache(B, T + cache_spare) if use_cache else None,
                    L, get_num_transfer_tokens(torch.ones(1, L), denoising_steps)[0].tolist(), threshold, temperature,
                    top_k, top_p, remasking, forward, on_step, nfe_rows=torch.zeros(B, dtype=torch.long))
    if c0:
        store(st, 0, c0 * L)  # prefill the whole-block part of the prompt
    gen_start = [s + len(p) for s, p in zip(shift, rows)]
    for c in range(c0, T // L):
        lo, hi = c * L, (c + 1) * L
        st.active &= torch.tensor([end > lo for end in ends], device=device)
        if not st.active.any():
            break
        denoise(st, lo, hi)
        for r in range(B):  # stop check once per block, anywhere in the sample's generated region
            if st.active[r] and stop_ids & set(x[r, gen_start[r]:hi].tolist()):
                st.active[r] = False
    stats = {**st.stats}
    return x, finish(stats, x, gen_start, gen_length, stop_ids | {mask_id}, st.nfe_rows, t0)

# -----------------------------------------------------------------------------
# Command line


def show_canvas(tok, x, start, end, mask_id, delay):
    """Redraw the generated region in the terminal: committed tokens as text, masks as a shaded block."""
    text = "".join("\u2591" if t == mask_id else tok.decode([t]) for t in x[0, start:end].tolist())
    print("\033[H\033[J" + text, flush=True)  # clear the screen, then draw
    time.sleep(delay)


if __name__ == "__main__":
    import argparse
    import os

    import model as model_lib
    import tokenizer as tokenizer_lib
    ap = argparse.ArgumentParser(description="Generate with a LLaDA or SDAR checkpoint and print the text and stats.")
    ap.add_argument("--model", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "tiny-llada"),
                    help="checkpoint folder or Hugging Face repo id (default: the embedded LLaDA-format model)")
    ap.add_argument("--prompt", required=True, help="the prompt text")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default: 128 LLaDA, 256 SDAR)")
    ap.add_argument("--block-length", type=int, default=None, help="block length (default: 32 LLaDA, the model's SDAR block)")
    ap.add_argument("--steps", type=int, default=None,
                    help="LLaDA: total denoising steps (default gen-length); SDAR: steps per block (default block length)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="LLaDA: Fast-dLLM confidence threshold (default off); SDAR: dynamic threshold (default 1.0 = static)")
    ap.add_argument("--cache", choices=["prefix", "dual"], default=None, help="LLaDA: Fast-dLLM KV cache")
    ap.add_argument("--no-cache", action="store_true", help="SDAR: recompute the prefix every step instead of caching")
    ap.add_argument("--remasking", choices=REMASKING, default="low_confidence", help="which masks to commit first")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--cfg-scale", type=float, default=0.0, help="LLaDA classifier-free guidance scale")
    ap.add_argument("--seed", type=int, default=0, help="random seed (only matters with temperature > 0 or random remasking)")
    ap.add_argument("--show", action="store_true", help="watch the canvas being unmasked step by step")
    ap.add_argument("--show-delay", type=float, default=0.05, help="seconds between frames with --show")
    ap.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="default: the checkpoint's dtype on CUDA, float32 on CPU")
    ap.add_argument("--compile", action="store_true",
                    help="compile the model's forward (model.compile_forward; CUDA graphs on CUDA)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    net = model_lib.from_pretrained(args.model, args.device, getattr(torch, args.dtype) if args.dtype else None)
    if args.compile:
        model_lib.compile_forward(net)
    tok = tokenizer_lib.load_tokenizer(model_lib.resolve(args.model))
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = torch.tensor(tok.encode(text))
    mask_id, llada = net.config.mask_token_id, net.config.family == "llada"
    gen_length = args.gen_length or (128 if llada else 256)
    start = len(ids)  # batch of one: no padding in either decoder, generation starts right after the prompt
    on_step = (lambda x: show_canvas(tok, x, start, start + gen_length, mask_id, args.show_delay)) if args.show else None
    if llada:
        block = args.block_length or min(32, gen_length)
        x, stats = generate(net, ids, steps=args.steps or gen_length, gen_length=gen_length, block_length=block,
                            temperature=args.temperature, cfg_scale=args.cfg_scale, remasking=args.remasking,
                            threshold=args.threshold, cache=args.cache, on_step=on_step)
    else:
        block = args.block_length or net.config.block_size
        x, stats = block_generate(net, ids, gen_length=gen_length, block_length=block, denoising_steps=args.steps or block,
                                  threshold=args.threshold or 1.0, temperature=args.temperature, remasking=args.remasking,
                                  use_cache=not args.no_cache, on_step=on_step)
    s, n = stats["gen_start"][0], stats["gen_tokens"][0]
    print(tok.decode(x[0, s:s + n].tolist()))
    compiling = getattr(net, "compile_seconds", 0.0)  # the calls that compiled, timed whole: not decoding
    seconds = stats["seconds"] - compiling
    note = f"; compiling {compiling:.1f} s" if compiling else ""
    print(f"\n{n} tokens, nfe {stats['nfe']}, {stats['tokens_per_forward']:.2f} tokens/forward, "
          f"{n / seconds:.1f} tokens/s ({seconds:.2f} s{note})")
