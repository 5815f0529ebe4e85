"""The CUDA path, on the embedded checkpoints: the same model and decoders on a GPU in float32 give the CPU's
logits (to float32 rounding) and the CPU's tokens; in bfloat16 (the default on CUDA for these bf16
checkpoints) the logits stay close. Needs a CUDA GPU: on a machine without one (CI's) these tests report as
skipped; they were run on an H100 (RESULTS.md, "Results on a GPU").

Cross-device token equality is a measured property of these prompts, not a law: float32 kernels on the two
devices round differently, and a near-tie between two candidates could flip. The invariants that are exact
on any device (SDAR's KV cache, RCD with alpha = 0, MRP's lossless speculation) are asserted on the GPU too.
Also here: no forward and no commit rule waits for the GPU (set_sync_debug_mode), ties break as the official
per-row topk does on this device, and compiled decoding (inductor + CUDA graphs) gives the eager tokens."""
import os

import pytest
import torch

import decode
import model as M
import mrp
import mask_compress
import residual
from bench import tiny_prompts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
CUDA = torch.device("cuda")


def load(name, device, dtype=torch.float32):
    return M.from_pretrained(os.path.join(HERE, name), device, dtype)


def prompts(name, n=8):
    return tiny_prompts(os.path.join(HERE, name), n)


@pytest.fixture(autouse=True)
def no_tf32():
    # TF32 matmuls would round to 10 mantissa bits: float32 must mean float32 for the comparisons below
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-sdar"])
def test_logits_match_the_cpu(name):
    ids = prompts(name, 4)
    cpu, gpu, half = load(name, "cpu"), load(name, CUDA), load(name, CUDA, torch.bfloat16)
    x = torch.tensor(ids)
    x = torch.cat([x, torch.full((len(ids), 24), cpu.config.mask_token_id)], 1)  # (4, P + 24)
    with torch.no_grad():
        ref = cpu(x)
        out = gpu(x.to(CUDA)).cpu()
        low = half(x.to(CUDA)).float().cpu()
    scale = ref.std().item()
    assert (out - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    # bf16 keeps 8 bits of mantissa through 6 layers: close in scale, and the same top token almost everywhere
    assert (low - ref).abs().mean().item() < 0.05 * scale
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.95


LLADA_RUNS = {"low-confidence": dict(steps=14), "threshold": dict(threshold=0.7),
              "prefix cache": dict(threshold=0.7, cache="prefix"),
              "dual cache": dict(threshold=0.7, cache="dual")}


@pytest.mark.parametrize("run", list(LLADA_RUNS))
def test_llada_decoders_give_the_cpu_tokens(run):
    p, kw = prompts("tiny-llada"), dict(gen_length=56, block_length=8, **LLADA_RUNS[run])
    (x_cpu, s_cpu), (x_gpu, s_gpu) = (decode.generate(load("tiny-llada", d), p, **kw) for d in ("cpu", CUDA))
    assert x_gpu.is_cuda and torch.equal(x_gpu.cpu(), x_cpu)
    assert s_gpu["nfe"] == s_cpu["nfe"]


@pytest.mark.parametrize("kw", [dict(denoising_steps=8), dict(denoising_steps=32, threshold=0.7)])
def test_sdar_block_decoding_gives_the_cpu_tokens_and_its_cache_is_exact(kw):
    p, kw = prompts("tiny-sdar"), dict(gen_length=56, block_length=32, **kw)
    x_cpu, _ = decode.block_generate(load("tiny-sdar", "cpu"), p, **kw)
    gpu = load("tiny-sdar", CUDA)
    x_gpu, _ = decode.block_generate(gpu, p, **kw)
    x_nocache, _ = decode.block_generate(gpu, p, use_cache=False, **kw)
    assert torch.equal(x_gpu.cpu(), x_cpu) and torch.equal(x_nocache, x_gpu)


@pytest.mark.parametrize("name, kw", [("tiny-llada-rcd", dict(gen_length=56, block_length=56, threshold=0.7)),
                                      ("tiny-sdar-rcd", dict(gen_length=56, block_length=32, steps=8))])
def test_rcd_gives_the_cpu_tokens_and_alpha_zero_is_plain_decoding(name, kw):
    p = prompts(name)
    (x_cpu, s_cpu), (x_gpu, s_gpu) = (residual.decode_rcd(load(name, d), p, **kw) for d in ("cpu", CUDA))
    assert torch.equal(x_gpu.cpu(), x_cpu)
    assert s_gpu["alpha_mean"] == pytest.approx(s_cpu["alpha_mean"], rel=1e-3)
    gpu = load(name, CUDA)
    x_zero, _ = residual.decode_rcd(gpu, p, alpha_scale=0.0, **kw)
    if gpu.config.family == "llada":
        x_plain, _ = decode.generate(gpu, p, steps=kw["gen_length"], **kw)
    else:
        x_plain, _ = decode.block_generate(gpu, p, gen_length=56, block_length=32, denoising_steps=8)
    assert torch.equal(x_zero, x_plain)


def test_mrp_speculation_is_lossless_on_the_gpu_and_gives_the_cpu_tokens():
    folder = os.path.join(HERE, "tiny-sdar-mrp")
    (backbone, head), (cpu_backbone, cpu_head) = mrp.load_mrp(folder, CUDA, torch.float32), \
        mrp.load_mrp(folder, "cpu", torch.float32)
    kw = dict(gen_length=56, block_length=32)
    for ids in prompts("tiny-sdar-mrp", 4):
        p = torch.tensor([ids], device=CUDA)
        static, st_static = decode.block_generate(backbone, p, denoising_steps=32, **kw)
        spec, st = mrp.decode_mrp(backbone, p, mrp=head, mode="spec", mrp_steps=3, **kw)
        on_cpu, _ = mrp.decode_mrp(cpu_backbone, p.cpu(), mrp=cpu_head, mode="spec", mrp_steps=3, **kw)
        assert torch.equal(spec, static) and torch.equal(spec.cpu(), on_cpu)
        assert st["nfe"] < st_static["nfe"]  # it did speculate


def test_elastic_decoding_gives_the_cpu_tokens():
    p, kw = prompts("tiny-llada"), dict(gen_length=56, block_length=8, steps=56, r=4)
    (x_cpu, _), (x_gpu, _) = (mask_compress.decode_elastic(load("tiny-llada", d), p, **kw)
                              for d in ("cpu", CUDA))
    assert torch.equal(x_gpu.cpu(), x_cpu)


def test_no_forward_and_no_commit_rule_waits_for_the_gpu():
    """Every kind of forward the decoders make, and the commit rules given what the host already knows:
    set_sync_debug_mode("error") raises at the first host synchronisation."""
    from test_compile import calls
    for name in ("tiny-llada", "tiny-sdar"):
        m, cache = load(name, CUDA), None
        for what, kw in calls(m.config.family, m.config.vocab_size):
            kw = {k: v.to(CUDA) if torch.is_tensor(v) else v for k, v in kw.items()}
            if kw.get("cache"):
                cache = kw["cache"] = cache or m.new_cache(2, kw["cache"])
            torch.cuda.set_sync_debug_mode("error")
            try:
                with torch.no_grad():
                    out = m(**kw)
                    logits = out[0] if isinstance(out, tuple) else out
                    x = torch.full(logits.shape[:2], m.config.mask_token_id, device=CUDA)
                    x0, conf = decode.propose(logits, x, x == x, 0.0, "low_confidence", torch.float64, 1, 2)
                    decode.commit_topk(conf, 2), decode.commit_dynamic(conf, 0.9, 2)
                    decode.commit_threshold(conf, 0.9, counts=[logits.shape[1]] * logits.shape[0])
                    decode.sample_tokens(logits, 1.0, top_k=5, top_p=0.9)
            finally:
                torch.cuda.set_sync_debug_mode("default")


def test_ties_break_on_the_gpu_as_the_official_per_row_topk():
    from test_decode import official_commits, tied_confidences
    for seed in range(100):
        conf = tied_confidences(seed, CUDA)
        n = torch.isfinite(conf).sum(1)
        k = torch.randint(1, 5, n.shape, generator=torch.Generator().manual_seed(seed)).to(CUDA).minimum(n)
        assert torch.equal(decode.commit_topk(conf, k), official_commits(conf, k))
        same = k.min().expand_as(k)
        assert torch.equal(decode.commit_topk(conf, int(same[0])), official_commits(conf, same))
        assert torch.equal(decode.commit_threshold(conf, 0.6), official_commits(conf, n, threshold=0.6))


def test_compiled_decoding_gives_the_eager_tokens():
    """--compile on CUDA (inductor, CUDA graphs, the KV cache at fixed addresses): LLaDA threshold with the
    dual cache and SDAR's dynamic rule with its KV cache, twice each (the second generation replays the
    graphs the first recorded, on the same cache buffers)."""
    runs = [("tiny-llada", lambda m, p: decode.generate(m, p, gen_length=56, block_length=8, threshold=0.7,
                                                        cache="dual")),
            ("tiny-sdar", lambda m, p: decode.block_generate(m, p, gen_length=56, block_length=32,
                                                             denoising_steps=32, threshold=0.7))]
    for name, run in runs:
        p = prompts(name)
        eager, _ = run(load(name, CUDA), p)
        compiled = M.compile_forward(load(name, CUDA))
        for _ in range(2):
            assert torch.equal(run(compiled, p)[0], eager), name
        assert compiled.compile_seconds > 0
