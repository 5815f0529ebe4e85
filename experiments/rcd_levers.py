"""
RCD's levers, measured where RCD can act: this project's experiment, beyond the paper (Residual Context
Diffusion, arXiv 2601.22954). Its numbers are RESULTS.md section 5.0.2 ("The levers, in the regime where
RCD can act"); every decoder, batch, seed, score and interval is eval.py's, only the commit rule of a
block's first forward changes (`schedule`), or nothing is decoded at all (`probe`).

schedule  A first forward that commits little, under a threshold. eval.py's threshold view commits nearly
          the whole answer in the first forward of a block, the one forward that has no residual yet (cold
          start; `eval.py --anatomy`), so RCD has nothing to act on. Here the first forward of each block
          commits only its K most confident masks (--first-k, default 1) and the later forwards commit by
          the decoder's own threshold rule (Fast-dLLM's for LLaDA, SDAR's dynamic rule): SeqD and RCD are
          decoded that way, with eval.py's model pair and flags, and compared problem by problem
          (eval.paired, printed as eval.py prints it). --first-k 0 is eval.py itself (the same answers).
probe     Does the RCD target read its residual at all? The teacher-forced masked-diffusion loss (nats per
          masked token) of the RCD target fed exactly the residual it was trained with (the reference's
          prediction on the same noisy input, Algorithm 1), of the same target with the residual off, and of
          SeqD, on fresh batches of the built-in task (seed 777, never trained on), by mask rate t.

The commands behind RESULTS.md 5.0.2 (500 test problems, CPU, float32, one thread):
  the first-forward table, rows SeqD, RCD cold start and RCD - SeqD (LLaDA pair, one block of 56):
    python experiments/rcd_levers.py schedule --model models/tiny-llada-rcd \\
        --compare models/tiny-llada-seqd --block-length 56 --thresholds 0.3,0.5,0.7,0.9 --batch-size 50
  row "RCD, warm start": the same with --reference models/tiny-llada
  rows "the RCD weights without residuals" and "RCD - the same weights without residuals":
    python experiments/rcd_levers.py schedule --model models/tiny-llada-rcd --compare same \\
        --block-length 56 --thresholds 0.3,0.5 --batch-size 50
  the same schedule on the SDAR pair (the text after the table; blocks of 32, eval.py's default pair):
    python experiments/rcd_levers.py schedule --thresholds 0.3,0.5,0.7,0.9 --batch-size 50
  the loss table, LLaDA and SDAR rows:
    python experiments/rcd_levers.py probe --model models/tiny-llada-rcd \\
        --compare models/tiny-llada-seqd --reference models/tiny-llada
    python experiments/rcd_levers.py probe
"""
import argparse
import contextlib
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the repository's flat scripts sit one folder up: imported as they are

import torch  # noqa: E402

import decode  # noqa: E402
import eval  # noqa: E402
import model as model_lib  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
import train_residual  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

# -----------------------------------------------------------------------------
# The first-forward rule, as a scoped override of decode.py's commit rules


class FirstForward:
    """The rule for one decode call: a row at the first forward of a block commits its k most confident
    masks, the other rows what the decoder's own rule chose. A row is at the first forward of a block when
    it has at least as many masks to commit as at its previous forward: every forward commits at least one,
    so the count only stops falling when a new block begins. Counting (rather than asking the decoder)
    works for both decoders, also for SDAR's first block, which holds the end of the prompt. The count
    carries over between forwards, so one instance serves one decode call only."""

    def __init__(self, k):
        self.k, self.last = k, None

    def __call__(self, confidence, transfer):
        n = torch.isfinite(confidence).sum(1)  # (B,) masks this forward may commit (-inf: not a mask)
        first = n > 0  # a row with nothing left commits nothing
        if self.last is not None:
            first &= n >= self.last
        self.last = n
        # top-K, not Fast-dLLM's rule at threshold 1: SDAR's float32 confidence is exactly 1.0 at many masks
        top_k = decode.commit_topk(confidence, n.clamp(max=self.k))  # one host read of the counts
        return torch.where(first[:, None], top_k, transfer)


@contextlib.contextmanager
def first_forward_commits(k):
    """Within it, decode.py's two commit rules, `commit` (LLaDA's top-k or Fast-dLLM's threshold, called by
    decode.generate) and `commit_dynamic` (SDAR's rule, called by decode.block_generate), are followed by
    FirstForward(k); both are restored on the way out, even on an error. The decoders look both names up in
    their module at every step, so RCD (residual.py), which drives the same decoders, gets the same rule.
    k = 0 changes nothing: eval.py's own decoding. Enter it once per decode call (a fresh count)."""
    if not k:
        yield
        return
    rule, plain_commit, plain_dynamic = FirstForward(k), decode.commit, decode.commit_dynamic

    def commit(confidence, threshold, k_step, counts=None):
        return rule(confidence, plain_commit(confidence, threshold, k_step, counts))

    def commit_dynamic(confidence, threshold, quota):
        return rule(confidence, plain_dynamic(confidence, threshold, quota))
    decode.commit, decode.commit_dynamic = commit, commit_dynamic
    try:
        yield
    finally:
        decode.commit, decode.commit_dynamic = plain_commit, plain_dynamic

# -----------------------------------------------------------------------------
# schedule: eval.py's runs, each batch under the first-forward rule


def eval_args(a):
    """eval.py's own namespace for the same pair and flags (its defaults, checks and refusals), built by its
    parser: `--method rcd` on the built-in task at a threshold sweep."""
    argv = ["--method", "rcd", "--task", "tiny", "--thresholds", a.thresholds, "--batch-size",
            str(a.batch_size), "--seed", str(a.seed)]
    for flag, value in (("--model", a.model), ("--compare", a.compare), ("--reference", a.reference),
                        ("--block-length", a.block_length), ("--limit", a.limit), ("--device", a.device),
                        ("--dtype", a.dtype)):
        if value is not None:
            argv += [flag, str(value)]
    return eval.check_args(eval.parse_args(argv))


def device_and_dtype(device, dtype):
    """Chosen once for a run: CUDA when there is one, else the CPU; the checkpoint's dtype on CUDA and
    float32 on the CPU unless --dtype says (model.from_pretrained's rule, here made explicit)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, getattr(torch, dtype) if dtype else None


def decode_setting(net, tok, records, s, args, k):
    """[row] for one setting over all records: eval.run_setting (decoding, scoring) one batch at a time,
    each batch under a fresh FirstForward, whose count spans one decode call. Rows stay in memory: nothing
    is written to a log eval.py could later resume from."""
    done, log = {}, io.StringIO()
    from tqdm import tqdm
    with tqdm(total=len(records), desc=f"{s['method']} {s['name']}", leave=False) as bar:
        for i in range(0, len(records), args.batch_size):
            with first_forward_commits(k):
                eval.run_setting(net, tok, records[i:i + args.batch_size], s, args, done, log, bar)
    errors = [row["error"] for row in done.values() if "error" in row]
    if errors and k and args.batch_size > 1:  # eval.py decoded that batch prompt by prompt, in one count
        raise SystemExit(f"{s['name']}: a prompt was refused ({errors[0]}); the first-forward rule counts "
                         "per decode call: use --batch-size 1")
    return list(done.values())


def run_pair(a, args, runs, records, device, dtype):
    """Every (checkpoint, method) of eval.plan, each at every threshold: (rows, {run: {setting: {id:
    correct}}}, outputs {(run, setting): {id: text}}, header)."""
    rows, correct, outputs, loaded, header = [], {}, {}, {}, None
    for path, method in runs:
        t0 = time.time()
        if path not in loaded:  # the RCD checkpoint serves both runs with --compare same (as eval.run)
            loaded[path] = model_lib.or_exit(eval.load, path, "rcd" if path == args.model else method, args,
                                             device, dtype)
        net, extras = loaded[path]
        tok = model_lib.or_exit(load_tokenizer, eval.checkpoint_folder(path))
        base, settings = eval.settings_for(args, path, method, net, extras, 1)
        if header is None:  # the run's device and dtype, printed once
            header = {"device": str(device), "dtype": str(net.lm_head.weight.dtype).split(".")[-1],
                      "family": base["family"], "gen_length": base["gen_length"],
                      "block_length": base["block_length"], "metric": tasks.BENCHMARKS["tiny"]["metric"],
                      "knobs": {**eval.method_knobs("rcd", base), "first_k": a.first_k}}
            print(f"device={header['device']} dtype={header['dtype']}")
        correct[(path, method)] = {}
        for s in settings:
            if a.first_k:  # the setting's name says it is not eval.py's
                s["name"] = f"{s['name']},first_k={a.first_k}"
            done = decode_setting(net, tok, records, s, args, a.first_k)
            rows.append(eval.summarize(done, "tiny", os.path.basename(os.path.normpath(path)), s,
                                       len(records)))
            correct[(path, method)][s["name"]] = {r["id"]: r["correct"] for r in done}
            outputs[(path, method, s["name"])] = {r["id"]: r["output"] for r in done}
        print(f"{path} ({method}): {len(settings)} setting(s) in {time.time() - t0:.0f} s wall")
    return rows, correct, outputs, header


def schedule(a):
    """The `schedule` subcommand: decode the pair, print eval.py's table and its paired comparison."""
    args = eval_args(a)
    runs = eval.plan(args)
    device, dtype = device_and_dtype(args.device, args.dtype)
    records, info = model_lib.or_exit(tasks.load_records, "tiny", None, args.limit)
    rule = f"first forward of a block: top-{a.first_k}" if a.first_k else "eval.py's rule (--first-k 0)"
    print(f"{info['n']} problems of the built-in task; {rule}; then the threshold")
    rows, correct, outputs, header = run_pair(a, args, runs, records, device, dtype)
    same = runs[0][0] == args.model
    name = "RCD weights, no residual" if same else eval.COUNTERPART_NAME["rcd"]
    eval.print_table(rows, eval.labels_for(rows, name), header, args)
    print("\n" + "\n".join(eval.compare(rows, name, correct)))
    return rows, correct, outputs

# -----------------------------------------------------------------------------
# probe: the teacher-forced loss of the RCD target with and without its training residual


PROBE_EDGES = (0.0, 0.25, 0.5, 0.75, 1.01)  # mask-rate buckets of t; p <= 1, so 1.01 only closes the last


def probe_models(a, device):
    """(SeqD, RCD target, reference), float32 unless --dtype, checked to share a family and a vocabulary:
    the reference's prediction is the residual the target was trained with (train_residual.py rcd)."""
    dtype = getattr(torch, a.dtype or "float32")
    nets = [model_lib.or_exit(model_lib.from_pretrained, p, device, dtype).eval()
            for p in (a.compare, a.model, a.reference)]
    cfgs = [n.config for n in nets]
    if len({(c.family, c.vocab_size, c.mask_token_id) for c in cfgs}) > 1:
        raise SystemExit(f"--compare {a.compare}, --model {a.model}, --reference {a.reference}: they must "
                         "share a family, a vocabulary and a mask id (an RCD target, its SeqD and its "
                         "reference)")
    return nets


@torch.no_grad()
def probe_losses(seqd, rcd, ref, tok, a):
    """{name: (buckets, 2) sums of cross-entropy and counts of masked tokens}, over --batches fresh batches:
    train.make_batch's problems (never an evaluation problem) noised by train.add_noise, the logits of
    train.noisy_logits, the residual of train_residual.residual_input, all as in training."""
    cfg, family = rcd.config, rcd.config.family
    length = a.length or (56 if family == "llada" else 96)  # train_residual.py's default
    held_out = {r["question"] for split in ("test", "dev") for r in tasks.tiny_records(split)}
    training_residual = train_residual.residual_input(ref, family, cfg.block_size, cfg.mask_token_id)
    sums = {k: torch.zeros(len(PROBE_EDGES) - 1, 2, dtype=torch.float64)
            for k in ("SeqD", "RCD, training residual", "RCD, residual off")}
    g, device = torch.Generator(), decode.model_device(rcd)
    for i in range(a.batches):
        ids, prompt_mask, pad = (t.to(device) for t in train.make_batch(tok, family, i, a.seed, a.batch_size,
                                                                        length, held_out))
        g.manual_seed(a.seed + i)
        x_t, masked, p = train.add_noise(ids, prompt_mask, cfg.mask_token_id, g)
        for name, net, hook in (("SeqD", seqd, None),
                                ("RCD, training residual", rcd, training_residual(x_t, ids, pad)),
                                ("RCD, residual off", rcd, None)):
            logits = train.noisy_logits(net, family, x_t, ids, pad, cfg.block_size, hook)
            ce = torch.nn.functional.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
            t = p[masked].cpu()
            bucket = torch.bucketize(t, torch.tensor(PROBE_EDGES), right=True) - 1  # lo <= t < hi
            sums[name][:, 0].index_add_(0, bucket, ce.double().cpu())
            sums[name][:, 1] += torch.bincount(bucket, minlength=len(PROBE_EDGES) - 1)
    return sums


def probe(a):
    """The `probe` subcommand: the loss table, one row per model and residual."""
    device, _ = device_and_dtype(a.device, None)
    seqd, rcd, ref = probe_models(a, device)
    print(f"device={device} dtype={rcd.lm_head.weight.dtype}".replace("torch.", ""))
    tok = model_lib.or_exit(load_tokenizer, model_lib.or_exit(model_lib.resolve, a.model))
    t0 = time.time()
    sums = probe_losses(seqd, rcd, ref, tok, a)
    buckets = [f"t {lo:.2f}-{min(hi, 1):.2f}" for lo, hi in zip(PROBE_EDGES, PROBE_EDGES[1:])]
    print(f"{rcd.config.family}: mean cross-entropy per masked token (nats), {a.batches} batches of "
          f"{a.batch_size} (seed {a.seed}), by mask rate t; {time.time() - t0:.0f} s wall")
    print(f"{'':24}" + "".join(f"{b:>12}" for b in buckets))
    for name, s in sums.items():
        print(f"{name:24}" + "".join(f"{ce / max(n, 1):12.4f}" for ce, n in s.tolist()))
    return sums

# -----------------------------------------------------------------------------
# Command line


def add_model_args(ap, compare, reference, dtype):
    g = ap.add_argument_group("models (eval.py --method rcd's flags and defaults)")
    g.add_argument("--model", default=None,
                   help="the RCD target (default: models/tiny-sdar-rcd, eval.py --method rcd's)")
    g.add_argument("--compare", default=None, help=compare)
    g.add_argument("--reference", default=None, help=reference)
    g.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help=dtype)


def schedule_parser(sub):
    ap = sub.add_parser("schedule", help="SeqD vs RCD with a first forward that commits only K tokens",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap, "the plain decoder's checkpoint: SeqD (default as eval.py: models/tiny-sdar-seqd "
                       "with the default model, else 'same'), or 'same': the RCD weights decoded without "
                       "residuals",
                   "the RCD warm start's reference model (v2's LLaDA recipe; default: the cold start, a zero "
                   "residual)", "default: the checkpoint's on CUDA, float32 on the CPU (eval.py's)")
    g = ap.add_argument_group("decoding")
    g.add_argument("--first-k", type=int, default=1,
                   help="K: tokens the first forward of a block commits (default 1; 0 = eval.py's rule)")
    g.add_argument("--thresholds", default="0.3,0.5,0.7,0.9",
                   help="comma-separated thresholds of the later forwards (default 0.3,0.5,0.7,0.9)")
    g.add_argument("--block-length", type=int, default=None,
                   help="block length (default as eval.py: the checkpoint's block size for SDAR, 8 for "
                        "LLaDA)")
    g.add_argument("--limit", type=int, default=None, help="the first N of the 500 test problems")
    g.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (default 16)")
    g.add_argument("--seed", type=int, default=0, help="random seed, set before every batch (default 0)")
    ap.set_defaults(run=schedule)


def probe_parser(sub):
    ap = sub.add_parser("probe", help="the RCD target's loss with and without its training residual",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap, "the SeqD model (default: models/tiny-sdar-seqd)",
                   "the reference the target was trained with (default: models/tiny-sdar)",
                   "default: float32")
    g = ap.add_argument_group("batches (train.py's, never an evaluation problem)")
    g.add_argument("--batches", type=int, default=20, help="batches to average over (default 20)")
    g.add_argument("--batch-size", type=int, default=32, help="problems per batch (default 32)")
    g.add_argument("--seed", type=int, default=777, help="data and noise seed (default 777; training's is 1)")
    g.add_argument("--length", type=int, default=None,
                   help="as train_residual.py: LLaDA answer tokens / SDAR total tokens (default 56 / 96)")
    ap.set_defaults(run=probe)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    schedule_parser(sub)
    probe_parser(sub)
    a = ap.parse_args(argv)
    if a.command == "schedule" and a.first_k < 0:
        raise SystemExit(f"--first-k {a.first_k}: must be >= 0 (0 = eval.py's rule)")
    for flag in ("batches", "length"):
        if getattr(a, flag, None) is not None and getattr(a, flag) < 1:
            raise SystemExit(f"--{flag} {getattr(a, flag)}: must be a positive integer")
    if a.command == "probe":
        a.model = a.model or os.path.join(ROOT, "models", "tiny-sdar-rcd")
        a.compare = a.compare or os.path.join(ROOT, "models", "tiny-sdar-seqd")
        a.reference = a.reference or os.path.join(ROOT, "models", "tiny-sdar")
    return a


def main(argv=None):
    a = parse_args(argv)
    return a.run(a)


if __name__ == "__main__":
    main()
