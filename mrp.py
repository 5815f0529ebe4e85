"""
Multi-token Residual Prediction (MRP; Xu et al., arXiv 2605.18817): a small module on a *frozen* SDAR
backbone that predicts how the backbone's logits will change once a token is revealed, so one backbone
forward can commit more than one token. Official code: heavyball-research/multi-token-residual-prediction
(src/models/SDAR-1.7B-MRP/modeling_sdar_mrp.py, loss_functions.py, spec_decoding_utils.py).

Module (DeepSeek-V3-MTP-shaped; its decoder layers are model.py's Block, run by model.run_layers):
    h_C = norm(layers(eh_proj([enorm(E[x_{t+1}]) ; hnorm(h_A)])))     embedding first, hidden second
    corrected logits = lm_head(h_A + s h_C) = A + s C                   the backbone's frozen head, linear
    h_A: the backbone's final post-norm hidden state on x_t; x_{t+1}: the block after the reveal.
    Chained k = 1..K: acc_k = acc_{k-1} + s h_C,k, each pass fed acc_{k-1} and the latest ids.
Training (`python mrp.py train`): per block one ground-truth reveal per step; teacher B = the backbone's
    second, no-grad forward on the revealed input; loss = forward KL(softmax B || softmax(A + C)) over the
    positions still masked after the reveal, weighted 1/p, divided by the number of answer tokens, fp32;
    K >= 2 chains the reveals and averages the per-step losses (the accumulator is detached inside each
    loss's additive term). Ablations: --reveals draws the reveals per block from a list (the released
    code's gt_random); --reveal-from backbone writes the backbone's greedy predictions instead of the
    ground truth (not in the paper: the states the dynamic regime actually produces). AdamW, peak lr 1e-3,
    cosine to 0.1x, 3% warm-up; every MRP parameter starts from N(0, 0.2), seed 42 (the official "cold start").
Decoding, as `denoise=` functions of decode.block_generate (its static one-token-per-step rule is the
    reference):
    direct  1 + K tokens per backbone forward, no verification (lossy)
    spec    draft K tokens (the backbone's pick, then K - 1 MRP passes), verify all K + 1 candidate blocks in
            one backbone forward where candidates see the cached prefix and themselves but not each other,
            keep the longest agreeing prefix plus the backbone's own next pick (bonus): lossless under greedy
            decoding; the next round reseeds from the verify pass (the official, slightly stale, choice)
    remask  dynamic threshold: reveal above tau, one MRP pass on the fresh reveals, revoke the reveals whose
            corrected confidence falls below tau ("published", default) or, as the released code does, whose
            |C[token]| exceeds delta on the pre-commit state ("code_delta"); the best proposal always stays.
            This project adds a leave-one-out reading ("loo"): the published rule reads A + C at the
            just-revealed positions, where the KL objective never trained the head (it covers positions still
            masked after the reveal), so "loo" re-checks each proposal with itself masked again and the
            other proposals revealed - one MRP pass over the packed candidates. "loo_backbone" makes the same
            check with a backbone forward: the exact quantity "loo" approximates, at one more backbone forward.
Readings and differences (mrp.md section 7): the MRP keeps its own prefix KV cache in every mode (written
after prefill and each finished block, as in training; the released code does so in direct mode only);
logits mix "logits_sum" (A + s ΣC) everywhere, the released spec sweep's "none" (raw C) is not offered;
the KL denominator is the number of answer tokens (the released code adjusts it per reveal step).
"""
import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import decode
import model as M

# official checkpoint keys -> ours: mrp_modules.0.model.* (older checkpoints: mtp_modules.0.model.*)
MRP_KEYS = {f"{head}.{src}": dst for head in ("mrp_modules.0.model", "mtp_modules.0.model") for src, dst in {
    "enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
    "norm.weight": "norm.weight", **{f"layers.{{}}.{n}.weight": f"layers.{{}}.{n}.weight" for n in M.LAYER_PARAMS}}.items()}
ALIASES = ("lm_head.weight", "model.embed_tokens.weight")  # tied copies of the backbone's, under the head: ignored


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
        return M.KVCache(len(self.layers), batch, self.config.n_kv_head, length, self.config.head_dim, w.dtype, w.device)

    def forward(self, backbone, ids, hidden, **kw):
        """h_C (B, T, C) for the block `ids` after the reveal and the accumulator `hidden`. kw: as run_layers
        (attention_mask, position_ids, cache, cache_start, kv_end, block_size, attn_mask)."""
        x = self.eh_proj(torch.cat([self.enorm(backbone.embed_tokens(ids)), self.hnorm(hidden)], dim=-1))
        kw.setdefault("block_size", backbone.config.block_size)
        return self.norm(M.run_layers(self.layers, backbone.rope, x, **kw))


def load_mrp(name_or_path, device=None, dtype=None):
    """(backbone, mrp) from an official MRP checkpoint: backbone keys as SDAR's, the head under mrp_modules.0."""
    folder = M.resolve(name_or_path)
    backbone = M.from_pretrained(folder, device, dtype, skip=("mrp_modules.", "mtp_modules."))
    w = backbone.lm_head.weight
    return backbone, load_head(folder, backbone.config, w.device, w.dtype)


def load_head(folder, config, device, dtype):
    """The MRP head alone from an official MRP checkpoint folder, shaped for a backbone with `config` (its
    tensors are checked against those shapes); the checkpoint's own backbone is not read."""
    hf = M.read_json(os.path.join(folder, "config.json"))
    where = {k: v for k, v in M.checkpoint_files(folder).items()
             if k.startswith(("mrp_modules.", "mtp_modules.")) and not k.endswith(tuple("0." + a for a in ALIASES))}
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


def save_mrp(backbone, mrp, folder, tokenizer_from=None):
    """An official-layout MRP checkpoint: the backbone's keys plus mrp_modules.0.model.*, one config."""
    inverse = {v: k for k, v in MRP_KEYS.items() if k.startswith("mrp_modules.")}
    extra = {}
    for name, t in mrp.state_dict().items():
        parts = name.split(".")
        key = inverse[".".join(["layers", "{}"] + parts[2:])].format(parts[1]) if parts[0] == "layers" else inverse[name]
        extra[key] = t.detach().contiguous()
    M.save_pretrained(backbone, folder, extra_tensors=extra, extra_config={
        "architectures": ["SDARMRPForCausalLM"], "num_nextn_predict_layers": len(mrp.layers), "num_mrp_heads": 1})
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
        return self.mrp(st.model, ids, hidden, attention_mask=st.valid[:, lo:lo + L], position_ids=st.pos[:, lo:lo + L],
                        cache=self.cache, cache_start=lo, block_size=st.block_length)

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
    """(B, 1, nL, P + nL): every candidate sees the valid cached prefix and itself, not the other candidates."""
    B, P = valid_prefix.shape
    own = torch.block_diag(*[torch.ones(L, L, dtype=torch.bool, device=valid_prefix.device)] * n)
    return torch.cat([valid_prefix[:, None, None, :].expand(B, 1, n * L, P), own.expand(B, 1, n * L, n * L)], -1)


def denoise_spec(run):
    def denoise(st, lo, hi):
        L = hi - lo
        logits, hidden = decode.block_logits(st, lo, hi, return_hidden=True)  # the seed forward
        count_step(st, lo, hi)
        while masks_left(st, lo, hi).any():
            states, picks, acc, cur = [st.x[:, lo:hi].clone()], [], hidden, logits
            for j in range(run.mrp_steps):  # draft: the backbone's own pick, then MRP-corrected picks
                transfer, x0 = static_pick(st, states[-1], cur, lo, hi)
                states.append(torch.where(transfer, x0, states[-1]))
                picks.append((transfer, torch.where(transfer, x0, -1)))
                if j == run.mrp_steps - 1 or not (states[-1] == st.model.config.mask_token_id).any():
                    break
                acc = acc + run.scale * run.residual(st, states[-1], acc, lo)
                cur = st.model.lm_head(acc)
            n = len(states)
            v_logits, v_hidden = st.model(torch.cat(states, 1), attention_mask=st.valid[:, lo:hi].repeat(1, n),
                                          position_ids=st.pos[:, lo:hi].repeat(1, n), cache=st.cache, cache_start=lo,
                                          attn_mask=verify_mask(st.valid[:, :lo], n, L), return_hidden=True)
            count_step(st, lo, hi)
            run.stats["verify_forwards"] += 1
            # per row, the longest prefix of drafts the backbone would have picked itself
            B, live = st.x.shape[0], masks_left(st, lo, hi)
            accepted, agreeing = torch.zeros(B, dtype=torch.long, device=st.x.device), live.clone()
            for k in range(n - 1):
                transfer, x0 = static_pick(st, states[k], v_logits[:, k * L:(k + 1) * L], lo, hi)
                agreeing &= (transfer == picks[k][0]).all(1) & (torch.where(transfer, x0, -1) == picks[k][1]).all(1)
                accepted += agreeing
            run.stats["drafts"] += (n - 1) * int(live.sum())
            run.stats["accepted"] += int(accepted.sum())
            rows = torch.arange(B, device=st.x.device)
            logits = v_logits.view(B, n, L, -1)[rows, accepted]                  # (B, L, V): each row's own state
            hidden = v_hidden.view(B, n, L, -1)[rows, accepted]
            state = torch.stack(states, 1)[rows, accepted]                       # (B, L)
            transfer, x0 = static_pick(st, state, logits, lo, hi)  # the bonus token
            st.x[:, lo:hi] = torch.where(transfer, x0, state)
            run.stats["bonus"] += int(transfer.any(1).sum())
        run.store(st, lo, hi)
    return denoise


def leave_one_out(st, run, x0, proposed, hidden, lo, hi):
    """(B, L) corrected confidence of each proposal i with i masked again and every other proposal revealed.
    The n candidate blocks (n = the most proposals in any row) go through one forward, packed like the
    speculative verification: each sees the cached prefix and itself, not the others. The MRP head ("loo")
    supplies A + C there, where its KL objective trained it (still-masked positions); the backbone itself
    ("loo_backbone", one more backbone forward, counted in nfe) is the exact check MRP approximates."""
    B, L = proposed.shape
    n, mask_id = int(proposed.sum(1).max()), st.model.config.mask_token_id
    order = torch.where(proposed, torch.arange(L, device=x0.device), L).sort(1).values[:, :n]  # (B, n); L: none
    has, where = order < L, order.clamp(max=L - 1)
    cands = torch.where(proposed, x0, st.x[:, lo:hi])[:, None].repeat(1, n, 1)                # (B, n, L)
    cands.scatter_(2, where[..., None], torch.where(has, mask_id, cands.gather(2, where[..., None])[..., 0])[..., None])
    packed = dict(attention_mask=st.valid[:, lo:hi].repeat(1, n), position_ids=st.pos[:, lo:hi].repeat(1, n),
                  cache_start=lo, attn_mask=verify_mask(st.valid[:, :lo], n, L), block_size=st.block_length)
    pick = lambda t: t.view(B, n, L, -1).gather(2, where[..., None, None].expand(B, n, 1, t.shape[-1]))[:, :, 0]
    if run.remask == "loo_backbone":
        count_step(st, lo, hi)
        logits = pick(st.model(cands.view(B, n * L), cache=st.cache, **packed))                 # (B, n, V)
    else:
        run.stats["mrp_forwards"] += 1
        h_c = run.mrp(st.model, cands.view(B, n * L), hidden.repeat(1, n, 1), cache=run.cache, **packed)
        logits = st.model.lm_head(hidden.gather(1, where[..., None].expand(B, n, hidden.shape[-1]))
                                  + run.scale * pick(h_c))                                       # (B, n, V)
    p = F.softmax(logits.float(), -1).gather(-1, x0.gather(1, where)[..., None])[..., 0]        # (B, n)
    return torch.zeros(B, L, device=x0.device).scatter_add(1, where, torch.where(has, p, 0.0))  # padding adds 0


def denoise_remask(run):
    def denoise(st, lo, hi):
        tau = st.threshold
        while masks_left(st, lo, hi).any():
            count_step(st, lo, hi)
            logits, hidden = decode.block_logits(st, lo, hi, return_hidden=True)
            x0, confidence = decode.block_confidence(st, logits, lo, hi)
            best = decode.commit_topk(confidence, [1] * x0.shape[0]) & torch.isfinite(confidence)
            proposed = (confidence > tau) | (best & ~(confidence > tau).any(1, keepdim=True))  # SDAR dynamic, quota 1
            guard = best
            if run.remask == "published":  # one MRP pass conditioned on the fresh reveals, same tau
                h_c = run.residual(st, torch.where(proposed, x0, st.x[:, lo:hi]), hidden, lo)
                p = F.softmax(st.model.lm_head(hidden + run.scale * h_c).float(), -1).gather(-1, x0[..., None])[..., 0]
                keep = proposed & (p >= tau)
            elif run.remask == "code_delta":  # residual on the pre-commit block, veto |C[token]| > delta
                c = run.scale * st.model.lm_head(run.residual(st, st.x[:, lo:hi], hidden, lo)).float()
                size = c.gather(-1, x0[..., None])[..., 0].abs()
                keep = proposed & (size <= run.delta)
                guard = decode.commit_topk(torch.where(proposed, -size, -torch.inf), [1] * x0.shape[0]) & proposed
            else:  # each reveal re-checked given the others (this project's reading, see leave_one_out)
                keep = proposed & (leave_one_out(st, run, x0, proposed, hidden, lo, hi) >= tau)
            keep |= guard & ~keep.any(1, keepdim=True)  # progress: never revoke everything
            run.stats["revoked"] += int((proposed & ~keep).sum())
            st.x[:, lo:hi] = torch.where(keep, x0, st.x[:, lo:hi])
        run.store(st, lo, hi)
    return denoise


DENOISE = {"direct": denoise_direct, "spec": denoise_spec, "remask": denoise_remask}
REMASK_RULES = ("published", "code_delta", "loo", "loo_backbone")


def decode_mrp(model, prompt, *, mrp, mode, gen_length, block_length, steps=None, threshold=None, mrp_steps=1,
               scale=1.0, remask="published", delta=2.0, **kw):
    """MRP decoding on SDAR's block loop. direct/spec use the static regime (threshold 1, one token per
    backbone step); remask uses `threshold`. stats: nfe (backbone forwards, verification included),
    mrp_forwards, verify_forwards, drafts, accepted, bonus, revoked, mrp_store_forwards."""
    if model.config.family != "sdar":
        raise ValueError("MRP is defined for SDAR (block-diffusion) backbones")
    if mode not in DENOISE or remask not in REMASK_RULES or mrp_steps < (0 if mode == "direct" else 1):
        raise ValueError(f"mode {mode!r} / remask {remask!r} / mrp_steps {mrp_steps}: expected one of {list(DENOISE)} / "
                         f"one of {REMASK_RULES} / >= 1 (>= 0 for direct)")
    if not kw.get("use_cache", True):
        raise ValueError("MRP decoding runs on the block KV cache (use_cache=False is not supported)")
    if mode == "remask" and threshold is None:
        raise ValueError("mode 'remask' needs a threshold")
    run = Run(mrp, mrp_steps, scale, remask, delta)
    x, stats = decode.block_generate(model, prompt, gen_length=gen_length, block_length=block_length,
                                     denoising_steps=block_length, threshold=threshold if mode == "remask" else 1.0,
                                     denoise=DENOISE[mode](run), store=run.store,
                                     cache_spare=(block_length if mode == "remask" and remask.startswith("loo")
                                                  else mrp_steps + 1) * block_length, **kw)
    return x, {**stats, **run.stats}

# -----------------------------------------------------------------------------
# Training


def reveal(x, ids, masked, block_size, generator, reveals=(1,)):
    """Ground-truth tokens at uniformly random masked positions of every block that still has masks: one
    each (the official gt_topk=1) or, with several counts, a count per block drawn from them (gt_random)."""
    B, T = x.shape
    scores = torch.where(masked, torch.rand(B, T, generator=generator).to(x.device), -1.0)
    rank = scores.view(B, T // block_size, block_size).argsort(-1, descending=True).argsort(-1)  # (B, blocks, L)
    counts = torch.tensor(reveals)
    if len(reveals) > 1:
        counts = counts[torch.randint(len(reveals), (B, T // block_size, 1), generator=generator)]
    chosen = (rank < counts.to(x.device)).view(B, T) & masked
    return torch.where(chosen, ids, x), masked & ~chosen


def mrp_loss(backbone, mrp, ids, prompt_mask, generator, block_size, mrp_steps=1, reveals=(1,), reveal_from="gt"):
    """The KL objective (kd_diff_sum) in the SDAR training layout [x_t | x_0]; mean over the K chained steps.
    reveal_from: "gt" writes the ground-truth tokens (official); "backbone" writes the backbone's own greedy
    predictions from the first pass (this project's ablation: the states the dynamic regime produces)."""
    import train
    T = ids.shape[1]
    x_t, masked, p = train.add_noise(ids, prompt_mask, backbone.config.mask_token_id, generator)
    layout = dict(position_ids=torch.arange(T, device=ids.device).repeat(2),
                  attn_mask=train.block_diff_mask(T, block_size, ids.device)[None, None])
    with torch.no_grad():
        acc = backbone(torch.cat([x_t, ids], 1), return_hidden=True, **layout)[1]   # h_A, (B, 2T, C)
        source = ids if reveal_from == "gt" else backbone.lm_head(acc[:, :T]).argmax(-1)
    answer_len = max(1, int((~prompt_mask).sum()))
    losses, cur = [], x_t
    for _ in range(mrp_steps):
        cur, masked = reveal(cur, source, masked, block_size, generator, reveals)
        with torch.no_grad():
            teacher = backbone(torch.cat([cur, ids], 1), **layout)[:, :T][masked].float()
        h_c = mrp(backbone, torch.cat([cur, ids], 1), acc, **layout)
        student = backbone.lm_head(acc.detach() + h_c)[:, :T][masked].float()
        kl = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum(-1)
        losses.append((kl / p[masked]).sum() / answer_len)
        acc = acc + h_c
    return sum(losses) / len(losses)


def training_args(args, block_size):
    """--reveals as a tuple of counts, checked with --length (train and kl): one-line errors."""
    try:
        reveals = tuple(int(v) for v in args.reveals.split(","))
    except ValueError:
        raise SystemExit(f"--reveals {args.reveals!r}: expected comma-separated integers, e.g. 1,2,3,4") from None
    if min(reveals) < 1 or max(reveals) > block_size:
        raise SystemExit(f"--reveals {args.reveals}: counts must lie in 1..{block_size} (the block size)")
    if args.length % block_size:
        raise SystemExit(f"--length {args.length}: must be a multiple of the block size {block_size}")
    return reveals


def main_kl(args, backbone, mrp):
    """How much of the backbone's change after a reveal the head predicts: the training objective on fresh
    batches of the built-in task, for the head and for a zero residual (C = 0: corrected logits = A)."""
    import copy
    import train
    from tokenizer import load_tokenizer
    zero = copy.deepcopy(mrp)
    with torch.no_grad():
        zero.norm.weight.zero_()  # h_C = 0
    tok, L = load_tokenizer(M.resolve(args.model)), backbone.config.block_size
    reveals = training_args(args, L)
    totals = {"head": 0.0, "zero": 0.0}
    for i in range(args.batches):
        ids, pm, _ = train.make_batch(tok, "sdar", 1_000_000 + i, args.seed, args.batch_size, args.length, set())
        ids, pm = ids.to(backbone.lm_head.weight.device), pm.to(backbone.lm_head.weight.device)
        for name, head in (("head", mrp), ("zero", zero)):
            with torch.no_grad():  # the same noise and reveals for both: one generator seed per batch
                totals[name] += mrp_loss(backbone, head, ids, pm, torch.Generator().manual_seed(i), L, args.mrp_steps,
                                         reveals, args.reveal_from).item() / args.batches
    print(f"KL to the backbone after the reveal ({args.batches} x {args.batch_size} sequences, reveals {args.reveals}, "
          f"from {args.reveal_from}, K = {args.mrp_steps}): head {totals['head']:.5f}, zero residual "
          f"{totals['zero']:.5f}: the head removes {100 * (1 - totals['head'] / totals['zero']):.1f} %")


def load_or_exit(load, *args):
    """load_mrp / load_head for the command line: a folder that is not an MRP checkpoint, or a head that does not
    fit, is one line (the loader's message names the folder)."""
    try:
        return load(*args)
    except (KeyError, ValueError, OSError) as e:
        raise SystemExit(str(e.args[0] if e.args else e)) from None


def main_train(args):
    import tasks
    import train
    from tokenizer import load_tokenizer
    rank, world, device = train.setup_distributed(args.device)
    backbone = M.from_pretrained(args.backbone, device=device, dtype=torch.float32)
    backbone.requires_grad_(False)
    if backbone.config.family != "sdar":
        raise SystemExit(f"{args.backbone}: MRP needs an SDAR (block-diffusion) backbone")
    folder, L = M.resolve(args.backbone), args.block_size or backbone.config.block_size
    tok = load_tokenizer(folder)
    reveals = training_args(args, L)
    mrp = MRP(backbone.config, args.layers)
    mrp.init_weights(args.init_std)
    if args.init:  # go on from a trained head (a warm restart: the schedule starts over)
        start = load_or_exit(lambda: load_head(M.resolve(args.init), backbone.config, device, torch.float32))
        if len(start.layers) != args.layers:
            raise SystemExit(f"--init {args.init}: a {len(start.layers)}-layer head, not --layers {args.layers}")
        mrp.load_state_dict(start.state_dict())
    print(f"MRP head: {sum(p.numel() for p in mrp.parameters()):,} parameters on a frozen "
          f"{sum(p.numel() for p in backbone.parameters()):,}-parameter backbone; K = {args.mrp_steps}")
    os.makedirs(args.out, exist_ok=True)
    model = train.parallelize(mrp.to(device), world)
    opt = train.make_optimizer(model, args.lr, weight_decay=0.0)
    held_out = {r["question"] for r in tasks.tiny_records("test")} | {r["question"] for r in tasks.tiny_records("dev")}
    gen = torch.Generator()

    def batch(i):
        gen.manual_seed(args.seed * 1_000_003 + i)
        ids, pm, _ = train.make_batch(tok, "sdar", i, args.seed, args.batch_size, args.length, held_out)
        return ids, pm
    t0 = time.time()
    train.train(model, opt, args.steps, args.lr, max(1, args.steps * 3 // 100), args.out, batch,
                lambda ids, pm, i: mrp_loss(backbone, model, ids, pm, gen, L, args.mrp_steps, reveals, args.reveal_from),
                args.save_every, "train mrp", 1, rank, world, device)
    if rank == 0:
        save_mrp(backbone.to(torch.bfloat16), train.unwrapped(model).to(torch.bfloat16), args.out, tokenizer_from=folder)
        print(f"saved {args.out} ({(time.time() - t0) / 60:.1f} min this run)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MRP head on a frozen SDAR backbone (the built-in task)")
    t.add_argument("--backbone", default="models/tiny-sdar", help="SDAR checkpoint folder or repo id")
    t.add_argument("--out", default="models/tiny-sdar-mrp", help="output folder (official MRP checkpoint layout)")
    t.add_argument("--layers", type=int, default=3, help="MRP decoder layers (the released heads: 3)")
    t.add_argument("--mrp-steps", type=int, default=1, help="K chained reveals per training step (released: 1, k2: 2)")
    t.add_argument("--reveals", default="1", help="ground-truth reveals per block per step: one count (official "
                   "gt_topk, 1) or a comma list drawn from per block (gt_random, e.g. 1,2,3,4)")
    t.add_argument("--reveal-from", choices=["gt", "backbone"], default="gt", help="revealed tokens: the ground "
                   "truth (official) or the backbone's greedy predictions (ablation for remasking)")
    t.add_argument("--steps", type=int, default=600, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    t.add_argument("--length", type=int, default=96, help="prompt + answer tokens (a multiple of the block size)")
    t.add_argument("--block-size", type=int, default=None, help="training block size (default: the backbone's)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (the paper's)")
    t.add_argument("--init-std", type=float, default=0.2, help="std of every MRP parameter at initialisation")
    t.add_argument("--seed", type=int, default=0, help="data order and noise")
    t.add_argument("--init", default=None, help="start from this trained MRP checkpoint's head (give a new --seed "
                                                "for new data: the same seed repeats its batches)")
    t.add_argument("--save-every", type=int, default=250, help="steps between resumable checkpoints")
    t.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    k = sub.add_parser("kl", help="the head's KL to the backbone on fresh batches, against a zero residual")
    k.add_argument("--model", default="models/tiny-sdar-mrp", help="MRP checkpoint folder or repo id")
    k.add_argument("--reveals", default="1", help="reveals per block per step, as for train")
    k.add_argument("--reveal-from", choices=["gt", "backbone"], default="gt", help="revealed tokens, as for train")
    k.add_argument("--mrp-steps", type=int, default=1, help="K chained reveals")
    k.add_argument("--batches", type=int, default=8, help="batches to average")
    k.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    k.add_argument("--length", type=int, default=96, help="tokens per sequence (a multiple of the block size)")
    k.add_argument("--seed", type=int, default=7, help="data seed (training used 0)")
    k.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    g = sub.add_parser("generate", help="decode one prompt with an MRP checkpoint and print the stats")
    g.add_argument("--model", default="models/tiny-sdar-mrp", help="MRP checkpoint folder or repo id")
    g.add_argument("--prompt", required=True, help="user message (the chat template is applied)")
    g.add_argument("--mode", choices=list(DENOISE), default="spec", help="decoding mode")
    g.add_argument("--mrp-steps", type=int, default=3, help="K: extra tokens (direct) or drafts (spec) per round")
    g.add_argument("--threshold", type=float, default=0.5, help="remask: the confidence threshold tau")
    g.add_argument("--remask", choices=REMASK_RULES, default="published", help="remask rule (see the docstring)")
    g.add_argument("--gen-length", type=int, default=64, help="tokens to generate")
    g.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    args = ap.parse_args()
    if args.command == "train":
        return main_train(args)
    backbone, mrp = load_or_exit(load_mrp, args.model, args.device, torch.float32 if args.command == "kl" else None)
    if args.command == "kl":
        return main_kl(args, backbone, mrp)
    from tokenizer import load_tokenizer
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
