"""torch.compile over every forward the decoders make: one graph each (fullgraph=True, so a graph break
would be an error), the same logits as eager, and compiled decoding giving eager's tokens.

Most tests trace with backend="eager" (dynamo captures the graph and runs it op by op: seconds per graph).
The `slow` ones generate code with inductor, as `--compile` does (about a minute per graph on 2 cores), and
check the decoders' tokens through it. compile_forward hands the decoders' cache offsets to the graph as
tensors, so a compiled step attends to the whole (rounded-up) cache with the tail masked: its logits differ
from eager in the last bits (accumulation order), its tokens do not (here)."""
import os

import pytest
import torch

import decode as D
import mask_compress
import model as M
import mrp
import residual
from bench import tiny_prompts
from conftest import llada_official, sdar_official, write_checkpoint

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


def load(name, backend=None):
    """An embedded model (or a model given), compiled in place with `backend`, or eager (None)."""
    m = M.from_pretrained(os.path.join(HERE, name), "cpu", torch.float32) if isinstance(name, str) else name
    return M.compile_forward(m, backend=backend) if backend else m


def prompts(name, n=3):
    return tiny_prompts(os.path.join(HERE, name), n)


def close(a, b):
    return (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def tiny(tmp_path, family):
    """A fresh 2-layer random model in the official format (conftest): quick to trace, and patched by
    compile_forward without touching the session's shared models."""
    cfg, sd = llada_official() if family == "llada" else sdar_official()
    return M.from_pretrained(write_checkpoint(str(tmp_path / family), cfg, sd), "cpu")


def calls(family, V):
    """(name, kwargs) of every kind of forward the decoders make, on a ragged batch of 2."""
    ids = torch.randint(0, V - 2, (2, 40))
    pad = torch.ones(2, 40, dtype=torch.long)
    pad[0, :5] = 0
    cached = lambda lo, hi, **kw: dict(input_ids=ids[:, lo:hi], attention_mask=pad[:, lo:hi],
                                       position_ids=torch.arange(lo, hi), cache=40, cache_start=lo, **kw)
    if family == "llada":
        return [("whole canvas", dict(input_ids=ids)), ("padded", dict(input_ids=ids, attention_mask=pad)),
                ("cache fill", cached(0, 40, kv_end=40)), ("prefix cache", cached(24, 40, kv_end=40)),
                ("dual cache", cached(16, 24, kv_end=40))]
    pos = (torch.arange(40) - torch.tensor([[8], [0]])).clamp(min=0)  # sample 0 shifted right by two blocks
    pad = torch.cat([torch.arange(40)[None] >= 8, torch.ones(1, 40, dtype=torch.bool)])
    block = lambda lo, hi, **kw: dict(cached(lo, hi, block_size=4, **kw), position_ids=pos[:, lo:hi])
    return [("whole, block-causal", dict(input_ids=ids, attention_mask=pad, position_ids=pos, block_size=4)),
            ("prefill", block(0, 16, return_hidden=True)), ("block step", block(16, 20)),
            ("store pass", block(16, 20, return_hidden=True))]


def run_calls(m, family):
    """The outputs of calls(family) in order, one cache carried from call to call as the decoders do."""
    torch.manual_seed(0)
    cache, outs = None, []
    with torch.no_grad():
        for _, kw in calls(family, m.config.vocab_size):
            if kw.get("cache"):
                cache = cache or m.new_cache(2, kw["cache"])
                kw = {**kw, "cache": cache}
            outs.append(m(**kw))
    return outs


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_every_forward_compiles_to_one_graph_with_eager_logits(tmp_path, family):
    eager = run_calls(tiny(tmp_path, family), family)
    traced = run_calls(load(tiny(tmp_path, family), "eager"), family)
    for (what, _), a, b in zip(calls(family, 10), traced, eager):
        for x, y in zip(a, b) if isinstance(a, tuple) else [(a, b)]:  # logits (and the hidden state)
            assert close(x, y), what


def test_rcd_embeddings_and_mrp_hidden_state_compile_to_one_graph(tmp_path):
    backbone = tiny(tmp_path, "sdar")
    head = mrp.MRP(backbone.config, n_layers=1)
    head.init_weights()
    ids = torch.randint(0, 70, (2, 8))
    hook = lambda x, input_ids, weight: x + 0.5 * weight[input_ids]  # RCD's training edits the embeddings so
    with torch.no_grad():
        logits, h = backbone(ids, block_size=4, return_hidden=True)
        hooked = backbone(ids, block_size=4, embed_hook=hook)
        both = lambda f: [f(backbone, ids, h, block_size=4),  # without and with MRP's own cache
                          f(backbone, ids, h, cache=head.new_cache(2, 8), block_size=4)]
        want, got = both(head), both(torch.compile(head, fullgraph=True, backend="eager"))  # via run_layers
        assert all(close(a, b) for a, b in zip(got, want))
        load(backbone, "eager")
        embeds = backbone.embed_tokens(ids)
        assert close(backbone(None, inputs_embeds=embeds, block_size=4), logits)  # RCD's decoding
        assert close(backbone(ids, block_size=4, embed_hook=hook), hooked)
        assert close(backbone(ids, block_size=4, return_hidden=True)[1], h)  # MRP's input


LLADA_RUNS = {"low-confidence": dict(steps=16), "threshold": dict(threshold=0.7),
              "prefix cache": dict(threshold=0.7, cache="prefix"),
              "dual cache": dict(threshold=0.7, cache="dual")}
SDAR_RUNS = {"static": dict(denoising_steps=8), "dynamic": dict(denoising_steps=8, threshold=0.7)}


def decode_all(llada, sdar):
    """Every LLaDA and SDAR decoder on three problems of the built-in task, batched (so ragged)."""
    out = {}
    for name, kw in LLADA_RUNS.items():
        out[name] = D.generate(llada, prompts("tiny-llada"), gen_length=16, block_length=8, **kw)[0]
    for name, kw in SDAR_RUNS.items():
        out[name] = D.block_generate(sdar, prompts("tiny-sdar"), gen_length=16, block_length=8, **kw)[0]
    return out


@pytest.mark.slow
def test_compiled_decoders_give_eager_tokens_and_one_graph_per_forward():
    eager = decode_all(load("tiny-llada"), load("tiny-sdar"))
    torch._dynamo.utils.counters.clear()
    traced = decode_all(load("tiny-llada", "eager"), load("tiny-sdar", "eager"))
    assert not torch._dynamo.utils.counters["graph_break"]  # what TORCH_LOGS=graph_breaks lists
    for name in eager:
        assert torch.equal(traced[name], eager[name]), name


@pytest.mark.slow
def test_compiled_methods_give_eager_tokens():
    """RCD (inputs_embeds through its forward= hook), MRP speculative decoding (the verification forward's
    own mask) and Elastic-dLLM (LLaDA: a compressed canvas; SDAR: the terminal anchor) on compiled models."""
    def methods(backend):
        llada_rcd, llada, sdar = (load(n, backend) for n in ("tiny-llada-rcd", "tiny-llada", "tiny-sdar"))
        backbone, head = mrp.load_mrp(os.path.join(HERE, "tiny-sdar-mrp"), "cpu", torch.float32)
        backbone, kw = load(backbone, backend), dict(gen_length=16, block_length=8)
        spec = dict(mrp=head, mode="spec", mrp_steps=2)
        return [residual.decode_rcd(llada_rcd, prompts("tiny-llada-rcd"), threshold=0.7, **kw)[0],
                mrp.decode_mrp(backbone, prompts("tiny-sdar-mrp")[:1], **spec, **kw)[0],
                mask_compress.decode_elastic(llada, prompts("tiny-llada"), r=2, threshold=0.7, **kw)[0],
                mask_compress.decode_elastic(sdar, prompts("tiny-sdar"), **kw)[0]]
    for a, b in zip(methods("eager"), methods(None)):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_inductor_compiled_decoders_give_eager_tokens():
    """What --compile runs: inductor's generated code, static shapes per generation, the cache offsets as
    tensors. Same tokens as eager for LLaDA plain / threshold / prefix / dual and SDAR static / dynamic."""
    eager = decode_all(load("tiny-llada"), load("tiny-sdar"))
    llada, sdar = load("tiny-llada", "inductor"), load("tiny-sdar", "inductor")
    compiled = decode_all(llada, sdar)
    for name in eager:
        assert torch.equal(compiled[name], eager[name]), name
    assert llada.compile_seconds > 0 and sdar.compile_seconds > 0
