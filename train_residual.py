"""
Residual Context Diffusion's decoupled two-stage training (Hu et al., arXiv 2601.22954, Sec. 3.2,
Algorithm 1) and its SeqD baseline: on this CPU in minutes for the embedded models, and the same code on
GPUs for the real checkpoints (torchrun DDP/FSDP2, bf16 autocast, gradient accumulation, activation
checkpointing: the loop is train.py's). Decoding is residual.py.

  stage 1   python train_residual.py reference --base models/tiny-sdar --out runs/tiny-sdar-ref
  stage 2   python train_residual.py rcd --base models/tiny-sdar --reference runs/tiny-sdar-ref \\
                --out runs/tiny-sdar-rcd
  baseline  python train_residual.py seqd --base models/tiny-sdar --out runs/tiny-sdar-seqd
  (--out models/... replaces a committed model only with --overwrite; a run's settings are kept in run.json
  and a resume with other ones is refused; Ctrl-C, then the same command, resumes.)
  GPUs      torchrun --nproc_per_node 8 train_residual.py rcd --base JetLM/SDAR-8B-Chat-b64 \\
                --reference yuezhouhu/SeqD-SDAR-1.7B-b64-Thinking --data openr1_math.jsonl --block-size 64 \\
                --length 8192 --batch-size 1 --grad-accum 12 --lr 1e-5 --amp bfloat16 --checkpointing --fsdp

reference  standard masked-diffusion fine-tuning (train.py's objective for the family) of the reference
           model, usually smaller than the target but with the same tokenizer (and, for SDAR, block size).
rcd        the target, all its parameters trained, where each masked input position gets Eq. 2's mix
           (1 - alpha) E[MASK] + alpha delta built from the *frozen reference's single forward on the same
           noisy input* (same attention layout): alpha = H(p_ref) / log V (no temperature in training),
           delta = p_ref @ E_target. Nothing is unrolled and no gradient reaches the reference; delta is
           detached (the paper leaves the gradient through delta open; detaching keeps the reference's signal
           stationary, in the spirit of Sec. 3.2), E[MASK] and the hard embeddings still learn.
seqd       the same fine-tuning as rcd without residuals: same initial weights, same batches in the same
           order, same number of steps, hence the same tokens: the paper's fair baseline.
Data: the built-in task by default; --data takes a JSONL of {"prompt", "response"} (or "question"/"answer")
records rendered with the base model's chat template. Optimiser: AdamW, warm-up then cosine (the paper:
lr 1e-5, warm-up 3%). Outputs are official-format checkpoints with the base model's tokenizer files.

Beyond the paper (off by default): --alpha-scale S trains with alpha = clip(S * H / log V, 0, 1), as
residual.py decodes with it; 1 = the paper.
"""
import argparse
import json

import torch

import model as M
import residual
import tasks
import train
from tokenizer import load_tokenizer


def residual_input(reference, family, block_size, mask_id, alpha_scale=1.0):
    """Algorithm 1, lines 4-7, as a residual(x_t, ids, pad) -> embed_hook for train.loss_step. alpha_scale
    (beyond the paper) multiplies H / log V before clipping to [0, 1] (1 = the paper; as in decoding)."""
    def make(x_t, ids, pad):
        with torch.no_grad():  # the reference is frozen: forward only, on the very same noisy input
            z = train.noisy_logits(reference, family, x_t, ids, pad, block_size)[x_t == mask_id]
            alpha = residual.entropy_weight(z, alpha_scale=alpha_scale)

        def hook(x, input_ids, weight):
            masked = input_ids == mask_id  # SDAR's clean half has no masks, so this is the noisy half only
            delta = residual.soft_token(z, weight.detach())
            soft = (1 - alpha[:, None]) * weight[mask_id] + alpha[:, None] * delta
            return x.masked_scatter(masked[..., None], soft.to(x.dtype))
        return hook
    return make


def read_pairs(path):
    """(prompt, response) pairs from a JSONL file, for --data."""
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    raise ValueError(f"{path} line {n + 1}: not a JSON record") from None
                row = row if isinstance(row, dict) else {}
                q, a = row.get("prompt", row.get("question")), row.get("response", row.get("answer"))
                if not isinstance(q, str) or not isinstance(a, str):
                    raise ValueError(f"{path} line {n + 1}: needs string 'prompt'/'response' "
                                     "(or 'question'/'answer')")
                pairs.append((q, a))
    if not pairs:
        raise ValueError(f"{path}: no records")
    return pairs


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["reference", "rcd", "seqd"], help="which model to train (see above)")
    ap.add_argument("--base", required=True, help="initial checkpoint (folder or Hugging Face repo id)")
    ap.add_argument("--reference", default=None, help="rcd: the frozen reference checkpoint")
    ap.add_argument("--out", required=True,
                    help="output folder (checkpoint, tokenizer, resumable train_state.pt)")
    ap.add_argument("--data", default=None,
                    help="JSONL of prompt/response pairs (default: the built-in task)")
    train.add_loop_args(ap, steps=600, lr=5e-4, warmup=20, save_every=100, seed=1, eval_every=0)
    ap.add_argument("--length", type=int, default=None,
                    help="as train.py: LLaDA answer tokens / SDAR total tokens")
    ap.add_argument("--block-size", type=int, default=None,
                    help="SDAR training block size (default: the checkpoint's)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights and optimizer state (bfloat16 halves memory for large models)")
    beyond = ap.add_argument_group("beyond the paper")
    beyond.add_argument("--alpha-scale", type=float, default=1.0,
                        help="rcd: residual weight alpha = clip(scale * H / log V, 0, 1); 1 = the paper. "
                             "A model trained with another scale must be decoded with it "
                             "(eval.py --alpha-scale)")
    args = ap.parse_args()
    if (args.stage == "rcd") != (args.reference is not None):
        raise SystemExit("--reference is required for the rcd stage, and only for it")
    if args.alpha_scale != 1.0 and (args.stage != "rcd" or not args.alpha_scale >= 0):
        raise SystemExit(f"--alpha-scale {args.alpha_scale}: only for the rcd stage, and >= 0")
    return args


def load_reference(args, cfg, device, dtype):
    """The frozen reference (rcd stage), which must share the target's vocabulary and mask id."""
    ref_dtype = torch.bfloat16 if args.amp else dtype
    ref = train.or_exit(M.from_pretrained, args.reference, device, ref_dtype).eval()
    ref.requires_grad_(False)
    if ref.config.vocab_size != cfg.vocab_size or ref.config.mask_token_id != cfg.mask_token_id:
        raise SystemExit(f"{args.reference}: vocabulary/mask id differ from {args.base}; "
                         "RCD needs the same tokenizer")
    return ref


def run_settings(args, world):
    """(base folder, input folders, settings): what run.json records, so a resume with other settings or
    inputs is refused."""
    base = train.or_exit(M.resolve, args.base)
    inputs = [("--base", base)]
    if args.reference:
        inputs.append(("--reference", train.or_exit(M.resolve, args.reference)))
    settings = train.loop_settings(args, world, command="train_residual.py", stage=args.stage,
                                   **{k: getattr(args, k) for k in ("length", "block_size", "alpha_scale",
                                                                   "dtype")},
                                   **{flag[2:]: train.fingerprint(path) for flag, path in inputs},
                                   data=args.data and train.or_exit(train.file_hash, args.data))
    return base, inputs, settings


def main():
    args = parse_args()
    rank, world, device = train.setup_distributed(args.device)
    base, inputs, settings = run_settings(args, world)
    state, resume = train.claim_out(args.out, settings, args.overwrite, args.fresh, inputs)  # before any load
    pairs = train.or_exit(read_pairs, args.data) if args.data else None
    dtype = getattr(torch, args.dtype)
    net = train.or_exit(M.from_pretrained, base, "cpu", dtype)
    cfg, family = net.config, net.config.family
    block_size = args.block_size or cfg.block_size
    tok = train.or_exit(load_tokenizer, base)
    ref = load_reference(args, cfg, device, dtype) if args.reference else None
    if rank == 0:
        train.begin_run(state, settings, resume)  # the tokenizer travels with the checkpoint, at the export
        print(f"{args.stage}: {family} from {args.base}{' + reference ' + args.reference if ref else ''}, "
              f"{sum(p.numel() for p in net.parameters()):,} parameters, {world} process(es) on {device}")
    model = train.parallelize(net.to(device), world, args.fsdp, args.checkpointing)
    decoder = residual_hook = None
    if args.stage == "rcd":  # measure the target as it will be used: with residuals (cold start)
        dev_block = block_size if family == "sdar" else 8

        def decoder(net, prompts):
            return residual.decode_rcd(net, prompts, gen_length=56, block_length=dev_block,
                                       alpha_scale=args.alpha_scale)
    if ref is not None:
        residual_hook = residual_input(ref, family, block_size, cfg.mask_token_id, args.alpha_scale)
    length = args.length or (56 if family == "llada" else 96)
    sample = (lambda rng: rng.choice(pairs)) if pairs else tasks.tiny_problem
    train.fit(model, cfg, tok, args, args.out, rank, world, device, length, block_size,
              f"{args.stage} {family}", sample=sample, residual=residual_hook, decoder=decoder, state=state,
              tokenizer_from=base)


if __name__ == "__main__":
    train.interrupted(main)
