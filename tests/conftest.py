"""Shared test helpers: the repository root on sys.path (flat scripts, no package), tiny checkpoints
written in the *official* on-disk formats with hand-written key names (deliberately not model.py's key
map, so a wrong map fails the tests), and group_alive for the sandbox's tests."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def llada_official(d=32, heads=4, layers=2, mlp=48, vocab=96, tied=False, seed=0):
    """(config.json dict, {official key: tensor}) for a tiny LLaDA-8B-shaped checkpoint."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.3).to(torch.bfloat16)
    cfg = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": d, "n_heads": heads,
           "n_kv_heads": heads, "n_layers": layers, "mlp_hidden_size": mlp, "mlp_ratio": 4,
           "vocab_size": vocab, "embedding_size": vocab, "rope_theta": 500000.0, "rope_full_precision": True,
           "max_sequence_length": 128, "rms_norm_eps": 1e-5, "weight_tying": tied, "mask_token_id": vocab - 1,
           "eos_token_id": vocab - 2, "pad_token_id": vocab - 2, "block_type": "llama",
           "activation_type": "silu", "layer_norm_type": "rms", "include_bias": False, "rope": True,
           "alibi": False, "attention_layer_norm": False}
    sd = {"model.transformer.wte.weight": r(vocab, d), "model.transformer.ln_f.weight": 1 + r(d)}
    if not tied:
        sd["model.transformer.ff_out.weight"] = r(vocab, d)
    for i in range(layers):
        p = f"model.transformer.blocks.{i}."
        sd.update({p + "attn_norm.weight": 1 + r(d), p + "ff_norm.weight": 1 + r(d),
                   p + "q_proj.weight": r(d, d), p + "k_proj.weight": r(d, d), p + "v_proj.weight": r(d, d),
                   p + "attn_out.weight": r(d, d), p + "ff_proj.weight": r(mlp, d),
                   p + "up_proj.weight": r(mlp, d), p + "ff_out.weight": r(d, mlp)})
    return cfg, sd


def sdar_official(d=48, heads=4, kv_heads=2, head_dim=16, layers=2, mlp=64, vocab=80, tied=False,
                  block_size=4, seed=0):
    """(config.json dict, {official key: tensor}) for a tiny SDAR (Qwen3 layout) checkpoint with GQA."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.3).to(torch.bfloat16)
    cfg = {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_size": d,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
           "num_hidden_layers": layers, "intermediate_size": mlp, "vocab_size": vocab, "rope_theta": 1000000,
           "rms_norm_eps": 1e-6, "max_position_embeddings": 512, "tie_word_embeddings": tied,
           "block_size": block_size, "mask_token_id": vocab - 1, "eos_token_id": vocab - 2,
           "rope_scaling": None, "attention_bias": False, "hidden_act": "silu"}
    sd = {"model.embed_tokens.weight": r(vocab, d), "model.norm.weight": 1 + r(d)}
    if not tied:
        sd["lm_head.weight"] = r(vocab, d)
    for i in range(layers):
        sd.update(qwen3_layer(f"model.layers.{i}.", r, d, heads, kv_heads, head_dim, mlp))
    return cfg, sd


def qwen3_layer(p, r, d, heads, kv_heads, head_dim, mlp):
    """One Qwen3/SDAR decoder layer's weights under the official names (also an MRP head's layers)."""
    return {p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
            p + "self_attn.q_proj.weight": r(heads * head_dim, d),
            p + "self_attn.k_proj.weight": r(kv_heads * head_dim, d),
            p + "self_attn.v_proj.weight": r(kv_heads * head_dim, d),
            p + "self_attn.o_proj.weight": r(d, heads * head_dim),
            p + "self_attn.q_norm.weight": 1 + r(head_dim), p + "self_attn.k_norm.weight": 1 + r(head_dim),
            p + "mlp.gate_proj.weight": r(mlp, d), p + "mlp.up_proj.weight": r(mlp, d),
            p + "mlp.down_proj.weight": r(d, mlp)}


def llada2_official(d=32, heads=4, kv_heads=2, head_dim=16, layers=3, dense=1, mlp=48, experts=8, top_k=2,
                    n_group=4, topk_group=2, moe_mlp=16, shared=1, vocab=96, tied=False, seed=0):
    """(config.json dict, {official key: tensor}) for a tiny LLaDA2.0 (llada2_moe) checkpoint: fused q/k/v,
    q/k norms, `dense` dense layers, then MoE layers storing every expert apart. Router weights are large
    enough that tokens pick different experts (as the shared fixture's)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, std=0.3: (torch.randn(*s, generator=g) * std).to(torch.bfloat16)
    cfg = {"model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "hidden_size": d,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
           "num_hidden_layers": layers, "intermediate_size": mlp, "moe_intermediate_size": moe_mlp,
           "num_experts": experts, "num_experts_per_tok": top_k, "n_group": n_group, "topk_group": topk_group,
           "num_shared_experts": shared, "first_k_dense_replace": dense, "routed_scaling_factor": 2.5,
           "partial_rotary_factor": 0.5, "rope_theta": 600000, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 256, "vocab_size": vocab, "tie_word_embeddings": tied,
           "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False, "score_function": "sigmoid",
           "pad_token_id": vocab - 2,  # the real file's EOS (pad = EOS)
           "mask_token_id": vocab - 1}  # the real file has none (model.llada2_config); a tiny vocab needs one
    sd = {"model.word_embeddings.weight": r(vocab, d), "model.norm.weight": 1 + r(d, std=0.1)}
    if not tied:
        sd["lm_head.weight"] = r(vocab, d)
    swiglu = lambda p, width: {p + "gate_proj.weight": r(width, d), p + "up_proj.weight": r(width, d),
                               p + "down_proj.weight": r(d, width)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": 1 + r(d, std=0.1),
                   p + "post_attention_layernorm.weight": 1 + r(d, std=0.1),
                   p + "attention.query_key_value.weight": r((heads + 2 * kv_heads) * head_dim, d),
                   p + "attention.query_layernorm.weight": 1 + r(head_dim, std=0.1),
                   p + "attention.key_layernorm.weight": 1 + r(head_dim, std=0.1),
                   p + "attention.dense.weight": r(d, heads * head_dim)})
        if i < dense:
            sd.update(swiglu(p + "mlp.", mlp))
            continue
        sd.update({p + "mlp.gate.weight": r(experts, d, std=0.5),
                   p + "mlp.gate.expert_bias": r(experts, std=0.1)})
        for e in range(experts):
            sd.update(swiglu(f"{p}mlp.experts.{e}.", moe_mlp))
        if shared:
            sd.update(swiglu(p + "mlp.shared_experts.", moe_mlp * shared))
    return cfg, sd


def write_checkpoint(folder, cfg, sd, shards=1):
    """Write config.json and model.safetensors, or `shards` files plus model.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    keys = list(sd)
    if shards == 1:
        save_file(sd, os.path.join(folder, "model.safetensors"))
        return folder
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i::shards]}
        save_file(part, os.path.join(folder, name))
        weight_map.update({k: name for k in part})
    json.dump({"metadata": {"total_size": sum(t.nbytes for t in sd.values())}, "weight_map": weight_map},
              open(os.path.join(folder, "model.safetensors.index.json"), "w"))
    return folder


# The slowest tests (pytest --durations) stay out of the quick suite: python -m pytest -q -m "not slow" tests;
# the full suite runs them all. Tests in test_decode.py and test_train_eval.py carry @pytest.mark.slow; these,
# in files being rewritten elsewhere, are marked here by name until their files carry the marker themselves
# (test_budgets.py checks that every name still names a test).
SLOW = {"test_model.py": ("test_cli_smoke", "test_loading_makes_no_second_copy")}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.originalname in SLOW.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global RNG state: tests draw random prompts, and a result must not
    depend on which tests ran before (a random model can, e.g., pick the [MASK] id itself for some
    prompts)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def llada(tmp_path_factory):
    """A tiny random LLaDA model (vocabulary 96, mask 95, max 128 positions), loaded once per test run."""
    import model as M
    folder = write_checkpoint(str(tmp_path_factory.mktemp("llada")), *llada_official(vocab=96))
    return M.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="session")
def sdar(tmp_path_factory):
    """A tiny random SDAR model (vocabulary 80, mask 79, GQA, block 4), loaded once per test run."""
    import model as M
    folder = write_checkpoint(str(tmp_path_factory.mktemp("sdar")), *sdar_official(vocab=80))
    return M.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="session")
def llada2(tmp_path_factory):
    """A tiny random LLaDA2.0 model (vocabulary 96, mask 95, EOS 94; a dense and two MoE layers)."""
    import model as M
    folder = write_checkpoint(str(tmp_path_factory.mktemp("llada2")), *llada2_official())
    return M.from_pretrained(folder, device="cpu")


@pytest.fixture
def llada_dir(tmp_path):
    return write_checkpoint(str(tmp_path / "llada"), *llada_official())


@pytest.fixture
def sdar_dir(tmp_path):
    return write_checkpoint(str(tmp_path / "sdar"), *sdar_official())


def group_alive(pgid):
    """Live (non-zombie) processes of process group `pgid`, read from /proc (tests of the sandbox)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, pgrp, ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(pid))
    return alive
