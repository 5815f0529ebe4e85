"""
Residual Context Diffusion (RCD; Hu et al., arXiv 2601.22954, v2): instead of throwing away what the model
predicted for positions it did not commit, turn those predictions into a "soft token" and feed it back at
the next step. No new parameters: only the input embeddings of still-masked positions change.
Official code: github.com/yuezhouhu/residual-context-diffusion; training is train_residual.py (Algorithm 1).

  residual (Eq. 1)     delta_i = p_i @ E           p_i = softmax(z_i), E = the target's *input* embeddings
  weight   (Eq. 3)     alpha_i = H(softmax(z_i / T_res)) / log V       uncertain positions inject more
  injection (Eq. 2)    e_i = (1 - alpha_i) E[MASK] + alpha_i delta_i    only where x_i is still [MASK]
  one-step Markov: each forward's alpha/delta replace the previous ones; nothing accumulates (Algorithm 2).
  start (Sec. 3.3):    cold = zero residual (the first step is the plain forward; v2's SDAR recipe);
                       warm = a reference model's first prediction (v2's LLaDA recipe), or the target's own
                       ("self", Table 5), computed with the target's E either way.

RCD plugs into decode.py as a `forward=` hook (class `Residual`): the decoders' loops, commit rules,
schedules and caches are untouched. State lives per (sample, absolute position), so it follows whatever a
forward feeds: LLaDA's full canvas or Fast-dLLM's cached spans, SDAR's blocks (a new block's positions were
never predicted, so they start fresh, which is the per-block reset). Residual embeddings never reach a KV
cache: SDAR's store pass and Fast-dLLM's cached prefix hold committed tokens only, and a committed token
always gets its hard embedding.

Readings of what the paper leaves open: T_res tempers alpha only (Algorithm 2, lines 23-25), not delta;
alpha is clipped to [0, 1]; V = the logits' size; delta uses the untempered softmax even when sampling at a
temperature; p @ E is computed in the embedding's dtype (fp32 on CPU) for masked positions only, in chunks,
with subnormal probabilities (< 1.2e-38) set to 0 (a CPU speed measure, see _log_probs).

Beyond the paper (after its code, at the end of this file; every default is the paper):
  alpha_scale S       alpha = clip(S * H / log V, 0, 1); 1 = the paper (our reading of an `alpha=1` flag
                      attributed to the official generate_rcd.py). A model trained with S
                      (train_residual.py --alpha-scale) decodes with S.
  init "dirichlet"    Table 5's best row, whose parameters the paper does not give: p ~ Dir(c, ..., c) drawn
                      per fresh position, no forward; c a flag (default 1, uniform over the simplex), drawn
                      from torch's global generator (eval.py seeds it per batch), tempered by T_res like any
                      prediction.
  source "reference"  a diagnostic: the residual of every forward comes from the reference's prediction on
                      that very input, as in training (Algorithm 1): two forwards per step. It separates a
                      target that cannot use residuals from one that cannot use its own (RESULTS.md).
"""
import math

import torch
import torch.nn.functional as F

import decode


_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)  # about -87.3
# the float32 just below log(tiny): F.threshold keeps x > it, which in float32 is x >= log(tiny)
_BELOW_TINY = torch.nextafter(torch.tensor(_LOG_TINY, dtype=torch.float32), torch.tensor(-math.inf)).item()
_LOG_ZERO = -1e30


def _log_probs(z, t_res=1.0):
    """log softmax(z / T_res) in fp32, with the entries below log of float32's smallest normal number
    (1.2e-38) written as -1e30, a finite stand-in for log 0: exp gives an exact 0 there, and 0 * -1e30 = -0
    keeps the entropy's sum free of 0 * -inf = nan (logits of -inf included), so H = -sum(p log p) needs no
    clean-up pass. A confident model puts most of V below that number, and subnormal operands make a CPU's
    matmul and multiplies far slower (measured: 41 vs 1.8 ms for a (128 x 2,222) @ (2,222 x 384) product).
    What they would add to delta or H is below 1e-36 (a row whose runners-up are all subnormal gets alpha = 0
    instead of about 1e-37), under float32's resolution of the embeddings Eq. 2 mixes, so the fed input is the
    same bit for bit (tested). GPUs have no such penalty and get the same numbers. The fp32 cast happens
    inside the log-softmax and the flush is one pass: fewer passes over (positions x V) than a cast, a mask
    and a fill."""
    logp = F.log_softmax(z if t_res == 1 else z.float() / t_res, dim=-1, dtype=torch.float32)
    return F.threshold(logp, _BELOW_TINY, _LOG_ZERO)  # keeps x > threshold, i.e. log p >= log(tiny)


def residual_terms(logits, embedding=None, t_res=1.0, alpha_scale=1.0, chunk=256):
    """(alpha, delta) for logits of any shape (..., V), chunked over positions: alpha = H(softmax(z / T_res))
    / log V in fp32, with 0 log 0 = 0, clipped to [0, 1] (Eq. 3; alpha_scale multiplies it first, 1 = the
    paper); delta = softmax(z) @ E in E's dtype (Eq. 1; None without an embedding). One log-softmax per chunk
    serves both when T_res = 1 (the per-step cost)."""
    V, lead = logits.shape[-1], logits.shape[:-1]
    alphas, deltas = [], []
    for z in logits.reshape(-1, V).split(chunk):
        logp = _log_probs(z)
        p = logp.exp()
        if embedding is not None:
            deltas.append(p.to(embedding.dtype) @ embedding)
        if t_res != 1:
            logp = _log_probs(z, t_res)
            p = logp.exp()
        h = -(p * logp).sum(-1)
        alphas.append((alpha_scale * h / math.log(V)).clamp(0.0, 1.0))
    alpha = torch.cat(alphas).reshape(lead) if alphas else logits.new_zeros(lead, dtype=torch.float32)
    if embedding is None:
        return alpha, None
    C = embedding.shape[1]
    delta = (torch.cat(deltas).reshape(*lead, C) if deltas
             else logits.new_zeros(*lead, C, dtype=embedding.dtype))
    return alpha, delta


def entropy_weight(logits, t_res=1.0, alpha_scale=1.0):
    """alpha (Eq. 3) alone."""
    return residual_terms(logits, None, t_res, alpha_scale)[0]


def soft_token(logits, embedding, chunk=256):
    """delta (Eq. 1) alone."""
    return residual_terms(logits, embedding, chunk=chunk)[1]


def mix(embeds, ids, mask_id, mask_embedding, alpha, delta):
    """Eq. 2: (1 - alpha) E[MASK] + alpha delta where ids == MASK; the hard embedding elsewhere."""
    soft = (1 - alpha[..., None]) * mask_embedding + alpha[..., None] * delta
    return torch.where((ids == mask_id)[..., None], soft.to(embeds.dtype), embeds)


class Residual:
    """RCD's state and decode.py `forward=` hook. Holds alpha (B, N) and delta (B, N, C) per absolute position
    plus which positions have been predicted; `init` = "zero" (cold), "reference" or "self" (warm). The
    options beyond the paper (alpha_scale, init "dirichlet" with `concentration`, source "reference") are
    described at the end of the file."""

    def __init__(self, model, t_res=1.0, alpha_scale=1.0, init="zero", reference=None, concentration=1.0,
                 source="self"):
        inits = ("zero", "reference", "self", "dirichlet")
        if init not in inits or (init == "reference") != (reference is not None):
            given = "with" if reference is not None else "without"
            raise ValueError(f"init {init!r} {given} a reference model: "
                             "expected 'zero', 'self' or 'dirichlet' without one, or 'reference' with one")
        if not t_res > 0:
            raise ValueError(f"t_res {t_res}: must be > 0")
        check_beyond(alpha_scale, init, concentration, source, reference)
        if reference is not None and reference.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"reference vocabulary {reference.config.vocab_size} != target "
                             f"{model.config.vocab_size}: the residual mixes the reference's probabilities "
                             "with the target's embeddings")
        self.model, self.t_res, self.init, self.reference = model, t_res, init, reference
        self.alpha_scale, self.concentration, self.source = alpha_scale, concentration, source
        self.alpha = self.delta = self.seen = None
        self.ref_cache, self.stats = None, {"ref_forwards": 0, "self_forwards": 0}
        # (sum of alpha, count > 0.1) on the device, and the number of positions they cover
        self.alpha_sum, self.alpha_n = torch.zeros(2), 0

    def _grow(self, B, n, C, device):
        """Allocate (or extend, keeping what was predicted) the per-position state to at least n positions;
        doubling, so SDAR's block-by-block growth copies O(n) in total."""
        have = 0 if self.alpha is None else self.alpha.shape[1]
        if n > have:
            n = max(n, 2 * have)

            def pad(t, *shape, **kw):  # t is None only on the first call, when have = 0
                new = torch.zeros(B, n - have, *shape, device=device, **kw)
                return new if t is None else torch.cat([t, new], 1)
            self.alpha, self.seen = pad(self.alpha), pad(self.seen, dtype=torch.bool)
            self.delta = pad(self.delta, C, dtype=self.model.embed_tokens.weight.dtype)

    def update(self, logits, ids, pos):
        """Refresh alpha/delta at the fed positions that are still masks (the only ones that use them)."""
        mask = ids == self.model.config.mask_token_id
        self.store(logits[mask], mask, pos)

    def store(self, z, mask, pos):
        """alpha/delta from the predictions z (n, V) of the n positions where `mask` (B, T) is set."""
        rows, cols = mask.nonzero(as_tuple=True)
        at = (rows, pos[rows, cols])
        E = self.model.embed_tokens.weight
        alpha, self.delta[at] = residual_terms(z, E, self.t_res, self.alpha_scale)
        self.alpha[at] = alpha
        if self.init != "zero":  # only a warm or Dirichlet start reads which positions were predicted
            self.seen[at] = True
        summary = torch.stack([alpha.sum(), (alpha > 0.1).sum().float()])
        self.alpha_sum = self.alpha_sum.to(alpha.device) + summary
        self.alpha_n += alpha.numel()  # known on the host: no device sync on the decoding path

    def __call__(self, model, ids, position_ids=None, cache=None, cache_start=0, kv_end=None, **kw):
        """One decoder forward: start the positions never predicted (Sec. 3.3), feed Eq. 2's mix, and keep
        this forward's alpha/delta for the next one (one-step Markov)."""
        B, T = ids.shape
        pos = (torch.arange(cache_start, cache_start + T, device=ids.device) if position_ids is None
               else position_ids).expand(B, T)
        self._grow(B, int(pos.max()) + 1, model.embed_tokens.weight.shape[1], ids.device)
        call = dict(position_ids=pos, cache=cache, cache_start=cache_start, kv_end=kv_end, **kw)
        if self.source == "reference":  # beyond the paper: the reference predicts every residual
            return reference_source(self, model, ids, pos, call)
        self.start(model, ids, pos, call)
        out = self.feed(model, ids, pos, call)
        self.update(out[0] if isinstance(out, tuple) else out, ids, pos)
        return out

    def start(self, model, ids, pos, call):
        """Sec. 3.3 for the fed masks never predicted: a cold start leaves them at alpha = 0 (the plain
        forward); a warm start fills them from one forward of the reference, or of the target itself."""
        if self.init == "zero":  # fresh positions already hold alpha = 0: nothing to look up
            return
        masked = ids == model.config.mask_token_id
        new = masked & ~self.seen.gather(1, pos)
        fresh = bool(new.any())
        if fresh and self.init == "dirichlet":  # beyond the paper: a random draw, no forward
            dirichlet_start(self, new, pos)
        elif self.reference is not None and call["cache"] is not None:
            # the reference keeps its own KV cache in step with the target's: it sees every clean write
            # (prefill, store passes, block-start forwards) and every warm start
            if fresh or not masked.any():
                ref_logits = self._reference(ids, call)
                if fresh:
                    self.update(ref_logits, ids, pos)
        elif fresh:  # warm start without a cache, or from the target itself
            first = (self.reference or model)(ids, **{**call, "return_hidden": False})
            self.stats["ref_forwards" if self.reference is not None else "self_forwards"] += 1
            self.update(first, ids, pos)

    def feed(self, model, ids, pos, call):
        """The target's forward on Eq. 2's input: the mix at the fed masks, hard embeddings elsewhere."""
        rows, mask_id = torch.arange(ids.shape[0], device=ids.device)[:, None], model.config.mask_token_id
        embeds = mix(model.embed_tokens(ids), ids, mask_id, model.embed_tokens.weight[mask_id],
                     self.alpha[rows, pos], self.delta[rows, pos])
        return model(None, inputs_embeds=embeds, **call)

    def _reference(self, ids, call):
        """The reference's logits for the fed ids, with its own KV cache beside the target's, if any."""
        if call["cache"] is not None and self.ref_cache is None:
            self.ref_cache = self.reference.new_cache(ids.shape[0], len(call["cache"]))
        self.stats["ref_forwards"] += 1
        return self.reference(ids, **{**call, "cache": self.ref_cache if call["cache"] is not None else None,
                                      "return_hidden": False})


def decode_rcd(model, prompt, *, gen_length, block_length, steps=None, threshold=None, t_res=1.0,
               alpha_scale=1.0, init="zero", reference=None, concentration=1.0, source="self", cache=None,
               wrap=None, **kw):
    """RCD decoding with the family's decoder: LLaDA's generate (threshold and caches included) or SDAR's
    block_generate (dynamic threshold included). Returns (x, stats) with `ref_forwards` / `self_forwards` and
    the residual weights computed at masked positions: `alpha_mean`, `alpha_above_0.1` (a fraction).
    wrap(forward) -> forward: an outer hook around RCD's (eval.py --anatomy watches the forwards with it)."""
    hook = Residual(model, t_res, alpha_scale, init, reference, concentration, source)
    forward = wrap(hook) if wrap else hook
    if model.config.family == "llada":
        x, stats = decode.generate(model, prompt, steps=steps or gen_length, gen_length=gen_length,
                                   block_length=block_length, threshold=threshold, cache=cache,
                                   forward=forward, **kw)
    else:
        if cache is not None:
            raise ValueError("cache: SDAR always decodes with its exact KV cache")
        x, stats = decode.block_generate(model, prompt, gen_length=gen_length, block_length=block_length,
                                         denoising_steps=steps or block_length, threshold=threshold or 1.0,
                                         forward=forward, **kw)
    (total, above), n = hook.alpha_sum.tolist(), max(hook.alpha_n, 1)
    return x, {**stats, **hook.stats, "alpha_mean": total / n, "alpha_above_0.1": above / n}


# ---- Beyond the paper (this project's diagnostics; off by default) ----
# alpha_scale (a parameter of residual_terms, 1 = the paper), the Dirichlet start and the reference source.


def check_beyond(alpha_scale, init, concentration, source, reference):
    """One-line errors for the options beyond the paper."""
    if source not in ("self", "reference") or (source == "reference" and reference is None):
        raise ValueError(f"source {source!r}: expected 'self', or 'reference' together with a reference "
                         "model")
    if not alpha_scale >= 0:
        raise ValueError(f"alpha_scale {alpha_scale}: must be >= 0")
    if init == "dirichlet" and not concentration > 0:
        raise ValueError(f"Dirichlet concentration {concentration}: must be > 0")


def dirichlet_logits(n, V, concentration, device=None):
    """(n, V) log-weights whose softmax is a Dirichlet(c, ..., c) draw: g_j ~ Gamma(c) normalised is
    Dirichlet, and softmax normalises for us. Drawn in log space, log g = log Gamma(c + 1) + log(U) / c
    (Marsaglia and Tsang's boost), because Gamma(c) itself underflows to 0 in fp32 for small c."""
    if not concentration > 0:
        raise ValueError(f"Dirichlet concentration {concentration}: must be > 0")
    shape = torch.full((n, V), concentration + 1.0, device=device)
    u = torch.rand(n, V, device=device).clamp_min(torch.finfo(torch.float32).tiny)
    return torch._standard_gamma(shape).log() + u.log() / concentration


def dirichlet_start(hook, new, pos):
    """init "dirichlet" (Table 5, parameters ours): the fresh positions `new` (B, T) start from one
    Dirichlet draw each, with no forward."""
    V = hook.model.config.vocab_size
    hook.store(dirichlet_logits(int(new.sum()), V, hook.concentration, new.device), new, pos)


def reference_source(hook, model, ids, pos, call):
    """source "reference": the residual fed to this forward is Eq. 1-3 of the reference's prediction on these
    very ids (as in training, Algorithm 1), not of the target's previous forward; the target's own logits
    are not kept. Two forwards per step; the reference keeps its own KV cache beside the target's."""
    hook.update(hook._reference(ids, call), ids, pos)
    return hook.feed(model, ids, pos, call)
