"""model.py: loading official-format checkpoints (and refusing broken ones), and the forward's
equivalences: an independent LLaDA oracle, the recorded SDAR reference, caches, positions, padding."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import model as M
from conftest import ROOT, llada_official, sdar_official, write_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def load(folder, dtype=torch.float32):
    return M.from_pretrained(folder, device="cpu", dtype=dtype)


# ---------------------------------------------------------------------------------------------------
# key maps


def test_llada_keys_land_where_the_official_model_uses_them(tmp_path):
    cfg, sd = llada_official()
    m = load(write_checkpoint(str(tmp_path / "c"), cfg, sd))
    got = lambda t: t.detach()
    want = lambda k: sd[k].float()
    block = "model.transformer.blocks."
    assert torch.equal(got(m.layers[1].mlp.gate_proj.weight), want(block + "1.ff_proj.weight"))
    assert torch.equal(got(m.layers[1].mlp.down_proj.weight), want(block + "1.ff_out.weight"))
    assert torch.equal(got(m.lm_head.weight), want("model.transformer.ff_out.weight"))
    assert torch.equal(got(m.layers[0].self_attn.o_proj.weight), want(block + "0.attn_out.weight"))
    assert m.config.family == "llada" and m.config.block_size is None


def test_sdar_gqa_head_dim_and_untied_head(tmp_path):
    # 4*16 = 64 != 48: head_dim is independent
    cfg, sd = sdar_official(d=48, heads=4, kv_heads=2, head_dim=16)
    m = load(write_checkpoint(str(tmp_path / "c"), cfg, sd))
    assert m.layers[0].self_attn.q_proj.weight.shape == (64, 48)
    assert m.layers[0].self_attn.k_proj.weight.shape == (32, 48)
    assert torch.equal(m.lm_head.weight.detach(), sd["lm_head.weight"].float())
    assert m.lm_head.weight is not m.embed_tokens.weight


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_sharded_checkpoint_equals_single_file(tmp_path, family):
    cfg, sd = (llada_official if family == "llada" else sdar_official)()
    one = load(write_checkpoint(str(tmp_path / "one"), cfg, sd))
    three = load(write_checkpoint(str(tmp_path / "three"), cfg, sd, shards=3))
    ids = torch.randint(0, 60, (2, 11))
    with torch.no_grad():
        assert torch.equal(one(ids), three(ids))


def test_tied_head_is_the_embedding(tmp_path, capsys):
    cfg, sd = sdar_official(tied=True)
    m = load(write_checkpoint(str(tmp_path / "tied"), cfg, sd))
    assert m.lm_head.weight is m.embed_tokens.weight
    # untied in config.json but no head in the file: tie, and say so (SDAR-1.7B's open question)
    cfg["tie_word_embeddings"] = False
    m = load(write_checkpoint(str(tmp_path / "nohead"), cfg, sd))
    assert m.lm_head.weight is m.embed_tokens.weight and "tied" in capsys.readouterr().out
    # tied, and a copy of the head saved anyway (Hugging Face does this): ignored
    cfg["tie_word_embeddings"], sd["lm_head.weight"] = True, sd["model.embed_tokens.weight"].clone()
    m = load(write_checkpoint(str(tmp_path / "copy"), cfg, sd))
    assert m.lm_head.weight is m.embed_tokens.weight


def test_save_pretrained_round_trip_in_official_names(tmp_path):
    for family, (cfg, sd) in {"llada": llada_official(), "sdar": sdar_official()}.items():
        m = load(write_checkpoint(str(tmp_path / family), cfg, sd))
        M.save_pretrained(m, str(tmp_path / (family + "_saved")), max_shard_bytes=20_000)
        assert os.path.exists(tmp_path / (family + "_saved") / "model.safetensors.index.json")
        keys = set()
        for f in os.listdir(tmp_path / (family + "_saved")):
            if f.endswith(".safetensors"):
                keys |= set(load_file(str(tmp_path / (family + "_saved") / f)))
        assert keys == set(sd)  # exactly the official key names
        again = load(str(tmp_path / (family + "_saved")))
        ids = torch.randint(0, 60, (1, 9))
        with torch.no_grad():
            assert torch.equal(m(ids), again(ids))

# ---------------------------------------------------------------------------------------------------
# broken checkpoints fail with one clear line


def broken(tmp_path, edit_cfg=None, edit_sd=None, shards=1):
    cfg, sd = sdar_official()
    if edit_cfg:
        edit_cfg(cfg)
    if edit_sd:
        edit_sd(sd)
    return write_checkpoint(str(tmp_path / "broken"), cfg, sd, shards)


@pytest.mark.parametrize("what, make, error, words", [
    ("missing key", lambda t: broken(t, edit_sd=lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight")),
     KeyError, "missing keys ['model.layers.1.mlp.up_proj.weight']"),  # the checkpoint's own name
    ("unknown key",
     lambda t: broken(t, edit_sd=lambda sd: sd.update({"model.layers.0.extra.weight": torch.zeros(2)})),
     KeyError, "unknown keys ['model.layers.0.extra.weight']"),
    ("layer beyond the config", lambda t: broken(t, edit_cfg=lambda c: c.update(num_hidden_layers=1)),
     KeyError, "model.layers.1."),
    ("wrong shape", lambda t: broken(t, edit_sd=lambda sd: sd.update({"model.norm.weight": torch.ones(47)})),
     ValueError, "model.norm.weight has shape [47], expected [48]"),
    ("unknown model_type", lambda t: broken(t, edit_cfg=lambda c: c.update(model_type="llama")),
     ValueError, "unknown model_type 'llama'"),
    ("unsupported setting", lambda t: broken(t, edit_cfg=lambda c: c.update(rope_scaling={"type": "yarn"})),
     ValueError, "rope_scaling"),
])
def test_broken_checkpoint_errors(tmp_path, what, make, error, words):
    folder = make(tmp_path)
    with pytest.raises(error) as e:
        load(folder)
    assert words in str(e.value), what


def test_missing_files_and_paths(tmp_path):
    folder = broken(tmp_path, shards=2)
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    with pytest.raises(FileNotFoundError,
                       match="model-00002-of-00002.safetensors: shard named in the index is missing"):
        load(folder)
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load(folder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load(str(tmp_path / "does" / "not" / "exist"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load(str(empty))
    (empty / "config.json").write_text('{"model_type": "sdar"}')
    with pytest.raises(ValueError, match="config.json: missing field 'hidden_size'"):
        load(str(empty))
    (empty / "config.json").write_text(json.dumps(sdar_official()[0]))
    with pytest.raises(FileNotFoundError, match="no model.safetensors or model.safetensors.index.json"):
        load(str(empty))


def test_truncated_file(tmp_path):
    folder = broken(tmp_path)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="model.safetensors: unreadable safetensors file"):
        load(folder)

# ---------------------------------------------------------------------------------------------------
# numerics


def llada_oracle(cfg, sd, ids):
    """LLaDA's forward written independently from the official description (LLaDA's modeling_llada.py:
    LLaDALlamaBlock, RotaryEmbedding), in fp64, straight from the official key names: pre-norm blocks,
    fp32-style full-precision RoPE, no mask."""
    W = {k: v.double() for k, v in sd.items()}
    d, H = cfg["d_model"], cfg["n_heads"]
    hd, T = d // H, ids.shape[1]
    norm = lambda x, w: x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg["rms_norm_eps"]) * w
    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]          # (T, hd/2)
    cos, sin = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)      # rotate-half layout
    rot = lambda x: x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin
    x = W["model.transformer.wte.weight"][ids]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        u = norm(x, W[p + "attn_norm.weight"])
        q, k, v = (torch.einsum("btc,oc->bto", u, W[p + n + ".weight"]).unflatten(-1, (H, hd))
                   for n in ("q_proj", "k_proj", "v_proj"))
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", rot(q.transpose(1, 2)).transpose(1, 2),
                                         rot(k.transpose(1, 2)).transpose(1, 2)) / math.sqrt(hd), -1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", att, v).flatten(2) @ W[p + "attn_out.weight"].T
        u = norm(x, W[p + "ff_norm.weight"])
        g, up = u @ W[p + "ff_proj.weight"].T, u @ W[p + "up_proj.weight"].T
        x = x + (g * torch.sigmoid(g) * up) @ W[p + "ff_out.weight"].T
    return norm(x, W["model.transformer.ln_f.weight"]) @ W["model.transformer.ff_out.weight"].T


def test_llada_matches_an_independent_oracle(tmp_path):
    cfg, sd = llada_official()
    m = load(write_checkpoint(str(tmp_path / "c"), cfg, sd))
    ids = torch.randint(0, 90, (2, 13))
    with torch.no_grad():
        got = m(ids).double()
    assert (got - llada_oracle(cfg, sd, ids)).abs().max() < 1e-4


def test_sdar_matches_the_recorded_official_forward():
    # shared/fixtures/sdar copied here: the output of JetAstra/SDAR's modeling_sdar.py on a tiny checkpoint
    m = load(os.path.join(FIXTURES, "sdar", "checkpoint"))
    ref = load_file(os.path.join(FIXTURES, "sdar", "forward.safetensors"))
    with torch.no_grad():
        logits = m(ref["input_ids"])
    assert (logits[..., ref["cols"].long()] - ref["logits_cols"]).abs().max() < 2e-4
    assert torch.equal(logits.argmax(-1), ref["argmax"])


def test_sdar_attention_is_block_causal_from_position_zero(sdar_dir):
    m = load(sdar_dir)  # block_size 4
    ids = torch.randint(0, 70, (1, 12))
    other = ids.clone()
    other[0, 9] += 1  # a token in block 2 (positions 8..11)
    with torch.no_grad():
        a, b = m(ids), m(other)
    assert torch.equal(a[0, :8], b[0, :8])               # earlier blocks never see later ones
    assert not torch.allclose(a[0, 8:], b[0, 8:])         # the whole own block does (bidirectional inside)
    with torch.no_grad():  # a generation's own block length overrides config.json's
        assert not torch.allclose(m(ids, block_size=6)[0, 6:8], m(other, block_size=6)[0, 6:8])


def test_sdar_block_cache_is_exact(sdar_dir):
    """Prefill whole blocks, then decode block by block against the cache: the same logits as one
    whole-sequence forward with the block-causal mask (a finished block never attends to later ones)."""
    m = load(sdar_dir)
    ids, L = torch.randint(0, 70, (2, 16)), 4
    with torch.no_grad():
        full = m(ids, block_size=L)
        cache = m.new_cache(2, 16)
        parts = [m(ids[:, :8], cache=cache, cache_start=0, block_size=L)]
        for s in (8, 12):
            parts.append(m(ids[:, s:s + L], cache=cache, cache_start=s, block_size=L))
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


def test_llada_prefix_and_dual_cache_reproduce_the_full_forward(llada_dir):
    m = load(llada_dir)
    ids = torch.randint(0, 90, (1, 20))
    with torch.no_grad():
        full = m(ids)
        cache = m.new_cache(1, 20)
        m(ids, cache=cache)                                           # block-start forward fills every slot
        tail = m(ids[:, 12:], cache=cache, cache_start=12)            # prefix cache: feed the tail
        block = m(ids[:, 4:8], cache=cache, cache_start=4, kv_end=20)  # dual cache: feed one block
    assert (tail - full[:, 12:]).abs().max() < 1e-5
    assert (block - full[:, 4:8]).abs().max() < 1e-5


def test_cache_offsets_as_tensors_attend_to_the_whole_cache_with_the_same_logits(sdar_dir):
    """What a compiled step does (model.compile_forward): cache_start / kv_end as 0-d tensors, attention over
    every slot with the tail masked, so the shapes never depend on the step. Stale keys past the chunk
    (left by a longer earlier write, as MRP's verification leaves them) stay hidden."""
    m, L = load(sdar_dir), 4
    ids = torch.randint(0, 70, (2, 16))
    as_tensor = lambda i: torch.tensor(i)
    with torch.no_grad():
        full = m(ids, block_size=L)
        cache = m.new_cache(2, 16)
        m(ids[:, :8], cache=cache, block_size=L)  # prefill
        # slots 12..15 at positions 0..3, which block 2 could see by position
        junk = torch.randint(0, 70, (2, 4))
        m(junk, position_ids=torch.arange(4), cache=cache, cache_start=as_tensor(12), block_size=L)
        parts = [m(ids[:, s:s + L], cache=cache, cache_start=as_tensor(s), block_size=L) for s in (8, 12)]
        dual = m(ids[:, 4:8], cache=cache, cache_start=as_tensor(4), kv_end=as_tensor(16), block_size=L)
    assert len(cache) == M.CACHE_ROUND  # 16 slots asked for, rounded up; the extra ones are never seen
    assert (torch.cat(parts, 1) - full[:, 8:]).abs().max() < 1e-5 and (dual - full[:, 4:8]).abs().max() < 1e-5


def test_new_cache_reuses_the_buffers_of_a_dropped_cache_only(sdar_dir):
    m = load(sdar_dir)
    first = m.new_cache(2, 40)
    with torch.no_grad():
        m(torch.randint(0, 70, (2, 8)), cache=first, block_size=4)
    held = m.new_cache(2, 40)  # `first` is still held: new buffers
    assert held.k[0].data_ptr() != first.k[0].data_ptr()
    address = held.k[0].data_ptr()
    del first, held
    again = m.new_cache(2, 40)  # a CUDA graph replays on fixed addresses: the same buffers, cleared
    assert again.k[0].data_ptr() == address and not again.valid.any() and not any(k.any() for k in again.k)
    assert m.new_cache(3, 40).pos.shape[0] == 3


def test_rotary_tables_are_built_once_and_stay_fp32(sdar_dir):
    m = load(sdar_dir)
    assert m.rope_cos.shape == (m.config.max_seq_len, m.config.head_dim) and "rope_cos" not in m.state_dict()
    cos = m.rope_cos.clone()
    m.to(torch.bfloat16)  # moves the tables with the model, but LLaDA rotates in fp32: they are not rounded
    assert m.rope_cos.dtype == torch.float32 and torch.equal(m.rope_cos, cos)
    m.to_empty(device="cpu")  # uninitialised weights, but tables rebuilt
    assert torch.equal(m.rope_cos, cos)


def test_left_padding_hides_pad_keys_and_keeps_positions(llada_dir):
    """Oct-2025 LLaDA: pads are hidden as keys, positions still count them. So a padded row equals the
    unpadded sequence run at positions shifted by the padding."""
    m = load(llada_dir)
    ids = torch.randint(0, 90, (1, 10))
    padded = torch.cat([torch.full((1, 3), 94), ids], 1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], 1).long()
    with torch.no_grad():
        a = m(padded, attention_mask=mask)[:, 3:]
        b = m(ids, position_ids=torch.arange(3, 13))
        assert (a - b).abs().max() < 1e-5
        assert torch.equal(m(ids, attention_mask=torch.ones(1, 10)), m(ids))  # all-ones = no mask


def test_inputs_embeds_and_hidden_state(llada_dir):
    m = load(llada_dir)
    ids = torch.randint(0, 90, (2, 7))
    with torch.no_grad():
        logits, h = m(ids, return_hidden=True)
        assert torch.equal(m(inputs_embeds=m.embed_tokens(ids)), logits)
        assert torch.allclose(m.lm_head(h), logits)


def test_bf16_runs_close_to_fp32(sdar_dir):
    m32, m16 = load(sdar_dir), load(sdar_dir, torch.bfloat16)
    ids = torch.randint(0, 70, (1, 12))
    with torch.no_grad():
        a, b = m32(ids), m16(ids)
    assert b.dtype == torch.bfloat16 and (a - b.float()).abs().max() < 0.1 * a.abs().max()


def test_loading_makes_no_second_copy(tmp_path):
    """Peak RSS of a load in a fresh process, above what a first tiny load leaves, stays under 1.3x the
    checkpoint. The tiny load pages in torch's code first: with a CUDA build of torch that alone added
    70 MB (seen on an H100 machine with torch 2.11), more than the margin this 67 MB checkpoint allows."""
    cfg, sd = sdar_official(d=512, heads=8, kv_heads=4, head_dim=64, layers=8, mlp=1536, vocab=8000)
    folder = write_checkpoint(str(tmp_path / "big"), cfg, sd, shards=4)
    small = write_checkpoint(str(tmp_path / "small"), *sdar_official())
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f.endswith(".safetensors"))
    code = ("import torch, model\n"
            "rss = lambda f: int(open('/proc/self/status').read().split(f + ':')[1].split()[0]) * 1024\n"
            f"model.from_pretrained({small!r}, device='cpu', dtype=torch.bfloat16)\n"
            "base = rss('VmHWM')\n"
            f"m = model.from_pretrained({folder!r}, device='cpu', dtype=torch.bfloat16)\n"
            "print(rss('VmHWM') - base)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) < 1.3 * size


def test_cli_smoke(sdar_dir):
    out = subprocess.run([sys.executable, "model.py", sdar_dir, "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "logits (1, 8, 80)" in out.stdout, out.stderr
