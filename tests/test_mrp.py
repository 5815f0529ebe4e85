"""mrp.py: the official checkpoint layout, the module's equations, the training loss, and the decoding
modes inside decode.block_generate: speculative decoding is lossless (equal to static one-token-per-step
decoding, token for token), direct with K = 0 is static decoding, remasking with a zero residual is plain
dynamic decoding, and verification candidates cannot see each other."""
import argparse
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file

import decode as D
import model as M
import mrp as R
import train
from conftest import qwen3_layer, sdar_official, write_checkpoint


def official_mrp_checkpoint(folder, n_layers=2, seed=3, prefix="mrp_modules.0.model."):
    """A tiny MRP checkpoint with the released key names (written here by hand, not by save_mrp)."""
    cfg, sd = sdar_official(vocab=80)
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    d, hd, nq, nkv, mlp = 48, 16, 4, 2, 64
    sd.update({prefix + "enorm.weight": 1 + r(d), prefix + "hnorm.weight": 1 + r(d), prefix + "eh_proj.weight": r(d, 2 * d),
               prefix + "norm.weight": 1 + r(d), "mrp_modules.0.lm_head.weight": sd["lm_head.weight"].clone()})
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
    assert torch.equal(mrp.eh_proj.weight, sd["mrp_modules.0.model.eh_proj.weight"].to(torch.bfloat16).float())
    assert torch.equal(mrp.layers[1].self_attn.k_norm.weight,
                       sd["mrp_modules.0.model.layers.1.self_attn.k_norm.weight"].to(torch.bfloat16).float())
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


def test_training_loss_learns_and_does_not_touch_the_backbone(pair):
    backbone, _ = pair
    torch.manual_seed(0)
    head = R.MRP(backbone.config, 1)
    head.init_weights()
    before = [p.clone() for p in backbone.parameters()]
    ids = torch.randint(0, 75, (4, 16))
    pm = torch.zeros_like(ids, dtype=torch.bool)
    pm[:, :4] = True
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 3)  # three fixed noise draws, so the loss can go down
        loss = R.mrp_loss(backbone, head, ids, pm, g, 4, mrp_steps=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))


@pytest.mark.parametrize("reveal_from", ["gt", "backbone"])
def test_training_reveals_the_ground_truth_or_the_backbones_predictions(pair, reveal_from, monkeypatch):
    backbone, head = pair
    ids = torch.randint(0, 75, (3, 16))
    pm = torch.zeros_like(ids, dtype=torch.bool)
    pm[:, :4] = True
    seen = []
    monkeypatch.setattr(R, "reveal", lambda x, source, *a: seen.append((x, source)) or R_reveal(x, source, *a))
    R.mrp_loss(backbone, head, ids, pm, torch.Generator().manual_seed(0), 4, reveals=(1, 2), reveal_from=reveal_from)
    x_t, source = seen[0]
    with torch.no_grad():  # the first pass sees [x_t | ids] under the training mask; greedy on the noisy half
        layout = dict(position_ids=torch.arange(16).repeat(2), attn_mask=train.block_diff_mask(16, 4)[None, None])
        greedy = backbone(torch.cat([x_t, ids], 1), **layout)[:, :16].argmax(-1)
    assert torch.equal(source, ids if reveal_from == "gt" else greedy)


R_reveal = R.reveal


def test_reveal_one_masked_token_per_block():
    ids = torch.arange(16).repeat(2, 1)
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, [1, 2, 9]] = masked[1, [12, 13, 14, 15]] = True
    x = torch.where(masked, 99, ids)
    new, still = R.reveal(x, ids, masked, 4, torch.Generator().manual_seed(0))
    assert (masked & ~still).sum(1).tolist() == [2, 1]  # blocks {1,2} and {9}; block {12..15}
    assert torch.equal(new[~still], ids[~still])
    new, still = R.reveal(x, ids, masked, 4, torch.Generator().manual_seed(0), reveals=(3,))  # gt_topk = 3
    assert (masked & ~still).sum(1).tolist() == [3, 3] and torch.equal(new[~still], ids[~still])
    ids, masked = torch.arange(64).repeat(8, 1), torch.ones(8, 64, dtype=torch.bool)
    _, still = R.reveal(torch.full_like(ids, 99), ids, masked, 8, torch.Generator().manual_seed(0), reveals=(1, 4))
    assert set((~still).view(8, 8, 8).sum(-1).flatten().tolist()) == {1, 4}  # gt_random: a count per block


def test_verification_candidates_do_not_see_each_other():
    m = R.verify_mask(torch.tensor([[True, True, False]]), 3, 2)  # prefix of 3 (one padded), 3 candidates of 2
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
    direct, s1 = R.decode_mrp(backbone, prompt, mrp=mrp, mode="direct", gen_length=16, block_length=4, mrp_steps=0,
                              stop_ids=[])
    assert torch.equal(static, direct) and s0["nfe"] == s1["nfe"]
    _, s2 = R.decode_mrp(backbone, prompt, mrp=mrp, mode="direct", gen_length=16, block_length=4, mrp_steps=1, stop_ids=[])
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
        kw = dict(attention_mask=st.valid[:, lo:hi], position_ids=st.pos[:, lo:hi], cache_start=lo, block_size=4)
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
    _, st = R.decode_mrp(backbone, prompts, mrp=mrp, mode="remask", gen_length=16, block_length=4, threshold=0.05,
                         remask=rule, stop_ids=[])
    assert max(sizes) > 1 and st["nfe"] > (st["mrp_forwards"] if rule == "loo_backbone" else 0)


def test_bad_arguments(pair):
    backbone, mrp = pair
    with pytest.raises(ValueError, match="needs a threshold"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="remask", gen_length=8, block_length=4)
    with pytest.raises(ValueError, match="block KV cache"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="spec", gen_length=8, block_length=4, use_cache=False)
    with pytest.raises(ValueError, match="mode 'fast'"):
        R.decode_mrp(backbone, [1, 2], mrp=mrp, mode="fast", gen_length=8, block_length=4)


def test_kl_command_compares_the_head_with_a_zero_residual(capsys):
    """`python mrp.py kl` on the embedded head: its zero-residual number is KL(B || A) with A the backbone's
    own logits before the reveal, recomputed here from the same noise and reveals."""
    from conftest import ROOT
    from tokenizer import load_tokenizer
    folder = os.path.join(ROOT, "models", "tiny-sdar-mrp")
    args = argparse.Namespace(model=folder, reveals="1,2", reveal_from="gt", mrp_steps=1, batches=1, batch_size=4,
                              length=96, seed=7, device="cpu")
    R.main_kl(args, *R.load_mrp(folder, "cpu", torch.float32))
    head, zero = [float(v) for v in re.findall(r"(?:head|residual) ([0-9.]+)", capsys.readouterr().out)]
    backbone, _ = R.load_mrp(folder, "cpu", torch.float32)
    ids, pm, _ = train.make_batch(load_tokenizer(folder), "sdar", 1_000_000, 7, 4, 96, set())
    g = torch.Generator().manual_seed(0)
    x_t, masked, p = train.add_noise(ids, pm, backbone.config.mask_token_id, g)
    x_1, still = R.reveal(x_t, ids, masked, 32, g, (1, 2))
    layout = dict(position_ids=torch.arange(96).repeat(2), attn_mask=train.block_diff_mask(96, 32)[None, None])
    with torch.no_grad():
        A, B = (backbone(torch.cat([x, ids], 1), **layout)[:, :96][still] for x in (x_t, x_1))
    kl = (B.softmax(-1) * (B.log_softmax(-1) - A.log_softmax(-1))).sum(-1)
    assert abs(zero - ((kl / p[still]).sum() / (~pm).sum()).item()) < 1e-4 and head != zero


@pytest.mark.parametrize("argv, message", [
    (["kl", "--model", os.path.join(os.path.dirname(__file__), "..", "models", "tiny-sdar")], "no mrp_modules"),
    (["kl", "--reveals", "1,x"], "expected comma-separated integers"),
    (["kl", "--reveals", "0,2"], "counts must lie in 1..32"),
    (["kl", "--length", "100"], "multiple of the block size 32")])
def test_cli_bad_arguments_are_one_line_errors(argv, message, monkeypatch):
    monkeypatch.setattr("sys.argv", ["mrp.py"] + argv)
    with pytest.raises(SystemExit, match=message):
        R.main()


def test_train_init_goes_on_from_a_trained_head(tmp_path, monkeypatch):
    """--init: the head starts from the given checkpoint (one step at a negligible learning rate leaves the
    committed weights), and a checkpoint that is no MRP head, or a head of another depth, is one line."""
    from conftest import ROOT
    models = os.path.join(ROOT, "models")
    base = ["mrp.py", "train", "--out", str(tmp_path / "out"), "--steps", "1", "--batch-size", "2", "--device", "cpu"]
    for extra, message in ((["--init", os.path.join(models, "tiny-sdar")], "no mrp_modules"),
                           (["--init", os.path.join(models, "tiny-sdar-mrp"), "--layers", "2"], "not --layers 2")):
        monkeypatch.setattr("sys.argv", base + extra)
        with pytest.raises(SystemExit, match=message):
            R.main()
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr("sys.argv", base + ["--init", os.path.join(models, "tiny-sdar-mrp"), "--lr", "1e-12"])
    R.main()
    (_, before), (_, after) = (R.load_mrp(p, "cpu", torch.float32) for p in (os.path.join(models, "tiny-sdar-mrp"),
                                                                             str(tmp_path / "out")))
    for a, b in zip(before.parameters(), after.parameters()):
        assert torch.equal(a, b)  # both bf16 on disk: the step moved nothing a bf16 weight can hold


@pytest.mark.parametrize("name,layers", [("tiny-sdar-mrp", 3), ("tiny-sdar-mrp-1lyr", 1), ("tiny-sdar-mrp-remask", 3),
                                         ("tiny-sdar-mrp-remask-long", 3)])
def test_committed_heads_are_lossless_on_the_builtin_task(name, layers):
    """Every embedded MRP head (bench.py mrp times the first two) reproduces static decoding token for token on
    test problems of the built-in task, one at a time and batched, with fewer backbone forwards."""
    from bench import tiny_prompts
    from conftest import ROOT
    folder = os.path.join(ROOT, "models", name)
    backbone, mrp = R.load_mrp(folder, "cpu", torch.float32)
    assert len(mrp.layers) == layers
    prompts = [torch.tensor(ids) for ids in tiny_prompts(folder, 4)]
    for batch in ([prompts[0]], prompts):
        static, s0 = D.block_generate(backbone, batch, gen_length=56, block_length=32, denoising_steps=32)
        spec, s1 = R.decode_mrp(backbone, batch, mrp=mrp, mode="spec", gen_length=56, block_length=32, mrp_steps=3)
        assert torch.equal(static, spec)
        assert s1["nfe"] < s0["nfe"]
