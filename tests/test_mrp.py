"""mrp.py: the official checkpoint layout, the module's equations, and the decoding modes inside
decode.block_generate: speculative decoding is lossless (equal to static one-token-per-step decoding, token
for token), direct with K = 0 is static decoding, remasking with a zero residual is plain dynamic decoding,
and verification candidates cannot see each other. Training: test_train_mrp.py."""
import json
import os

import pytest
import torch

import decode as D
import model as M
import mrp as R
from conftest import qwen3_layer, sdar_official, write_checkpoint


def official_mrp_checkpoint(folder, n_layers=2, seed=3, prefix="mrp_modules.0.model."):
    """A tiny MRP checkpoint with the released key names (written here by hand, not by save_mrp)."""
    cfg, sd = sdar_official(vocab=80)
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    d, hd, nq, nkv, mlp = 48, 16, 4, 2, 64
    sd.update({prefix + "enorm.weight": 1 + r(d), prefix + "hnorm.weight": 1 + r(d),
               prefix + "eh_proj.weight": r(d, 2 * d), prefix + "norm.weight": 1 + r(d),
               "mrp_modules.0.lm_head.weight": sd["lm_head.weight"].clone()})
    for i in range(n_layers):
        sd.update(qwen3_layer(f"{prefix}layers.{i}.", r, d, nq, nkv, hd, mlp))
    cfg.update(architectures=["SDARMRPForCausalLM"], num_nextn_predict_layers=n_layers, num_mrp_heads=1)
    return write_checkpoint(folder, cfg, {k: v.to(torch.bfloat16) for k, v in sd.items()}), sd


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder, _ = official_mrp_checkpoint(str(tmp_path_factory.mktemp("mrp")))
    return R.load_mrp(folder, device="cpu", dtype=torch.float32)


def test_load_maps_the_released_key_names(tmp_path):
    folder, sd = official_mrp_checkpoint(str(tmp_path / "a"))
    backbone, mrp = R.load_mrp(folder, device="cpu", dtype=torch.float32)
    assert len(mrp.layers) == 2
    bf16 = lambda key: sd[key].to(torch.bfloat16).float()
    assert torch.equal(mrp.eh_proj.weight, bf16("mrp_modules.0.model.eh_proj.weight"))
    assert torch.equal(mrp.layers[1].self_attn.k_norm.weight,
                       bf16("mrp_modules.0.model.layers.1.self_attn.k_norm.weight"))
    legacy, _ = official_mrp_checkpoint(str(tmp_path / "b"), prefix="mtp_modules.0.model.")  # older releases
    assert torch.equal(R.load_mrp(legacy, device="cpu")[1].norm.weight, mrp.norm.weight)
    with pytest.raises(KeyError, match="not an MRP checkpoint"):
        R.load_mrp(write_checkpoint(str(tmp_path / "c"), *sdar_official()), device="cpu")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["num_nextn_predict_layers"] = 3  # a layer the file does not have
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(KeyError, match="missing keys"):
        R.load_mrp(folder, device="cpu")


def test_save_mrp_round_trips_in_the_official_layout(pair, tmp_path):
    backbone, mrp = pair
    R.save_mrp(backbone, mrp, str(tmp_path / "saved"))
    keys = set(json.load(open(tmp_path / "saved" / "config.json")))
    assert {"num_nextn_predict_layers", "num_mrp_heads"} <= keys
    b2, m2 = R.load_mrp(str(tmp_path / "saved"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(mrp.state_dict().values(), m2.state_dict().values()))


def test_module_equations(pair):
    """h_C = norm(layers(eh_proj([enorm(E[ids]) ; hnorm(h)]))) and A + C = lm_head(h_A + h_C)."""
    backbone, mrp = pair
    ids = torch.randint(0, 75, (2, 8))
    with torch.no_grad():
        A, h = backbone(ids, return_hidden=True)
        h_c = mrp(backbone, ids, h)
        x = mrp.eh_proj(torch.cat([mrp.enorm(backbone.embed_tokens(ids)), mrp.hnorm(h)], -1))
        assert torch.allclose(h_c, mrp.norm(M.run_layers(mrp.layers, backbone.rope, x, block_size=4)))
        assert torch.allclose(backbone.lm_head(h + h_c), A + backbone.lm_head(h_c), atol=1e-5)


def test_verification_candidates_do_not_see_each_other():
    # a prefix of 3 (one padded), 3 candidates of 2
    m = R.verify_mask(torch.tensor([[True, True, False]]), 3, 2)
    assert m.shape == (1, 1, 6, 9)
    assert m[0, 0, :, :3].tolist() == [[True, True, False]] * 6
    assert m[0, 0, 2, 3:].tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_speculative_decoding_is_lossless(pair, steps):
    backbone, mrp = pair
    prompts = [torch.randint(0, 75, (n,)) for n in (5, 9, 6)]
    for batch in ([prompts[0]], prompts):
        static, s0 = D.block_generate(backbone, batch, gen_length=24, stop_ids=[])
        spec, s1 = R.decode_mrp(backbone, batch, mrp=mrp, mode="spec", gen_length=24, block_length=4,
                                mrp_steps=steps, stop_ids=[])
        assert torch.equal(static, spec)
        assert s1["verify_forwards"] > 0 and s1["accepted"] <= s1["drafts"]


def test_direct_with_no_extra_steps_is_static_decoding(pair):
    backbone, mrp = pair
    prompt = torch.randint(0, 75, (7,))
    static, s0 = D.block_generate(backbone, prompt, gen_length=16, stop_ids=[])
    kw = dict(mrp=mrp, mode="direct", gen_length=16, block_length=4, stop_ids=[])
    direct, s1 = R.decode_mrp(backbone, prompt, mrp_steps=0, **kw)
    assert torch.equal(static, direct) and s0["nfe"] == s1["nfe"]
    _, s2 = R.decode_mrp(backbone, prompt, mrp_steps=1, **kw)
    assert s2["nfe"] < s0["nfe"] and s2["mrp_store_forwards"] == s0["store_forwards"] + s0["prefill_forwards"]


@pytest.mark.parametrize("threshold", [0.05, 0.3])
@pytest.mark.parametrize("rule", ["published", "loo"])
def test_remask_with_a_zero_residual_is_plain_dynamic_decoding(pair, threshold, rule):
    backbone, mrp = pair
    zero = R.MRP(backbone.config, 1)
    zero.init_weights()
    with torch.no_grad():
        zero.norm.weight.zero_()  # h_C = 0: the corrected logits are the backbone's
    prompts = [torch.randint(0, 75, (n,)) for n in (6, 4)]
    plain, _ = D.block_generate(backbone, prompts, gen_length=16, threshold=threshold, stop_ids=[])
    remask, st = R.decode_mrp(backbone, prompts, mrp=zero, mode="remask", gen_length=16, block_length=4,
                              threshold=threshold, remask=rule, stop_ids=[])
    assert torch.equal(plain, remask) and st["revoked"] == 0


def test_bad_arguments(pair):
    backbone, mrp = pair
    with pytest.raises(ValueError, match="needs a threshold"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="remask", gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="block KV cache"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="spec", gen_length=8, block_length=4, use_cache=False)
    with pytest.raises(ValueError, match="mode 'fast'"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="fast", gen_length=8, block_length=4)


@pytest.mark.slow
@pytest.mark.parametrize("name,layers", [("tiny-sdar-mrp", 3), ("tiny-sdar-mrp-1lyr", 1),
                                         ("tiny-sdar-mrp-remask", 3), ("tiny-sdar-mrp-remask-long", 3)])
def test_committed_heads_are_lossless_on_the_builtin_task(name, layers):
    """Every embedded MRP head (bench.py mrp times the first two) reproduces static decoding token for token
    on test problems of the built-in task, one at a time and batched, with fewer backbone forwards."""
    from bench import tiny_prompts
    from conftest import ROOT
    folder = os.path.join(ROOT, "models", name)
    backbone, mrp = R.load_mrp(folder, "cpu", torch.float32)
    assert len(mrp.layers) == layers
    prompts = [torch.tensor(ids) for ids in tiny_prompts(folder, 4)]
    for batch in ([prompts[0]], prompts):
        static, s0 = D.block_generate(backbone, batch, gen_length=56, block_length=32, denoising_steps=32)
        spec, s1 = R.decode_mrp(backbone, batch, mrp=mrp, mode="spec", gen_length=56, block_length=32,
                                mrp_steps=3)
        assert torch.equal(static, spec)
        assert s1["nfe"] < s0["nfe"]


# ---- Beyond the paper: the released code's delta veto, the leave-one-out remask rules ----


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_code_delta_revokes_what_the_residual_moves(pair, threshold):
    backbone, mrp = pair
    prompts = [torch.randint(0, 75, (n,)) for n in (6, 4)]
    _, st = R.decode_mrp(backbone, prompts, mrp=mrp, mode="remask", gen_length=16, block_length=4,
                         threshold=threshold, remask="code_delta", delta=0.0, stop_ids=[])
    assert st["revoked"] > 0  # delta 0 vetoes every proposal but the guard's


@pytest.mark.parametrize("rule", ["loo", "loo_backbone"])
def test_leave_one_out_equals_one_forward_per_proposal(pair, rule, monkeypatch):
    """The packed re-check (all candidates in one forward) against one unpacked forward per proposal."""
    backbone, mrp = pair
    packed, sizes = R.leave_one_out, []

    def check(st, run, x0, proposed, hidden, lo, hi):
        p = packed(st, run, x0, proposed, hidden, lo, hi)
        base = torch.where(proposed, x0, st.x[:, lo:hi])
        kw = dict(attention_mask=st.valid[:, lo:hi], position_ids=st.pos[:, lo:hi], cache_start=lo,
                  block_size=4)
        for r, i in proposed.nonzero().tolist():
            cand = base.clone()
            cand[r, i] = backbone.config.mask_token_id
            if rule == "loo":
                logits = backbone.lm_head(hidden + mrp(backbone, cand, hidden, cache=run.cache, **kw))
            else:
                logits = backbone(cand, cache=st.cache, **kw)
            assert torch.allclose(p[r, i], torch.softmax(logits[r, i].float(), -1)[x0[r, i]], atol=1e-5)
        assert (p[~proposed] == 0).all()
        sizes.append(int(proposed.sum(1).max()))
        return p
    monkeypatch.setattr(R, "leave_one_out", check)
    prompts = [torch.randint(0, 75, (n,)) for n in (6, 4, 9)]
    _, st = R.decode_mrp(backbone, prompts, mrp=mrp, mode="remask", gen_length=16, block_length=4,
                         threshold=0.05, remask=rule, stop_ids=[])
    assert max(sizes) > 1 and st["nfe"] > (st["mrp_forwards"] if rule == "loo_backbone" else 0)
