"""LLaDA2.0 (moe.py, model.py's llada2 loader, block_generate's LLaDA2.0 rules): the forward against an
independent oracle written here from the official description (a per-token loop over experts), on tiny
checkpoints in the official key format; the two expert formulations; no host sync in a MoE layer; broken
checkpoints; generation against a port of the official `generate` loop (quota, step cap, EOS block stop,
eos_early_stop), cache == no cache, batched == one by one; Elastic-dLLM's terminal anchor.
Token-for-token parity with the official code on its own fixture is ../shared/parity/check.py's job."""
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import decode as D
import mask_compress as E
import model as M
import moe
from conftest import ROOT, llada2_official, write_checkpoint


def load(folder, dtype=torch.float32):
    return M.from_pretrained(folder, device="cpu", dtype=dtype)


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def oracle(cfg, sd, ids, block):
    """Logits (T, V) for one sequence, in fp64, straight from the official keys as modeling_llada2_moe.py
    uses them: fused q/k/v, per-head q/k RMSNorm, RoPE on the first half of each head, GQA under the
    block-causal mask, then dense or MoE MLPs; each token routed on its own with plain Python over the
    experts."""
    W = {k: v.double() for k, v in sd.items()}
    H, KV, Dh = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    R, T = int(Dh * cfg["partial_rotary_factor"]), len(ids)
    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, R, 2, dtype=torch.float64) / R)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = ang.cos().repeat(1, 2), ang.sin().repeat(1, 2)                   # (T, R)
    rot = lambda x: torch.cat([x[..., :R] * cos + torch.cat([-x[..., R // 2:R], x[..., :R // 2]], -1) * sin,
                               x[..., R:]], -1)
    sees = (torch.arange(T)[:, None] // block) >= (torch.arange(T)[None] // block)  # (query, key)
    silu = torch.nn.functional.silu
    swiglu = lambda u, p: (silu(u @ W[p + "gate_proj.weight"].T) * (u @ W[p + "up_proj.weight"].T)) @ \
        W[p + "down_proj.weight"].T
    x = W["model.word_embeddings.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        u = rms(x, W[p + "input_layernorm.weight"], eps)
        qkv = (u @ W[p + "attention.query_key_value.weight"].T).view(T, H + 2 * KV, Dh)
        q = rot(rms(qkv[:, :H], W[p + "attention.query_layernorm.weight"], eps).transpose(0, 1))  # (H, T, D)
        k = rot(rms(qkv[:, H:H + KV], W[p + "attention.key_layernorm.weight"], eps).transpose(0, 1))
        v = qkv[:, H + KV:].transpose(0, 1)
        heads = []
        for h in range(H):
            g = h // (H // KV)
            att = (q[h] @ k[g].T / math.sqrt(Dh)).masked_fill(~sees, -math.inf).softmax(-1)
            heads.append(att @ v[g])
        x = x + torch.cat(heads, -1) @ W[p + "attention.dense.weight"].T
        u = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if i < cfg["first_k_dense_replace"]:
            x = x + swiglu(u, p + "mlp.")
            continue
        y = torch.stack([moe_token(cfg, W, p, u[t], swiglu) for t in range(T)])
        x = x + y + (swiglu(u, p + "mlp.shared_experts.") if cfg["num_shared_experts"] else 0)
    head = "model.word_embeddings.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"
    return rms(x, W["model.norm.weight"], eps) @ W[head].T


def moe_token(cfg, W, p, u, swiglu):
    """One token through the routed experts, the way the model card and the official gate describe it."""
    E_, G, k = cfg["num_experts"], cfg["n_group"], cfg["num_experts_per_tok"]
    s = torch.sigmoid(W[p + "mlp.gate.weight"] @ u).tolist()
    b = [s[e] + float(W[p + "mlp.gate.expert_bias"][e]) for e in range(E_)]
    size = E_ // G
    group_score = [sum(sorted(b[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(G)]
    groups = sorted(range(G), key=lambda g: -group_score[g])[:cfg["topk_group"]]
    chosen = sorted((e for e in range(E_) if e // size in groups), key=lambda e: -b[e])[:k]
    total = sum(s[e] for e in chosen) if k > 1 else 1.0
    scale = cfg["routed_scaling_factor"]
    return sum(s[e] / total * scale * swiglu(u, f"{p}mlp.experts.{e}.") for e in chosen)


CONFIGS = {
    "8x2-groups4-keep2": dict(),
    "16x4-dense2-tied-sharded": dict(experts=16, top_k=4, n_group=4, topk_group=2, dense=2, layers=4,
                                     tied=True),
    "6x1-no-dense-no-shared": dict(experts=6, top_k=1, n_group=3, topk_group=1, dense=0, shared=0),
    "8x3-one-group-2-shared": dict(experts=8, top_k=3, n_group=1, topk_group=1, shared=2),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_an_independent_oracle(tmp_path, name):
    cfg, sd = llada2_official(**CONFIGS[name])
    m = load(write_checkpoint(str(tmp_path / "c"), cfg, sd, shards=3 if "sharded" in name else 1))
    tied = m.lm_head.weight is m.embed_tokens.weight
    assert m.config.family == "llada2" and m.config.rope_dim == 8 and tied == cfg["tie_word_embeddings"]
    ids = torch.randint(0, 94, (2, 13))
    with torch.no_grad():
        got = m(ids, block_size=4).double()
    for row in range(2):
        assert (got[row] - oracle(cfg, sd, ids[row], 4)).abs().max() < 1e-4, name


def test_plain_forward_is_block_causal_with_32(llada2):
    ids = torch.randint(0, 94, (1, 40))
    with torch.no_grad():
        assert torch.equal(llada2(ids), llada2(ids, block_size=32))
        assert not torch.equal(llada2(ids), llada2(ids, block_size=8))


def test_fused_qkv_and_experts_land_where_the_official_model_uses_them(tmp_path):
    cfg, sd = llada2_official()
    m = load(write_checkpoint(str(tmp_path / "c"), cfg, sd))
    qkv = sd["model.layers.1.attention.query_key_value.weight"].float()
    assert torch.equal(m.layers[1].self_attn.q_proj.weight, qkv[:64])
    assert torch.equal(m.layers[1].self_attn.k_proj.weight, qkv[64:96])
    assert torch.equal(m.layers[1].self_attn.v_proj.weight, qkv[96:])
    experts = m.layers[2].mlp.experts
    assert torch.equal(experts.up_proj[5], sd["model.layers.2.mlp.experts.5.up_proj.weight"].float())
    assert torch.equal(experts.down_proj[0], sd["model.layers.2.mlp.experts.0.down_proj.weight"].float())
    assert torch.equal(m.layers[1].mlp.gate.expert_bias, sd["model.layers.1.mlp.gate.expert_bias"].float())
    assert torch.equal(m.layers[0].mlp.up_proj.weight, sd["model.layers.0.mlp.up_proj.weight"].float())
    assert isinstance(m.layers[0].mlp, M.MLP) and isinstance(m.layers[1].mlp, moe.SparseMoE)


def test_generation_config_and_config_ids(tmp_path):
    cfg, sd = llada2_official()
    del cfg["mask_token_id"]  # as the real config.json: no mask id, EOS only as pad_token_id
    folder = write_checkpoint(str(tmp_path / "c"), cfg, sd)
    m = load(folder)
    c = m.config
    assert (c.mask_token_id, c.eos_token_id, c.stop_ids, c.block_size) == (156895, 94, (94,), 32)
    json.dump({"eos_token_id": [93, 94]}, open(os.path.join(folder, "generation_config.json"), "w"))
    assert load(folder).config.stop_ids == (93, 94)
    # generation passes the mask id that config.json lacks (as the parity check does)
    x, _ = D.block_generate(m, torch.arange(1, 6), gen_length=8, block_length=4, denoising_steps=4,
                            mask_id=95, stop_ids=[])
    assert (x[0, 5:13] != 95).all()

# ---------------------------------------------------------------------------------------------------
# the experts: two formulations, one answer, and no host sync


def test_grouped_and_dense_experts_agree_with_a_loop():
    torch.manual_seed(0)
    N, k, E_, C, I = 10, 3, 8, 32, 16
    x, idx = torch.randn(N, C), torch.stack([torch.randperm(E_)[:k] for _ in range(N)])
    w = [torch.randn(E_, I, C), torch.randn(E_, I, C), torch.randn(E_, C, I)]
    loop = torch.stack([torch.stack([w[2][e] @ (torch.nn.functional.silu(w[0][e] @ x[n]) * (w[1][e] @ x[n]))
                                     for e in idx[n].tolist()]) for n in range(N)])
    assert (moe.experts_dense(x, idx, *w) - loop).abs().max() < 1e-3
    assert (moe.experts_grouped(x, idx, *w) - loop).abs().max() < 1e-3  # F.grouped_mm also runs fp32, eagerly
    xb, wb = x.bfloat16(), [t.bfloat16() for t in w]
    a, b = moe.experts_grouped(xb, idx, *wb).float(), moe.experts_dense(xb, idx, *wb).float()
    assert (a - b).abs().max() < 0.02 * loop.abs().max()


def test_bf16_model_runs_the_grouped_path_close_to_fp32(tmp_path, monkeypatch):
    folder = write_checkpoint(str(tmp_path / "c"), *llada2_official())
    m32, m16 = load(folder), load(folder, torch.bfloat16)
    calls = []
    monkeypatch.setattr(moe, "experts_grouped", lambda *a: calls.append(1) or moe_grouped(*a))
    ids = torch.randint(0, 94, (2, 12))
    with torch.no_grad():
        a, b = m32(ids), m16(ids)
    assert len(calls) == 2 and b.dtype == torch.bfloat16  # one call per MoE layer
    assert (a - b.float()).abs().max() < 0.1 * a.abs().max()


moe_grouped = moe.experts_grouped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_moe_layer_compiles_as_one_graph(llada2, dtype):
    """fullgraph=True fails on any host sync (.item(), .cpu(), a data-dependent shape): there is none."""
    layer = llada2.layers[1].mlp.to(dtype)
    x = torch.randn(2, 12, 32, dtype=dtype)
    try:
        with torch.no_grad():
            compiled = torch.compile(layer, fullgraph=True, backend="eager")
            assert torch.equal(compiled(x), layer(x))
    finally:
        layer.float()

# ---------------------------------------------------------------------------------------------------
# broken checkpoints: one line naming the file and the key or field


def broken(tmp_path, edit_cfg=None, edit_sd=None):
    cfg, sd = llada2_official()
    edit_cfg and edit_cfg(cfg)
    edit_sd and edit_sd(sd)
    return write_checkpoint(str(tmp_path / "broken"), cfg, sd, shards=2)


@pytest.mark.parametrize("what, edit_cfg, edit_sd, error, words", [
    ("missing expert", None, lambda sd: sd.pop("model.layers.2.mlp.experts.7.up_proj.weight"),
     KeyError, "missing keys ['model.layers.2.mlp.experts.7.up_proj.weight']"),
    ("a bias", None, lambda sd: sd.update({"model.layers.0.attention.dense.bias": torch.zeros(32)}),
     KeyError, "unknown keys ['model.layers.0.attention.dense.bias']"),
    ("fused q/k/v of the wrong size", None,
     lambda sd: sd.update({"model.layers.1.attention.query_key_value.weight": torch.zeros(100, 32)}),
     ValueError, "model.layers.1.attention.query_key_value.weight has shape [100, 32], expected [128, 32]"),
    ("expert beyond num_experts", lambda c: c.update(num_experts=4, n_group=2), None, KeyError,
     "unknown keys ['model.layers.1.mlp.experts.4.down_proj.weight'"),
    ("groups that do not divide", lambda c: c.update(n_group=3), None, ValueError, "n_group 3"),
    ("top_k beyond the kept groups", lambda c: c.update(num_experts_per_tok=5), None, ValueError,
     "num_experts_per_tok 5"),
    ("q/k/v bias", lambda c: c.update(use_qkv_bias=True), None, ValueError, "use_qkv_bias=True"),
    ("odd rotary dims", lambda c: c.update(partial_rotary_factor=0.1875), None, ValueError,
     "gives 3 rotated"),
    ("missing field", lambda c: c.pop("moe_intermediate_size"), None, ValueError,
     "missing field 'moe_intermediate_size'"),
])
def test_broken_checkpoints(tmp_path, what, edit_cfg, edit_sd, error, words):
    with pytest.raises(error) as e:
        load(broken(tmp_path, edit_cfg, edit_sd))
    assert words in str(e.value) and "\n" not in str(e.value), what
    assert "broken" in str(e.value), what  # names the folder or file


def test_saving_is_refused_in_one_line(llada2, tmp_path):
    with pytest.raises(NotImplementedError, match="saving LLaDA2.0"):
        M.save_pretrained(llada2, str(tmp_path / "out"))

# ---------------------------------------------------------------------------------------------------
# generation


def official_generate(m, prompt, gen_length, block_length, steps, threshold, eos_id, mask_id,
                      eos_early_stop=False):
    """A port of LLaDA2MoeModelLM.generate (batch 1, greedy as the maintainers' fix): no cache, the whole
    prefix recomputed under the block-causal mask every step. Returns (canvas, forwards)."""
    steps = min(steps, gen_length)
    L, nb = len(prompt), math.ceil((len(prompt) + gen_length) / block_length)
    x = torch.full((1, nb * block_length), mask_id)
    x[0, :L] = prompt
    quota = [block_length // steps + (i < block_length % steps) for i in range(steps)]
    nfe = 0
    for b in range(L // block_length, nb):
        end = (b + 1) * block_length
        for step in range(steps):
            active = x[0, end - block_length:end] == mask_id
            if not active.any():
                break
            logits = m(x[:, :end], block_size=block_length)[0, -block_length:].float()
            nfe += 1
            probs = logits.softmax(-1)
            x0 = probs.argmax(-1)
            conf = torch.where(active, probs.gather(-1, x0[:, None])[:, 0], -torch.inf)
            hot = conf > threshold
            take = hot if hot.sum() >= quota[step] else torch.zeros_like(hot).index_fill_(
                0, conf.topk(min(quota[step], int(active.sum()))).indices, True)
            x[0, end - block_length:end][take] = x0[take]
            if eos_early_stop and (x0[take] == eos_id).any():
                first = (x[0, :end] == eos_id).nonzero()[0, 0]
                if (x[0, L:first] != mask_id).all():
                    return x, nfe
        if (x[0, L:end] == eos_id).any():
            break
    return x, nfe


def frequent_token(m, prompt):
    """A token this random model generates often: a stop id that will come up."""
    x, _ = D.block_generate(m, prompt, gen_length=32, block_length=8, denoising_steps=8, stop_ids=[])
    return int(torch.mode(x[0, len(prompt):]).values)


@pytest.mark.parametrize("setting", [dict(block_length=8, steps=8, threshold=0.95),
                                     dict(block_length=8, steps=4, threshold=1.0),
                                     dict(block_length=4, steps=4, threshold=0.3),
                                     dict(block_length=8, steps=8, threshold=0.95, gen_length=6),
                                     dict(block_length=4, steps=7, threshold=0.9),  # quotas 1,1,1,1,0,0,0
                                     dict(block_length=8, steps=8, threshold=0.5, eos_early_stop=True),
                                     dict(block_length=8, steps=3, threshold=0.3, eos_early_stop=True,
                                          eos_in_prompt=True)])
def test_generation_matches_the_official_loop(llada2, setting):
    s = dict(setting)
    gen_length = s.pop("gen_length", 32)
    prompt = torch.randint(0, 90, (11,))
    eos = frequent_token(llada2, prompt)
    if s.pop("eos_in_prompt", False):
        prompt[3] = eos  # the official early stop looks from position 0: it ends at the first EOS committed
    want, nfe = official_generate(llada2, prompt, gen_length, s["block_length"], s["steps"], s["threshold"],
                                  eos, 95, s.get("eos_early_stop", False))
    got, stats = D.block_generate(llada2, prompt, gen_length=gen_length, block_length=s["block_length"],
                                  denoising_steps=s["steps"], threshold=s["threshold"], stop_ids=[eos],
                                  eos_early_stop=s.get("eos_early_stop", False))
    assert torch.equal(got, want) and stats["nfe"] == nfe


def test_eos_early_stop_keeps_the_answer_and_saves_forwards(llada2):
    """Nothing before the first EOS can change once it has no [MASK] before it: the same answer, and fewer
    forwards whenever the EOS block still had masks after the EOS."""
    saved = 0
    for _ in range(4):
        prompt = torch.randint(0, 90, (11,))
        kw = dict(gen_length=32, block_length=8, denoising_steps=8, threshold=0.5,
                  stop_ids=[frequent_token(llada2, prompt)])
        plain, s0 = D.block_generate(llada2, prompt, **kw)
        early, s1 = D.block_generate(llada2, prompt, eos_early_stop=True, **kw)
        n = s0["gen_tokens"][0]
        assert n < 32 and s1["gen_tokens"][0] == n and torch.equal(plain[0, :12 + n], early[0, :12 + n])
        assert s1["nfe"] <= s0["nfe"]
        saved += s1["nfe"] < s0["nfe"] and (early[0, 12 + n:] == 95).any()  # stopped mid-block
    assert saved


@pytest.mark.parametrize("early", [False, True])
def test_cache_batching_and_one_by_one_agree(llada2, early):
    prompts = [torch.randint(0, 90, (n,)) for n in (5, 12, 9)]
    eos = frequent_token(llada2, prompts[0])
    kw = dict(gen_length=24, block_length=8, denoising_steps=8, threshold=0.5, stop_ids=[eos],
              eos_early_stop=early)
    batch, sb = D.block_generate(llada2, prompts, **kw)
    nocache, _ = D.block_generate(llada2, prompts, use_cache=False, **kw)
    assert torch.equal(batch, nocache)
    for r, p in enumerate(prompts):
        one, s1 = D.block_generate(llada2, p, **kw)
        start = sb["gen_start"][r]
        assert torch.equal(batch[r, start - len(p):start + 24], one[0, :len(p) + 24])
        assert sb["nfe_per_sample"][r] == s1["nfe"]


def test_cached_forward_equals_the_whole_sequence(llada2):
    ids, L = torch.randint(0, 94, (2, 24)), 8
    with torch.no_grad():
        full = llada2(ids, block_size=L)
        cache = llada2.new_cache(2, 24)
        parts = [llada2(ids[:, :8], cache=cache, cache_start=0, block_size=L)]
        parts += [llada2(ids[:, s:s + L], cache=cache, cache_start=s, block_size=L) for s in (8, 16)]
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5
    with torch.no_grad():  # the rest of the forward contract: input embeddings in, the hidden state out
        logits, h = llada2(inputs_embeds=llada2.embed_tokens(ids), block_size=L, return_hidden=True)
    assert torch.equal(logits, full) and torch.allclose(llada2.lm_head(h), full)


def test_terminal_anchor_on_llada2(llada2):
    prompts = [torch.randint(0, 90, (n,)) for n in (6, 3)]
    plain, s0 = D.block_generate(llada2, prompts, gen_length=16, block_length=4, stop_ids=[])
    anchored, s1 = E.decode_elastic(llada2, prompts, gen_length=16, block_length=4, stop_ids=[])
    assert not torch.equal(plain, anchored) and (anchored != 95).all() and s0["nfe"] == s1["nfe"]
    off, _ = E.decode_elastic(llada2, prompts, gen_length=16, block_length=4, anchor=False, stop_ids=[])
    nocache, _ = E.decode_elastic(llada2, prompts, gen_length=16, block_length=4, stop_ids=[],
                                  use_cache=False)
    assert torch.equal(plain, off) and torch.equal(anchored, nocache)

# ---------------------------------------------------------------------------------------------------
# the real shape, and the command lines


def test_preset_has_the_real_shape():
    with torch.device("meta"):
        net = moe.build(M.PRESETS["llada2-mini"])
    total = sum(p.numel() for p in net.parameters())
    assert 16.0e9 < total < 16.5e9 and net.layers[1].mlp.experts.gate_proj.shape == (256, 512, 2048)
    assert isinstance(net.layers[0].mlp, M.MLP) and net.layers[0].mlp.up_proj.weight.shape == (5120, 2048)
    assert net.layers[3].self_attn.k_proj.weight.shape == (512, 2048) and net.config.rope_dim == 64


def test_built_on_meta_and_initialised_as_bench_does():
    """bench.py's random models: built on the meta device, allocated with to_empty, then init_weights.
    Everything must be covered (the expert bias too: an uninitialised one would route on garbage)."""
    cfg = replace(M.PRESETS["llada2-mini"], vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_kv_head=2,
                  head_dim=16, rope_dim=8, intermediate_size=96, mask_token_id=127, eos_token_id=126,
                  moe=replace(M.PRESETS["llada2-mini"].moe, n_experts=16, intermediate_size=32))
    with torch.device("meta"):
        net = moe.build(cfg)
    assert any(p is net.layers[1].mlp.gate.expert_bias for p in net.parameters())  # what init_weights covers
    net = net.to_empty(device="cpu")
    net.init_weights()
    with torch.no_grad():
        assert torch.isfinite(net(torch.randint(0, 126, (1, 64)))).all()


def test_command_lines(tmp_path):
    out = subprocess.run([sys.executable, "moe.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "16.26B parameters, 1.43B active per token (0.79B without" in out.stdout  # Ling's card: 1.4B, 789M
    folder = write_checkpoint(str(tmp_path / "c"), *llada2_official())
    out = subprocess.run([sys.executable, "model.py", folder, "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "llada2" in out.stdout and "logits (1, 8, 96)" in out.stdout

def llada2_with_ling_tokenizer(folder):
    """A tiny LLaDA2.0 checkpoint with a small Ling-2.0-format tokenizer beside it (ids as the test's)."""
    from test_tokenizer import LING_PATTERN, LING_SPECIALS, LING_TEMPLATE, write_tokenizer
    cfg, sd = llada2_official(vocab=320)
    cfg.update(pad_token_id=300, mask_token_id=301)  # <|endoftext|>, <|mask|>
    write_checkpoint(folder, cfg, sd)
    edit = lambda s: s["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=LING_PATTERN)
    write_tokenizer(folder, [(" ", "t")], added=LING_SPECIALS, edit=edit,
                    config={"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                            "mask_token": "<|mask|>", "chat_template": LING_TEMPLATE,
                            "_plain": ["<think>", "</think>"]})
    return folder


@pytest.mark.slow
def test_eval_runs_what_applies_to_llada2_and_refuses_the_rest(tmp_path):
    """eval.py on a LLaDA2.0 checkpoint: threshold decoding in the checkpoint's block size (32, not LLaDA's
    8), with and without --eos-early-stop (the same answers); rcd and mrp refused in one line before any
    weight loads; --eos-early-stop refused for LLaDA."""
    folder = llada2_with_ling_tokenizer(str(tmp_path / "ling"))
    run = lambda *a: subprocess.run([sys.executable, "eval.py", "--model", folder, "--limit", "2", *a],
                                    cwd=ROOT, capture_output=True, text=True)
    outs = []
    for extra in ([], ["--eos-early-stop"]):
        samples = str(tmp_path / f"s{len(outs)}.jsonl")
        out = run("--method", "threshold", "--thresholds", "0.9", "--samples", samples, *extra)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "blocks of 32" in out.stdout
        outs.append([json.loads(line)["output"] for line in open(samples)])
    assert outs[0] == outs[1]
    for method in ("rcd", "mrp-spec"):
        out = run("--method", method, "--no-compare")
        assert out.returncode != 0 and "LLaDA2.0 runs baseline, threshold and elastic" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "model:" not in out.stdout  # nothing loaded
    out = subprocess.run([sys.executable, "eval.py", "--limit", "2", "--eos-early-stop"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "--eos-early-stop is LLaDA2.0's" in out.stderr


# ---------------------------------------------------------------------------------------------------
# on a GPU (skipped without one): the CPU's numbers in float32, and F.grouped_mm at the real shape

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_float32_matches_the_cpu_and_bf16_stays_close(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # float32 must mean float32
    folder = write_checkpoint(str(tmp_path / "c"), *llada2_official())
    cpu, gpu, half = load(folder), M.from_pretrained(folder, "cuda", torch.float32), \
        M.from_pretrained(folder, "cuda", torch.bfloat16)
    ids = torch.randint(0, 94, (2, 24))
    with torch.no_grad():
        ref, out, low = cpu(ids), gpu(ids.cuda()).cpu(), half(ids.cuda()).float().cpu()
    assert (out - ref).abs().max() < 1e-4 * max(1.0, ref.abs().max().item())
    assert (low - ref).abs().mean() < 0.05 * ref.std()  # bf16 runs the grouped matmul
    kw = dict(gen_length=16, block_length=8, denoising_steps=8, threshold=0.5, stop_ids=[])
    prompts = [torch.randint(0, 90, (n,)) for n in (5, 11)]
    assert torch.equal(D.block_generate(cpu, prompts, **kw)[0], D.block_generate(gpu, prompts, **kw)[0].cpu())


@cuda
def test_cuda_grouped_matmul_at_the_real_shape_and_compiled():
    cfg = M.PRESETS["llada2-mini"]
    layer = moe.SparseMoE(cfg).to("cuda", torch.bfloat16)
    torch.manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, 32, cfg.n_embd, device="cuda", dtype=torch.bfloat16)  # a block of 32 per sample
    h = x.view(-1, cfg.n_embd)
    idx, _ = layer.gate(h)
    e = layer.experts
    a = moe.experts_grouped(h, idx, e.gate_proj, e.up_proj, e.down_proj).float()
    b = moe.experts_dense(h, idx, e.gate_proj, e.up_proj, e.down_proj).float()
    assert (a - b).abs().max() < 0.02 * b.abs().max()
    with torch.no_grad():
        eager, compiled = layer(x), torch.compile(layer, fullgraph=True)(x)
    assert (compiled.float() - eager.float()).abs().max() < 0.02 * eager.float().abs().max()
