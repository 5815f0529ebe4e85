"""
Multi-token Residual Prediction (MRP; Xu et al., arXiv 2605.18817): a small module on a *frozen* SDAR
backbone that predicts how the backbone's logits will change once a token is revealed, so one backbone
forward can commit more than one token. Official code: heavyball-research/multi-token-residual-prediction
(src/models/SDAR-1.7B-MRP/modeling_sdar_mrp.py, spec_decoding_utils.py). Training is train_mrp.py.

Module (DeepSeek-V3-MTP-shaped; its decoder layers are model.py's Block, run by model.run_layers):
    h_C = norm(layers(eh_proj([enorm(E[x_{t+1}]) ; hnorm(h_A)])))     embedding first, hidden second
    corrected logits = lm_head(h_A + s h_C) = A + s C                   the backbone's frozen head, linear
    h_A: the backbone's final post-norm hidden state on x_t; x_{t+1}: the block after the reveal.
    Chained k = 1..K: acc_k = acc_{k-1} + s h_C,k, each pass fed acc_{k-1} and the latest ids.
Decoding, as `denoise=` functions of decode.block_generate (its static one-token-per-step rule is the
    reference):
    direct  1 + K tokens per backbone forward, no verification (lossy)
    spec    draft K tokens (the backbone's pick, then K - 1 MRP passes), verify all K + 1 candidate blocks in
            one backbone forward where candidates see the cached prefix and themselves but not each other,
            keep the longest agreeing prefix plus the backbone's own next pick (bonus): lossless under
            greedy decoding; the next round reseeds from the verify pass (the official, slightly stale,
            choice)
    remask  dynamic threshold: reveal above tau, one MRP pass on the fresh reveals, revoke the reveals whose
            corrected confidence falls below tau (the published rule); the best proposal always stays.
Readings and differences from the released code: the MRP keeps its own prefix KV cache in every mode
(written after prefill and each finished block, as in training; the released code does so in direct mode
only); logits mix "logits_sum" (A + s ΣC) everywhere, the released spec sweep's "none" (raw C) is not
offered.

Beyond the paper (after its code, at the end of this file; the default is the published rule):
    remask="code_delta"    the released code's rule instead of the published one: revoke the reveals whose
                           |C[token]| exceeds delta on the pre-commit state; the smallest |C| stays.
    remask="loo"           this project's leave-one-out reading: the published rule reads A + C at the
                           just-revealed positions, where the KL objective never trained the head (it covers
                           positions still masked after the reveal), so "loo" re-checks each proposal with
                           itself masked again and the other proposals revealed: one MRP pass over the packed
                           candidates.
    remask="loo_backbone"  the same check with a backbone forward: the exact quantity "loo" approximates, at
                           one more backbone forward.
"""
import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import decode
import model as M

# official checkpoint keys -> ours: mrp_modules.0.model.KEY (older: mtp_modules.0.model.KEY) -> KEY
_HEAD_KEYS = (["enorm.weight", "hnorm.weight", "eh_proj.weight", "norm.weight"]
              + [f"layers.{{}}.{n}.weight" for n in M.LAYER_PARAMS])
MRP_KEYS = {f"{head}.{key}": key for head in ("mrp_modules.0.model", "mtp_modules.0.model")
            for key in _HEAD_KEYS}
# tied copies of the backbone's tensors stored under the head: ignored
ALIASES = ("lm_head.weight", "model.embed_tokens.weight")


class MRP(nn.Module):
    def __init__(self, cfg, n_layers=3):
        super().__init__()
        self.config = replace(cfg, n_layer=n_layers)
        H, eps, g32 = cfg.n_embd, cfg.norm_eps, cfg.norm_gain_fp32
        self.enorm, self.hnorm = M.RMSNorm(H, eps, g32), M.RMSNorm(H, eps, g32)
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.layers = nn.ModuleList(M.Block(cfg) for _ in range(n_layers))
        self.norm = M.RMSNorm(H, eps, g32)

    def init_weights(self, std=0.2, seed=42):
        """Every parameter, norm gains included, from N(0, std): the official std 0.2 "cold start"."""
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def new_cache(self, batch, length):
        w = self.eh_proj.weight
        return M.KVCache(len(self.layers), batch, self.config.n_kv_head, length, self.config.head_dim,
                         w.dtype, w.device)

    def forward(self, backbone, ids, hidden, **kw):
        """h_C (B, T, C) for the block `ids` after the reveal and the accumulator `hidden`. kw: as run_layers
        (attention_mask, position_ids, cache, cache_start, kv_end, block_size, attn_mask)."""
        x = self.eh_proj(torch.cat([self.enorm(backbone.embed_tokens(ids)), self.hnorm(hidden)], dim=-1))
        kw.setdefault("block_size", backbone.config.block_size)
        return self.norm(M.run_layers(self.layers, backbone.rope, x, **kw))


def load_mrp(name_or_path, device=None, dtype=None):
    """(backbone, mrp) from an official MRP checkpoint: backbone keys as SDAR's, the head under
    mrp_modules.0."""
    folder = M.resolve(name_or_path)
    backbone = M.from_pretrained(folder, device, dtype, skip=("mrp_modules.", "mtp_modules."))
    w = backbone.lm_head.weight
    return backbone, load_head(folder, backbone.config, w.device, w.dtype)


def load_head(folder, config, device, dtype):
    """The MRP head alone from an official MRP checkpoint folder, shaped for a backbone with `config` (its
    tensors are checked against those shapes); the checkpoint's own backbone is not read."""
    hf = M.read_json(os.path.join(folder, "config.json"))
    aliases = tuple("0." + a for a in ALIASES)
    where = {k: v for k, v in M.checkpoint_files(folder).items()
             if k.startswith(("mrp_modules.", "mtp_modules.")) and not k.endswith(aliases)}
    if not where:
        raise KeyError(f"{folder}: no mrp_modules.* keys: not an MRP checkpoint")
    if hf.get("num_mrp_heads", 1) != 1:
        raise ValueError(f"{folder}: num_mrp_heads={hf['num_mrp_heads']}; only one MRP head is supported")
    with torch.device("meta"):
        mrp = MRP(config, hf.get("num_nextn_predict_layers", 1))
    want = {k: v.shape for k, v in mrp.state_dict().items()}
    mrp.load_state_dict(M.read_state(where, MRP_KEYS, want, device, dtype, f"{folder}: MRP head"),
                        strict=True, assign=True)
    return mrp.eval()


def load_or_exit(load, *args):
    """load_mrp / load_head for the command line: a folder that is not an MRP checkpoint, or a head that does
    not fit, is one line (the loader's message names the folder)."""
    try:
        return load(*args)
    except (KeyError, ValueError, OSError) as e:
        raise SystemExit(str(e.args[0] if e.args else e)) from None


def save_mrp(backbone, mrp, folder, tokenizer_from=None):
    """An official-layout MRP checkpoint: the backbone's keys plus mrp_modules.0.model.*, one config."""
    inverse = {v: k for k, v in MRP_KEYS.items() if k.startswith("mrp_modules.")}
    extra = {}
    for name, t in mrp.state_dict().items():
        parts = name.split(".")
        if parts[0] == "layers":  # layers.{i}.rest -> the official key with i filled in
            key = inverse[".".join(["layers", "{}"] + parts[2:])].format(parts[1])
        else:
            key = inverse[name]
        extra[key] = t.detach().contiguous()
    M.save_pretrained(backbone, folder, extra_tensors=extra, extra_config={
        "architectures": ["SDARMRPForCausalLM"], "num_nextn_predict_layers": len(mrp.layers),
        "num_mrp_heads": 1})
    for name in os.listdir(tokenizer_from) if tokenizer_from else []:
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(tokenizer_from, name), folder)

# -----------------------------------------------------------------------------
# Decoding: denoise / store functions for decode.block_generate


@dataclass
class Run:
    """One MRP decode: the head, its own KV cache, the knobs and the counters reported in stats."""
    mrp: MRP
    mrp_steps: int
    scale: float = 1.0
    remask: str = "published"
    delta: float = 2.0
    cache: object = None
    stats: dict = field(default_factory=lambda: dict(mrp_forwards=0, mrp_store_forwards=0, verify_forwards=0,
                                                     drafts=0, accepted=0, bonus=0, revoked=0))

    def residual(self, st, ids, hidden, lo, counter="mrp_forwards"):
        """h_C for block ids at canvas slots lo.. (its K/V go to the MRP cache, like the backbone's)."""
        self.stats[counter] += 1
        L = ids.shape[1]
        return self.mrp(st.model, ids, hidden, attention_mask=st.valid[:, lo:lo + L],
                        position_ids=st.pos[:, lo:lo + L], cache=self.cache, cache_start=lo,
                        block_size=st.block_length)

    def store(self, st, lo, hi):
        """The backbone's store pass, then the MRP's: clean ids and the backbone's clean hidden state."""
        out = decode.store_block(st, lo, hi)
        if out is not None:
            if self.cache is None:
                self.cache = self.mrp.new_cache(st.x.shape[0], len(st.cache))
            self.residual(st, st.x[:, lo:hi], out[1], lo, counter="mrp_store_forwards")


def masks_left(st, lo, hi):
    return ((st.x[:, lo:hi] == st.model.config.mask_token_id) & st.active[:, None]).any(1)


def static_pick(st, state, logits, lo, hi):
    """The static rule's one commit on a block state: (transfer (B, L) bool, x0 (B, L)); rows without masks
    transfer nothing. The same confidence and top-1 as decode.denoise_block at threshold 1."""
    x0, confidence = decode.block_confidence(st, logits, lo, hi, state)
    transfer = decode.commit_topk(confidence, [1] * state.shape[0]) & torch.isfinite(confidence)
    return transfer, x0


def count_step(st, lo, hi):
    st.stats["nfe"] += 1
    st.nfe_rows += masks_left(st, lo, hi)


def denoise_direct(run):
    def denoise(st, lo, hi):
        while masks_left(st, lo, hi).any():
            count_step(st, lo, hi)
            logits, acc = decode.block_logits(st, lo, hi, return_hidden=True)
            for k in range(run.mrp_steps + 1):
                if k:  # the k-th extra token: backbone logits corrected by the chained residuals
                    if not masks_left(st, lo, hi).any():
                        break
                    acc = acc + run.scale * run.residual(st, st.x[:, lo:hi], acc, lo)
                    logits = st.model.lm_head(acc)
                transfer, x0 = static_pick(st, st.x[:, lo:hi], logits, lo, hi)
                st.x[:, lo:hi] = torch.where(transfer, x0, st.x[:, lo:hi])
        run.store(st, lo, hi)
    return denoise


def verify_mask(valid_prefix, n, L):
    """(B, 1, nL, P + nL): every candidate sees the valid cached prefix and itself, not the other
    candidates."""
    B, P = valid_prefix.shape
    own = torch.block_diag(*[torch.ones(L, L, dtype=torch.bool, device=valid_prefix.device)] * n)
    prefix = valid_prefix[:, None, None, :].expand(B, 1, n * L, P)
    return torch.cat([prefix, own.expand(B, 1, n * L, n * L)], -1)


def draft(st, run, logits, hidden, lo, hi):
    """Candidate block states C(0..n-1) and the picks between them: the backbone's own pick on its logits,
    then up to K - 1 picks on MRP-corrected logits (the chained accumulator)."""
    states, picks, acc, cur = [st.x[:, lo:hi].clone()], [], hidden, logits
    for j in range(run.mrp_steps):
        transfer, x0 = static_pick(st, states[-1], cur, lo, hi)
        states.append(torch.where(transfer, x0, states[-1]))
        picks.append((transfer, torch.where(transfer, x0, -1)))
        if j == run.mrp_steps - 1 or not (states[-1] == st.model.config.mask_token_id).any():
            break
        acc = acc + run.scale * run.residual(st, states[-1], acc, lo)
        cur = st.model.lm_head(acc)
    return states, picks


def verify(st, run, states, picks, lo, hi):
    """One backbone forward over the n packed candidates; per row, the number of drafts the backbone would
    have picked itself (the longest agreeing prefix), and the verify logits / hidden states (B, n, L, .)."""
    n, L, B = len(states), hi - lo, st.x.shape[0]
    v_logits, v_hidden = st.model(torch.cat(states, 1), attention_mask=st.valid[:, lo:hi].repeat(1, n),
                                  position_ids=st.pos[:, lo:hi].repeat(1, n), cache=st.cache, cache_start=lo,
                                  attn_mask=verify_mask(st.valid[:, :lo], n, L), return_hidden=True)
    count_step(st, lo, hi)
    run.stats["verify_forwards"] += 1
    live = masks_left(st, lo, hi)
    accepted, agreeing = torch.zeros(B, dtype=torch.long, device=st.x.device), live.clone()
    for k in range(n - 1):
        transfer, x0 = static_pick(st, states[k], v_logits[:, k * L:(k + 1) * L], lo, hi)
        agreeing &= (transfer == picks[k][0]).all(1) & (torch.where(transfer, x0, -1) == picks[k][1]).all(1)
        accepted += agreeing
    run.stats["drafts"] += (n - 1) * int(live.sum())
    run.stats["accepted"] += int(accepted.sum())
    return accepted, v_logits.view(B, n, L, -1), v_hidden.view(B, n, L, -1)


def denoise_spec(run):
    def denoise(st, lo, hi):
        logits, hidden = decode.block_logits(st, lo, hi, return_hidden=True)  # the seed forward
        count_step(st, lo, hi)
        while masks_left(st, lo, hi).any():
            states, picks = draft(st, run, logits, hidden, lo, hi)
            accepted, v_logits, v_hidden = verify(st, run, states, picks, lo, hi)
            rows = torch.arange(st.x.shape[0], device=st.x.device)
            logits, hidden = v_logits[rows, accepted], v_hidden[rows, accepted]  # (B, L, .): each row's state
            state = torch.stack(states, 1)[rows, accepted]                        # (B, L)
            transfer, x0 = static_pick(st, state, logits, lo, hi)  # the bonus token
            st.x[:, lo:hi] = torch.where(transfer, x0, state)
            run.stats["bonus"] += int(transfer.any(1).sum())
        run.store(st, lo, hi)
    return denoise


def denoise_remask(run):
    def denoise(st, lo, hi):
        tau = st.threshold
        while masks_left(st, lo, hi).any():
            count_step(st, lo, hi)
            logits, hidden = decode.block_logits(st, lo, hi, return_hidden=True)
            x0, confidence = decode.block_confidence(st, logits, lo, hi)
            best = decode.commit_topk(confidence, [1] * x0.shape[0]) & torch.isfinite(confidence)
            above = confidence > tau
            proposed = above | (best & ~above.any(1, keepdim=True))  # SDAR dynamic, quota 1
            if run.remask == "published":  # one MRP pass conditioned on the fresh reveals, same tau
                h_c = run.residual(st, torch.where(proposed, x0, st.x[:, lo:hi]), hidden, lo)
                p = F.softmax(st.model.lm_head(hidden + run.scale * h_c).float(), -1)
                keep, guard = proposed & (p.gather(-1, x0[..., None])[..., 0] >= tau), best
            else:  # beyond the paper: the released code's rule or a leave-one-out check (below)
                keep, guard = other_remask(st, run, x0, proposed, best, hidden, lo, hi, tau)
            keep |= guard & ~keep.any(1, keepdim=True)  # progress: never revoke everything
            run.stats["revoked"] += int((proposed & ~keep).sum())
            st.x[:, lo:hi] = torch.where(keep, x0, st.x[:, lo:hi])
        run.store(st, lo, hi)
    return denoise


DENOISE = {"direct": denoise_direct, "spec": denoise_spec, "remask": denoise_remask}
REMASK_RULES = ("published", "code_delta", "loo", "loo_backbone")  # the last three: beyond the paper


def decode_mrp(model, prompt, *, mrp, mode, gen_length, block_length, steps=None, threshold=None, mrp_steps=1,
               scale=1.0, remask="published", delta=2.0, **kw):
    """MRP decoding on SDAR's block loop. direct/spec use the static regime (threshold 1, one token per
    backbone step); remask uses `threshold`. stats: nfe (backbone forwards, verification included),
    mrp_forwards, verify_forwards, drafts, accepted, bonus, revoked, mrp_store_forwards."""
    if model.config.family != "sdar":
        raise ValueError("MRP is defined for SDAR (block-diffusion) backbones")
    if mode not in DENOISE or remask not in REMASK_RULES or mrp_steps < (0 if mode == "direct" else 1):
        raise ValueError(f"mode {mode!r} / remask {remask!r} / mrp_steps {mrp_steps}: expected one of "
                         f"{list(DENOISE)} / one of {REMASK_RULES} / >= 1 (>= 0 for direct)")
    if not kw.get("use_cache", True):
        raise ValueError("MRP decoding runs on the block KV cache (use_cache=False is not supported)")
    if mode == "remask" and threshold is None:
        raise ValueError("mode 'remask' needs a threshold")
    spare = (mrp_steps + 1) * block_length  # KV slots for a verify pass's K + 1 candidate blocks
    if mode == "remask" and remask.startswith("loo"):  # beyond the paper: up to a block of candidates
        spare = block_length * block_length
    run = Run(mrp, mrp_steps, scale, remask, delta)
    x, stats = decode.block_generate(model, prompt, gen_length=gen_length, block_length=block_length,
                                     denoising_steps=block_length,
                                     threshold=threshold if mode == "remask" else 1.0,
                                     denoise=DENOISE[mode](run), store=run.store, cache_spare=spare, **kw)
    return x, {**stats, **run.stats}


# ---- Beyond the paper (this project's diagnostics; off by default) ----


def other_remask(st, run, x0, proposed, best, hidden, lo, hi, tau):
    """(keep, guard) for the remask rules beyond the published one. "code_delta" (the released code): one
    MRP pass on the pre-commit block, veto |C[token]| > delta, the smallest |C| is the guard. "loo" /
    "loo_backbone": each reveal re-checked given the others (leave_one_out); the guard is `best`, as in the
    published rule."""
    if run.remask == "code_delta":
        c = run.scale * st.model.lm_head(run.residual(st, st.x[:, lo:hi], hidden, lo)).float()
        size = c.gather(-1, x0[..., None])[..., 0].abs()
        guard = decode.commit_topk(torch.where(proposed, -size, -torch.inf), [1] * x0.shape[0]) & proposed
        return proposed & (size <= run.delta), guard
    return proposed & (leave_one_out(st, run, x0, proposed, hidden, lo, hi) >= tau), best


def leave_one_out(st, run, x0, proposed, hidden, lo, hi):
    """(B, L) corrected confidence of each proposal i with i masked again and every other proposal revealed.
    The n candidate blocks (n = the most proposals in any row) go through one forward, packed like the
    speculative verification: each sees the cached prefix and itself, not the others. The MRP head ("loo")
    supplies A + C there, where its KL objective trained it (still-masked positions); the backbone itself
    ("loo_backbone", one more backbone forward, counted in nfe) is the exact check MRP approximates."""
    B, L = proposed.shape
    n, mask_id = int(proposed.sum(1).max()), st.model.config.mask_token_id
    # (B, n): the positions of each row's proposals, in order; L marks padding
    order = torch.where(proposed, torch.arange(L, device=x0.device), L).sort(1).values[:, :n]
    has, where = order < L, order.clamp(max=L - 1)
    cands = torch.where(proposed, x0, st.x[:, lo:hi])[:, None].repeat(1, n, 1)                # (B, n, L)
    masked_again = torch.where(has, mask_id, cands.gather(2, where[..., None])[..., 0])
    cands.scatter_(2, where[..., None], masked_again[..., None])
    packed = dict(attention_mask=st.valid[:, lo:hi].repeat(1, n), position_ids=st.pos[:, lo:hi].repeat(1, n),
                  cache_start=lo, attn_mask=verify_mask(st.valid[:, :lo], n, L), block_size=st.block_length)

    def pick(t):  # (B, n * L, D) -> (B, n, D): candidate k's row at its own masked-again position
        return t.view(B, n, L, -1).gather(2, where[..., None, None].expand(B, n, 1, t.shape[-1]))[:, :, 0]
    if run.remask == "loo_backbone":
        count_step(st, lo, hi)
        logits = pick(st.model(cands.view(B, n * L), cache=st.cache, **packed))                 # (B, n, V)
    else:
        run.stats["mrp_forwards"] += 1
        h_c = run.mrp(st.model, cands.view(B, n * L), hidden.repeat(1, n, 1), cache=run.cache, **packed)
        h_a = hidden.gather(1, where[..., None].expand(B, n, hidden.shape[-1]))
        logits = st.model.lm_head(h_a + run.scale * pick(h_c))                                  # (B, n, V)
    p = F.softmax(logits.float(), -1).gather(-1, x0.gather(1, where)[..., None])[..., 0]        # (B, n)
    return torch.zeros(B, L, device=x0.device).scatter_add(1, where, torch.where(has, p, 0.0))  # padding: 0

# -----------------------------------------------------------------------------
# Command line: decode one prompt (the training commands are train_mrp.py's)


def main():
    if sys.argv[1:2] in (["train"], ["kl"]):  # moved to train_mrp.py; the old spelling still works
        import train_mrp
        return train_mrp.main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="decode one prompt with an MRP checkpoint and print the stats")
    g.add_argument("--model", default="models/tiny-sdar-mrp", help="MRP checkpoint folder or repo id")
    g.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    g.add_argument("--mode", choices=list(DENOISE), default="spec", help="decoding mode")
    g.add_argument("--mrp-steps", type=int, default=3,
                   help="K: extra tokens (direct) or drafts (spec) per round")
    g.add_argument("--threshold", type=float, default=0.5, help="remask: the confidence threshold tau")
    g.add_argument("--remask", choices=REMASK_RULES, default="published",
                   help="remask rule: the published one, or one beyond the paper (see the docstring)")
    g.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    g.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    args = ap.parse_args()
    from tokenizer import load_tokenizer
    backbone, mrp = load_or_exit(load_mrp, args.model, args.device, None)
    tok = load_tokenizer(M.resolve(args.model))
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": args.prompt}]))
    x, stats = decode_mrp(backbone, ids, mrp=mrp, mode=args.mode, gen_length=args.gen_length,
                          block_length=backbone.config.block_size, threshold=args.threshold,
                          mrp_steps=args.mrp_steps, remask=args.remask)
    s, n = stats["gen_start"][0], stats["gen_tokens"][0]
    print(tok.decode(x[0, s:s + n].tolist()))
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
