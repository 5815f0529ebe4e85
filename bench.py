"""
Speed benchmarks: ratios measured in one run on one machine, never compared across machines.

  python bench.py step       milliseconds per forward of the calls decoding spends its time in (SDAR's cached
                             block step, LLaDA's whole canvas and dual-cache step, ...) against the
                             weight-bandwidth limit; on a GPU also kernels launched and GPU-busy time.
                             --compile: compiled (CUDA graphs on a GPU); --size 8b: the real shapes
  python bench.py decode     LLaDA vanilla vs Fast-dLLM threshold / prefix cache / dual cache at gen 256,
                             and SDAR with its KV cache vs recomputing the prefix at gen 512; --compile:
                             each also compiled, with tokens/s against eager
  python bench.py load       peak memory of from_pretrained on a sharded ~1 GB checkpoint
  python bench.py rcd        RCD's per-forward overhead over plain decoding (embedded models; random models
                             with LLaDA-8B's / SDAR-8B's vocabulary-to-parameters ratio, or their exact
                             shapes with --size 8b; on a GPU also in kernel time)
  python bench.py mrp        MRP speculative decoding vs static decoding, one problem at a time, embedded
                             heads of 3 and 1 layers: seconds, forwards, identical outputs checked
  python bench.py elastic    Elastic-dLLM compression vs the full canvas at gen 1024 and 4096 (LLaDA format):
                             milliseconds per forward
  python bench.py sandbox    what sandbox.py's boundary costs a model-written program: milliseconds per
                             trivial program against a bare `python -I` process, 1 and 4 at a time

Models are random and mid-size (built here, nothing downloaded), or with --size 8b LLaDA-8B's and SDAR-8B's
exact shapes (random weights, 16 GB each in bf16: a GPU's benchmark). A random model's predictions are
nearly uniform, so a confidence threshold would never fire; we scale its LM head so confidences spread
over (0, 1) the way a trained model's do, which is what makes threshold decoding commit several tokens
per step. Tokens/s counts every generated position (a random model has no EOS); time is wall clock with
the device synchronised, after one warm-up run. The last line printed is one JSON record. On a GPU at
batch 1 the wall clock is mostly Python launching kernels (RESULTS.md, "Results on a GPU").
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch

import decode
import model as M
import moe

PRESET = {"llada": "llada-8b", "sdar": "sdar-8b", "llada2": "llada2-mini"}  # each family's real shape


def random_model(family, device, dtype, n_embd, n_layer, vocab, head_scale, seed=0, full=False):
    """A random LLaDA- or SDAR-format model: mid-size (n_embd x n_layer, MLP 3 x n_embd, `vocab` tokens),
    built and initialised on the CPU in fp32, or, with full=True, exactly LLaDA-8B's / SDAR-8B's shape
    (model.PRESETS), built on the meta device and allocated once on `device` in `dtype`: an 8B model is
    16 GB in bf16, and building it in fp32 first would need twice that."""
    torch.manual_seed(seed)
    base = M.PRESETS[PRESET[family]]
    build = moe.build if base.moe else M.Transformer  # LLaDA2.0: the Transformer with MoE layers
    if full:
        with torch.device("meta"):
            net = build(base)
        need = sum(p.numel() for p in net.parameters()) * torch.finfo(dtype).bits // 8
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else \
            os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if need > free:
            raise SystemExit(f"bench.py --size 8b: the random {family} model needs {need / 1e9:.1f} GB in "
                             f"{dtype}, and {device} has {free / 1e9:.1f} GB free")
        net = net.to(dtype).to_empty(device=device)
    else:
        small_moe = base.moe and replace(base.moe, n_experts=16, intermediate_size=n_embd // 2)
        net = build(M.Config(**{
            **base.__dict__, "vocab_size": vocab, "n_embd": n_embd, "n_layer": n_layer,
            "n_head": n_embd // 64, "n_kv_head": n_embd // 64 // (1 if family == "llada" else 4),
            "head_dim": 64,
            "intermediate_size": 3 * n_embd, "mask_token_id": vocab - 1, "eos_token_id": vocab - 2,
            "stop_ids": (vocab - 2,), "rope_dim": base.rope_dim and 32, "moe": small_moe}))
    net.init_weights()
    with torch.no_grad():
        net.lm_head.weight.mul_(head_scale)  # peaky predictions, see the docstring
    return net.to(device=device, dtype=dtype).eval()


def random_prompt(net, n, seed=1):
    """(n,) random prompt ids below the model's mask and EOS ids (a prompt may not hold [MASK])."""
    top = min(net.config.mask_token_id, net.config.eos_token_id)
    return torch.randint(0, top, (n,), generator=torch.Generator().manual_seed(seed))


def random_models(args, device, dtype, families=("llada", "sdar")):
    """The benchmarks' random models, one per family, at --size."""
    return [random_model(f, device, dtype, args.n_embd, args.n_layer, args.vocab, args.head_scale,
                         full=args.size == "8b") for f in families]


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    x, stats = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats, time.time() - t0


def timed_forwards(net, fn, device):
    """timed(fn), and the seconds spent inside net's forwards (timed by module hooks, synchronised on
    CUDA)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inside, start = [0.0], [0.0]
    def enter(module, args):
        sync()
        start[0] = time.time()
    def leave(module, args, out):
        sync()
        inside[0] += time.time() - start[0]
    hooks = net.register_forward_pre_hook(enter), net.register_forward_hook(leave)
    try:
        stats, seconds = timed(fn, device)
    finally:
        for h in hooks:
            h.remove()
    return stats, seconds, inside[0]


def kernel_stats(fn):
    """(fn's result, kernels launched, seconds of GPU kernel time) from torch.profiler's CUDA activity: the
    time the GPU spent computing, without the gaps while Python launched the kernels. At batch 1 an eager
    SDAR-8B forward launches about 2,100 kernels, and the launching, not the GPU, sets the wall clock."""
    from torch.autograd import DeviceType
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    raw = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if raw is None:  # a private attribute (torch 2.11-2.13 have it): the public, slower route
        kernels = [e.self_device_time_total / 1e6 for e in prof.events()
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    else:  # the raw kineto events: prof.events() builds objects for ~250,000 kernels, minutes on a slow host
        kernels = [e.duration_ns() / 1e9 for e in raw.events()
                   if e.device_type() == DeviceType.CUDA and not e.is_user_annotation()]
    return out, len(kernels), sum(kernels)


def kernel_seconds(fn):
    """(stats, seconds) of the GPU kernels of fn() -> (x, stats); see kernel_stats."""
    (_, stats), _, seconds = kernel_stats(fn)
    return stats, seconds


def tiny_prompts(folder, n):
    """Token ids of the built-in task's first n test problems, chat-formatted with `folder`'s tokenizer."""
    import tasks
    import tokenizer as T
    tok = T.load_tokenizer(folder)
    return [tok.encode(tok.apply_chat_template(tasks.prompt_messages("tiny", r)))
            for r in tasks.tiny_records("test", n=n)]


DECODE_RUNS = ("vanilla", "threshold", "prefix", "dual", "dual-steps", "sdar-nocache", "sdar-cache")


def decode_runs(args):
    """{--runs key: (family, label, run(net, prompt))} of the decode benchmark."""
    G, blk, thr = args.gen_length, args.block_length, args.threshold
    llada = lambda **kw: lambda net, p: decode.generate(net, p, gen_length=G, block_length=blk, **kw)
    sdar = lambda cache: lambda net, p: decode.block_generate(net, p, gen_length=args.sdar_gen_length,
                                                              block_length=4, denoising_steps=4, stop_ids=[],
                                                              use_cache=cache)
    return {"vanilla": ("llada", "vanilla (1 token/step)", llada(steps=G)),
            "threshold": ("llada", f"threshold {thr}", llada(threshold=thr)),
            "prefix": ("llada", "threshold + prefix cache", llada(threshold=thr, cache="prefix")),
            "dual": ("llada", "threshold + dual cache", llada(threshold=thr, cache="dual")),
            "dual-steps": ("llada", "dual cache (1 token/step)", llada(steps=G, cache="dual")),
            "sdar-nocache": ("sdar", "no cache (recompute prefix)", sdar(False)),
            "sdar-cache": ("sdar", "KV cache", sdar(True))}


def bench_decode(args, device, dtype):
    """Tokens/s of each --runs decoder, eager; with --compile then compiled (model.compile_forward). Each is
    timed on its second run: the first pays what happens once (compiling and recording every shape it
    uses when compiled; on a CPU even eager, about a second of first-call costs at these sizes)."""
    runs = {k: v for k, v in decode_runs(args).items() if k in args.runs}
    nets = dict(zip(("llada", "sdar"), random_models(args, device, dtype)))
    prompts = {family: random_prompt(net, args.prompt_length) for family, net in nets.items()}
    rows = []
    for compiled in [False, True] if args.compile else [False]:
        for key, (family, label, run) in runs.items():
            net, p = nets[family], prompts[family]
            if compiled and not hasattr(net, "compile_seconds"):
                M.compile_forward(net)
            first = timed(lambda: run(net, p), device)[1]
            stats, sec = timed(lambda: run(net, p), device)
            G = args.gen_length if family == "llada" else args.sdar_gen_length
            rows.append({"model": family, "run": label, "compiled": compiled, "nfe": stats["nfe"],
                         "tokens_per_s": G / sec, "seconds": sec, "first_run_seconds": first})
            print(f"  {family} {label} ({'compiled' if compiled else 'eager'}): {G / sec:.1f} tokens/s; "
                  f"the first run {first:.1f} s", flush=True)
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and not b["compiled"])
        same = next(b for b in rows if b["run"] == r["run"] and not b["compiled"])
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["vs_eager"] = r["tokens_per_s"] / same["tokens_per_s"]
    print(f"\n{'model':6} {'run':28} {'mode':9} {'nfe':>5} {'tokens/s':>9} {'seconds':>8} {'speedup':>8} "
          f"{'vs eager':>9}")
    for r in rows:
        print(f"{r['model']:6} {r['run']:28} {'compiled' if r['compiled'] else 'eager':9} {r['nfe']:5d} "
              f"{r['tokens_per_s']:9.1f} {r['seconds']:8.2f} {r['speedup']:7.2f}x {r['vs_eager']:8.2f}x")
    if args.compile:
        print("compile time (not in the rows above): " + ", ".join(
            f"{family} {net.compile_seconds:.1f} s" for family, net in nets.items()) + f"; {compile_note()}")
    return rows


def bandwidth(args, device):
    """(bytes/s the weights stream at, where the figure comes from): --bandwidth, the datasheet's for a
    known GPU, or a large device copy measured here (bytes read + written)."""
    if args.bandwidth:
        return args.bandwidth * 1e9, "--bandwidth"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    for gpu, bw in (("H200", 4.8e12), ("H100", 3.35e12)):
        if gpu in name:
            return bw, f"{gpu} datasheet"
    a = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    sec = min(timed(lambda: (b.copy_(a), {}), device)[1] for _ in range(5))
    return 2 * a.numel() / sec, "measured copy"


def hot_calls(args, llada, sdar, device, llada2=None):
    """The forwards decoding spends its time in (issue 21's table), as {name: prepare(batch)}. prepare()
    fills a KV cache as the decoder would (eagerly: Transformer.forward itself, whatever is compiled) and
    returns the timed call, made exactly as decode.py makes it: the same shapes, strides and arguments, so
    that a compiled run here and `bench.py decode` at the same lengths share their graphs. SDAR: the last
    block of a canvas of prompt + --sdar-gen-length; LLaDA: the first block of prompt + --gen-length."""
    P, blk, eager = args.prompt_length, args.block_length, M.Transformer.forward

    def sdar_call(B, cached):
        T = P + args.sdar_gen_length
        x = random_prompt(sdar, B * T).view(B, T).to(device)
        pos = torch.arange(T, device=device).repeat(B, 1)
        valid = torch.ones(B, T, dtype=torch.bool, device=device)
        whole = dict(attention_mask=valid[:, :T - 4], position_ids=pos[:, :T - 4], block_size=4)
        if not cached:  # block_generate(use_cache=False): the whole prefix under the block-causal mask
            return lambda: sdar(x[:, :T - 4], **whole)
        cache = sdar.new_cache(B, T)
        eager(sdar, x[:, :T - 4], cache=cache, **whole)
        step = dict(attention_mask=valid[:, T - 4:], position_ids=pos[:, T - 4:], block_size=4)
        return lambda: sdar(x[:, T - 4:], cache=cache, cache_start=T - 4, **step)

    def llada2_call(B):  # LLaDA2.0's block step: the last block of 32 against the cache
        T, L = P + args.sdar_gen_length, 32
        x = random_prompt(llada2, B * T).view(B, T).to(device)
        pos = torch.arange(T, device=device).repeat(B, 1)
        valid = torch.ones(B, T, dtype=torch.bool, device=device)
        cache = llada2.new_cache(B, T)
        eager(llada2, x[:, :T - L], attention_mask=valid[:, :T - L], position_ids=pos[:, :T - L],
              cache=cache, block_size=L)
        return lambda: llada2(x[:, T - L:], attention_mask=valid[:, T - L:], position_ids=pos[:, T - L:],
                              cache=cache, cache_start=T - L, block_size=L)

    def llada_call(B, cached):
        T = P + args.gen_length
        x, cols = random_prompt(llada, B * T).view(B, T).to(device), torch.arange(T, device=device)
        if not cached:  # generate(): the whole canvas
            return lambda: llada(x[:, cols], attention_mask=None, position_ids=cols, cache=None,
                                 cache_start=0, kv_end=None)
        cache = llada.new_cache(B, T)  # the dual cache as a block's first step leaves it
        eager(llada, x[:, cols], position_ids=cols, cache=cache, cache_start=0, kv_end=T)
        span = cols[P:P + blk]
        return lambda: llada(x[:, span], attention_mask=None, position_ids=span, cache=cache, cache_start=P,
                             kv_end=T)
    return {"sdar-step": lambda B: sdar_call(B, True), "sdar-whole": lambda B: sdar_call(B, False),
            "llada-whole": lambda B: llada_call(B, False), "llada-dual": lambda B: llada_call(B, True),
            "llada2-step": llada2_call}


STEP_LABELS = {"sdar-step": "SDAR cached block step, 4 tokens, {S} cached",
               "sdar-whole": "SDAR whole {S} tokens, no cache",
               "llada-whole": "LLaDA whole canvas, {T} tokens",
               "llada-dual": "LLaDA dual-cache step, {blk} tokens",
               "llada2-step": "LLaDA2.0 block step, 32 tokens, {S2} cached"}


def time_call(call, device, repeats):
    """(median ms of `repeats` calls after 3 warm-up ones, kernels per call, GPU-busy ms per call); the
    warm-up compiles, then CUDA graphs warm up and record. Kernels and busy time on CUDA only (3 calls)."""
    with torch.no_grad():
        for _ in range(3):
            call()
        times = sorted(timed(lambda: (call(), {}), device)[1] for _ in range(repeats))
        if device.type != "cuda":
            return 1000 * times[repeats // 2], None, None
        try:
            _, kernels, busy = kernel_stats(lambda: [call() for _ in range(3)])
        except RuntimeError as e:  # a profiler that cannot trace here costs the two columns, not the row
            print(f"torch.profiler failed ({str(e)[:200]}): no kernel counts")
            return 1000 * times[repeats // 2], None, None
    return 1000 * times[repeats // 2], kernels / 3, 1000 * busy / 3


def bench_step(args, device, dtype):
    """Milliseconds per forward of each hot call (median of --repeats, synchronised), against the
    weight-bandwidth limit: every weight byte read once per forward at the device's bandwidth. On CUDA
    also the kernels one forward launches and the GPU's busy time (torch.profiler). The SDAR step runs
    at every --batch, the other calls at the first. --compile: model.compile_forward (CUDA graphs on
    CUDA); compile time reported apart. Rows are printed as they are measured."""
    families = tuple(dict.fromkeys(name.split("-")[0] for name in args.calls))  # only the models asked for
    nets = dict(zip(families, random_models(args, device, dtype, families=families)))
    llada, sdar = nets.get("llada"), nets.get("sdar")
    for net in nets.values() if args.compile else ():
        M.compile_forward(net)
    bw, source = bandwidth(args, device)
    print(f"bandwidth {bw / 1e9:.0f} GB/s ({source})")
    calls, rows = hot_calls(args, llada, sdar, device, nets.get("llada2")), []
    S = args.prompt_length + args.sdar_gen_length
    sizes = dict(S=S - 4, S2=S - 32, T=args.prompt_length + args.gen_length, blk=args.block_length)
    print(f"\n{'forward':44} {'batch':>5} {'ms':>8} {'kernels':>8} {'GPU busy ms':>12} {'limit ms':>9} "
          f"{'x limit':>8}")
    for name in args.calls:
        net = nets[name.split("-")[0]]
        limit = 1000 * weight_bytes(net) / bw
        for B in args.batch if name == "sdar-step" else args.batch[:1]:
            ms, kernels, busy = time_call(calls[name](B), device, args.repeats)
            rows.append({"call": STEP_LABELS[name].format(**sizes), "batch": B, "ms": ms, "kernels": kernels,
                         "gpu_busy_ms": busy, "limit_ms": limit, "x_limit": ms / limit})
            k, g = ("-", "-") if kernels is None else (f"{kernels:.0f}", f"{busy:.2f}")
            print(f"{rows[-1]['call']:44} {B:5d} {ms:8.2f} {k:>8} {g:>12} {limit:9.2f} {ms / limit:7.1f}x",
                  flush=True)
    if args.compile:
        print("compile time (not in the rows above): " + ", ".join(
            f"{name} {net.compile_seconds:.1f} s" for name, net in nets.items()) + f"; {compile_note()}")
    return rows


def weight_bytes(net):
    """The bytes one forward must read at least: every weight once; for a mixture of experts only the
    experts a token uses (top_k of n_experts routed ones; a lower bound at batch 1)."""
    total = sum(p.numel() * p.element_size() for p in net.parameters())
    cfg = net.config.moe
    if cfg:
        routed = sum(p.numel() * p.element_size() for n, p in net.named_parameters() if ".experts." in n)
        total -= routed * (1 - cfg.top_k / cfg.n_experts)
    return total


def compile_note():
    """What dynamo and inductor counted: graphs compiled, graph breaks, CUDA graphs skipped (TORCH_LOGS=
    perf_hints says why)."""
    c = torch._dynamo.utils.counters
    return (f"graphs {c['stats']['unique_graphs']}, graph breaks {sum(c['graph_break'].values())}, "
            f"CUDA graphs skipped {c['inductor']['cudagraph_skips']}")


def caches_list(v):
    """--elastic-caches: 'none,prefix,dual' -> [None, 'prefix', 'dual']."""
    if any(c not in ("none", "prefix", "dual") for c in v.split(",")):
        raise argparse.ArgumentTypeError(f"{v!r}: expected a comma-separated subset of none,prefix,dual")
    return [None if c == "none" else c for c in v.split(",")]


def bench_elastic(args, device, dtype):
    """Milliseconds per forward with and without Elastic-dLLM's compression, at each --elastic-lengths
    generation length: one forward over the whole canvas versus one over the columns `elastic_feed` keeps
    (prompt, history, current block, r masks per later block, terminal block, original positions), with the
    current block first and in the middle of the generation. Median of --repeats forwards each. Then whole
    generations at --elastic-decode-length with threshold decoding, without a cache and with Fast-dLLM's
    prefix and dual caches (--elastic-caches), full canvas versus compressed (--r, --window): seconds per
    generation, and per forward (the random model's choices differ between layouts, so the forward counts do
    too). A prefix cache feeds the
    current block and everything after it, which compression shortens; a dual cache refreshes with one
    forward over everything fed at each block's first step and then feeds the current block only, so
    compression shortens that forward and the keys every later step attends to. Whole generations at 4,096
    tokens take too long on a CPU."""
    import mask_compress
    llada, = random_models(args, device, dtype, ("llada",))
    P, blk, rows = args.prompt_length, args.block_length, []
    llada.build_rope(P + max(args.elastic_lengths + [args.elastic_decode_length]))  # past max_seq_len

    def ms(ids, pos):
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up
            stats, sec = timed(lambda: (llada(ids, position_ids=pos), {}), device)
            times.append(sec)
        return 1000 * sorted(times[1:])[len(times[1:]) // 2]

    with torch.no_grad():
        for G in args.elastic_lengths:
            x = torch.full((1, P + G), llada.config.mask_token_id, device=device)
            x[0, :P] = random_prompt(llada, P)
            full = ms(x, None)
            for where, lo in (("first block", P), ("middle block", P + (G // 2) // blk * blk)):
                cols = mask_compress.elastic_feed(r=args.r, window=args.window)(x, lo, lo + blk, P).to(device)
                comp = ms(x[:, cols], cols[None])
                rows.append({"gen_length": G, "block": where, "tokens_full": P + G, "tokens_kept": len(cols),
                             "ms_full": full, "ms_elastic": comp, "speedup": full / comp})
        G, prompt = args.elastic_decode_length, x[0, :P]
        decode.generate(llada, prompt, gen_length=blk, block_length=blk, threshold=args.threshold,
                        cache="dual")  # warm-up
        for cache in args.elastic_caches:
            kw = dict(gen_length=G, block_length=blk, threshold=args.threshold, cache=cache)
            full, sec_full = timed(lambda: decode.generate(llada, prompt, **kw), device)
            comp, sec_comp = timed(lambda: mask_compress.decode_elastic(llada, prompt, r=args.r,
                                                                        window=args.window, **kw), device)
            rows.append({"gen_length": G, "block": f"whole, {cache or 'no'} cache", "tokens_full": P + G,
                         "tokens_kept": round(comp["active_mean"]), "nfe_full": full["nfe"],
                         "nfe_elastic": comp["nfe"], "ms_full": 1000 * sec_full,
                         "ms_elastic": 1000 * sec_comp, "speedup": sec_full / sec_comp,
                         "speedup_per_forward": (sec_full / full["nfe"]) / (sec_comp / comp["nfe"])})
    print_elastic(rows)
    return rows


def print_elastic(rows):
    print(f"\n{'gen':>5} {'forward':22} {'tokens':>7} {'kept':>6} {'ms full':>9} {'ms elastic':>11} "
          f"{'speedup':>8} {'nfe full/elastic':>17} {'per forward':>12}")
    # whole generations: "kept" is the active set's mean over blocks (cached columns included), and the random
    # model's choices differ between layouts, hence the forward counts
    for r in rows:
        nfe = f"{r['nfe_full']}/{r['nfe_elastic']}" if "nfe_full" in r else ""
        per = f"{r['speedup_per_forward']:.2f}x" if "nfe_full" in r else ""
        print(f"{r['gen_length']:5d} {r['block']:22} {r['tokens_full']:7d} {r['tokens_kept']:6d} "
              f"{r['ms_full']:9.1f} {r['ms_elastic']:11.1f} {r['speedup']:7.2f}x {nfe:>17} {per:>12}")


def bench_mrp(args, device, dtype):
    """MRP speculative decoding's wall clock against static decoding (one token per backbone step, what it
    must reproduce), one problem at a time: --mrp-problems test problems of the built-in task, gen 56 in
    blocks of 32, for each embedded head (models/tiny-sdar-mrp: 3 layers, the released heads' depth;
    models/tiny-sdar-mrp-1lyr: 1 layer, the released heads' share of their backbone: 3 of 28-36 layers is
    8-11 % of a forward, 1 of tiny-sdar's 6 is 17 %; both heads sit on the same frozen tiny-sdar) and K = 1,
    2, 3 drafts per cycle. A cycle costs one backbone forward carrying K + 1 copies of the block plus K
    chained head passes. This CPU's speed drifts by tens of percent within minutes, so the runs interleave
    problem by problem (every decoder on problem 1, then on problem 2, ...; the order rotates), and each
    decoder's total over the problems is taken --repeats times; medians. Every speculative output must
    equal the static one token for token (checked)."""
    import mrp
    here = os.path.dirname(os.path.abspath(__file__))
    folders = [os.path.join(here, "models", n) for n in ("tiny-sdar-mrp", "tiny-sdar-mrp-1lyr")]
    prompts = [torch.tensor([ids], device=device) for ids in tiny_prompts(folders[0], args.mrp_problems)]
    (backbone, head), (other, head_1) = (mrp.load_mrp(f, device, dtype) for f in folders)
    pairs = zip(backbone.state_dict().values(), other.state_dict().values())
    if any(not torch.equal(a, b) for a, b in pairs):
        raise SystemExit(f"bench.py mrp: {folders[0]} and {folders[1]} were trained on different backbones")
    heads = {os.path.basename(folders[0]): head, os.path.basename(folders[1]): head_1}
    kw = dict(gen_length=56, block_length=32)
    runs = {("tiny-sdar", "static"): lambda p: decode.block_generate(backbone, p, denoising_steps=32, **kw)}
    for name, h in heads.items():
        for K in (1, 2, 3):
            runs[(name, f"spec K={K}")] = (lambda h, K: lambda p: mrp.decode_mrp(
                backbone, p, mrp=h, mode="spec", mrp_steps=K, **kw))(h, K)
    names = list(runs)
    with torch.no_grad():
        reference = [runs[names[0]](p)[0] for p in prompts]
        nfe = {}
        for name, fn in runs.items():  # warm-up, the lossless check and the forward counts
            outs = [fn(p) for p in prompts]
            if any(not torch.equal(x, ref) for (x, _), ref in zip(outs, reference)):
                raise SystemExit(f"bench.py mrp: {name} differs from static decoding")
            nfe[name] = sum(st["nfe"] for _, st in outs) / len(prompts)
        totals = {name: [] for name in names}
        for _ in range(args.repeats):
            sec = dict.fromkeys(names, 0.0)
            for i, p in enumerate(prompts):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    sec[name] += timed(lambda: runs[name](p), device)[1]
            for name in names:
                totals[name].append(sec[name])
    med = {name: sorted(t)[len(t) // 2] for name, t in totals.items()}
    base = med[names[0]]
    rows = [{"head": name[0], "layers": len(heads[name[0]].layers) if name[0] in heads else 0,
             "run": name[1], "forwards_per_answer": nfe[name], "seconds": med[name],
             "speedup": base / med[name]} for name in names]
    print(f"\n{'head':20} {'layers':>6} {'run':10} {'forwards/answer':>16} {'seconds':>8} {'speed-up':>9}")
    for r in rows:
        print(f"{r['head']:20} {r['layers'] or '-':>6} {r['run']:10} {r['forwards_per_answer']:16.1f} "
              f"{r['seconds']:8.2f} {r['speedup']:8.2f}x")
    return rows


def bench_rcd(args, device, dtype):
    """RCD's per-step overhead: seconds per forward of RCD decoding (cold start, so it makes exactly the
    forwards plain decoding makes) over plain decoding, same model, same prompts, same fixed schedule.
    RCD's extra work per forward is the entropy and softmax(z) @ E at the still-masked positions (V x C
    multiply-adds each, as much again as the LM head there) and the mix; relative to a forward it scales with
    V*C over the parameters a token passes through. Models: the embedded pairs as eval.py runs them (a batch
    of --rcd-batch test problems: tiny-llada-rcd in one block of 56, tiny-sdar-rcd in blocks of 32, 4 tokens
    per step), and, one prompt at a time, random LLaDA- and SDAR-format models whose vocabularies are sized
    so that V*C / (non-embedding parameters) equals LLaDA-8B's (126464 * 4096 / 6.98e9 = 0.074) and
    SDAR-8B's (151936 * 4096 / 6.95e9 = 0.090): LLaDA gen --gen-length in blocks of --block-length, SDAR gen
    --sdar-gen-length in blocks of 32 with its KV cache, both 2 tokens per step. Plain and RCD alternate
    --repeats times; medians of the times, and the overhead is the median of the back-to-back pairs' ratios.
    "RCD work" times RCD's own code directly: each run's time outside the model's forwards, RCD's less
    plain's, over RCD's time inside them (median over the pairs): the overhead without the machine's drift,
    but also without any slowdown of the forwards themselves (caches p @ E evicted, say), which the
    wall-clock ratio includes; RCD's embedding lookup happens outside its forwards and counts as its own.
    On a GPU, "GPU kernels" is the ratio of the kernels' own time (one profiled run of each,
    kernel_seconds), less one: what RCD costs a forward whose kernels are not waiting on Python to launch
    them. Also printed: the mean residual weight alpha over the masked positions RCD computed, and the share
    above 0.1 (how much RCD can change at all: alpha = 0 is plain decoding).
    With --size 8b the random models are LLaDA-8B and SDAR-8B themselves (random weights, real shapes)."""
    runs = rcd_models(args, device, dtype)
    rows = [rcd_row(name, net, p, kw, args.repeats, device) for name, net, p, kw in runs]
    print_rcd(rows)
    return rows


def rcd_models(args, device, dtype):
    """bench_rcd's (name, model, prompts, decoding arguments): the embedded RCD pairs as eval.py runs them,
    then random LLaDA- and SDAR-format models whose V*C / (non-embedding parameters) is the 8B models'."""
    runs, here = [], os.path.dirname(os.path.abspath(__file__))
    for family, kw in (("llada", dict(gen_length=56, block_length=56, steps=14)),
                       ("sdar", dict(gen_length=56, block_length=32, steps=8))):
        folder = os.path.join(here, "models", f"tiny-{family}-rcd")
        runs.append((f"embedded tiny-{family}-rcd", M.from_pretrained(folder, device, dtype),
                     tiny_prompts(folder, args.rcd_batch), kw))
    C, L = args.n_embd, args.n_layer
    llada_kw = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.gen_length // 2)
    sdar_kw = dict(gen_length=args.sdar_gen_length, block_length=32, steps=16,
                   stop_ids=[])  # a random model never stops
    for family, ratio, per_layer, kw in (("llada", 0.0742, 13 * C * C, llada_kw),
                                         ("sdar", 0.0895, 11.5 * C * C, sdar_kw)):
        vocab = round(ratio * L * per_layer / C)  # random_model: MLP width 3C; SDAR with 4x fewer KV heads
        net = random_model(family, device, dtype, C, L, vocab, args.head_scale, full=args.size == "8b")
        shape = "8B shape" if args.size == "8b" else f"format, V={vocab}"
        prompt = random_prompt(net, args.prompt_length)[None]
        runs.append((f"random {family.upper()}-{shape}", net, prompt, kw))
    return runs


def rcd_row(name, net, p, kw, repeats, device):
    """One row of bench_rcd: plain and RCD decoding of prompts `p` alternating `repeats` times."""
    import residual
    with torch.no_grad():
        if net.config.family == "llada":
            plain = lambda: decode.generate(net, p, **kw)
        else:
            plain = lambda: decode.block_generate(net, p, gen_length=kw["gen_length"],
                                                  block_length=kw["block_length"],
                                                  denoising_steps=kw["steps"], stop_ids=kw.get("stop_ids"))
        rcd = lambda: residual.decode_rcd(net, p, **kw)
        _, alpha = rcd()  # warm-up; the residual weights RCD computed (the same in every run)
        plain()
        sec, own = {"plain": [], "rcd": []}, []
        for _ in range(repeats):
            outside = {}
            for which, fn in (("plain", plain), ("rcd", rcd)):
                stats, s, inside = timed_forwards(net, fn, device)
                sec[which].append(s / stats["nfe"])
                outside[which] = s - inside
            # RCD's own work (residual terms, mix, bookkeeping) = its time outside the model's forwards less
            # the plain decoder's, per forward time: small quantities, so the machine's drift barely moves it
            own.append((outside["rcd"] - outside["plain"]) / inside)
        median = lambda v: sorted(v)[len(v) // 2]
        med = {k: median(v) for k, v in sec.items()}
        # the median of each back-to-back pair's ratio: a machine whose speed drifts between pairs (this
        # shared VM does, by tens of percent) moves both runs of a pair together
        paired = median([r / q for r, q in zip(sec["rcd"], sec["plain"])])
        kernels = None
        if device.type == "cuda":  # the same forwards, GPU kernel time only (see kernel_seconds)
            kernels = kernel_seconds(rcd)[1] / kernel_seconds(plain)[1] - 1
    return {"model": name, "batch": len(p), "nfe": stats["nfe"], "ms_per_forward_plain": 1000 * med["plain"],
            "ms_per_forward_rcd": 1000 * med["rcd"], "overhead": paired - 1, "rcd_work": median(own),
            "kernel_overhead": kernels,
            "alpha_mean": alpha["alpha_mean"], "alpha_above_0.1": alpha["alpha_above_0.1"]}


def print_rcd(rows):
    print(f"\n{'model':32} {'batch':>5} {'nfe':>4} {'ms/forward plain':>17} {'ms/forward RCD':>15} "
          f"{'overhead':>9} {'RCD work':>9} {'GPU kernels':>12} {'mean alpha':>11} {'alpha > 0.1':>12}")
    for r in rows:
        kernels = "-" if r["kernel_overhead"] is None else f"{100 * r['kernel_overhead']:.1f}%"
        print(f"{r['model']:32} {r['batch']:5d} {r['nfe']:4d} {r['ms_per_forward_plain']:17.2f} "
              f"{r['ms_per_forward_rcd']:15.2f} {100 * r['overhead']:8.1f}% {100 * r['rcd_work']:8.1f}% "
              f"{kernels:>12} {r['alpha_mean']:11.3f} {100 * r['alpha_above_0.1']:11.1f}%")


def bench_load(args, device, dtype):
    """Write a sharded bf16 checkpoint of about --load-gb GB, then load it in a fresh process and report
    the peak resident memory above the bare import, as a multiple of the checkpoint's bytes."""
    n_layer = max(1, int(args.load_gb * 1e9 / 2 / (12 * 1536 * 1536)))
    with tempfile.TemporaryDirectory() as folder:
        net = random_model("sdar", torch.device("cpu"), torch.bfloat16, 1536, n_layer, 32000, 1.0)
        M.save_pretrained(net, folder, max_shard_bytes=300_000_000)
        del net
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                   if f.endswith(".safetensors"))
        code = ("import torch, model\n"
                "rss = lambda f: int(open('/proc/self/status').read().split(f + ':')[1].split()[0]) * 1024\n"
                f"base = rss('VmRSS'); "
                f"m = model.from_pretrained({folder!r}, device='cpu', dtype=torch.bfloat16)\n"
                "print(rss('VmHWM') - base)")
        peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.split()[-1])
    row = {"checkpoint_gb": size / 1e9, "shards": -(-size // 300_000_000), "peak_rss_gb": peak / 1e9,
           "ratio": peak / size}
    print(f"\ncheckpoint {row['checkpoint_gb']:.2f} GB in {row['shards']} shards: peak RSS above import "
          f"{row['peak_rss_gb']:.3f} GB = {row['ratio']:.2f}x the checkpoint")
    return [row]


def bench_sandbox(args, device, dtype):
    """Wall milliseconds per trivial program through sandbox.run_programs (eval.py --allow-code-exec's
    path: namespaces, a fresh root, seccomp, limits) against the same program in a bare `python -I`
    subprocess, --sandbox-programs of them, 1 and 4 at a time. The boundary is probed first, untimed."""
    import sandbox
    from concurrent.futures import ThreadPoolExecutor
    code, n = "print(sum(range(1000)))", args.sandbox_programs
    boundary = sandbox.code_boundary()

    def bare(_):
        subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, check=True)
    rows = []
    print(f"\n{n} programs; boundary {boundary}")
    print(f"{'workers':>7} {'bare ms':>8} {'sandbox ms':>10} {'ratio':>6}")
    for workers in (1, 4):
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(bare, range(n)))
        bare_ms = 1000 * (time.perf_counter() - start) / n
        start = time.perf_counter()
        results = sandbox.run_programs([code] * n, workers=workers, allow_code_exec=True)
        boxed_ms = 1000 * (time.perf_counter() - start) / n
        if any(r["status"] != "passed" for r in results):
            raise ValueError(f"a trivial program did not pass in the sandbox: {results[0]}")
        rows.append({"workers": workers, "boundary": boundary, "bare_ms": bare_ms, "sandbox_ms": boxed_ms,
                     "ratio": boxed_ms / bare_ms})
        print(f"{workers:7d} {bare_ms:8.1f} {boxed_ms:10.1f} {boxed_ms / bare_ms:5.2f}x")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["step", "decode", "load", "elastic", "rcd", "mrp", "sandbox"],
                    help="which benchmark")
    ap.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--size", choices=["tiny", "mid", "8b", "llada2-mini"], default="mid",
                    help="random models: mid = --n-embd x --n-layer (--vocab); 8b = LLaDA-8B's and SDAR-8B's "
                         "exact shapes, random weights (16 GB each in bf16: a GPU); llada2-mini = step's "
                         "LLaDA2.0-mini block step at its real shape (32 GB in bf16)")
    ap.add_argument("--n-embd", type=int, default=384, help="hidden size of the random models")
    ap.add_argument("--n-layer", type=int, default=6, help="layers of the random models")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary of the random models")
    ap.add_argument("--head-scale", type=float, default=None,
                    help="LM-head scale that makes predictions confident (default 40; 12 with --size 8b, the "
                         "same logit spread at 4,096 hidden: 0.02 * sqrt(C) * scale)")
    ap.add_argument("--prompt-length", type=int, default=128, help="prompt tokens")
    ap.add_argument("--gen-length", type=int, default=256, help="LLaDA generation length")
    ap.add_argument("--block-length", type=int, default=32, help="LLaDA block length")
    ap.add_argument("--threshold", type=float, default=0.9, help="Fast-dLLM confidence threshold")
    ap.add_argument("--sdar-gen-length", type=int, default=512,
                    help="SDAR generation length (block 4, 4 steps)")
    ap.add_argument("--elastic-lengths", type=lambda v: [int(x) for x in v.split(",")], default=[1024, 4096],
                    help="elastic: comma-separated generation lengths")
    ap.add_argument("--r", type=int, default=4,
                    help="elastic: [MASK] tokens kept per intermediate future block")
    ap.add_argument("--window", type=int, default=0,
                    help="elastic: masks right after the current block kept in full "
                         "(mask_compress.elastic_feed; 0 = the paper)")
    ap.add_argument("--elastic-caches", type=caches_list, default=[None, "prefix", "dual"],
                    help="elastic: whole-generation runs, comma-separated none,prefix,dual")
    ap.add_argument("--elastic-decode-length", type=int, default=1024,
                    help="elastic: generation length of the whole-generation runs (threshold; no cache, "
                         "prefix and dual cache)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="elastic: timed forwards per measurement; rcd: timed runs of each decoder (median)")
    ap.add_argument("--rcd-batch", type=int, default=50,
                    help="rcd: prompts per batch (eval.py's --batch-size 50)")
    ap.add_argument("--mrp-problems", type=int, default=50, help="mrp: test problems decoded one at a time")
    ap.add_argument("--load-gb", type=float, default=1.0, help="checkpoint size for the load benchmark")
    ap.add_argument("--sandbox-programs", type=int, default=32,
                    help="sandbox: trivial programs timed at each number of workers")
    fast = ap.add_argument_group("step and decode: speed on a GPU")
    fast.add_argument("--compile", action="store_true",
                      help="decode: also compiled; step: compiled (model.compile_forward, CUDA graphs)")
    fast.add_argument("--batch", type=lambda v: [int(b) for b in v.split(",")], default=[1],
                      help="step: batch sizes of the SDAR block step, comma-separated (others: the first)")
    fast.add_argument("--calls", type=lambda v: v.split(","), default=list(STEP_LABELS),
                      help=f"step: which forwards, comma-separated, of {','.join(STEP_LABELS)}")
    fast.add_argument("--runs", type=lambda v: v.split(","), default=list(DECODE_RUNS),
                      help=f"decode: which decoders, comma-separated, of {','.join(DECODE_RUNS)}")
    fast.add_argument("--bandwidth", type=float, default=None,
                      help="step: memory bandwidth in GB/s for the weight-bandwidth limit (default: 4800 "
                           "on an H200, 3350 on an H100, else a device copy measured here)")
    args = ap.parse_args()
    if args.size == "llada2-mini":  # the real shapes, and only the MoE model's step unless --calls says
        args.size = "8b"
        args.calls = args.calls if "--calls" in sys.argv else ["llada2-step"]
    if args.head_scale is None:
        args.head_scale = 12.0 if args.size == "8b" else 40.0
    if args.size == "tiny":  # a smoke test of the script itself
        args.n_embd, args.n_layer, args.vocab = 64, 2, 512
    hot, known = set(args.calls) | set(args.runs), set(DECODE_RUNS) | set(STEP_LABELS)
    if hot - known:
        raise SystemExit(f"--calls / --runs: unknown {sorted(hot - known)}; expected some of {sorted(known)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default = torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device={device} ({name}) dtype={dtype} torch={torch.__version__}")
    if min(args.repeats, args.rcd_batch, args.mrp_problems, args.gen_length, args.block_length,
           args.sandbox_programs) < 1:
        raise SystemExit("--repeats, --rcd-batch, --mrp-problems, --gen-length, --block-length and "
                         "--sandbox-programs must be >= 1")
    try:  # a decoder refusing the lengths / steps, or a missing model: one line, not a traceback
        rows = {"step": bench_step, "decode": bench_decode, "load": bench_load, "elastic": bench_elastic,
                "rcd": bench_rcd, "mrp": bench_mrp, "sandbox": bench_sandbox}[args.what](args, device, dtype)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"bench.py {args.what}: {e}") from None
    print(json.dumps({"bench": args.what, "device": name, "dtype": str(dtype), "command": " ".join(sys.argv),
                      "rows": rows}))
