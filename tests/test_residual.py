"""residual.py: the equations against direct computations, and RCD inside decode.py's loops: with alpha
forced to 0 it is plain decoding token for token; residuals never reach a KV cache; warm starts."""
import math

import pytest
import torch
import torch.nn.functional as F

import decode as D
import model as M
import residual as R
from conftest import llada_official, write_checkpoint


def test_entropy_weight_and_soft_token_match_the_equations():
    V = 10
    one_hot = torch.full((1, V), -torch.inf)
    one_hot[0, 3] = 0.0
    assert R.entropy_weight(one_hot).item() == 0.0                     # a sure prediction injects nothing
    assert abs(R.entropy_weight(torch.zeros(1, V)).item() - 1.0) < 1e-6  # a uniform one injects fully
    z = torch.randn(4, V)
    p = F.softmax(z / 0.7, -1)
    assert torch.allclose(R.entropy_weight(z, t_res=0.7), -(p * p.log()).sum(-1) / math.log(V), atol=1e-6)
    assert (R.entropy_weight(z, t_res=2.0) > R.entropy_weight(z)).all()  # T_res > 1 flattens: more residual
    E = torch.randn(V, 5)
    assert torch.allclose(R.soft_token(one_hot, E)[0], E[3])
    assert torch.allclose(R.soft_token(z, E, chunk=3), F.softmax(z, -1) @ E, atol=1e-6)


def test_flushing_subnormal_probabilities_changes_no_fed_embedding(monkeypatch):
    """residual._log_probs flushes the probabilities below float32's smallest normal number to exact zeros (a
    CPU speed measure): on peaky logits, one row whose runners-up are all subnormal, the Eq. 2 input is the
    same bit for bit, and logits of -inf give an entropy of 0 log 0 = 0, not nan."""
    V, C = 300, 16
    z = torch.randn(6, V) * 40
    z[0] = -95.0
    z[0, 7] = 0.0  # every other probability of row 0 is exp(-95) = 5e-42: subnormal, flushed
    E, ids = torch.randn(V, C), torch.full((1, 6), V - 1)
    exact = lambda z, t_res=1.0: F.log_softmax(z.float() / t_res, -1)
    p = F.softmax(z, -1)
    subnormal = (p > 0) & (p < torch.finfo(torch.float32).tiny)
    assert subnormal[0, 8:].all() and torch.equal(R._log_probs(z).exp() == 0, (p == 0) | subnormal)

    def fed():
        alpha, delta = R.residual_terms(z, E)
        return alpha, R.mix(E[ids], ids, V - 1, E[V - 1], alpha[None], delta[None])
    alpha, mixed = fed()
    with_inf = z.clone()
    with_inf[1, ::2] = -torch.inf
    alpha_inf = R.entropy_weight(with_inf)
    monkeypatch.setattr(R, "_log_probs", exact)
    alpha_exact, mixed_exact = fed()
    assert (alpha - alpha_exact).abs().max() < 1e-30 and torch.equal(mixed, mixed_exact)
    assert alpha_inf.isfinite().all() and torch.isnan(R.entropy_weight(with_inf)[1])  # the unflushed 0 * -inf


def test_the_second_step_feeds_the_mix_of_eq_2(llada):
    """Call the hook twice on the same canvas and compare its input with Eq. 2 computed by hand."""
    mask_id = llada.config.mask_token_id
    ids = torch.tensor([[5, 6, 7, mask_id, mask_id, 9, mask_id]])
    hook = R.Residual(llada, t_res=1.3)
    with torch.no_grad():
        first = llada(ids)                  # cold start: the first step is the plain forward
        assert torch.equal(hook(llada, ids), first)
        seen = []
        spy = llada.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]),
                                              with_kwargs=True)
        try:
            hook(llada, ids)
        finally:
            spy.remove()
    E = llada.embed_tokens.weight
    want = E[ids[0]].clone()
    for i in (3, 4, 6):
        alpha = R.entropy_weight(first[0, i], t_res=1.3)
        want[i] = (1 - alpha) * E[mask_id] + alpha * (F.softmax(first[0, i], -1) @ E)
    assert torch.allclose(seen[-1][0], want, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(steps=16), dict(threshold=0.05), dict(cache="prefix", steps=16),
                                dict(cache="dual", threshold=0.05)])
def test_alpha_zero_is_plain_llada_decoding(llada, kw):
    prompts = torch.randint(0, 90, (2, 5))
    plain, _ = D.generate(llada, prompts, gen_length=16, block_length=8, **kw)
    rcd, stats = R.decode_rcd(llada, prompts, gen_length=16, block_length=8, alpha_scale=0.0, **kw)
    assert torch.equal(plain, rcd)
    changed, _ = R.decode_rcd(llada, prompts, gen_length=16, block_length=8, alpha_scale=1.0, t_res=4.0, **kw)
    assert not torch.equal(plain, changed)  # and with residuals it does change something


@pytest.mark.parametrize("threshold", [1.0, 0.2])
def test_alpha_zero_is_plain_sdar_decoding(sdar, threshold):
    prompts = [torch.randint(0, 75, (n,)) for n in (3, 7)]
    plain, _ = D.block_generate(sdar, prompts, gen_length=16, threshold=threshold, stop_ids=[])
    rcd, _ = R.decode_rcd(sdar, prompts, gen_length=16, block_length=4, threshold=threshold, alpha_scale=0.0,
                          stop_ids=[])
    assert torch.equal(plain, rcd)


def test_residuals_never_reach_the_kv_cache(sdar):
    """The forwards that leave K/V behind for later blocks (prefill and store passes: no [MASK] in their
    input) are fed exactly the hard embeddings; the denoising steps in between do get residuals."""
    hook, fed, embeds = R.Residual(sdar, t_res=3.0), [], []

    def forward(model, ids, **kw):
        fed.append(ids.clone())
        return hook(model, ids, **kw)
    pre = sdar.register_forward_pre_hook(lambda m, a, kw: embeds.append(kw["inputs_embeds"]),
                                         with_kwargs=True)
    D.block_generate(sdar, torch.randint(0, 75, (6,)), gen_length=12, block_length=4, forward=forward,
                     stop_ids=[])
    pre.remove()
    clean = [torch.equal(e, sdar.embed_tokens(i)) for i, e in zip(fed, embeds)
             if not (i == sdar.config.mask_token_id).any()]
    mixed = [not torch.equal(e, sdar.embed_tokens(i)) for i, e in zip(fed, embeds)
             if (i == sdar.config.mask_token_id).any()]
    assert len(clean) == 5 and all(clean)   # prefill + a store pass for each of the 4 decoded blocks
    assert any(mixed)


def test_warm_start_runs_the_reference_once_per_block(sdar, llada):
    _, st = R.decode_rcd(sdar, torch.randint(0, 75, (6,)), gen_length=12, block_length=4, init="reference",
                         reference=sdar, stop_ids=[])
    # reference: prefill + one warm start per block (blocks at 4, 8, 12, 16 hold masks) + a store pass each
    assert st["ref_forwards"] == 1 + 4 + 4
    _, st = R.decode_rcd(llada, torch.randint(0, 90, (5,)), gen_length=16, block_length=8, init="self",
                         steps=16)
    assert st["self_forwards"] == 1  # LLaDA's first forward predicts every position at once
    with pytest.raises(ValueError, match="init 'reference'"):
        R.Residual(llada, init="reference")


def test_stats_report_the_residual_weights_computed(llada):
    """alpha_mean / alpha_above_0.1 summarise the weights at the masked positions RCD computed: zero when
    alpha is forced to 0, inside (0, 1] for a random model's spread-out predictions."""
    prompt = torch.randint(0, 90, (2, 5))
    _, off = R.decode_rcd(llada, prompt, gen_length=16, block_length=8, steps=8, alpha_scale=0.0)
    assert off["alpha_mean"] == 0.0 and off["alpha_above_0.1"] == 0.0
    _, on = R.decode_rcd(llada, prompt, gen_length=16, block_length=8, steps=8)
    assert 0.1 < on["alpha_mean"] <= 1.0 and 0.0 < on["alpha_above_0.1"] <= 1.0


# ---- Beyond the paper: the reference source, the Dirichlet start, alpha_scale ----


def test_reference_source_feeds_the_references_prediction_on_the_same_input(llada, sdar, tmp_path):
    """source="reference" (a diagnostic beyond the paper): each forward's residual is Eq. 2 of the reference's
    prediction on that forward's own ids, as in training, not of the target's previous step; the reference
    runs once per target forward, with a KV cache of its own beside SDAR's."""
    mask_id = llada.config.mask_token_id
    folder = write_checkpoint(str(tmp_path / "ref"), *llada_official(vocab=96, seed=1))
    other = M.from_pretrained(folder, device="cpu")
    ids = torch.tensor([[5, 6, 7, mask_id, mask_id, 9, mask_id]])
    hook = R.Residual(llada, init="reference", reference=other, source="reference")
    seen = []
    spy = llada.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad():
            hook(llada, ids)
            ids2 = ids.clone()
            ids2[0, 4] = 11  # a step commits a token: the next residual is the reference's on the new ids
            hook(llada, ids2)
            z = other(ids2)[0]
    finally:
        spy.remove()
    E = llada.embed_tokens.weight
    want = E[ids2[0]].clone()
    for i in (3, 6):
        alpha = R.entropy_weight(z[i])
        want[i] = (1 - alpha) * E[mask_id] + alpha * (F.softmax(z[i], -1) @ E)
    assert torch.allclose(seen[-1][0], want, atol=1e-6) and hook.stats["ref_forwards"] == 2
    x, st = R.decode_rcd(sdar, torch.randint(0, 75, (6,)), gen_length=8, block_length=4, init="reference",
                         reference=sdar, source="reference", stop_ids=[])
    # every denoising forward, the prefill and a store pass per block (blocks at 4, 8 and 12 hold masks)
    assert st["ref_forwards"] == st["nfe"] + 1 + 3
    with pytest.raises(ValueError, match="source 'reference'"):
        R.Residual(llada, source="reference")


@pytest.mark.parametrize("c", [0.01, 1.0, 5.0])
def test_dirichlet_draws_have_the_dirichlet_entropy(c):
    """softmax of the log-space draws is Dirichlet(c, ..., c): a point of the simplex whose expected entropy
    is digamma(Vc + 1) - digamma(c + 1); finite even for small c, where Gamma(c) underflows in fp32."""
    torch.manual_seed(0)
    V = 50
    z = R.dirichlet_logits(4000, V, c)
    assert torch.isfinite(z).all()
    p = F.softmax(z, -1)
    h = -(p * p.clamp_min(1e-30).log()).sum(-1)
    want = torch.digamma(torch.tensor(V * c + 1.0)) - torch.digamma(torch.tensor(c + 1.0))
    assert abs(h.mean() - want) < 0.02 * want + 0.01
    assert abs(p.mean(0) - 1 / V).max() < 0.01  # symmetric: every token equally likely
    with pytest.raises(ValueError, match="concentration 0"):
        R.dirichlet_logits(2, V, 0)


def test_dirichlet_start_costs_no_forward_and_is_seeded(llada, sdar):
    prompts = torch.randint(0, 90, (2, 5))
    zero, st0 = R.decode_rcd(llada, prompts, gen_length=16, block_length=8, steps=8)
    kw = dict(gen_length=16, block_length=8, steps=8, init="dirichlet")
    torch.manual_seed(3)
    a, st = R.decode_rcd(llada, prompts, concentration=0.5, **kw)
    torch.manual_seed(3)
    b, _ = R.decode_rcd(llada, prompts, concentration=0.5, **kw)
    assert torch.equal(a, b) and not torch.equal(a, zero)
    assert st["nfe"] == st0["nfe"] and st["self_forwards"] == 0 and st["ref_forwards"] == 0
    off, _ = R.decode_rcd(llada, prompts, alpha_scale=0.0, **kw)
    assert torch.equal(off, D.generate(llada, prompts, gen_length=16, block_length=8, steps=8)[0])
    # SDAR: a draw per block, at the block's first step only (one draw per fresh position)
    hook, draws = R.Residual(sdar, init="dirichlet"), []
    real = R.dirichlet_logits
    R.dirichlet_logits = lambda n, *a: draws.append(n) or real(n, *a)
    try:
        D.block_generate(sdar, torch.randint(0, 75, (6,)), gen_length=12, block_length=4, forward=hook,
                         stop_ids=[])
    finally:
        R.dirichlet_logits = real
    assert draws == [2, 4, 4, 4]  # the prompt's block holds 2 masks, then 3 whole blocks
    with pytest.raises(ValueError, match="concentration -1"):
        R.Residual(sdar, init="dirichlet", concentration=-1)


def test_alpha_scale_scales_and_clips_alpha_in_decoding_and_in_training(llada):
    """--alpha-scale (not the paper's, which is 1): alpha = clip(scale * H / log V, 0, 1), the same in the
    training hook (train_residual.residual_input) as in decoding; bad values are refused."""
    import train_residual
    z = torch.randn(6, 96) * 3
    for scale in (0.0, 3.0, 50.0):
        want = (scale * R.entropy_weight(z)).clamp(0, 1)
        assert torch.allclose(R.entropy_weight(z, alpha_scale=scale), want, atol=1e-6)
    with pytest.raises(ValueError, match="alpha_scale"):
        R.Residual(llada, alpha_scale=-1.0)
    with pytest.raises(ValueError, match="t_res"):
        R.Residual(llada, t_res=0.0)
    mask = llada.config.mask_token_id
    ids = torch.randint(0, 90, (2, 12))
    x_t = ids.clone()
    x_t[:, 4:] = mask
    pad = torch.zeros_like(ids, dtype=torch.bool)
    E = llada.embed_tokens.weight
    with torch.no_grad():
        z = llada(x_t)[x_t == mask]
        for scale in (1.0, 8.0):
            hook = train_residual.residual_input(llada, "llada", None, mask, alpha_scale=scale)(x_t, ids, pad)
            fed = hook(llada.embed_tokens(x_t), x_t, E)[x_t == mask]
            alpha = (scale * R.entropy_weight(z)).clamp(0, 1)[:, None]
            assert torch.allclose(fed, (1 - alpha) * E[mask] + alpha * R.soft_token(z, E), atol=1e-6)
    assert alpha.max() == 1.0  # a scale of 8 clips this random model's uncertain positions
