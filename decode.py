"""
Remasking decoders for masked diffusion language models: start from a canvas of [MASK] tokens after the
prompt and, step by step, commit the predictions the model is most sure of.

  call                      method                   commit rule per step           official source
  generate(...)             LLaDA semi-AR remasking  the k most confident masks     ML-GSAI/LLaDA generate.py
                            (arXiv 2502.09992)       (or k random ones), k uniform  (b7e6c35)
  generate(threshold=0.9)   Fast-dLLM parallel       the most confident mask + all  NVlabs/Fast-dLLM
                            (arXiv 2505.22618)       with confidence >= threshold   llada/generate.py
  generate(cache="prefix"   Fast-dLLM KV caches      (either rule)                  (24cc59e), and its
           or "dual")                                                               generate_with_*_cache
  block_generate(...)       SDAR block diffusion     static quota, or dynamic: all  JetAstra/SDAR
                            (exact KV cache)         above threshold, else quota    huggingface_bd3.py

Both return (x, stats): the full canvas (prompt included) and a dict with `nfe` (forwards whose logits
decide tokens), per-sample counts, generated tokens up to the first stop id, tokens per forward, seconds.
Both are batched: `generate` left-pads with EOS and an attention mask (LLaDA's Oct-2025 convention);
`block_generate` lays each prompt on the block grid of its own position 0 (see its docstring).

What `model` must provide (this file imports nothing else of the project, so it can be copied alone):
  model.config.mask_token_id   the [MASK] id (or pass mask_id=)
  model.config.eos_token_id    an id or a list of ids; the first pads ragged batches
  model.config.stop_ids        optional: ids that end an answer (default: the eos ids); for LLaDA
                               (EOS, <|eot_id|>), the last one being the EoT of confidence_eos_eot_inf
  model.config.max_seq_len     optional: prompts + gen_length beyond it are refused
  model.parameters()           the device to decode on is the first parameter's
  forward(model, ids, attention_mask=, position_ids=, cache=, cache_start=, kv_end=) -> logits (B, T, V):
                               the default `model_forward` calls model(ids, **those); `hf_forward` drives a
                               Hugging Face model (LLaDA's modeling_llada.py: `.logits`, no cache, no feed)
  with cache= or for block_generate: model.py's forward (KV cache, block_size=, return_hidden=) and
                               model.new_cache(batch, length)

How they differ from the official code (token-for-token parity is checked by ../shared/parity/check.py):
  - Fast-dLLM's caches work for batches and with classifier-free guidance (the official: batch 1, no CFG);
  - a cached block that completes on its first step does not spend one more forward (nfe may be lower);
  - SDAR sampling draws with float64 Gumbel-max instead of torch.multinomial (same distribution);
  - the loops themselves ask the device one question per denoising step at most ("is the block done?");
    counts stay on the device until the end.
Extension points, used by the method files (they import from here, never the reverse):
  forward=  wraps every model call (RCD mixes residuals into the embeddings; Elastic-dLLM adds an anchor)
  feed=     chooses which canvas columns a LLaDA forward sees (Elastic-dLLM's compression)
  denoise=, store=  replace SDAR's per-block loop and its cache write (MRP's direct/speculative/remask)
"""
import argparse
import json
import math
import os
import sys
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
            # keep the token that crosses top_p: drop where the mass *before* a token already exceeds it
            drop = torch.cat([torch.zeros_like(cum[..., :1]), cum[..., :-1]], -1) > top_p
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
    if isinstance(k, int):
        counts = [k]
    else:
        counts = k.tolist() if torch.is_tensor(k) else list(k)
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



# -----------------------------------------------------------------------------
# What decode.py needs from a model (see the docstring), and the bookkeeping both decoders share


def model_forward(model, ids, **kw):
    """The default forward=: model.py's Transformer takes the decoders' keywords as they are."""
    return model(ids, **kw)


def hf_forward(model, ids, attention_mask=None, cache=None, **unused):
    """forward= for a Hugging Face model whose call returns an object with `.logits`, called the way the
    official generate.py calls LLaDA: model(x, attention_mask=attention_mask).logits. Such a model numbers
    positions 0..T-1 itself and keeps no decode.py KV cache, so it drives generate's plain path only
    (no cache=, no feed=); the other keywords (position_ids, cache_start, kv_end) are then implied."""
    if cache is not None:
        raise ValueError("hf_forward: a Hugging Face model takes no decode.py KV cache (use cache=None)")
    return model(ids, attention_mask=attention_mask).logits


def model_device(model):
    return next(model.parameters()).device


def eos_and_stop_ids(cfg, stop_ids=None):
    """(EOS id, stop ids): config.eos_token_id may be one id or a list (Hugging Face SDAR); the stop ids are
    `stop_ids`, else config.stop_ids (model.py), else the eos ids."""
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, (list, tuple)) else [cfg.eos_token_id]
    stop = stop_ids if stop_ids is not None else getattr(cfg, "stop_ids", None) or eos
    return eos[0], tuple(stop)


def max_length(cfg):
    """The model's maximum number of positions, if its config says (model.py's or Hugging Face's name)."""
    return getattr(cfg, "max_seq_len", None) or getattr(cfg, "max_sequence_length", None)


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
    if limit and gen_length >= limit:  # no prompt fits: the setting's refusal, not one prompt's
        raise ValueError(f"gen_length {gen_length} and any prompt exceed the model's maximum of {limit} "
                         "positions")
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


def check_llada_args(steps, gen_length, block_length, temperature, cfg_scale, remasking, threshold, cache,
                     feed, forward):
    if remasking not in REMASKING[:2] or cache not in CACHES:
        raise ValueError(f"remasking {remasking!r} / cache {cache!r}: expected one of {REMASKING[:2]} / "
                         f"{CACHES}")
    if block_length <= 0 or gen_length <= 0 or gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a positive multiple of block_length "
                         f"({block_length})")
    num_blocks = gen_length // block_length
    if threshold is None and (steps <= 0 or steps % num_blocks or steps > gen_length):
        raise ValueError(f"steps ({steps}) must be a positive multiple of the number of blocks "
                         f"({num_blocks}), at most gen_length ({gen_length}): a step commits at least one "
                         "token")
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold} must be in (0, 1]")
    if not (0 <= temperature < math.inf and 0 <= cfg_scale < math.inf):
        raise ValueError(f"temperature {temperature} and cfg_scale {cfg_scale} must be finite and >= 0")
    if forward is hf_forward and (cache or feed):
        raise ValueError("forward=hf_forward drives the plain path: a Hugging Face model numbers positions "
                         "0..T-1 itself and takes no decode.py KV cache (no cache=, no feed=)")


def llada_canvas(rows, gen_length, mask_id, eos_id, attention_mask, device):
    """LLaDA's canvas x = [prompt | gen_length x MASK] (B, T); ragged prompts are left-padded with EOS and
    hidden by the attention mask (B, T) (1 = token), as the official batched evaluation does."""
    B, P = len(rows), max(len(r) for r in rows)
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
    for r, p in enumerate(rows):
        x[r, :P - len(p)], x[r, P - len(p):P] = eos_id, p
    if attention_mask is None and any(len(p) < P for p in rows):
        attention_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in rows], device=device)
    if attention_mask is not None:
        attention_mask = torch.cat([torch.as_tensor(attention_mask, device=device).reshape(B, -1),
                                    torch.ones(B, gen_length, dtype=torch.long, device=device)], 1)
    return x, attention_mask


def cache_span(cache, i, a, e, n):
    """Which of a block's n fed columns step i forwards: all of them without a cache and on a block's first
    step (which fills the cache); then Fast-dLLM's prefix cache feeds the block and all after it [a, n),
    the dual cache the block alone [a, e)."""
    if cache is None or i == 0:
        return 0, n
    return (a, n) if cache == "prefix" else (a, e)


def classifier_free_guidance(forward, model, ids, attention_mask, prompt_index, mask_id, cfg_scale, **kw):
    """Logits with LLaDA's unsupervised classifier-free guidance (arXiv 2502.09992, after Nie et al. arXiv
    2410.18514): the conditional copy and an unconditional one with the prompt masked, in one batch, mixed
    as un + (cfg_scale + 1) * (cond - un). cfg_scale = 0 is the plain forward."""
    if cfg_scale == 0:
        return forward(model, ids, attention_mask=attention_mask, **kw)
    un = torch.where(prompt_index, mask_id, ids)
    am = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
    cond, un = forward(model, torch.cat([ids, un]), attention_mask=am, **kw).chunk(2)
    return un + (cfg_scale + 1) * (cond - un)


def commit(confidence, threshold, k, counts=None):
    """Fast-dLLM's threshold rule when a threshold is given (counts: each row's masks, read on the host
    already), else LLaDA's top-k with this step's k."""
    if threshold is not None:
        return commit_threshold(confidence, threshold, counts)
    return commit_topk(confidence, k)


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", mask_id=None, logits_eos_inf=False, confidence_eos_eot_inf=False,
             attention_mask=None, threshold=None, cache=None, feed=None, forward=model_forward, on_step=None,
             stop_ids=None):
    """LLaDA's sampler (threshold=None, cache=None), or Fast-dLLM's (a threshold and/or a KV cache).
    The canvas is [prompt | gen_length x MASK]; blocks of block_length are counted from the end of the
    prompt and decoded left to right, `steps` in total (steps // blocks per block), or until the block is
    full under a threshold. Ragged prompts are left-padded with EOS and masked (attention_mask).
    feed(x, lo, hi, start) -> sorted canvas columns a forward sees while block [lo, hi) is decoded (default
    all; start = the first generated column); the caches then feed sub-spans of those columns. Greedy at
    temperature 0. on_step(x) is called after every step."""
    t0, cfg = time.time(), model.config
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    eos_id, stop_ids = eos_and_stop_ids(cfg, stop_ids)
    eot_id = stop_ids[-1] if stop_ids else eos_id  # LLaDA: stop_ids = (EOS, <|eot_id|>)
    check_llada_args(steps, gen_length, block_length, temperature, cfg_scale, remasking, threshold, cache,
                     feed, forward)
    rows = as_rows(prompt)
    check_prompt(rows, mask_id, gen_length, None if feed else max_length(cfg))
    device = model_device(model)
    x, attention_mask = llada_canvas(rows, gen_length, mask_id, eos_id, attention_mask, device)
    (B, T), P = x.shape, max(len(r) for r in rows)
    prompt_index = x != mask_id  # prompt and pads: what classifier-free guidance masks out
    fast = threshold is not None or cache is not None  # Fast-dLLM semantics, including its float64 confidence
    kv = model.new_cache(B * (1 + (cfg_scale > 0)), T) if cache else None  # guidance: two copies of the batch
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks if threshold is None else block_length  # a threshold: until full
    stats, nfe_rows = {"nfe": 0}, torch.zeros(B, dtype=torch.long, device=device)
    for num_block in range(num_blocks):
        lo, hi = P + num_block * block_length, P + (num_block + 1) * block_length
        cols = feed(x, lo, hi, P) if feed else torch.arange(T, device=device)  # the columns a forward sees
        a, e = int(torch.searchsorted(cols, lo)), int(torch.searchsorted(cols, hi))  # the block within cols
        kv_end = len(cols) if kv is not None else None  # a cached forward attends to every fed column
        # A block is all [MASK] when it starts (only the current block is ever committed), so every row has
        # the official schedule of a full block: computed once on the host, no sync per step
        full_block = torch.ones(1, block_length, dtype=torch.bool)
        num_transfer_tokens = get_num_transfer_tokens(full_block, steps_per_block)[0].tolist()
        for i in range(steps_per_block):
            masks_left = (x[:, lo:hi] == mask_id).sum(1)  # (B,)
            counts = masks_left.tolist() if fast else None  # the loop's one host sync per step (Fast-dLLM)
            if fast and not any(counts):  # the block is done
                break
            s, t = cache_span(cache, i, a, e, len(cols))
            span = cols[s:t]
            am = None if attention_mask is None else attention_mask[:, span]
            logits = classifier_free_guidance(forward, model, x[:, span], am, prompt_index[:, span], mask_id,
                                              cfg_scale, position_ids=span, cache=kv, cache_start=s,
                                              kv_end=kv_end)
            mask_index = (x[:, span] == mask_id) & (span >= lo) & (span < hi)  # only the current block
            x0, confidence = propose(logits, x[:, span], mask_index, temperature, remasking,
                                     torch.float64 if fast else logits.dtype, eos_id, eot_id, logits_eos_inf,
                                     confidence_eos_eot_inf)
            transfer_index = commit(confidence, threshold, num_transfer_tokens[i], counts)
            x[:, span] = torch.where(transfer_index, x0, x[:, span])
            stats["nfe"] += 1
            nfe_rows += masks_left > 0
            if on_step:
                on_step(x)
    return x, finish(stats, x, [P] * B, gen_length, set(stop_ids), nfe_rows, t0)

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
    nfe_rows: torch.Tensor = None  # (B,) forwards each sample took part in, on the device
    mask_id: int = None
    stop_ids: torch.Tensor = None  # (S,) ids that end a sample
    eos_early_stop: bool = False   # LLaDA2.0: end a sample mid-block (see eos_early_stop)


def block_logits(st, lo, hi, return_hidden=False):
    """One forward for canvas block [lo, hi): against the cache (which it also writes at slots lo..hi), or,
    without a cache, by recomputing [0, hi) under the block-causal mask. Same logits either way."""
    if st.cache is None:
        out = st.forward(st.model, st.x[:, :hi], attention_mask=st.valid[:, :hi], position_ids=st.pos[:, :hi],
                         block_size=st.block_length, return_hidden=return_hidden)
        return tuple(o[:, lo:hi] for o in out) if return_hidden else out[:, lo:hi]
    return st.forward(st.model, st.x[:, lo:hi], attention_mask=st.valid[:, lo:hi],
                      position_ids=st.pos[:, lo:hi], cache=st.cache, cache_start=lo,
                      block_size=st.block_length, return_hidden=return_hidden)


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
    mask_index = (state == st.mask_id) & st.active[:, None]
    x0, x0_p = sample_tokens(logits, st.temperature, st.top_k, st.top_p)
    if st.remasking == "sequential":  # leftmost masks first
        x0_p = -torch.arange(hi - lo, device=x0.device, dtype=torch.float).expand_as(x0_p)
    return torch.where(mask_index, x0, state), torch.where(mask_index, x0_p, -torch.inf)


def eos_early_stop(st, x0, confidence, transfer):
    """LLaDA2.0's `eos_early_stop`: (B,) samples that end now, mid-block, because this step committed a stop
    id and no [MASK] is left before the first stop id of the sample. As the official code, the first stop id
    is looked for from position 0: a prompt holding one ends the sample at the first stop id committed."""
    committed = (transfer & confidence.isfinite() & torch.isin(x0, st.stop_ids)).any(1)  # finite: was a mask
    is_stop = torch.isin(st.x, st.stop_ids) & st.valid
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), st.x.shape[1])           # (B,)
    before = torch.arange(st.x.shape[1], device=st.x.device) < first[:, None]
    return committed & ~((st.x == st.mask_id) & st.valid & before).any(1)


def llada2_steps(steps, gen_length):
    """Steps per block as LLaDA2.0's generate takes them: `steps = min(steps, gen_length // minimal_topk)`
    with minimal_topk 1 (6 tokens in 8 steps are quotas 2,2,1,1,1,1), and more steps than a block has
    tokens are allowed: the extra ones have a quota of 0 and commit only what passes the threshold."""
    return min(steps, gen_length)


def denoise_block(st, lo, hi):
    """The official per-block loop: up to `steps` denoising forwards, each committing by the dynamic rule
    (static when threshold >= 1), then the store pass."""
    for quota in st.quota:
        block_masks = ((st.x[:, lo:hi] == st.mask_id) & st.active[:, None]).any(1)
        if not block_masks.any():  # the loop's one host sync per step: is the block done?
            break
        x0, confidence = block_confidence(st, block_logits(st, lo, hi), lo, hi)
        transfer_index = commit_dynamic(confidence, st.threshold, quota)
        st.x[:, lo:hi] = torch.where(transfer_index, x0, st.x[:, lo:hi])
        if st.eos_early_stop:
            st.active &= ~eos_early_stop(st, x0, confidence, transfer_index)
        st.stats["nfe"] += 1
        st.nfe_rows += block_masks
        if st.on_step:
            st.on_step(st.x)
    store_block(st, lo, hi)


def check_block_args(gen_length, L, denoising_steps, threshold, temperature, top_k, top_p, remasking,
                     max_steps):
    if remasking not in ("low_confidence", "sequential"):
        raise ValueError(f"remasking {remasking!r}: expected 'low_confidence' (static/dynamic by threshold) "
                         "or 'sequential'")
    if L <= 0 or gen_length <= 0 or not 0 < denoising_steps <= max_steps:
        raise ValueError(f"need gen_length ({gen_length}) > 0 and 0 < denoising_steps ({denoising_steps}) "
                         f"<= block_length ({L})")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold} must be in (0, 1]")
    if not (0 <= temperature < math.inf and 0 < top_p <= 1 and top_k >= 0):
        raise ValueError(f"temperature {temperature} must be finite and >= 0, top_p {top_p} in (0, 1], "
                         f"top_k {top_k} >= 0")


def block_canvas(rows, L, gen_length, mask_id, eos_id, device):
    """SDAR's canvas on the block grid: each prompt keeps its own position 0 and is shifted right by whole
    blocks, so every sample's first decoding block is the same canvas block c0; EOS fills the shift and
    what lies past a sample's window, both hidden (valid False). Returns x, pos, valid (B, T), c0, the end
    of each sample's window and where each sample's generation starts."""
    c0 = max(len(p) // L for p in rows)                     # the first decoding block, shared by all samples
    shift = [L * (c0 - len(p) // L) for p in rows]          # whole blocks of padding keep each grid aligned
    ends = [s + math.ceil((len(p) + gen_length) / L) * L for s, p in zip(shift, rows)]
    B, T = len(rows), max(ends)
    x = torch.full((B, T), mask_id, dtype=torch.long, device=device)
    pos = (torch.arange(T, device=device) - torch.tensor(shift, device=device)[:, None]).clamp(min=0)
    valid = torch.zeros(B, T, dtype=torch.bool, device=device)
    for r, (s, p, end) in enumerate(zip(shift, rows, ends)):
        x[r, :s], x[r, s:s + len(p)], x[r, end:], valid[r, s:end] = eos_id, p, eos_id, True
    return x, pos, valid, c0, ends, [s + len(p) for s, p in zip(shift, rows)]


def stopped(x, stop, gen_start, hi):
    """(B,) whether a stop id appears in each sample's generated region [gen_start, hi)."""
    generated = torch.arange(hi, device=x.device) >= gen_start[:, None]  # (B, hi)
    return (torch.isin(x[:, :hi], stop) & generated).any(1)


@torch.no_grad()
def block_generate(model, prompt, gen_length=128, block_length=4, denoising_steps=4, threshold=1.0,
                   temperature=0.0, top_k=0, top_p=1.0, remasking="low_confidence", stop_ids=None,
                   mask_id=None, use_cache=True, forward=model_forward, denoise=denoise_block,
                   store=store_block, on_step=None, cache_spare=0, eos_early_stop=False):
    """SDAR block diffusion (the evaluation sampler behind the published numbers). Blocks of block_length are
    aligned to absolute position 0, so the whole-block part of the prompt is prefilled into the KV cache
    and the first decoded block may still hold the prompt's tail. Each block takes up to denoising_steps
    forwards; a sample stops after a block once a stop id appears in its generated region (later blocks
    stay [MASK]). Batches: each prompt keeps its own position 0 and is shifted right by whole blocks so
    that every sample's first decoding block is the same canvas block; padding is masked out.
    cache_spare: extra KV-cache slots after the canvas (MRP's verification forward packs candidates there).
    LLaDA2.0 (its own `generate`): the same loop, with its steps capped at gen_length, and eos_early_stop=True
    ends a sample as soon as a stop id is committed with no [MASK] before it (see eos_early_stop)."""
    t0, cfg, L = time.time(), model.config, block_length
    mask_id = cfg.mask_token_id if mask_id is None else mask_id
    eos_id, stop_ids = eos_and_stop_ids(cfg, stop_ids)
    llada2 = getattr(cfg, "family", None) == "llada2"
    denoising_steps = llada2_steps(denoising_steps, gen_length) if llada2 else denoising_steps
    check_block_args(gen_length, L, denoising_steps, threshold, temperature, top_k, top_p, remasking,
                     gen_length if llada2 else L)
    rows = as_rows(prompt)
    check_prompt(rows, mask_id, gen_length, max_length(cfg))
    device = model_device(model)
    x, pos, valid, c0, ends, gen_start = block_canvas(rows, L, gen_length, mask_id, eos_id, device)
    (B, T), quota = x.shape, get_num_transfer_tokens(torch.ones(1, L), denoising_steps)[0].tolist()
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    st = BlockState(model, x, pos, valid, torch.ones(B, dtype=torch.bool, device=device),
                    model.new_cache(B, T + cache_spare) if use_cache else None, L, quota, threshold,
                    temperature, top_k, top_p, remasking, forward, on_step,
                    nfe_rows=torch.zeros(B, dtype=torch.long, device=device), mask_id=mask_id, stop_ids=stop,
                    eos_early_stop=eos_early_stop)
    if c0:
        store(st, 0, c0 * L)  # prefill the whole-block part of the prompt
    ends, starts = torch.tensor(ends, device=device), torch.tensor(gen_start, device=device)
    for c in range(c0, T // L):
        lo, hi = c * L, (c + 1) * L
        st.active &= ends > lo  # a sample whose window has ended
        if not st.active.any():  # one host sync per block: has every sample stopped?
            break
        denoise(st, lo, hi)
        st.active &= ~stopped(st.x, stop, starts, hi)  # stop check once per block, anywhere in the generation
    return x, finish({**st.stats}, x, gen_start, gen_length, set(stop_ids) | {mask_id}, st.nfe_rows, t0)

# -----------------------------------------------------------------------------
# Command line


def generation_defaults(folder):
    """What a checkpoint folder's generation_config.json says to decode with: the embedded models carry
    gen_length, block_length, steps (as --steps means them), chat, and the task they were trained on.
    The official checkpoints carry none of these keys: the family's defaults apply."""
    path = os.path.join(folder, "generation_config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        gen = json.load(f)
    for key in ("gen_length", "block_length", "steps"):
        if key in gen and not (isinstance(gen[key], int) and gen[key] > 0):
            raise SystemExit(f"{path}: {key} must be a positive integer, not {gen[key]!r}")
    return gen


def lengths(args, family, block_size, gen):
    """gen_length, block_length, steps: the flags, else generation_config.json, else the family's defaults
    (LLaDA: 128 tokens in blocks of 32, one token per step; SDAR: 256 tokens in its block size, one token
    per step). The file's steps go with its own lengths only."""
    llada = family == "llada"
    given = lambda *vs: next(v for v in vs if v is not None)  # 0 is an answer (refused later), not "unset"
    gen_length = given(args.gen_length, gen.get("gen_length"), 128 if llada else 256)
    block = given(args.block_length, gen.get("block_length"), min(32, gen_length) if llada else block_size)
    own = (gen_length, block) == (gen.get("gen_length"), gen.get("block_length"))
    steps = given(args.steps, gen.get("steps") if own else None, gen_length if llada else block)
    return gen_length, block, steps


def frames(tok, prompt_text, start, end, mask_id, delay):
    """on_step for --show: the generated region redrawn in place on a terminal (masks as shaded blocks,
    the prompt above), or one plain numbered frame per step when the output is a file or a pipe."""
    tty, step = sys.stdout.isatty(), [0]
    if not tty:
        print(f"prompt: {prompt_text}", flush=True)

    def on_step(x):
        step[0] += 1
        text = "".join("\u2591" if t == mask_id else tok.decode([t]) for t in x[0, start:end].tolist())
        if tty:
            print(f"\033[H\033[J{prompt_text}\n\n{text}", flush=True)  # clear the screen, then draw
            time.sleep(delay)
        else:
            print(f"--- step {step[0]}\n{text}", flush=True)
    return on_step


def notes(prompt, answer, n, gen_length, gen):
    """One-line notes on what the model wrote: whether it answered a question of the task it was trained on
    right, or that the prompt is far from what it was trained on, or that the answer ran out of room."""
    import tasks
    out, known = [], gen.get("task") == "tiny"
    truth = tasks.tiny_answer(prompt) if known else None
    if known and truth is None:
        out.append(f"note: this prompt is far from what the model was trained on "
                   f"({gen.get('trained_on', 'the built-in task')}), so expect arbitrary text")
    elif n == 0:
        out.append("note: the model stopped at once (0 tokens): the prompt is far from what it was "
                   "trained on")
    if truth is not None:
        got = tasks.extract_answer("tiny", answer)
        verdict = "right" if got is not None and tasks.is_correct("tiny", got, str(truth)) else "wrong"
        out.append(f"answer {got}: {verdict} (the built-in task's answer is {truth})")
    if n == gen_length:
        out.append(f"note: no end token within {gen_length} tokens, so the answer may be cut short "
                   "(--gen-length)")
    return out


def parse_args():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Generate with a LLaDA or SDAR checkpoint; print the text and "
                                             "what it cost.")
    g = ap.add_argument_group("model and prompt")
    g.add_argument("--model", default=os.path.join(here, "models", "tiny-llada"),
                   help="checkpoint folder or Hugging Face repo id (default: the embedded LLaDA-format "
                        "model)")
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the model's chat template (default: as the model's "
                        "generation_config.json says, else off)")
    g = ap.add_argument_group("decoding", "defaults: the model's generation_config.json (the embedded "
                              "models carry theirs), else LLaDA 128 tokens in blocks of 32, SDAR 256 in its "
                              "block size, one token per step")
    g.add_argument("--gen-length", type=int, default=None, help="tokens to generate")
    g.add_argument("--block-length", type=int, default=None, help="block length")
    g.add_argument("--steps", type=int, default=None,
                   help="LLaDA: total denoising steps; SDAR: steps per block")
    g.add_argument("--threshold", type=float, default=None,
                   help="LLaDA: Fast-dLLM confidence threshold (default off); SDAR: dynamic threshold "
                        "(default 1.0 = static)")
    g.add_argument("--cache", choices=["prefix", "dual"], default=None, help="LLaDA: Fast-dLLM KV cache")
    g.add_argument("--no-cache", action="store_true",
                   help="SDAR: recompute the prefix every step instead of caching")
    g.add_argument("--remasking", choices=REMASKING, default="low_confidence",
                   help="which masks to commit first")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--cfg-scale", type=float, default=0.0, help="LLaDA classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed (only matters with temperature > 0 or random remasking)")
    g = ap.add_argument_group("output and device")
    g.add_argument("--show", action="store_true", help="watch the canvas being unmasked step by step")
    g.add_argument("--show-delay", type=float, default=0.05, help="seconds between frames on a terminal")
    g.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: the checkpoint's dtype on CUDA, float32 on CPU")
    g.add_argument("--compile", action="store_true",
                   help="compile the model's forward (model.compile_forward; CUDA graphs on CUDA)")
    return ap.parse_args()


def main():
    import model as model_lib
    import tokenizer as tokenizer_lib
    or_exit = model_lib.or_exit
    args = parse_args()
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    net = or_exit(model_lib.from_pretrained, args.model, args.device, dtype)
    if args.compile:
        model_lib.compile_forward(net)
    folder = model_lib.resolve(args.model)
    tok, gen = or_exit(tokenizer_lib.load_tokenizer, folder), generation_defaults(folder)
    chat = gen.get("chat", False) if args.chat is None else args.chat
    messages = [{"role": "user", "content": args.prompt}]  # its special-token text stays text (encode_chat)
    ids = torch.tensor(or_exit(tok.encode_chat, messages) if chat else tok.encode(args.prompt))
    gen_length, block, steps = lengths(args, net.config.family, net.config.block_size, gen)
    start = len(ids)  # batch of one: no padding in either decoder, generation starts right after the prompt
    on_step = frames(tok, args.prompt, start, start + gen_length, net.config.mask_token_id,
                     args.show_delay) if args.show else None
    kw = dict(gen_length=gen_length, block_length=block, temperature=args.temperature,
              remasking=args.remasking, on_step=on_step)
    try:
        if net.config.family == "llada":
            x, stats = generate(net, ids, steps=steps, cfg_scale=args.cfg_scale, threshold=args.threshold,
                                cache=args.cache, **kw)
        else:
            threshold = 1.0 if args.threshold is None else args.threshold
            x, stats = block_generate(net, ids, denoising_steps=steps, threshold=threshold,
                                      use_cache=not args.no_cache, **kw)
    except ValueError as e:  # settings a decoder refuses: one line, not a traceback
        raise SystemExit(f"decode.py: {e}") from None
    s, n = stats["gen_start"][0], stats["gen_tokens"][0]
    answer = tok.decode(x[0, s:s + n].tolist())
    print(answer)
    compiling = getattr(net, "compile_seconds", 0.0)  # the calls that compiled, timed whole: not decoding
    seconds = stats["seconds"] - compiling
    compiled = f"; compiling {compiling:.1f} s" if compiling else ""
    print(f"\n{n} tokens in {stats['nfe']} forwards ({stats['tokens_per_forward']:.2f} tokens per forward), "
          f"{n / seconds:.1f} tokens/s ({seconds:.2f} s{compiled}); gen {gen_length}, block {block}, "
          f"steps {steps}")
    for line in notes(args.prompt, answer, n, gen_length, gen):
        print(line)


if __name__ == "__main__":
    main()
