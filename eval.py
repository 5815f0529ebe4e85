"""
The evaluation harness: one command for the built-in task on a laptop CPU and for the real benchmarks on
GPUs. Data, prompts and answer checking live in tasks.py; decoders in decode.py (and the method files).

  python eval.py                                    the embedded LLaDA model on the built-in task
  python eval.py --model models/tiny-sdar --method threshold --thresholds 0.5,0.7,0.9
  python eval.py --model GSAI-ML/LLaDA-8B-Instruct --task gsm8k --method dual-cache --thresholds 0.9
  torchrun --nproc_per_node 8 eval.py --model JetLM/SDAR-8B-Chat --task math500 --batch-size 8
  python eval.py --task humaneval --data HumanEval.jsonl.gz --allow-code-exec ...

A method is one entry of METHODS (name -> decoder call); `--steps` and `--thresholds` sweep its settings.
A research method runs next to its counterpart, the plain decoder it improves on at the same settings,
and the two are compared problem by problem. Every sample is written as one JSONL line as soon as it is
scored (id, output, extracted answer, correct, forwards, tokens, seconds), so an interrupted run started
again with the same command skips what is done and ends with the same answers; a log written by another
checkpoint, data or flags that change answers is refused (see fingerprint). A question that cannot be
run (its prompt too long for the model, say) gets an error record, counted wrong, and the run goes on.
At the end: a table for people with a text chart, `--out results.json` and `--json` (a last line of JSON)
for scripts. Under torchrun, samples are sharded across ranks (rank r takes every world-th sample) and
merged on rank 0.
What is measured, as the papers report it: accuracy by the task's rule (tasks.py: GSM8K's `####` /
\\boxed{} answers, Minerva's MATH normalisation, HumanEval / MBPP pass@1), forwards whose logits decide
tokens (the papers' NFE), generated tokens up to the first stop id, tokens per forward, wall seconds.
"""
import argparse
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
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
# How each embedded checkpoint is made, for the message when one is missing from a checkout.
EMBEDDED = {
    "tiny-llada": "python train.py --family llada --out models/tiny-llada",
    "tiny-sdar": "python train.py --family sdar --block-size 32 --out models/tiny-sdar",
    "tiny-sdar-seqd": "python train_residual.py seqd --base models/tiny-sdar --out models/tiny-sdar-seqd",
    "tiny-sdar-rcd": "python train_residual.py rcd --base models/tiny-sdar --reference models/tiny-sdar "
                     "--out models/tiny-sdar-rcd",
    "tiny-sdar-mrp": "python train_mrp.py train --backbone models/tiny-sdar --out models/tiny-sdar-mrp",
    "tiny-sdar-mrp-remask": "python train_mrp.py train --backbone models/tiny-sdar --reveals "
                            "1,2,3,4,6,8,12,16 --reveal-from backbone --steps 3000 "
                            "--out models/tiny-sdar-mrp-remask",
    "tiny-sdar-mrp-1lyr": "python train_mrp.py train --backbone models/tiny-sdar --layers 1 "
                          "--out models/tiny-sdar-mrp-1lyr",
    "tiny-llada-seqd": "python train_residual.py seqd --base models/tiny-llada --out models/tiny-llada-seqd",
    "tiny-llada-rcd": "python train_residual.py rcd --base models/tiny-llada --reference models/tiny-llada "
                      "--out models/tiny-llada-rcd"}
EMBEDDED["tiny-sdar-mrp-remask-long"] = (  # the remasking head trained on: 3,000 + 2,500 + 3,000 steps
    EMBEDDED["tiny-sdar-mrp-remask"] + ", then python train_mrp.py train --init models/tiny-sdar-mrp-remask "
    "--seed 1 --reveals 1,2,3,4,6,8,12,16 --reveal-from backbone --steps 2500 "
    "--out runs/tiny-sdar-mrp-remask-cont, then python train_mrp.py train "
    "--init runs/tiny-sdar-mrp-remask-cont "
    "--seed 2 --reveals 1,2,3,4,6,8,12,16 --reveal-from backbone --steps 3000 "
    "--out models/tiny-sdar-mrp-remask-long")
# generation length per task (block length: 32 for LLaDA, 8 on tiny; the checkpoint's block size for SDAR)
GEN_LENGTH = {"tiny": 56, "gsm8k": 256, "math500": 512, "aime24": 1024, "aime25": 1024, "humaneval": 512,
              "mbpp": 512}

# -----------------------------------------------------------------------------
# Methods: (model, prompts, s) -> (x, stats). `s` is one setting (gen_length, block_length, steps, threshold,
# temperature, cache) plus the method's knobs and extra modules (an RCD reference, an MRP head). The first
# line of each docstring is the method's description in --help.


def eos_early_stop(s):
    """LLaDA2.0's own `eos_early_stop` for the block decoder, only when asked for (--eos-early-stop)."""
    return {"eos_early_stop": True} if s.get("eos_early_stop") else {}


def decode_baseline(model, prompts, s):
    """A fixed number of tokens per step: LLaDA low-confidence remasking, SDAR's (and LLaDA2.0's) static
    rule."""
    if s["threshold"] is not None:  # it would decode one token per step under a "threshold=" label
        raise SystemExit("--method baseline decodes a fixed number of tokens per step: use --steps, or "
                         "--method threshold for --thresholds")
    if model.config.family == "llada":
        return decode.generate(model, prompts, steps=s["steps"] or s["gen_length"],
                               gen_length=s["gen_length"], block_length=s["block_length"],
                               temperature=s["temperature"], cache=s["cache"], **watched(s))
    return decode.block_generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                                 denoising_steps=s["steps"] or s["block_length"],
                                 temperature=s["temperature"], **watched(s), **eos_early_stop(s))


def decode_threshold(model, prompts, s):
    """Confidence-threshold parallel decoding: Fast-dLLM for LLaDA, the dynamic rule of SDAR and
    LLaDA2.0."""
    if s["threshold"] is None:
        raise SystemExit(f"--method {s['method']} needs --thresholds (e.g. 0.5,0.7,0.9)")
    if model.config.family == "llada":
        return decode.generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                               threshold=s["threshold"], temperature=s["temperature"], cache=s["cache"],
                               **watched(s))
    return decode.block_generate(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                                 denoising_steps=s["steps"] or s["block_length"], threshold=s["threshold"],
                                 temperature=s["temperature"], **watched(s), **eos_early_stop(s))


def cached(cache):
    def run(model, prompts, s):
        if model.config.family != "llada":
            raise SystemExit(f"{cache}-cache is Fast-dLLM's LLaDA cache; block models (SDAR, LLaDA2.0) "
                             "always decode with their exact KV cache")
        return decode.generate(model, prompts, steps=s["steps"] or s["gen_length"],
                               gen_length=s["gen_length"], block_length=s["block_length"],
                               threshold=s["threshold"], cache=cache, temperature=s["temperature"])
    run.__doc__ = f"Fast-dLLM's {cache} KV cache (LLaDA), with the threshold rule when --thresholds is given."
    return run


def decode_rcd(model, prompts, s):
    """Residual Context Diffusion (residual.py) with the family's decoder and the threshold, if any.

    The default run, `python eval.py --method rcd`, is the paper's own test: accuracy against the number of
    denoising steps (its Fig. 4; its headline and Table 1 are SDAR). The SDAR-format pair decodes in the
    blocks of 32 it was trained with (the paper's b32) at 8, 4 and 2 steps per block, a fixed quota of 4, 8
    and 16 tokens per step, RCD with v2's cold start against SeqD decoded the same way, paired over the 500
    test problems. It is the fairest test because a fixed quota commits only part of a block in its first
    forward, the one forward without a residual (and on these models none of the errors), so every error is
    committed with the previous step's residual at hand. Threshold decoding (`--thresholds`, the second
    view) commits 78 to 99 % of the answer in that first forward, and at thresholds 0.3 and 0.5 97 to 100 %
    of the first errors, leaving RCD nothing to act on (RESULTS.md, RCD; `--anatomy` shows it). The
    LLaDA-format pair at a fixed quota in one block (the paper's LLaDA layout) gives the same verdict,
    slower: its quota spends the first steps on the end-of-text padding."""
    import residual
    return residual.decode_rcd(model, prompts, gen_length=s["gen_length"], block_length=s["block_length"],
                               steps=s["steps"], threshold=s["threshold"], t_res=s["t_res"],
                               alpha_scale=s["alpha_scale"], init=s["rcd_init"],
                               reference=s.get("reference"), concentration=s["concentration"],
                               source=s["rcd_source"], cache=s["cache"],
                               temperature=s["temperature"], **watched(s, rcd=True))


MRP_MODES = {"direct": "1 + K tokens per backbone forward, unverified (lossy)",
             "spec": "draft K tokens, verify them in one backbone forward (lossless under greedy decoding)",
             "remask": "threshold reveals, revoked where the corrected confidence falls below it"}


def mrp_mode(mode):
    def run(model, prompts, s):
        import mrp
        return mrp.decode_mrp(model, prompts, mrp=s["mrp"], mode=mode, gen_length=s["gen_length"],
                              block_length=s["block_length"], threshold=s["threshold"],
                              mrp_steps=s["mrp_steps"], remask=s["remask"], delta=s["delta"],
                              temperature=s["temperature"])
    run.__doc__ = f"Multi-token Residual Prediction (mrp.py): {MRP_MODES[mode]}."
    return run


def decode_elastic(model, prompts, s):
    """Elastic-dLLM (mask_compress.py): compressed future masks (LLaDA) or the terminal anchor (SDAR)."""
    import mask_compress
    return mask_compress.decode_elastic(model, prompts, gen_length=s["gen_length"],
                                        block_length=s["block_length"], steps=s["steps"],
                                        threshold=s["threshold"], r=s["r"], cache=s["cache"],
                                        budget=s["budget"], positions=s["positions"],
                                        temperature=s["temperature"], sampler=s["sampler"],
                                        terminal=s["terminal"], window=s["window"], **eos_early_stop(s))


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
COUNTERPART = {"rcd": ("baseline", os.path.join(HERE, "models", "tiny-sdar-seqd")),
               "mrp-direct": ("baseline", "same"), "mrp-spec": ("baseline", "same"),
               "mrp-remask": ("threshold", "same"), "elastic": ("baseline", "same")}
# What the table calls a counterpart: RCD's is SeqD, the same fine-tuning without residuals (the paper's).
COUNTERPART_NAME = {"rcd": "SeqD"}
# rcd: the SDAR-format pair in its blocks of 32 at 8, 4 and 2 steps per block, a fixed quota per step (why
# this is the fair test: decode_rcd). Applied with the default model only; the LLaDA-format pair is
# models/tiny-llada-rcd with --compare models/tiny-llada-seqd (RESULTS.md, RCD).
DEFAULTS = {"rcd": dict(model=os.path.join(HERE, "models", "tiny-sdar-rcd"), steps="8,4,2"),
            "mrp-direct": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp")),
            "mrp-spec": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp")),
            "mrp-remask": dict(model=os.path.join(HERE, "models", "tiny-sdar-mrp-remask-long"),
                               thresholds="0.3,0.5,0.7,0.9")}


def load(path, method, args, device, dtype):
    """(model, extras): MRP checkpoints load as (backbone, head); RCD may bring a reference model."""
    refuse_family(checkpoint_folder(path), method, args)
    if method.startswith("mrp"):
        import mrp
        net, head = mrp.load_mrp(checkpoint_folder(path), device, dtype)
        return net, {"mrp": head}
    net = model_lib.from_pretrained(checkpoint_folder(path), device, dtype)
    extras = {}
    if method == "rcd" and args.reference:
        extras["reference"] = model_lib.from_pretrained(checkpoint_folder(args.reference), device,
                                                        net.lm_head.weight.dtype)
    for m in (net, *extras.values()) if args.compile else ():
        model_lib.compile_forward(m)
    return net, extras


def refuse_family(folder, method, args):
    """One line, before the weights load, for a method that does not apply to the checkpoint's family:
    RCD needs a target trained with residuals and MRP a head trained on an SDAR backbone, and neither
    exists for LLaDA2.0 (baseline, threshold and elastic's terminal anchor do apply); --eos-early-stop is
    LLaDA2.0's block decoder's flag."""
    kind = model_lib.or_exit(model_lib.read_json, os.path.join(folder, "config.json")).get("model_type")
    if kind == "llada2_moe" and (method == "rcd" or method.startswith("mrp")):
        raise SystemExit(f"--method {method}: no {method.split('-')[0].upper()} model of the LLaDA2.0 "
                         "family exists; LLaDA2.0 runs baseline, threshold and elastic")
    if args.eos_early_stop and kind == "llada":
        raise SystemExit("--eos-early-stop is LLaDA2.0's (and SDAR's) block decoder flag; LLaDA's decoder "
                         "stops at EOS by its own rule")


@functools.lru_cache(maxsize=None)
def checkpoint_folder(path):
    """model.resolve, once a run (for a repo id it asks the Hub), its refusal in one line."""
    return model_lib.or_exit(model_lib.resolve, path)


def compile_seconds(*models):
    """Seconds spent so far in forwards that compiled (0 without --compile): not decoding time."""
    return sum(getattr(m, "compile_seconds", 0.0) for m in models)


# -----------------------------------------------------------------------------
# Beyond the papers: the error anatomy of a run (--anatomy, this project's diagnostic)

ANATOMY = ("tokens", "tokens_first", "errors", "errors_first", "root", "root_first", "survived", "alpha_sum",
           "alpha_high")
ANATOMY_METHODS = ("baseline", "threshold", "rcd")  # their decoders take forward= and on_step= as they are


class Anatomy:
    """Where a run commits its tokens and its errors, and how much residual RCD has at hand there. For one
    batch of the built-in task, whose solutions are unique and laid out token for token: an error is a
    committed token of the gold answer (train.py's layout, end-of-turn token included) that differs from it.
    `wrap(forward)` watches the decoder's forwards (which columns were masks, and each one's prediction);
    `on_step` sees what the step committed. Per problem (`counts`) it adds up
      tokens, errors     committed in the gold answer, and how many of them in the first forward of their
                         block (the forward that has no residual yet under RCD's cold start);
      root errors        the errors of the problem's first step that commits any (later ones may follow from
                         them), and how many of those in a first forward;
      survived, alpha    positions of the block being decoded that stay masked after a step, and alpha =
                         H / log V (Eq. 3) of that step's prediction there: the weight of the residual RCD
                         feeds the next forward (for a plain decoder: what RCD would feed).
    Blocks are the decoders': LLaDA's counted from the first generated column, SDAR's aligned to column 0
    of the canvas (each prompt is shifted by whole blocks)."""

    def __init__(self, gold, family, block_length, mask_id):
        self.gold, self.family, self.block_length, self.mask_id = gold, family, block_length, mask_id
        self.counts = [dict.fromkeys(ANATOMY, 0) for _ in gold]
        self.start = self.fed = self.gold_ids = self.blocks = None
        self.seen, self.erred = set(), set()

    def wrap(self, forward):
        """The decoder's forward, watched: the columns it fed, which were masks, and alpha at those."""
        import residual

        def watched(model, ids, *args, cache_start=0, **kw):
            out = forward(model, ids, *args, cache_start=cache_start, **kw)
            masks = ids == self.mask_id  # a new tensor: the canvas is written in place after the forward
            if masks.any():
                if self.start is None:  # the first forward with masks: each row's first generated column
                    self.start = (cache_start + masks.int().argmax(1)).tolist()
                logits = out[0] if isinstance(out, tuple) else out
                alpha = torch.zeros(masks.shape, device=ids.device)
                alpha[masks] = residual.entropy_weight(logits[masks])
                self.fed = (torch.arange(cache_start, cache_start + ids.shape[1], device=ids.device), masks,
                            alpha)
            return out
        return watched

    def layout(self, x):
        """Gold ids over the canvas (-1 off the answer) and each column's block, once the canvas is known."""
        B, T = x.shape
        self.gold_ids = torch.full((B, T), -1, dtype=torch.long, device=x.device)
        for r, (s, g) in enumerate(zip(self.start, self.gold)):
            n = min(len(g), T - s)
            self.gold_ids[r, s:s + n] = torch.tensor(g[:n], device=x.device)
        origin = torch.tensor(self.start, device=x.device)[:, None] if self.family == "llada" else 0
        cols = torch.arange(T, device=x.device).expand(B, T)
        self.blocks = torch.div(cols - origin, self.block_length, rounding_mode="floor")

    def on_step(self, x):
        if self.gold_ids is None:
            self.layout(x)
        cols, was, alpha = self.fed
        now = x[:, cols]
        new, kept = was & (now != self.mask_id), was & (now == self.mask_id)
        gold, blocks = self.gold_ids[:, cols], self.blocks[:, cols]
        answer = new & (gold >= 0)
        wrong = answer & (now != gold)
        for r, c in enumerate(self.counts):
            if not new[r].any():  # done, or stopped: nothing committed
                continue
            block = int(blocks[r][new[r]].min())
            first = (r, block) not in self.seen
            self.seen.add((r, block))
            tokens, errors = int(answer[r].sum()), int(wrong[r].sum())
            root = errors if r not in self.erred else 0
            if errors:
                self.erred.add(r)
            survived = alpha[r][kept[r] & (blocks[r] == block)]
            for k, v in (("tokens", tokens), ("errors", errors), ("root", root)):
                c[k] += v
                c[k + "_first"] += v if first else 0
            c["survived"] += len(survived)
            c["alpha_sum"] += float(survived.sum())
            c["alpha_high"] += int((survived > 0.1).sum())


def anatomy_for(args, net, tok, s, batch):
    """An Anatomy for this batch with --anatomy, else None."""
    if not args.anatomy:
        return None
    import train
    gold = [train.encode(tok, r["question"], r["answer"], s["family"])[1] for r in batch]
    return Anatomy(gold, s["family"], s["block_length"], net.config.mask_token_id)


def watched(s, rcd=False):
    """The decoder keywords that let a batch's Anatomy (s["watch"]) watch it, none without --anatomy: the
    forward wrapped (RCD's is made inside residual.decode_rcd, which takes the wrapper) and the callback."""
    a = s.get("watch")
    if a is None:
        return {}
    return {"wrap": a.wrap, "on_step": a.on_step} if rcd else {"forward": a.wrap(decode.model_forward),
                                                               "on_step": a.on_step}


def anatomy_line(label, a):
    """One setting's anatomy, summed over its problems, in words."""
    pct = lambda k, n: f"{100 * a[k] / max(a[n], 1):.1f} %"
    return (f"{label}: the first forward of a block committed {pct('tokens_first', 'tokens')} of the "
            f"{a['tokens']:,} answer tokens, {pct('errors_first', 'errors')} of the {a['errors']:,} "
            f"errors and {pct('root_first', 'root')} of the {a['root']:,} root errors; {a['survived']:,} "
            f"positions stayed masked after a step, mean alpha {a['alpha_sum'] / max(a['survived'], 1):.3f} "
            f"(above 0.1 at {pct('alpha_high', 'survived')})")


# -----------------------------------------------------------------------------
# Running


def setting_name(s):
    keys = [k for k in ("steps", "threshold") if s[k] is not None]
    default = s["gen_length"] if s["family"] == "llada" else s["block_length"]
    return ",".join(f"{k}={s[k]}" for k in keys) or f"steps={default}"


FULL_HASH_BYTES = 256 << 20  # files up to this size are hashed in full (a fraction of a second each)


def file_digest(path):
    """A file's sha256, or for a weight file over FULL_HASH_BYTES (hashing a 16 GB checkpoint would take
    minutes per run) a rule: the Hugging Face Hub's own sha256 of it when it is a blob of the hub's cache
    (the hub names LFS blobs by their sha256), else its size, its safetensors header (every tensor's name,
    dtype, shape and offsets) and 16 one-MiB samples evenly spaced from its first to its last byte. Any
    retraining, conversion or cast changes those; an edit of a few bytes of a big local file between two
    samples is not seen: after such an edit, start a new log."""
    size, blob = os.path.getsize(path), os.path.realpath(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
            return h.hexdigest()
        if os.path.basename(os.path.dirname(blob)) == "blobs" and re.fullmatch("[0-9a-f]{64}",
                                                                                os.path.basename(blob)):
            return os.path.basename(blob)
        h.update(f"{size}".encode())
        if path.endswith(".safetensors"):  # an 8-byte length, then the JSON header
            h.update(f.read(min(int.from_bytes(f.read(8), "little"), 1 << 28)))
        for k in range(16):
            f.seek((size - (1 << 20)) * k // 15)
            h.update(f.read(1 << 20))
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def folder_digest(folder):
    """What a checkpoint folder brings to a fingerprint: every file loading reads (model.HUB_FILES: the
    config, generation config, tokenizer files and weights), each by file_digest. Computed once a run."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
                   and any(fnmatch.fnmatch(n, p) for p in model_lib.HUB_FILES))
    return hashlib.sha256("".join(f"{n} {file_digest(os.path.join(folder, n))}\n"
                                  for n in names).encode()).hexdigest()


def fingerprint(digests, s, args, dtype, device="cpu", world=1):
    """What a logged sample depends on besides its problem: the checkpoint folders' digests (folder_digest:
    config, tokenizer, weights), the task's prompt, the setting with every knob, and what else changes its
    tokens: dtype, device type, seed, --batch-size and the number of ranks (a batch's padding, order and
    sampling noise depend on its neighbours), and for code tasks --allow-code-exec and --code-timeout. A
    log line carries hash(fingerprint + problem), so a resumed run never reuses a result that a fresh run
    could give differently. Not in it: --compile (the same answers, tests/test_compile.py) and this
    project's own code (after changing a decoder, start a new log)."""
    # name: the effective steps / threshold, so --steps 56 reuses a default run
    used = ("method", "family", "gen_length", "block_length", "name", "temperature", "cache",
            *METHOD_KNOBS.get(s["method"], ()))
    knobs = {k: s[k] for k in used}
    if s.get("eos_early_stop"):  # LLaDA2.0's flag: the same answers, fewer forwards (only where used)
        knobs["eos_early_stop"] = True
    if s["method"] == "rcd" and s["rcd_init"] == "dirichlet":  # only where used: the other runs share logs
        knobs["concentration"] = s["concentration"]
    if s["method"] == "rcd" and s.get("alpha_scale", 1.0) != 1.0:  # likewise only where not the paper's
        knobs["alpha_scale"] = s["alpha_scale"]
    if s["method"] == "rcd" and s.get("rcd_source", "self") != "self":
        knobs["rcd_source"] = s["rcd_source"]
    if s["method"] == "elastic":  # likewise only where not the paper's layout
        knobs.update({k: s[k] for k, v in ELASTIC_LAYOUT.items() if s.get(k, v) != v})
    run = [str(dtype), torch.device(device).type, args.seed, args.batch_size, world, args.task,
           tasks.BENCHMARKS[args.task]["prompt"]]
    if tasks.BENCHMARKS[args.task]["metric"] == "pass@1":
        run += [args.allow_code_exec, args.code_timeout]
    return hashlib.sha256(json.dumps([list(digests), knobs, run], sort_keys=True).encode()).hexdigest()


def sample_key(fp, record):
    """hash(fingerprint + the whole record): question, answer, and for code tasks the tests."""
    problem = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256((fp + problem).encode()).hexdigest()[:16]


def score(task, batch, outputs, args):
    """(extracted answer or program, correct, rule or status) for each output of a batch."""
    if tasks.BENCHMARKS[task]["metric"] == "pass@1":
        programs = [tasks.code_program(task, r, tasks.extract_answer(task, o))
                    for r, o in zip(batch, outputs)]
        results = sandbox.run_programs(programs, allow_code_exec=args.allow_code_exec,
                                       timeout=args.code_timeout)
        return [(p, res["status"] == "passed", res["status"]) for p, res in zip(programs, results)]
    return [(a, tasks.is_correct(task, a, r["gold"]), rule) for r, (a, rule) in
            zip(batch, (tasks.extract_with_rule(task, o) for o in outputs))]


def one_line(text, limit=300):
    return " ".join(str(text).split())[:limit]


def encode(tok, task, record):
    """A record's prompt ids, or the one-line reason it has none."""
    try:
        return tok.encode_chat(tasks.prompt_messages(task, record))  # its special-token text stays text
    except Exception as e:  # odd text or a malformed record (the tokenizer's and template's errors vary)
        return one_line(f"prompt: cannot be encoded ({type(e).__name__}: {e})")


def decode_group(net, tok, batch, group, prompts, s, args):
    """{j: result} for the prompts of batch[j] for j in `group`, decoded together: output text, forwards,
    tokens, seconds (and rcd's alpha, --anatomy's counts), or the one-line reason an output cannot be read
    back."""
    torch.manual_seed(args.seed)
    anatomy = anatomy_for(args, net, tok, s, [batch[j] for j in group])
    compiling = compile_seconds(net, s.get("reference"))
    setting = {**s, "watch": anatomy} if anatomy else s
    x, stats = METHODS[s["method"]](net, [prompts[j] for j in group], setting)
    seconds = stats["seconds"] - (compile_seconds(net, s.get("reference")) - compiling)  # not decoding
    results = {}
    for i, j in enumerate(group):
        start, n = stats["gen_start"][i], stats["gen_tokens"][i]
        try:
            output = tok.decode(x[i, start:start + n].tolist(), skip_special_tokens=True)
        except Exception as e:
            results[j] = one_line(f"output: cannot be decoded ({type(e).__name__}: {e})")
            continue
        results[j] = {"output": output, "nfe": stats["nfe_per_sample"][i], "tokens": n,
                      "seconds": seconds / len(group)}
        if "alpha_mean" in stats:  # rcd: its batch's mean residual weight over the masked positions
            results[j]["alpha"] = stats["alpha_mean"]
        if anatomy:
            results[j]["anatomy"] = anatomy.counts[i]
    return results


def generate_batch(net, tok, batch, s, args):
    """{j: result or the one-line error} for every record of a batch, decoded together. One bad question
    never stops a run: a prompt that cannot be encoded is its record's error, and when the decoder refuses
    the batch for a prompt ("prompt: ..."; e.g. too long for the model), each prompt is decoded alone and
    the refused ones get the error. A refusal of the setting (lengths, steps, budget) is the run's: one
    line."""
    results = {j: encode(tok, args.task, r) for j, r in enumerate(batch)}
    groups = [[j for j, ids in results.items() if not isinstance(ids, str)]]
    while groups:
        group = groups.pop()
        if not group:
            continue
        try:
            results.update(decode_group(net, tok, batch, group, results, s, args))
        except ValueError as e:
            if not one_line(e).startswith("prompt"):
                raise SystemExit(f"--method {s['method']} ({s['name']}): {one_line(e)}") from None
            if len(group) > 1:
                groups += [[j] for j in group]
            else:
                results[group[0]] = one_line(e)
    return results


def run_setting(net, tok, records, s, args, done, log, bar):
    """Generate and score every record of one setting, appending each result to `log`. Batches are cut from
    the whole list, done or not, so a resumed run decodes each problem with the neighbours of an uninterrupted
    one; a record without a result (generate_batch) gets an error record, scored wrong."""
    for i in range(0, len(records), args.batch_size):
        batch = records[i:i + args.batch_size]
        logged = [done.get((s["name"], r["id"])) for r in batch]  # --anatomy redoes a sample logged without
        new = [j for j, row in enumerate(logged)  # its counts (an error record has none to give)
               if row is None or args.anatomy and not {"anatomy", "error"} & set(row)]
        if not new:
            continue
        results = generate_batch(net, tok, batch, s, args)
        ok = [j for j in new if not isinstance(results[j], str)]
        scored = dict(zip(ok, score(args.task, [batch[j] for j in ok], [results[j]["output"] for j in ok],
                                    args)))
        for j in new:
            row = {"setting": s["name"], "id": batch[j]["id"], "key": sample_key(s["fingerprint"], batch[j])}
            if j in scored:
                answer, ok_j, rule = scored[j]
                row.update(output=results[j]["output"], extracted=answer, correct=bool(ok_j), rule=rule,
                           **{k: v for k, v in results[j].items() if k != "output"})
            else:
                row.update(output="", extracted=None, correct=False, rule="error", error=results[j], nfe=0,
                           tokens=0, seconds=0.0)
            log.write(json.dumps(row) + "\n")
            done[(s["name"], batch[j]["id"])] = row
        log.flush()
        bar.update(len(new))


def summarize(rows, task, label, s, n_expected):
    nfe, tokens = sum(r["nfe"] for r in rows), sum(r["tokens"] for r in rows)
    sec, n = sum(r["seconds"] for r in rows), max(1, len(rows))
    alpha = [r["alpha"] for r in rows if "alpha" in r]
    errors = [r["error"] for r in rows if "error" in r]
    run = [r for r in rows if "error" not in r]
    anatomy = {k: sum(r["anatomy"][k] for r in run) for k in ANATOMY} if run and all(
        "anatomy" in r for r in run) else None
    return {"task": task, "method": s["method"], "model": label, "setting": s["name"], "n": len(rows),
            "accuracy": 100.0 * sum(r["correct"] for r in rows) / n, "nfe": nfe / n, "tokens": tokens / n,
            "tokens_per_forward": tokens / max(1, nfe), "seconds": sec,
            "ms_per_forward": 1000 * sec / max(1, nfe), "complete": len(rows) == n_expected,
            "errors": len(errors), **({"first_error": errors[0]} if errors else {}),
            **({"alpha_mean": sum(alpha) / len(alpha)} if alpha else {}),
            **({"anatomy": anatomy} if anatomy else {})}


def paired(base, new):
    """The method's accuracy minus its counterpart's on the same problems (dicts id -> correct), in points,
    with a 95 % interval from the per-problem differences (normal approximation: 1.96 standard errors of
    their mean; pairing removes the variance both runs share), and how many problems only one of the two
    gets right."""
    d = [int(new[i]) - int(base[i]) for i in new if i in base]
    n = len(d)
    mean = sum(d) / max(n, 1)
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return {"n": n, "delta": 100 * mean, "ci95": 100 * 1.96 * math.sqrt(var / max(n, 1)),
            "only_method": d.count(1), "only_counterpart": d.count(-1)}


def default_block_length(family, block_size, task):
    """Block models (SDAR, LLaDA2.0) decode in their checkpoint's block size; LLaDA in blocks of 8 on the
    built-in task, else 32."""
    if family != "llada":
        return block_size
    return 8 if task == "tiny" else 32


def settings_for(args, path, method, net, extras, world):
    """(base, settings): the run's shared setting, and one setting per --steps x --thresholds value, each
    with its name and fingerprint."""
    mrp_steps = args.mrp_steps
    if mrp_steps is None:
        mrp_steps = 3 if method == "mrp-spec" else 1
    family = net.config.family
    base = dict(family=family, method=method, gen_length=args.gen_length or GEN_LENGTH[args.task],
                temperature=args.temperature, cache=args.cache, t_res=args.t_res,
                alpha_scale=args.alpha_scale, remask=args.remask, delta=args.delta, r=args.r,
                budget=args.budget, positions=args.positions, sampler=args.sampler, terminal=args.terminal,
                window=args.window, rcd_init=args.rcd_init or ("reference" if args.reference else "zero"),
                concentration=1.0 if args.concentration is None else args.concentration,
                rcd_source=args.rcd_source, mrp_steps=mrp_steps, eos_early_stop=args.eos_early_stop,
                block_length=args.block_length or default_block_length(family, net.config.block_size,
                                                                       args.task), **extras)
    steps, thresholds = args.sweep
    settings = [dict(base, steps=st, threshold=th) for st in steps for th in thresholds]
    weight = net.lm_head.weight
    folders = (path, "reference" in extras and args.reference)
    digests = [folder_digest(checkpoint_folder(p)) for p in folders if p]
    for s in settings:
        s["name"] = setting_name(s)
        s["fingerprint"] = fingerprint(digests, s, args, weight.dtype, weight.device, world)
    return base, settings


def samples_path(args, runs, path, method, rank, world):
    """The run's JSONL log: runs/TASK-METHOD-MODEL.jsonl, or --samples for the method's own run (its
    counterpart writes beside it); one file per rank under torchrun."""
    name = os.path.basename(os.path.normpath(path))
    samples = os.path.join("runs", f"{args.task}-{method}-{name}.jsonl")
    if args.samples:
        root, ext = os.path.splitext(args.samples)
        samples = args.samples if (path, method) == runs[-1] else f"{root}-{method}-{name}{ext}"
    return f"{samples}.rank{rank}" if world > 1 else samples


def read_log(samples):
    """[(line number, row)] of a JSONL log, and the length in bytes of its complete lines. A last line
    without its newline is what a killed writer leaves: it is dropped with a note (that sample runs again);
    any other line that is not a sample record is a one-line error naming the file and the line."""
    with open(samples, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        print(f"{samples}: the last line was cut off (an interrupted write); dropped, that sample runs again")
    rows = []
    for n_line, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        try:
            row = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            row = None
        if not (isinstance(row, dict) and {"setting", "id"} <= set(row)):
            raise SystemExit(f"{samples}, line {n_line}: not a sample record (a torn or edited line); move "
                             "the file away or name another with --samples")
        rows.append((n_line, row))
    return rows, end


def resume(samples, settings, shard, task):
    """The samples a log already holds, {(setting, id): row}; a line written by another model, data or
    setting, or a code task's line scored without running its program, stops the run, leaving the log as
    it is. Only once the whole log is accepted is a cut-off last line truncated away, before appending."""
    done = {}
    if not os.path.exists(samples):
        return done
    wanted = {(s["name"], r["id"]): sample_key(s["fingerprint"], r) for s in settings for r in shard}
    rows, end = read_log(samples)
    for n_line, row in rows:
        if tasks.scored_without_exec(task, row):
            raise SystemExit(f"{samples}, line {n_line}: scored without running its program (no "
                             "--allow-code-exec); move the file away or name another with --samples")
        key = (row["setting"], row["id"])
        if key in wanted and row.get("key") != wanted[key]:
            raise SystemExit(f"{samples}, line {n_line}: written by another model, data or setting "
                             f"({row['setting']}, {row['id']}; the checkpoint's files, the problem and every "
                             "flag that changes an answer must match); move the file away or name another "
                             "with --samples")
        done[key] = row
    if end < os.path.getsize(samples):
        os.truncate(samples, end)
    return done


def method_knobs(method, base):
    """The method's own knobs, printed with the results (beyond-the-paper ones only where changed)."""
    keys = [*METHOD_KNOBS.get(method, ()), *(ELASTIC_LAYOUT if method == "elastic" else ())]
    if method == "rcd" and base["alpha_scale"] != 1:
        keys.append("alpha_scale")
    if method == "rcd" and base["rcd_source"] != "self":
        keys.append("rcd_source")
    return {k: base[k] for k in keys}


def run_one(args, runs, path, method, net, extras, records, info, rank, world):
    """One (checkpoint, method) of the plan: every setting over this rank's share of the problems, resumed
    from its log. Returns the settings' summaries, {setting: {id: correct}}, a header and the base setting."""
    tok = model_lib.or_exit(load_tokenizer, checkpoint_folder(path))
    base, settings = settings_for(args, path, method, net, extras, world)
    shard, family, dtype = records[rank::world], net.config.family, net.lm_head.weight.dtype
    samples = samples_path(args, runs, path, method, rank, world)
    os.makedirs(os.path.dirname(samples) or ".", exist_ok=True)
    done = resume(samples, settings, shard, args.task)
    weight = net.lm_head.weight
    device_name = torch.cuda.get_device_name(weight.device) if weight.is_cuda else "CPU"
    if rank == 0:
        print(f"{args.task}: {info['n']} problems from {info['source']} (sha256 {info['sha256'] or '-'}); "
              f"{method} with {path} ({family}) on {device_name} in {dtype}; {len(settings)} setting(s); "
              f"{len(done)} samples already in {samples}")
    from tqdm import tqdm
    initial = sum((s["name"], r["id"]) in done for s in settings for r in shard)
    with tqdm(total=len(shard) * len(settings), desc=method, disable=rank != 0, initial=initial) as bar, \
            open(samples, "a") as log:  # the bar closed before any Ctrl-C message
        for s in settings:
            run_setting(net, tok, shard, s, args, done, log, bar)
    mine = [done[(s["name"], r["id"])] for s in settings for r in shard]
    if world > 1:
        import torch.distributed as dist
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        mine = [row for part in gathered for row in part] if rank == 0 else []
    name = os.path.basename(os.path.normpath(path))
    rows = [summarize([r for r in mine if r["setting"] == s["name"]], args.task, name, s, len(records))
            for s in settings]
    correct = {s["name"]: {r["id"]: r["correct"] for r in mine if r["setting"] == s["name"]}
               for s in settings}
    header = {"device": device_name, "dtype": str(dtype).replace("torch.", ""), "family": family,
              "batch_size": args.batch_size, "gen_length": base["gen_length"],
              "block_length": base["block_length"], "metric": tasks.BENCHMARKS[args.task]["metric"],
              "data_sha256": info["sha256"], "world_size": world, "command": " ".join(sys.argv), "knobs": {}}
    return rows, correct, header, base


def run(args, runs):
    """Every (checkpoint, method) of the plan in order, a model loaded once. (rows, header, correct) on
    rank 0; None on the other ranks of a torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = args.device or "cpu"
    if args.device is None and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    dtype = getattr(torch, args.dtype) if args.dtype else None
    records, info = model_lib.or_exit(tasks.load_records, args.task, args.data, args.limit)
    rows, header, loaded, correct = [], None, {}, {}
    for path, method in runs:
        how = args.method if path == args.model else method  # an MRP checkpoint's backbone serves both runs
        if (path, how) not in loaded:
            loaded[(path, how)] = model_lib.or_exit(load, path, how, args, device, dtype)  # bad files: a line
        net, extras = loaded[(path, how)]
        run_rows, correct[(path, method)], run_header, base = run_one(args, runs, path, method, net, extras,
                                                                      records, info, rank, world)
        rows += run_rows
        header = header or run_header
        if method == args.method:
            header["knobs"] = method_knobs(method, base)
    if world > 1:
        dist.destroy_process_group()
    return (rows, header, correct) if rank == 0 else None


# -----------------------------------------------------------------------------
# Reporting

# What "accuracy" means for each task's rule (tasks.py), in words
RULES = {"gsm8k_hash": "the number after '####' (else the last number) is the reference answer",
         "gsm8k_boxed": "the last \\boxed{} (else the number after '####', else the last number) is the "
                        "answer",
         "math_norm": "the last \\boxed{} equals the answer after Minerva's normalisation",
         "aime_int": "the last \\boxed{}, read as an integer, is the answer",
         "pass@1": "the generated program passes the task's tests (one sample per problem)"}
LEGEND = """\
setting         the denoising steps (LLaDA: in all; SDAR: per block) or the confidence threshold
forwards        model forwards per problem whose predictions decide tokens (the papers' NFE)
tokens          tokens generated per problem, up to the end-of-answer token
tokens/forward  tokens / forwards: how many tokens a forward commits on average (1 = one at a time)
ms/forward      wall milliseconds per forward and problem (a batched forward counts once per problem)"""


def counterpart_name(runs, rows, method):
    """What the table calls a method's counterpart (RCD's is SeqD), or None when it runs alone."""
    return COUNTERPART_NAME.get(method, rows[0]["method"]) if len(runs) == 2 else None


def labels_for(rows, name):
    """Each row's method as the table shows it: the first half are the counterpart's rows, if any."""
    if name is None:
        return [r["method"] for r in rows]
    half = len(rows) // 2
    return [f"{name} (counterpart)"] * half + [r["method"] for r in rows[half:]]


def print_table(rows, labels, header, args):
    cols = [("model", [r["model"] for r in rows]), ("method", labels),
            ("setting", [r["setting"] for r in rows])]
    widths = [max(len(h), *map(len, v)) for h, v in cols]
    print("\n" + "  ".join(f"{h:{w}}" for (h, _), w in zip(cols, widths)) +
          "  problems  accuracy  forwards  tokens  tokens/forward  ms/forward  seconds")
    for i, r in enumerate(rows):
        print("  ".join(f"{v[i]:{w}}" for (_, v), w in zip(cols, widths)) +
              f"  {r['n']:8d}  {r['accuracy']:7.1f}%  {r['nfe']:8.1f}  {r['tokens']:6.1f}  "
              f"{r['tokens_per_forward']:14.2f}  {r['ms_per_forward']:10.1f}  {r['seconds']:7.1f}")
    knobs = "".join(f", {k} {v}" for k, v in header["knobs"].items()
                    if v is not None and not (k in ELASTIC_LAYOUT and v == ELASTIC_LAYOUT[k]))
    print(f"({header['family']} on {header['device']} in {header['dtype']}; batch {args.batch_size}; "
          f"{header['gen_length']} tokens in blocks of {header['block_length']}{knobs})\n")
    print(f"accuracy        % of problems where {RULES.get(header['metric'], header['metric'])}")
    print(LEGEND)


def compare(rows, name, correct):
    """The method against its counterpart, setting by setting, on the same problems (paired): one line
    each, and the numbers in each row's "vs_counterpart"."""
    (_, base_correct), (_, new_correct) = correct.items()
    lines = []
    for r in rows[len(rows) // 2:]:
        r["vs_counterpart"] = c = paired(base_correct[r["setting"]], new_correct[r["setting"]])
        lines.append(f"{r['method']} - {name} at {r['setting']}: {c['delta']:+.1f} +- {c['ci95']:.1f} "
                     f"points (95 %, paired over {c['n']} problems; right only with {r['method']}: "
                     f"{c['only_method']}, only with {name}: {c['only_counterpart']})")
    return lines


MARKS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def chart(rows, labels, width=48, height=10):
    """Accuracy against tokens per forward as text, one letter per (model, method) of the table."""
    keys = list(dict.fromkeys((r["model"], label) for r, label in zip(rows, labels)))
    xs, ys = [r["tokens_per_forward"] for r in rows], [r["accuracy"] for r in rows]
    grid = [[" "] * width for _ in range(height)]
    for x, y, key in zip(xs, ys, zip([r["model"] for r in rows], labels)):
        col = round((x - min(xs)) / ((max(xs) - min(xs)) or 1) * (width - 1))
        line = round((max(ys) - y) / ((max(ys) - min(ys)) or 1) * (height - 1))
        mark = MARKS[keys.index(key) % 26]
        grid[line][col] = mark if grid[line][col] in (" ", mark) else "*"
    ticks = {0: f"{max(ys):.1f}%", height - 1: f"{min(ys):.1f}%"}
    out = ["accuracy against tokens per forward (* = points on top of each other)"]
    out += [f"{ticks.get(i, ''):>7} |" + "".join(cells).rstrip() for i, cells in enumerate(grid)]
    out += [" " * 8 + "+" + "-" * width,
            " " * 9 + f"{min(xs):<{width // 2}.2f}{max(xs):>{width - width // 2}.2f}",
            " " * 9 + "tokens per forward".center(width).rstrip()]
    out += [f"  {MARKS[i % 26]} = {label} ({model})" for i, (model, label) in enumerate(keys)]
    print("\n".join(out))


def plot(rows, labels, path, title):
    """The same picture as a PNG when matplotlib is installed (it is not a requirement). True if written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = plt.figure()
    for key in dict.fromkeys(zip((r["model"] for r in rows), labels)):
        pts = sorted((r["tokens_per_forward"], r["accuracy"]) for r, label in zip(rows, labels)
                     if (r["model"], label) == key)
        plt.plot(*zip(*pts), marker="o", label=f"{key[1]} ({key[0]})")
    plt.title(title)
    plt.xlabel("tokens per forward")
    plt.ylabel("accuracy (%)")
    plt.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plt.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")
    return True


def report(args, runs, rows, header, correct):
    """The table with its legend, the paired comparison, the chart; --out and --json for scripts."""
    header["model"] = args.model
    name = counterpart_name(runs, rows, args.method)
    labels = labels_for(rows, name)
    print_table(rows, labels, header, args)
    lines = [f"{r['model']} {r['setting']}: mean residual weight alpha {r['alpha_mean']:.4f} (over the "
             "masked positions RCD computed; each batch's mean, averaged over the problems)"
             for r in rows if "alpha_mean" in r]
    lines += [anatomy_line(f"{label} with {r['model']} at {r['setting']}", r["anatomy"])
              for r, label in zip(rows, labels) if args.anatomy and "anatomy" in r]
    lines += compare(rows, name, correct) if name is not None else []
    lines += [f"{r['model']} {r['setting']}: {r['errors']} of {r['n']} problems could not be run and count "
              f"as wrong (the log's \"error\" field says why; the first: {r['first_error']})"
              for r in rows if r["errors"]]
    print("\n" + "\n".join(lines) if lines else "")
    if len(rows) > 1:
        chart(rows, labels)
    if args.plot or (name is not None and len(rows) > 2):
        model = os.path.basename(os.path.normpath(args.model))  # named by model: another's run keeps this one
        title = f"{args.task}: {args.method} on {model}" + (f" vs {name}" if name else "")
        path = args.plot or os.path.join("runs", f"{args.task}-{args.method}-{model}.png")
        if not plot(rows, labels, path, title) and args.plot:
            print("--plot: matplotlib is not installed, so no PNG (the text chart above shows the same)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**header, "rows": rows}, f, indent=2)
    if args.json:
        print(json.dumps({**header, "rows": rows}))


# -----------------------------------------------------------------------------
# Command line


def method_list():
    """--help's list of methods, from the first line of each METHODS entry's docstring."""
    width = max(map(len, METHODS))
    return "methods (--method):\n" + "\n".join(f"  {name:{width}}  {fn.__doc__.strip().splitlines()[0]}"
                                               for name, fn in METHODS.items())


def add_run_args(ap):
    by_model = {}
    for method, d in DEFAULTS.items():
        by_model.setdefault(os.path.relpath(d["model"], HERE), []).append(method)
    model_help = "; ".join(f"{', '.join(m)}: {path}" for path, m in by_model.items())
    g = ap.add_argument_group("what to evaluate")
    g.add_argument("--method", default="baseline", choices=list(METHODS),
                   help="decoding method (default: baseline; each is described below)")
    g.add_argument("--model", default=None, help="checkpoint folder or Hugging Face repo id (default: "
                                                 f"{os.path.relpath(DEFAULT_MODEL, HERE)}; {model_help})")
    g.add_argument("--task", default="tiny", choices=list(tasks.BENCHMARKS), help="benchmark (default: the "
                                                                                  "built-in task)")
    g.add_argument("--data", default=None,
                   help="local JSON/JSONL(.gz) data file (default: built-in or the pinned Hub file)")
    g.add_argument("--limit", type=int, default=None, help="evaluate the first N problems")
    g.add_argument("--compare", default=None,
                   help="run a research method's counterpart (the plain decoder it improves on) on this "
                        "checkpoint ('same' = the method's own; default: the method's own checkpoint, and "
                        "for rcd with its default model the embedded SeqD model, models/tiny-sdar-seqd)")
    g.add_argument("--no-compare", action="store_true", help="run a research method alone")


def add_decoding_args(ap):
    g = ap.add_argument_group("decoding")
    g.add_argument("--gen-length", type=int, default=None,
                   help="tokens to generate (default: per task, " +
                        ", ".join(f"{k} {v}" for k, v in GEN_LENGTH.items()) + ")")
    g.add_argument("--block-length", type=int, default=None,
                   help="block length (default: the checkpoint's block size for SDAR; for LLaDA 8 on the "
                        "built-in task, 32 otherwise)")
    g.add_argument("--steps", default=None,
                   help="comma-separated sweep: LLaDA total steps, SDAR steps per block (default: one "
                        "token per step; rcd with its default model and no --thresholds: 8,4,2)")
    g.add_argument("--thresholds", default=None,
                   help="comma-separated sweep of confidence thresholds, e.g. 0.5,0.7,0.9 (default: none; "
                        "mrp-remask: 0.3,0.5,0.7,0.9)")
    g.add_argument("--cache", choices=["prefix", "dual"], default=None,
                   help="Fast-dLLM cache for LLaDA methods")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--seed", type=int, default=0, help="random seed (set before every batch)")
    g.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    g.add_argument("--device", default=None,
                   help="cuda / cpu / mps (default: cuda if available; under torchrun cuda:LOCAL_RANK)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: the checkpoint's dtype on CUDA, float32 on CPU")
    g.add_argument("--eos-early-stop", action="store_true",
                   help="block models: end a sample as soon as an EOS is committed, mid-block (LLaDA2.0's "
                        "generate flag; off by default, as there)")
    g.add_argument("--compile", action="store_true",
                   help="compile each model's forward (model.compile_forward: fullgraph, CUDA graphs on "
                        "CUDA); the same answers, compile time reported apart from decoding time")


def add_method_args(ap):
    g = ap.add_argument_group("rcd (Residual Context Diffusion, arXiv 2601.22954)")
    g.add_argument("--t-res", type=float, default=1.0,
                   help="entropy temperature T_res of Eq. 3 (tempers alpha only)")
    g.add_argument("--reference", default=None,
                   help="reference checkpoint for the warm start (v2's LLaDA recipe; without it: the cold "
                        "start, a zero residual)")
    g = ap.add_argument_group("mrp (Multi-token Residual Prediction, arXiv 2605.18817)")
    g.add_argument("--mrp-steps", type=int, default=None,
                   help="K (default 3 for spec, 1 for direct and remask)")
    g = ap.add_argument_group("elastic (Elastic-dLLM, arXiv 2605.18165)")
    g.add_argument("--r", type=int, default=4, help="[MASK] tokens kept per intermediate future block")
    g.add_argument("--budget", type=int, default=None,
                   help="LLaDA: fold the context (Sec. 4.2) so a forward sees at most this many tokens "
                        "(generation past the model's maximum length; default: no folding)")


def add_beyond_paper_args(ap):
    from mrp import REMASK_RULES
    g = ap.add_argument_group("beyond the paper", "ablations, readings of what a paper leaves open, and this "
                              "project's diagnostics; the defaults are the papers'")
    g.add_argument("--rcd-init", choices=["zero", "reference", "self", "dirichlet"], default=None,
                   help="rcd: the residual start (default: reference if --reference is given, else zero, the "
                        "paper's two recipes; self and dirichlet are Table 5's ablations)")
    g.add_argument("--concentration", type=float, default=None,
                   help="rcd --rcd-init dirichlet: the Dirichlet concentration c (not given in the paper; "
                        "default 1)")
    g.add_argument("--rcd-source", choices=["self", "reference"], default="self",
                   help="rcd: what predicts each forward's residual: the previous forward (self, the paper) "
                        "or, as in training, the --reference on the same input (a diagnostic: two forwards "
                        "per step)")
    g.add_argument("--alpha-scale", type=float, default=1.0,
                   help="rcd: alpha = clip(scale * H / log V, 0, 1) (1 = the paper); use the scale the model "
                        "was trained with (train_residual.py --alpha-scale)")
    g.add_argument("--anatomy", action="store_true",
                   help="baseline, threshold, rcd on the built-in task: also count the tokens and the errors "
                        "(tokens unlike the gold solution's) committed in the first forward of a block, and "
                        "alpha = H / log V where positions stay masked after a step (what RCD can act on)")
    g.add_argument("--remask", choices=REMASK_RULES, default="published",
                   help="mrp-remask: the rule (published, the paper; code_delta, the released code's delta "
                        "veto; leave-one-out re-check by the MRP head or by the backbone, see mrp.py)")
    g.add_argument("--delta", type=float, default=2.0, help="mrp-remask code_delta: the |C| veto")
    g.add_argument("--sampler", choices=["stride", "random"], default="stride",
                   help="elastic (LLaDA): which r masks of a future block are kept, evenly spaced or at "
                        "random (seeded)")
    g.add_argument("--no-terminal", dest="terminal", action="store_false",
                   help="elastic (LLaDA): drop the terminal block like the other future blocks (an ablation)")
    g.add_argument("--window", type=int, default=0,
                   help="elastic (LLaDA): also keep the first N masks after the current block in full (not "
                        "in the paper, which is 0: a DPad-style near window, RESULTS.md 7.2)")
    g.add_argument("--positions", choices=["original", "folded"], default="original",
                   help="elastic (LLaDA) with --budget: RoPE positions of kept tokens, original or "
                        "renumbered 0..n-1")


def add_output_args(ap):
    g = ap.add_argument_group("output")
    g.add_argument("--samples", default=None,
                   help="per-sample JSONL log, also the resume point (default: runs/TASK-METHOD-MODEL.jsonl; "
                        "a counterpart run writes next to it)")
    g.add_argument("--out", default=None, help="write the summary (header and rows) to this JSON file")
    g.add_argument("--json", action="store_true",
                   help="end with the summary as one line of JSON (for scripts)")
    g.add_argument("--plot", default=None,
                   help="accuracy vs tokens per forward as a PNG at this path (needs matplotlib; with a "
                        "comparison it goes to runs/TASK-METHOD-MODEL.png when matplotlib is installed)")
    g = ap.add_argument_group("code tasks (HumanEval, MBPP)")
    g.add_argument("--allow-code-exec", action="store_true",
                   help="run model-written code (HumanEval/MBPP), each program in its own Linux namespaces "
                        "with limits (see sandbox.py)")
    g.add_argument("--code-timeout", type=float, default=3.0, help="seconds per program")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, epilog=method_list(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    for add in (add_run_args, add_decoding_args, add_method_args, add_beyond_paper_args, add_output_args):
        add(ap)
    return ap.parse_args(argv)


def sweep(value, kind, flag):
    """A comma-separated sweep flag as a list ([None] when not given), or a one-line error."""
    if value is None:
        return [None]
    try:
        return [kind(v) for v in value.split(",")]
    except ValueError:
        raise SystemExit(f"{flag} {value}: expected comma-separated {kind.__name__} values") from None


# Flags that count something: positive integers where given
COUNTS = ("batch_size", "limit", "gen_length", "block_length", "mrp_steps", "budget")


def check_numbers(args):
    """Numbers no run can use (argparse checks only their type), and the sweeps parsed: one line each."""
    for name in COUNTS:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: must be a positive integer")
    if not 0 <= args.temperature < math.inf:
        raise SystemExit(f"--temperature {args.temperature}: must be a finite number >= 0 (0 = greedy)")
    if not 0 < args.code_timeout < math.inf:
        raise SystemExit(f"--code-timeout {args.code_timeout}: must be a positive number of seconds")
    if not math.isfinite(args.delta):
        raise SystemExit(f"--delta {args.delta}: must be a finite number")
    steps, thresholds = sweep(args.steps, int, "--steps"), sweep(args.thresholds, float, "--thresholds")
    if any(v is not None and v < 1 for v in steps):
        raise SystemExit(f"--steps {args.steps}: each must be a positive integer")
    if any(v is not None and not 0 < v <= 1 for v in thresholds):
        raise SystemExit(f"--thresholds {args.thresholds}: each must be in (0, 1]")
    return steps, thresholds


def check_paths(args):
    """--device, --samples and --out checked before hours of decoding, not after."""
    try:
        device = torch.device(args.device or "cpu")
    except RuntimeError:
        raise SystemExit(f"--device {args.device}: expected cuda, cuda:N, cpu or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device here (torch {torch.__version__})")
    for flag, path in (("--samples", args.samples), ("--out", args.out)):
        if path and os.path.isdir(path):
            raise SystemExit(f"{flag} {path}: is a folder; give a file name")
        if flag == "--out" and path and not os.path.isdir(os.path.dirname(path) or "."):
            raise SystemExit(f"--out {path}: no such folder {os.path.dirname(path)}")


def check_args(args):
    """The method's defaults filled in, and contradictory flags or impossible numbers refused in one line,
    before a model loads."""
    defaults = DEFAULTS.get(args.method, {})
    args.model = args.model or defaults.get("model", DEFAULT_MODEL)
    args.thresholds = args.thresholds or defaults.get("thresholds")
    if args.model == defaults.get("model"):
        args.block_length = args.block_length or defaults.get("block_length")
        if not args.thresholds:  # a threshold sweep is the method's other view: its own steps
            args.steps = args.steps or defaults.get("steps")
    if not args.t_res > 0:
        raise SystemExit(f"--t-res {args.t_res}: must be > 0")
    if not args.alpha_scale >= 0:
        raise SystemExit(f"--alpha-scale {args.alpha_scale}: must be >= 0")
    if args.reference and args.rcd_init not in (None, "reference"):
        raise SystemExit(f"--reference with --rcd-init {args.rcd_init}: the reference model is for "
                         "--rcd-init reference (the default when --reference is given) and --rcd-source "
                         "reference")
    if args.rcd_source == "reference" and not args.reference:
        raise SystemExit("--rcd-source reference: give the reference model with --reference")
    if args.concentration is not None and args.rcd_init != "dirichlet":
        raise SystemExit("--concentration is the Dirichlet start's parameter: give it with --rcd-init "
                         "dirichlet")
    if args.anatomy and (args.task != "tiny" or args.method not in ANATOMY_METHODS):
        raise SystemExit(f"--anatomy: for --method {', '.join(ANATOMY_METHODS)} on the built-in task (--task "
                         "tiny), whose solutions are exact token for token")
    if args.compare and args.no_compare:
        raise SystemExit("--compare and --no-compare contradict each other: give one")
    if refusal := tasks.code_exec_refusal(args.task, args.allow_code_exec):  # not a 0 % score
        raise SystemExit(refusal)
    args.sweep = check_numbers(args)
    check_paths(args)
    return args


def plan(args):
    """[(checkpoint, method)]: the method's run, after its counterpart's when it has one."""
    defaults = DEFAULTS.get(args.method, {})
    runs = [(args.model, args.method)]
    if args.method in COUNTERPART and not args.no_compare:
        method, where = COUNTERPART[args.method]
        if method == "baseline" and args.thresholds:  # the plain decoder at the same threshold
            method = "threshold"
        target = args.compare or (where if args.model == defaults.get("model") else "same")
        runs.insert(0, (args.model if target == "same" else target, method))
    elif args.compare:
        raise SystemExit(f"--compare: --method {args.method} has no research counterpart; run eval.py twice "
                         "instead")
    for path in [p for p, _ in runs] + [args.reference] * bool(args.reference):
        name = os.path.basename(os.path.normpath(path))
        if (os.path.dirname(os.path.abspath(path)) == os.path.join(HERE, "models") and name in EMBEDDED
                and not os.path.isdir(path)):
            raise SystemExit(f"{path}: this embedded model is not in the checkout; restore it with `git "
                             f"checkout -- models/{name}`, or make it with: {EMBEDDED[name]}")
        checkpoint_folder(path)  # a typo, or a repo id out of reach: one line, before any model loads
    return runs


def main():
    args = check_args(parse_args())
    runs = plan(args)
    result = run(args, runs)
    if result is not None:
        report(args, runs, *result)


if __name__ == "__main__":
    import train
    train.interrupted(main)  # Ctrl-C: "interrupted; rerun the same command to resume", exit 130
