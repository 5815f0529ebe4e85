"""
The evaluation harness: one command for the built-in task on a laptop CPU and for the real benchmarks on
GPUs. Data, prompts and answer checking live in tasks.py; decoders in decode.py (and the method files).

  python eval.py                                    the embedded LLaDA model on the built-in task
  python eval.py --model models/tiny-sdar --method threshold --thresholds 0.5,0.7,0.9
  python eval.py --model GSAI-ML/LLaDA-8B-Instruct --task gsm8k --method dual-cache --thresholds 0.9
  torchrun --nproc_per_node 8 eval.py --model JetLM/SDAR-8B-Chat --task math500 --batch-size 8
  python eval.py --task humaneval --data HumanEval.jsonl.gz --allow-code-exec ...

A method is one entry of METHODS (name -> decoder call); `--steps` and `--thresholds` sweep its settings.
Every sample is written as one JSONL line as soon as it is scored (id, output, extracted answer, correct,
nfe, tokens, seconds), so an interrupted run started again with the same command skips what is done and
ends with the same totals. At the end: a table for people, `--out results.json` for scripts, and a last
line of JSON. Under torchrun, samples are sharded across ranks (rank r takes every world-th sample) and
merged on rank 0. Metrics follow ../shared/spec/eval.md: accuracy by the task's named rule, nfe (forwards
that decide tokens), generated tokens up to the first stop id, tokens per forward, wall seconds.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch

import decode
import model as model_lib
import sandbox
import tasks
from tokenizer import load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "models", "tiny-llada")
# generation length per task (block length: 32 for LLaDA, the checkpoint's block size for SDAR)
# How each embedded checkpoint is made, for the message when one is missing from a checkout.
EMBEDDED = {"tiny-llada": "python train.py --family llada --out models/tiny-llada",
            "tiny-sdar": "python train.py --family sdar --block-size 32 --out models/tiny-sdar",
            "tiny-sdar-seqd": "python train_residual.py seqd --base models/tiny-sdar --out models/tiny-sdar-seqd",
            "tiny-sdar-rcd": "python train_residual.py rcd --base models/tiny-sdar --reference models/tiny-sdar "
                             "--out models/tiny-sdar-rcd",
            "tiny-sdar-mrp": "python mrp.py train --backbone models/tiny-sdar --out models/tiny-sdar-mrp",
            "tiny-sdar-mrp-remask": "python mrp.py train --backbone models/tiny-sdar --reveals 1,2,3,4,6,8,12,16 "
                                    "--reveal-from backbone --steps 3000 --out models/tiny-sdar-mrp-remask",
            "tiny-sdar-mrp-1lyr": "python mrp.py train --backbone models/tiny-sdar --layers 1 --out models/tiny-sdar-mrp-1lyr",
            "tiny-llada-seqd": "python train_residual.py seqd --base models/tiny-llada --out models/tiny-llada-seqd",
            "tiny-llada-rcd": "python train_residual.py rcd --base models/tiny-llada --reference models/tiny-llada "
                              "--out models/tiny-llada-rcd"}
EMBEDDED["tiny-sdar-mrp-remask-long"] = (  # the remasking head trained on: 3,000 + 2,500 + 3,000 steps
    EMBEDDED["tiny-sdar-mrp-remask"] + ", then python mrp.py train --init models/tiny-sdar-mrp-remask --seed 1 "
    "--reveals 1,2,3,4,6,8,12,16 --reveal-from backbone --steps 2500 --out runs/tiny-sdar-mrp-remask-cont, then "
    "python mrp.py train --init runs/tiny-sdar-mrp-remask-cont --seed 2 --reveals 1,2,3,4,6,8,12,16 "
    "--reveal-from backbone --steps 3000 --out models/tiny-sdar-mrp-remask-long")
GEN_LENGTH = {"tiny": 56, "gsm8k": 256, "math500": 512, "aime24": 1024, "aime25": 1024, "humaneval": 512, "mbpp": 512}

# -----------------------------------------------------------------------------
# Methods: (model, prompts, s) -> (x, stats). `s` is one setting (gen_length, block_length, steps, threshold,
# temperature, cache) plus the method's knobs and extra modules (an RCD reference, an MRP head).


def decode_baseline(model, prompts, s):
    """One token per step (or `steps` steps): LLaDA low-confidence remasking, SDAR's static rule."""
    if s["threshold"] is not None:  # it would decode one token per step under a "threshold=" label
        raise SystemExit("--method baseline decodes a fixed number of tokens per step: use --steps, or --method "
                         "threshold for --thresholds")
    if model.config.family == "llada":
        return decode.generate(model, prompts, steps=s["steps"] or s["gen_length"], gen_length=s["gen_length"],
                               block_length=s["block_length"], temperature=s["temperature"], cache=s["cache"])
    return decode.block_generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                                 denoising_steps=s["steps"] or s["block_length"], temperature=s["temperature"])


def decode_threshold(model, prompts, s):
    """Confidence-threshold parallel decoding: Fast-dLLM for LLaDA, SDAR's dynamic rule for SDAR."""
    if s["threshold"] is None:
        raise SystemExit(f"--method {s['method']} needs --thresholds (e.g. 0.5,0.7,0.9)")
    if model.config.family == "llada":
        return decode.generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                               threshold=s["threshold"], temperature=s["temperature"], cache=s["cache"])
    return decode.block_generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                                 denoising_steps=s["steps"] or s["block_length"], threshold=s["threshold"],
                                 temperature=s["temperature"])


def cached(cache):
    def run(model, prompts, s):
        if model.config.family != "llada":
            raise SystemExit(f"{cache}-cache is Fast-dLLM's LLaDA cache; SDAR always decodes with its exact KV cache")
        return decode.generate(model, prompts, steps=s["steps"] or s["gen_length"], gen_length=s["gen_length"],
                               block_length=s["block_length"], threshold=s["threshold"], cache=cache,
                               temperature=s["temperature"])
    run.__doc__ = f"Fast-dLLM's {cache} KV cache (LLaDA), with the threshold rule when --thresholds is given."
    return run


def decode_rcd(model, prompts, s):
    """Residual Context Diffusion (residual.py) with the family's decoder and the threshold, if any."""
    import residual
    return residual.decode_rcd(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                               steps=s["steps"], threshold=s["threshold"], t_res=s["t_res"],
                               alpha_scale=s["alpha_scale"], init=s["rcd_init"],
                               reference=s.get("reference"), concentration=s["concentration"],
                               source=s["rcd_source"], cache=s["cache"],
                               temperature=s["temperature"])


def mrp_mode(mode):
    def run(model, prompts, s):
        import mrp
        return mrp.decode_mrp(model, prompts, mrp=s["mrp"], mode=mode, gen_length=s["gen_length"],
                              block_length=s["block_length"], threshold=s["threshold"], mrp_steps=s["mrp_steps"],
                              remask=s["remask"], delta=s["delta"], temperature=s["temperature"])
    run.__doc__ = f"Multi-token Residual Prediction (mrp.py), {mode} mode."
    return run


def decode_elastic(model, prompts, s):
    """Elastic-dLLM (mask_compress.py): compressed future masks (LLaDA) or the terminal anchor (SDAR)."""
    import mask_compress
    return mask_compress.decode_elastic(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                                        steps=s["steps"], threshold=s["threshold"], r=s["r"], cache=s["cache"],
                                        budget=s["budget"], positions=s["positions"], temperature=s["temperature"],
                                        sampler=s["sampler"], terminal=s["terminal"], window=s["window"])


METHODS = {
    "baseline": decode_baseline,
    "threshold": decode_threshold,
    "prefix-cache": cached("prefix"),
    "dual-cache": cached("dual"),
    "rcd": decode_rcd,
    "mrp-direct": mrp_mode("direct"),
    "mrp-spec": mrp_mode("spec"),
    "mrp-remask": mrp_mode("remask"),
    "elastic": decode_elastic,
}
# The knobs a method reads beyond the common ones (a logged sample is tied to their values, see fingerprint).
METHOD_KNOBS = {"rcd": ("t_res", "rcd_init"), "mrp-direct": ("mrp_steps",), "mrp-spec": ("mrp_steps",),
                "mrp-remask": ("mrp_steps", "remask", "delta"), "elastic": ("r", "budget", "positions")}
# Elastic's layout knobs added later, with the paper's values: in a sample's fingerprint only when changed.
ELASTIC_LAYOUT = {"sampler": "stride", "terminal": True, "window": 0}
# A research method is reported next to the plain decoder it improves on, at the same settings: which one,
# on which checkpoint by default ("same": the method's own), and the defaults of `python eval.py --method X`.
COUNTERPART = {"rcd": ("threshold", os.path.join(HERE, "models", "tiny-llada-seqd")),
               "mrp-direct": ("baseline", "same"), "mrp-spec": ("baseline", "same"),
               "mrp-remask": ("threshold", "same"), "elastic": ("baseline", "same")}
# rcd: the LLaDA-format pair in one block of 56, where parallel decoding costs accuracy (README, "Results";
# the SDAR-format pair is models/tiny-sdar-rcd with --compare models/tiny-sdar-seqd).
DEFAULTS = {"rcd": dict(model=os.path.join(HERE, "models", "tiny-llada-rcd"), thresholds="0.3,0.5,0.7,0.9",
                        block_length=56),
            "mrp-direct": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp")),
            "mrp-spec": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp")),
            "mrp-remask": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp-remask-long"),
                               thresholds="0.3,0.5,0.7,0.9")}


def load(path, method, args, device, dtype):
    """(model, extras): MRP checkpoints load as (backbone, head); RCD may bring a reference model."""
    if method.startswith("mrp"):
        import mrp
        net, head = mrp.load_mrp(path, device, dtype)
        return net, {"mrp": head}
    net = model_lib.from_pretrained(path, device, dtype)
    if method == "rcd" and args.reference:
        return net, {"reference": model_lib.from_pretrained(args.reference, device, net.lm_head.weight.dtype)}
    return net, {}


# -----------------------------------------------------------------------------
# Running


def setting_name(s):
    keys = [k for k in ("steps", "threshold") if s[k] is not None]
    return ",".join(f"{k}={s[k]}" for k in keys) or f"steps={s['gen_length'] if s['family'] == 'llada' else s['block_length']}"


def fingerprint(folders, s, args, dtype):
    """What a logged sample depends on besides its problem: the weights (size and the first and last MiB of
    every weight file: retraining changes them), the setting with every knob, the dtype and the seed. A log
    line carries hash(fingerprint + problem), so a resumed run never reuses results of another model, data or
    settings (e.g. a changed --gen-length)."""
    h = hashlib.sha256()
    for folder, name in sorted((d, n) for d in folders for n in os.listdir(d)):
        if name.endswith((".safetensors", ".bin", ".pt")) and name != "train_state.pt":
            path = os.path.join(folder, name)
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                h.update(f"{name}:{size}".encode() + f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                h.update(f.read(1 << 20))
    used = ("method", "family", "gen_length", "block_length", "name", "temperature", "cache",  # name: the
            *METHOD_KNOBS.get(s["method"], ()))  # effective steps / threshold, so --steps 56 reuses a default run
    knobs = {k: s[k] for k in used}
    if s["method"] == "rcd" and s["rcd_init"] == "dirichlet":  # only where used: other logs stay valid
        knobs["concentration"] = s["concentration"]
    if s["method"] == "rcd" and s.get("alpha_scale", 1.0) != 1.0:  # likewise only where not the paper's
        knobs["alpha_scale"] = s["alpha_scale"]
    if s["method"] == "rcd" and s.get("rcd_source", "self") != "self":
        knobs["rcd_source"] = s["rcd_source"]
    if s["method"] == "elastic":  # likewise only where not the paper's layout
        knobs.update({k: s[k] for k, v in ELASTIC_LAYOUT.items() if s.get(k, v) != v})
    h.update(json.dumps([knobs, str(dtype), args.seed, args.task], sort_keys=True).encode())
    return h.hexdigest()


def sample_key(fp, record):
    return hashlib.sha256((fp + json.dumps([record["question"], record["gold"]], default=str)).encode()).hexdigest()[:16]


def run_setting(net, tok, records, s, args, done, log, bar):
    """Generate and score every record of one setting, in batches, appending each result to `log`."""
    todo = [r for r in records if (s["name"], r["id"]) not in done]
    code_task = tasks.BENCHMARKS[args.task]["metric"] == "pass@1"
    for i in range(0, len(todo), args.batch_size):
        batch = todo[i:i + args.batch_size]
        prompts = [tok.encode(tok.apply_chat_template(tasks.prompt_messages(args.task, r))) for r in batch]
        torch.manual_seed(args.seed)
        try:
            x, stats = METHODS[s["method"]](net, prompts, s)
        except ValueError as e:  # a decoder refusing these settings (lengths, steps, budget): one line, log kept
            raise SystemExit(f"--method {s['method']} ({s['name']}): {e}") from None
        outputs = [tok.decode(x[j, st:st + n].tolist(), skip_special_tokens=True)
                   for j, (st, n) in enumerate(zip(stats["gen_start"], stats["gen_tokens"]))]
        if code_task:
            programs = [tasks.code_program(args.task, r, tasks.extract_answer(args.task, o)) for r, o in zip(batch, outputs)]
            results = sandbox.run_programs(programs, allow_code_exec=args.allow_code_exec, timeout=args.code_timeout)
            scored = [(p, res["status"] == "passed", res["status"]) for p, res in zip(programs, results)]
        else:
            scored = [(a, tasks.is_correct(args.task, a, r["gold"]), rule) for r, (a, rule) in
                      zip(batch, (tasks.extract_with_rule(args.task, o) for o in outputs))]
        for j, (r, out, (answer, ok, rule)) in enumerate(zip(batch, outputs, scored)):
            row = {"setting": s["name"], "id": r["id"], "key": sample_key(s["fingerprint"], r), "output": out, "extracted": answer, "correct": bool(ok),
                   "rule": rule, "nfe": stats["nfe_per_sample"][j], "tokens": stats["gen_tokens"][j],
                   "seconds": stats["seconds"] / len(batch)}
            if "alpha_mean" in stats:  # rcd: its batch's mean residual weight over the masked positions computed
                row["alpha"] = stats["alpha_mean"]
            log.write(json.dumps(row) + "\n")
            done[(s["name"], r["id"])] = row
        log.flush()
        bar.update(len(batch))


def summarize(rows, task, label, s, n_expected):
    nfe, tokens, sec = sum(r["nfe"] for r in rows), sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)
    n = max(1, len(rows))
    return {"task": task, "method": s["method"], "model": label, "setting": s["name"], "n": len(rows),
            "accuracy": 100.0 * sum(r["correct"] for r in rows) / n, "nfe": nfe / n, "tokens": tokens / n,
            "tokens_per_forward": tokens / max(1, nfe), "seconds": sec, "ms_per_forward": 1000 * sec / max(1, nfe),
            "complete": len(rows) == n_expected,
            **({"alpha_mean": sum(r["alpha"] for r in rows) / n} if rows and all("alpha" in r for r in rows) else {})}


def paired(base, new):
    """The method's accuracy minus its counterpart's on the same problems (dicts id -> correct), in points, with
    a 95 % interval from the per-problem differences (normal approximation: 1.96 standard errors of their mean;
    pairing removes the variance both runs share), and how many problems only one of the two gets right."""
    d = [int(new[i]) - int(base[i]) for i in new if i in base]
    n = len(d)
    mean = sum(d) / max(n, 1)
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"n": n, "delta": 100 * mean, "ci95": 100 * 1.96 * math.sqrt(var / max(n, 1)),
            "only_method": d.count(1), "only_counterpart": d.count(-1)}


def plot(rows, path):
    """Accuracy against tokens per forward, one line per (model, method); only if matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    for key in dict.fromkeys((r["model"], r["method"]) for r in rows):
        pts = sorted((r["tokens_per_forward"], r["accuracy"]) for r in rows if (r["model"], r["method"]) == key)
        plt.plot(*zip(*pts), marker="o", label=f"{key[1]} ({key[0]})")
    plt.xlabel("tokens per forward")
    plt.ylabel("accuracy (%)")
    plt.legend()
    plt.savefig(path, dpi=120)
    print(f"plot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder or Hugging Face repo id (default: the embedded "
                                                 "model for the method: tiny-llada, tiny-sdar-rcd, tiny-sdar-mrp)")
    ap.add_argument("--task", default="tiny", choices=list(tasks.BENCHMARKS), help="benchmark (default: the built-in task)")
    ap.add_argument("--method", default="baseline", choices=list(METHODS), help="decoding method")
    ap.add_argument("--compare", default=None, help="also run the method's plain counterpart (threshold/baseline) on "
                                                    "this checkpoint ('same' = the method's own; default for research "
                                                    "methods: their baseline, e.g. the embedded SeqD model for rcd)")
    ap.add_argument("--no-compare", action="store_true", help="run the method alone")
    ap.add_argument("--data", default=None, help="local JSON/JSONL(.gz) data file (default: built-in or the pinned Hub file)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    ap.add_argument("--gen-length", type=int, default=None, help="tokens to generate (default: per task)")
    ap.add_argument("--block-length", type=int, default=None, help="block length (default: 8 for LLaDA on tiny, 32 otherwise; "
                                                                   "the checkpoint's block size for SDAR)")
    ap.add_argument("--steps", default=None, help="comma-separated sweep: LLaDA total steps, SDAR steps per block")
    ap.add_argument("--thresholds", default=None, help="comma-separated sweep of confidence thresholds, e.g. 0.5,0.7,0.9")
    ap.add_argument("--cache", choices=["prefix", "dual"], default=None, help="Fast-dLLM cache for LLaDA methods")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    ap.add_argument("--t-res", type=float, default=1.0, help="rcd: entropy temperature T_res (tempers alpha only)")
    ap.add_argument("--alpha-scale", type=float, default=1.0,
                    help="rcd: alpha = clip(scale * H / log V, 0, 1) (1 = the paper); use the scale the model was "
                         "trained with (train_residual.py --alpha-scale)")
    ap.add_argument("--rcd-init", choices=["zero", "reference", "self", "dirichlet"], default=None,
                    help="rcd: residual start (default: reference if --reference is given, else zero)")
    ap.add_argument("--concentration", type=float, default=None,
                    help="rcd --rcd-init dirichlet: the Dirichlet concentration c (not given in the paper; default 1)")
    ap.add_argument("--reference", default=None, help="rcd: reference checkpoint for the warm start")
    ap.add_argument("--rcd-source", choices=["self", "reference"], default="self",
                    help="rcd: what predicts each forward's residual: the previous forward (self, the paper) or, as "
                         "in training, the --reference on the same input (a diagnostic: two forwards per step)")
    ap.add_argument("--mrp-steps", type=int, default=None, help="mrp: K (default 3 for spec, 1 for direct and remask)")
    from mrp import REMASK_RULES
    ap.add_argument("--remask", choices=REMASK_RULES, default="published",
                    help="mrp-remask: the rule (published; the released code's delta veto; leave-one-out re-check by the "
                         "MRP head or by the backbone, see mrp.py)")
    ap.add_argument("--delta", type=float, default=2.0, help="mrp-remask code_delta: the |C| veto")
    ap.add_argument("--r", type=int, default=4, help="elastic: [MASK] tokens kept per intermediate future block")
    ap.add_argument("--sampler", choices=["stride", "random"], default="stride",
                    help="elastic (LLaDA): which r masks of a future block are kept, evenly spaced or at random (seeded)")
    ap.add_argument("--no-terminal", dest="terminal", action="store_false",
                    help="elastic (LLaDA): drop the terminal block like the other future blocks (an ablation)")
    ap.add_argument("--window", type=int, default=0,
                    help="elastic (LLaDA): also keep the first N masks after the current block in full (not in the "
                         "paper, which is 0: a DPad-style near window, see README)")
    ap.add_argument("--budget", type=int, default=None, help="elastic (LLaDA): fold the context so a forward sees at "
                                                            "most this many tokens (generation past the model's maximum length)")
    ap.add_argument("--positions", choices=["original", "folded"], default="original",
                    help="elastic (LLaDA): RoPE positions of kept tokens, original or renumbered 0..n-1")
    ap.add_argument("--seed", type=int, default=0, help="random seed (set before every batch)")
    ap.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    ap.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="default: the checkpoint's dtype on CUDA, float32 on CPU")
    ap.add_argument("--samples", default=None, help="per-sample JSONL log, also the resume point (default: runs/TASK-METHOD-MODEL.jsonl; "
                                                   "a counterpart run writes next to it)")
    ap.add_argument("--out", default=None, help="write the summary rows to this JSON file")
    ap.add_argument("--plot", default=None, help="with a comparison: accuracy vs tokens/forward PNG (needs matplotlib)")
    ap.add_argument("--allow-code-exec", action="store_true",
                    help="run model-written code (HumanEval/MBPP), each program in its own Linux namespaces with "
                         "limits (see sandbox.py)")
    ap.add_argument("--code-timeout", type=float, default=3.0, help="seconds per program")
    args = ap.parse_args()
    defaults = DEFAULTS.get(args.method, {})
    args.model = args.model or defaults.get("model", DEFAULT_MODEL)
    args.thresholds = args.thresholds or defaults.get("thresholds")
    if args.model == defaults.get("model"):
        args.block_length = args.block_length or defaults.get("block_length")
    runs = [(args.model, args.method)]
    if not args.t_res > 0:
        raise SystemExit(f"--t-res {args.t_res}: must be > 0")
    if not args.alpha_scale >= 0:
        raise SystemExit(f"--alpha-scale {args.alpha_scale}: must be >= 0")
    if args.reference and args.rcd_init not in (None, "reference"):
        raise SystemExit(f"--reference with --rcd-init {args.rcd_init}: the reference model is for --rcd-init reference "
                         "(the default when --reference is given) and --rcd-source reference")
    if args.rcd_source == "reference" and not args.reference:
        raise SystemExit("--rcd-source reference: give the reference model with --reference")
    if args.concentration is not None and args.rcd_init != "dirichlet":
        raise SystemExit("--concentration is the Dirichlet start's parameter: give it with --rcd-init dirichlet")
    if args.compare and args.no_compare:
        raise SystemExit("--compare and --no-compare contradict each other: give one")
    if args.method in COUNTERPART and not args.no_compare:
        method, where = COUNTERPART[args.method]
        if method == "baseline" and args.thresholds:  # the plain decoder at the same settings: threshold decoding
            method = "threshold"
        target = args.compare or (where if args.model == defaults.get("model") else "same")
        runs.insert(0, (args.model if target == "same" else target, method))
    elif args.compare:
        raise SystemExit(f"--compare: --method {args.method} has no research counterpart; run eval.py twice instead")
    for path, _ in runs:
        name = os.path.basename(os.path.normpath(path))
        if os.path.dirname(os.path.abspath(path)) == os.path.join(HERE, "models") and not os.path.isdir(path):
            raise SystemExit(f"{path}: this embedded model is not in the checkout; make it with: {EMBEDDED.get(name, '?')}")

    if refusal := tasks.code_exec_refusal(args.task, args.allow_code_exec):  # not a 0 % score, before loading
        raise SystemExit(refusal)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    records, info = tasks.load_records(args.task, args.data, args.limit)
    shard = records[rank::world]
    steps = [int(v) for v in args.steps.split(",")] if args.steps else [None]
    thresholds = [float(v) for v in args.thresholds.split(",")] if args.thresholds else [None]
    rows, header, loaded, correct = [], None, {}, {run: {} for run in runs}
    for path, method in runs:
        how = args.method if path == args.model else method  # an MRP checkpoint's backbone serves its counterpart
        if (path, how) not in loaded:
            loaded[(path, how)] = load(path, how, args, device, getattr(torch, args.dtype) if args.dtype else None)
        net, extras = loaded[(path, how)]
        tok = load_tokenizer(model_lib.resolve(path))
        family, dtype = net.config.family, net.lm_head.weight.dtype
        base = dict(family=family, method=method, gen_length=args.gen_length or GEN_LENGTH[args.task],
                    temperature=args.temperature, cache=args.cache, t_res=args.t_res, alpha_scale=args.alpha_scale,
                    remask=args.remask,
                    delta=args.delta, r=args.r, budget=args.budget, positions=args.positions, sampler=args.sampler,
                    terminal=args.terminal, window=args.window, rcd_init=args.rcd_init or ("reference" if args.reference else "zero"),
                    concentration=1.0 if args.concentration is None else args.concentration, rcd_source=args.rcd_source,
                    mrp_steps=args.mrp_steps if args.mrp_steps is not None else 3 if method == "mrp-spec" else 1,
                    block_length=args.block_length or (net.config.block_size if family == "sdar" else
                                                       8 if args.task == "tiny" else 32), **extras)
        settings = [dict(base, steps=st, threshold=th) for st in steps for th in thresholds]
        for s in settings:
            s["name"] = setting_name(s)
            s["fingerprint"] = fingerprint([model_lib.resolve(p) for p in (path, s.get("reference") and args.reference) if p],
                                           s, args, dtype)
        name = os.path.basename(os.path.normpath(path))
        samples = os.path.join("runs", f"{args.task}-{method}-{name}.jsonl")
        if args.samples:  # the method's own run writes exactly there; its counterpart beside it
            root, ext = os.path.splitext(args.samples)
            samples = args.samples if (path, method) == runs[-1] else f"{root}-{method}-{name}{ext}"
        if world > 1:
            samples = f"{samples}.rank{rank}"
        os.makedirs(os.path.dirname(samples) or ".", exist_ok=True)
        done = {}
        if os.path.exists(samples):  # resume: every line is one finished sample
            wanted = {(s["name"], r["id"]): sample_key(s["fingerprint"], r) for s in settings for r in shard}
            with open(samples) as f:
                for n_line, line in enumerate(f, 1):
                    row = json.loads(line)
                    if tasks.scored_without_exec(args.task, row):
                        raise SystemExit(f"{samples}, line {n_line}: scored without running its program (no "
                                         "--allow-code-exec); move the file away or name another with --samples")
                    key = (row["setting"], row["id"])
                    if key in wanted and row.get("key") != wanted[key]:
                        raise SystemExit(f"{samples}, line {n_line}: written by another model, data or setting "
                                         f"({row['setting']}, {row['id']}); move the file away or name another with --samples")
                    done[key] = row
        device_name = torch.cuda.get_device_name(net.lm_head.weight.device) if net.lm_head.weight.is_cuda else "CPU"
        if rank == 0:
            print(f"{args.task}: {info['n']} problems from {info['source']} (sha256 {info['sha256'] or '-'}); "
                  f"{method} with {path} ({family}) on {device_name} in {dtype}; {len(settings)} setting(s); "
                  f"{len(done)} samples already in {samples}")
        from tqdm import tqdm
        bar = tqdm(total=len(shard) * len(settings), desc=method, disable=rank != 0,
                   initial=sum((s["name"], r["id"]) in done for s in settings for r in shard))
        with open(samples, "a") as log:
            for s in settings:
                run_setting(net, tok, shard, s, args, done, log, bar)
        bar.close()
        mine = [done[(s["name"], r["id"])] for s in settings for r in shard]
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            mine = [row for part in gathered for row in part] if rank == 0 else []
        rows += [summarize([r for r in mine if r["setting"] == s["name"]], args.task, name, s, len(records))
                 for s in settings]
        for s in settings:
            correct[(path, method)][s["name"]] = {r["id"]: r["correct"] for r in mine if r["setting"] == s["name"]}
        header = header or {"device": device_name, "dtype": str(dtype).replace("torch.", ""), "family": family,
                            "batch_size": args.batch_size, "gen_length": base["gen_length"],
                            "block_length": base["block_length"], "metric": tasks.BENCHMARKS[args.task]["metric"],
                            "data_sha256": info["sha256"], "world_size": world, "command": " ".join(sys.argv),
                            "knobs": {}}
        if method == args.method:  # the method's own knobs, printed with the results
            header["knobs"] = {k: base[k] for k in (*METHOD_KNOBS.get(method, ()),
                                                    *(ELASTIC_LAYOUT if method == "elastic" else ()),
                                                    *(("alpha_scale",) if method == "rcd" and base["alpha_scale"] != 1 else ()),
                                                    *(("rcd_source",) if method == "rcd" and base["rcd_source"] != "self" else ()))}
    if world > 1:
        dist.destroy_process_group()
        if rank != 0:
            return
    header["model"] = args.model
    print(f"\n{'model':18} {'method':12} {'setting':18} {'n':>5} {'accuracy':>9} {'nfe':>7} {'tokens':>7} "
          f"{'tok/fwd':>8} {'ms/fwd':>7} {'seconds':>8}")
    for r in rows:
        print(f"{r['model'][:18]:18} {r['method']:12} {r['setting']:18} {r['n']:5d} {r['accuracy']:8.1f}% {r['nfe']:7.1f} "
              f"{r['tokens']:7.1f} {r['tokens_per_forward']:8.2f} {r['ms_per_forward']:7.1f} {r['seconds']:8.1f}")
    print(f"({header['metric']}; {header['family']} on {header['device']}, {header['dtype']}, batch {args.batch_size}, "
          f"gen {header['gen_length']}, block {header['block_length']}"
          + "".join(f", {k} {v}" for k, v in header["knobs"].items()) + ")")
    for r in rows:
        if "alpha_mean" in r:
            print(f"{r['model']} {r['setting']}: mean residual weight alpha {r['alpha_mean']:.4f} (over the masked "
                  "positions RCD computed; each batch's mean, averaged over the problems)")
    if len(runs) == 2:  # the method against its counterpart, problem by problem
        (base_run, base_correct), (_, new_correct) = correct.items()
        for r in rows[len(rows) // 2:]:
            r["vs_counterpart"] = c = paired(base_correct[r["setting"]], new_correct[r["setting"]])
            print(f"{r['method']} - {base_run[1]} at {r['setting']}: {c['delta']:+.1f} +- {c['ci95']:.1f} points (95 %, "
                  f"paired over {c['n']} problems; right only with {r['method']}: {c['only_method']}, "
                  f"only with {base_run[1]}: {c['only_counterpart']})")
    if args.plot or (len(runs) > 1 and len(rows) > 2):
        plot(rows, args.plot or os.path.join("runs", f"{args.task}-{args.method}.png"))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**header, "rows": rows}, f, indent=2)
    print(json.dumps({**header, "rows": rows}))


if __name__ == "__main__":
    main()
