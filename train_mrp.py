"""
Training a Multi-token Residual Prediction head (MRP; Xu et al., arXiv 2605.18817) on a frozen SDAR
backbone, the official recipe (heavyball-research/multi-token-residual-prediction: loss_functions.py's
kd_diff_sum, the training branch of src/models/SDAR-1.7B-MRP/modeling_sdar_mrp.py, scripts/train_sdar_mrp.sh)
on the built-in task, in minutes on this CPU; the same code on GPUs (train.py's loop: torchrun DDP). The
module, its loading and its decoders are mrp.py.

  python train_mrp.py train --backbone models/tiny-sdar --out runs/tiny-sdar-mrp
  python train_mrp.py train --backbone models/tiny-sdar --layers 1 --out runs/tiny-sdar-mrp-1lyr
  (the committed models/tiny-sdar-mrp* were made so; writing into models/ needs --overwrite)
  python train_mrp.py kl --model models/tiny-sdar-mrp          (a diagnostic, beyond the paper: see below)

Per block one ground-truth reveal per step (gt_topk = 1) in the SDAR training layout [x_t | x_0]; teacher B =
the backbone's second, no-grad forward on the revealed input; loss = forward KL(softmax B || softmax(A + C))
over the positions still masked after the reveal, weighted 1/p, divided by the number of answer tokens,
fp32; K >= 2 chains the reveals and averages the per-step losses (the accumulator is detached inside each
loss's additive term). --reveals draws the reveals per block from a list (the released code's gt_random
ablation). AdamW, peak lr 1e-3, cosine to 0.1x, 3% warm-up; every MRP parameter starts from N(0, 0.2),
seed 42 (the official "cold start"). A reading: the KL denominator is the number of answer tokens (the
released code adjusts it per reveal step).

Beyond the paper (after its code, at the end of this file; off by default):
  --reveal-from backbone  write the backbone's greedy predictions instead of the ground truth: the states the
                          dynamic (remasking) regime actually produces.
  kl                      how much of the backbone's change after a reveal the head predicts: the training
                          objective on fresh batches, for the head and for a zero residual (C = 0).
"""
import argparse
import copy
import time

import torch
import torch.nn.functional as F

import model as M
import tasks
import train
from mrp import MRP, load_head, load_mrp, load_or_exit, save_mrp
from tokenizer import load_tokenizer


def reveal(x, ids, masked, block_size, generator, reveals=(1,)):
    """Ground-truth tokens at uniformly random masked positions of every block that still has masks: one
    each (the official gt_topk=1) or, with several counts, a count per block drawn from them (gt_random)."""
    B, T = x.shape
    scores = torch.where(masked, torch.rand(B, T, generator=generator).to(x.device), -1.0)
    rank = scores.view(B, T // block_size, block_size).argsort(-1, descending=True).argsort(-1)  # (B, n, L)
    counts = torch.tensor(reveals)
    if len(reveals) > 1:
        counts = counts[torch.randint(len(reveals), (B, T // block_size, 1), generator=generator)]
    chosen = (rank < counts.to(x.device)).view(B, T) & masked
    return torch.where(chosen, ids, x), masked & ~chosen


def mrp_loss(backbone, mrp, ids, prompt_mask, generator, block_size, mrp_steps=1, reveals=(1,),
             reveal_from="gt"):
    """The KL objective (kd_diff_sum) in the SDAR training layout [x_t | x_0]; mean over the K chained steps.
    reveal_from "gt" writes the ground-truth tokens (the paper); "backbone" is beyond it (backbone_picks)."""
    T = ids.shape[1]
    x_t, masked, p = train.add_noise(ids, prompt_mask, backbone.config.mask_token_id, generator)
    layout = dict(position_ids=torch.arange(T, device=ids.device).repeat(2),
                  attn_mask=train.block_diff_mask(T, block_size, ids.device)[None, None])
    with torch.no_grad():
        acc = backbone(torch.cat([x_t, ids], 1), return_hidden=True, **layout)[1]   # h_A, (B, 2T, C)
        source = ids if reveal_from == "gt" else backbone_picks(backbone, acc[:, :T])
    answer_len = max(1, int((~prompt_mask).sum()))
    losses, cur = [], x_t
    for _ in range(mrp_steps):
        cur, masked = reveal(cur, source, masked, block_size, generator, reveals)
        with torch.no_grad():
            teacher = backbone(torch.cat([cur, ids], 1), **layout)[:, :T][masked].float()
        h_c = mrp(backbone, torch.cat([cur, ids], 1), acc, **layout)
        student = backbone.lm_head(acc.detach() + h_c)[:, :T][masked].float()
        kl = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(student, -1))).sum(-1)
        losses.append((kl / p[masked]).sum() / answer_len)
        acc = acc + h_c
    return sum(losses) / len(losses)


def training_args(args, block_size):
    """--reveals as a tuple of counts, checked with --length (train and kl): one-line errors."""
    try:
        reveals = tuple(int(v) for v in args.reveals.split(","))
    except ValueError:
        raise SystemExit(f"--reveals {args.reveals!r}: expected comma-separated integers, "
                         "e.g. 1,2,3,4") from None
    if min(reveals) < 1 or max(reveals) > block_size:
        raise SystemExit(f"--reveals {args.reveals}: counts must lie in 1..{block_size} (the block size)")
    if args.length % block_size:
        raise SystemExit(f"--length {args.length}: must be a multiple of the block size {block_size}")
    return reveals


def new_head(args, backbone, device):
    """A fresh head (the official N(0, std) start) or, with --init, one going on from a trained head (a warm
    restart: the schedule starts over)."""
    mrp = MRP(backbone.config, args.layers)
    mrp.init_weights(args.init_std)
    if args.init:
        start = load_or_exit(lambda: load_head(M.resolve(args.init), backbone.config, device, torch.float32))
        if len(start.layers) != args.layers:
            raise SystemExit(f"--init {args.init}: a {len(start.layers)}-layer head, "
                             f"not --layers {args.layers}")
        mrp.load_state_dict(start.state_dict())
    return mrp


def run_settings(args, world):
    """(state folder, resume?) for this run, checked before anything loads or is written: --out may not
    hold another model or a committed one without --overwrite, and a resume must have the same settings."""
    inputs = [("--backbone", train.or_exit(M.resolve, args.backbone))]
    if args.init:
        inputs.append(("--init", train.or_exit(M.resolve, args.init)))
    settings = {"command": "train_mrp.py", "world": world,
                **{flag[2:]: train.fingerprint(path) for flag, path in inputs},
                **{k: getattr(args, k) for k in ("seed", "lr", "steps", "batch_size", "length",
                                                 "block_size", "layers", "mrp_steps", "reveals",
                                                 "reveal_from", "init_std")}}
    state, resume = train.claim_out(args.out, settings, args.overwrite, args.fresh, inputs)
    return state, resume, settings


def main_train(args):
    rank, world, device = train.setup_distributed(args.device)
    state, resume, settings = run_settings(args, world)
    backbone = train.or_exit(M.from_pretrained, args.backbone, device, torch.float32)
    backbone.requires_grad_(False)
    if backbone.config.family != "sdar":
        raise SystemExit(f"{args.backbone}: MRP needs an SDAR (block-diffusion) backbone")
    folder, L = M.resolve(args.backbone), args.block_size or backbone.config.block_size
    tok = load_tokenizer(folder)
    reveals = training_args(args, L)
    mrp = new_head(args, backbone, device)
    print(f"MRP head: {sum(p.numel() for p in mrp.parameters()):,} parameters on a frozen "
          f"{sum(p.numel() for p in backbone.parameters()):,}-parameter backbone; K = {args.mrp_steps}")
    if rank == 0:
        train.begin_run(state, settings, resume)
    model = train.parallelize(mrp.to(device), world)
    opt = train.make_optimizer(model, args.lr, weight_decay=0.0)
    held_out = {r["question"] for split in ("test", "dev") for r in tasks.tiny_records(split)}
    gen = torch.Generator()

    def batch(i):
        gen.manual_seed(args.seed * 1_000_003 + i)
        ids, pm, _ = train.make_batch(tok, "sdar", i, args.seed, args.batch_size, args.length, held_out)
        return ids, pm

    def loss(ids, pm, i):
        return mrp_loss(backbone, model, ids, pm, gen, L, args.mrp_steps, reveals, args.reveal_from)
    t0 = time.time()
    train.train(model, opt, args.steps, args.lr, max(1, args.steps * 3 // 100), state, batch, loss,
                args.save_every, "train mrp", 1, rank, world, device)
    if rank == 0:
        save_mrp(backbone.to(torch.bfloat16), train.unwrapped(model).to(torch.bfloat16), args.out,
                 tokenizer_from=folder)
        print(f"saved {args.out} ({(time.time() - t0) / 60:.1f} min this run)")


# ---- Beyond the paper (this project's diagnostics; off by default) ----


def backbone_picks(backbone, h_a):
    """--reveal-from backbone: the backbone's own greedy predictions from the first pass, revealed in place of
    the ground truth (the states the dynamic regime produces)."""
    return backbone.lm_head(h_a).argmax(-1)


def main_kl(args, backbone, mrp):
    """How much of the backbone's change after a reveal the head predicts: the training objective on fresh
    batches of the built-in task, for the head and for a zero residual (C = 0: corrected logits = A)."""
    zero = copy.deepcopy(mrp)
    with torch.no_grad():
        zero.norm.weight.zero_()  # h_C = 0
    tok, L = load_tokenizer(M.resolve(args.model)), backbone.config.block_size
    reveals = training_args(args, L)
    totals = {"head": 0.0, "zero": 0.0}
    device = backbone.lm_head.weight.device
    for i in range(args.batches):
        ids, pm, _ = train.make_batch(tok, "sdar", 1_000_000 + i, args.seed, args.batch_size, args.length,
                                      set())
        ids, pm = ids.to(device), pm.to(device)
        for name, head in (("head", mrp), ("zero", zero)):
            with torch.no_grad():  # the same noise and reveals for both: one generator seed per batch
                loss = mrp_loss(backbone, head, ids, pm, torch.Generator().manual_seed(i), L, args.mrp_steps,
                                reveals, args.reveal_from)
            totals[name] += loss.item() / args.batches
    removed = 100 * (1 - totals["head"] / totals["zero"])
    print(f"KL to the backbone after the reveal ({args.batches} x {args.batch_size} sequences, reveals "
          f"{args.reveals}, from {args.reveal_from}, K = {args.mrp_steps}): head {totals['head']:.5f}, zero "
          f"residual {totals['zero']:.5f}: the head removes {removed:.1f} %")

# -----------------------------------------------------------------------------
# Command line


def train_parser(sub):
    t = sub.add_parser("train", help="train an MRP head on a frozen SDAR backbone (the built-in task)")
    t.add_argument("--backbone", default="models/tiny-sdar", help="SDAR checkpoint folder or repo id")
    t.add_argument("--out", default="runs/tiny-sdar-mrp",
                   help="output folder (official MRP checkpoint layout); a folder holding another model, or "
                        "a committed one under models/, only with --overwrite")
    t.add_argument("--overwrite", action="store_true",
                   help="write into --out even though it holds another model, a committed embedded model "
                        "(models/), other files or a run with other settings")
    t.add_argument("--fresh", action="store_true", help="start this run over instead of resuming it")
    t.add_argument("--layers", type=int, default=3, help="MRP decoder layers (the released heads: 3)")
    t.add_argument("--mrp-steps", type=int, default=1,
                   help="K chained reveals per training step (released: 1, k2: 2)")
    t.add_argument("--reveals", default="1",
                   help="ground-truth reveals per block per step: one count (official gt_topk, 1) or a comma "
                        "list drawn from per block (gt_random, e.g. 1,2,3,4)")
    t.add_argument("--steps", type=int, default=600, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    t.add_argument("--length", type=int, default=96,
                   help="prompt + answer tokens (a multiple of the block size)")
    t.add_argument("--block-size", type=int, default=None,
                   help="training block size (default: the backbone's)")
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (the paper's)")
    t.add_argument("--init-std", type=float, default=0.2, help="std of every MRP parameter at initialisation")
    t.add_argument("--seed", type=int, default=0, help="data order and noise")
    t.add_argument("--init", default=None, help="start from this trained MRP checkpoint's head (give a new "
                                                "--seed for new data: the same seed repeats its batches)")
    t.add_argument("--save-every", type=int, default=250, help="steps between resumable checkpoints")
    t.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    t.add_argument_group("beyond the paper").add_argument(
        "--reveal-from", choices=["gt", "backbone"], default="gt",
        help="revealed tokens: the ground truth (the paper) or the backbone's greedy predictions")


def kl_parser(sub):
    k = sub.add_parser("kl", help="beyond the paper: the head's KL to the backbone on fresh batches, "
                                  "against a zero residual")
    k.add_argument("--model", default="models/tiny-sdar-mrp", help="MRP checkpoint folder or repo id")
    k.add_argument("--reveals", default="1", help="reveals per block per step, as for train")
    k.add_argument("--reveal-from", choices=["gt", "backbone"], default="gt",
                   help="revealed tokens, as for train")
    k.add_argument("--mrp-steps", type=int, default=1, help="K chained reveals")
    k.add_argument("--batches", type=int, default=8, help="batches to average")
    k.add_argument("--batch-size", type=int, default=32, help="sequences per batch")
    k.add_argument("--length", type=int, default=96,
                   help="tokens per sequence (a multiple of the block size)")
    k.add_argument("--seed", type=int, default=7, help="data seed (training used 0)")
    k.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    train_parser(sub)
    kl_parser(sub)
    args = ap.parse_args()
    if args.command == "train":
        return main_train(args)
    return main_kl(args, *load_or_exit(load_mrp, args.model, args.device, torch.float32))


if __name__ == "__main__":
    train.interrupted(main)
