"""
Train the small embedded models from scratch, on a laptop CPU, in the official LLaDA and SDAR formats:
the checkpoints in models/ come from these commands and load through model.from_pretrained like the real
ones (config.json + model.safetensors with the official key names, tokenizer.json + tokenizer_config.json).

  python train.py --family llada --out runs/tiny-llada
  python train.py --family sdar  --out runs/tiny-sdar --block-size 32
  (models/tiny-llada and models/tiny-sdar were made by these commands; writing over a committed model, or
  any folder that holds something other than this very run, needs --overwrite.)
  (The embedded SDAR model uses blocks of 32, not SDAR's usual 4: the answer then lies mostly in one block
  that holds three to four lines of the working, so committing many of its tokens in one step has to guess
  across dependencies. Measured: with blocks of 8 the model wrote a whole block in one step without loss,
  with blocks of 16 it lost 4 points at 16 tokens per step; with 32 it loses 26 points at 4 per step.)
  (Ctrl-C any time; the same command resumes from <out>/train_state.pt - for a folder under models/, from
  runs/state/<name>/, so an interrupted run leaves nothing there. --fresh starts over. A resume with other
  settings (seed, learning rate, steps, batch, data, model shape) is refused, not carried on.)

Data: the built-in task (tasks.py): grade-school word problems, a step-by-step solution, '#### answer'.
Vocabulary: a byte-level BPE trained on the task's text with tiktoken, digits kept as single tokens (so
arithmetic happens digit by digit), plus the special tokens of both chat formats; written as a Hugging
Face tokenizer.json so tokenizer.py loads it like LLaDA's or Qwen's.

Recipes (masked diffusion; the model predicts every masked token at once, no shift):
  llada  LLaDA's SFT (ML-GSAI/LLaDA GUIDELINES.md): [prompt | answer + <|eot_id|> + EOS padding to
         gen_length]; per sample t ~ U(0,1), p = (1 - 1e-3) t + 1e-3; each answer token masked with
         probability p (the prompt never); loss = sum over masked tokens of CE / p, divided by the answer
         length (EOS padding included, so the model learns where to stop), averaged over the batch.
  sdar   block diffusion as SDAR / BD3-LM train it (SDAR's training code; BD3-LM, arXiv 2503.09573):
         the input is [x_t | x_0], a noisy and a clean copy with the same positions; a noisy token sees
         its own noisy block and the clean blocks before it, a clean token sees clean blocks up to its own
         (`block_diff_mask`). Same noise and 1/p weighting, loss on the noisy half. Blocks of --block-size
         (4) are aligned to position 0.
Both: AdamW, linear warm-up then cosine decay, gradient clipping; batches are a pure function of
(seed, step), so an interrupted run resumes exactly; checkpoints are written to a temporary file and
renamed (atomic). Differences from the official recipes: tiny sizes, one fixed answer length for LLaDA,
left-padded prompts (RoPE only sees relative positions, and pads are hidden keys, so nothing changes).
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

import model as M
import tasks
from tokenizer import load_tokenizer

# special tokens of both chat formats (LLaDA-8B-Instruct's and Qwen3's tokenizer_config.json), appended after
# the BPE vocabulary
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|mdm_mask|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|MASK|>"]
PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# the official chat templates' behaviour, as jinja (tokenizer.py renders them in Python)
TEMPLATES = {
    "llada": "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
             "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
             "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "sdar": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            "{# Qwen3's <think> and </think> handling of assistant turns is omitted here #}",
}

# -----------------------------------------------------------------------------
# Vocabulary


def bpe_train(text, vocab_size, pattern):
    """Byte-level BPE: repeatedly merge the most frequent adjacent pair inside the regex's pre-tokens,
    until vocab_size tokens or no pair is left. Returns the merges in order, as pairs of bytes. (The
    same algorithm as tiktoken's educational trainer, run on word counts so it is fast on a small text
    whose few distinct words run out of pairs before the requested size.)"""
    import regex
    from collections import Counter
    words = Counter(tuple(bytes([b]) for b in w.encode("utf-8")) for w in regex.findall(pattern, text))
    merges = []
    while 256 + len(merges) < vocab_size:
        pairs = Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the bytes: a reproducible result
        merges.append(best)
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def write_tokenizer(folder, family, seed=0, n_problems=3000, bpe_size=512):
    """Train a byte-level BPE on the task's text and write it as Hugging Face files (tokenizer.py then
    runs it on tiktoken). Ids: the 256 bytes, the merges in order, then the special tokens."""
    from tokenizer import bytes_to_unicode
    rng = random.Random(seed)
    corpus = "\n".join(q + "\n" + a for q, a in (tasks.tiny_problem(rng) for _ in range(n_problems)))
    merges = bpe_train(corpus, bpe_size, PATTERN)
    b2u = bytes_to_unicode()
    as_str = lambda b: "".join(b2u[c] for c in b)
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({a + b: 256 + i for i, (a, b) in enumerate(merges)})
    n_base = len(ranks)
    vocab = {as_str(t): r for t, r in ranks.items()}
    merges = [[as_str(a), as_str(b)] for a, b in merges]
    added = [{"id": n_base + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": s not in ("<think>", "</think>")}
             for i, s in enumerate(SPECIALS)]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                        "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": vocab, "merges": merges}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
              "bos_token": "<|startoftext|>" if family == "llada" else None, "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>" if family == "llada" else "<|MASK|>",
              "model_max_length": 1024, "chat_template": TEMPLATES[family]}
    os.makedirs(folder, exist_ok=True)
    for name, obj in (("tokenizer.json", spec), ("tokenizer_config.json", config)):
        with open(os.path.join(folder, name + ".tmp"), "w") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
        os.replace(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
    return load_tokenizer(folder)


# -----------------------------------------------------------------------------
# Data: batches are a pure function of (seed, step)


def encode(tok, question, solution, family):
    """(prompt ids, answer ids) with the family's chat template and end-of-turn token."""
    prompt = tok.encode_chat([{"role": "user", "content": question}])  # content's special text stays text
    end = tok.special_ids["<|eot_id|>" if family == "llada" else "<|im_end|>"]
    return prompt, tok.encode(solution) + [end]


def make_batch(tok, family, step, seed, batch_size, length, held_out, sample=tasks.tiny_problem):
    """ids (B, T), prompt_mask (B, T), pad (B, T). LLaDA: [EOS padding | prompt | answer + <|eot_id|> + EOS
    up to `length` answer tokens], so every answer region has the gen_length used at inference. SDAR:
    [prompt | answer + <|im_end|> + EOS] to `length` tokens in all, blocks aligned to position 0.
    sample(rng) -> (question, answer): the built-in task by default; examples too long are skipped."""
    rng = random.Random(seed * 1_000_003 + step)
    eos, rows, misses = tok.special_ids["<|endoftext|>"], [], 0
    while len(rows) < batch_size:
        q, a = sample(rng)
        if q in held_out:  # never train on an evaluation problem
            continue
        p, ans = encode(tok, q, a, family)
        if len(ans) <= length and (family == "llada" or len(p) + len(ans) <= length):
            rows.append((p, ans))
            misses = 0
        elif (misses := misses + 1) >= 1000:  # instead of drawing forever
            raise SystemExit(f"length {length}: 1000 examples in a row do not fit ({len(p) + len(ans)} "
                             f"tokens, {len(ans)} of them answer); raise --length")
    P = max(len(p) for p, _ in rows) if family == "llada" else 0
    T = P + length if family == "llada" else length
    ids = torch.full((batch_size, T), eos)
    prompt_mask = torch.zeros(batch_size, T, dtype=torch.bool)
    pad = torch.zeros_like(prompt_mask)  # left padding (LLaDA only): hidden keys
    for r, (p, ans) in enumerate(rows):
        s = P - len(p) if family == "llada" else 0
        ids[r, s:s + len(p)], ids[r, s + len(p):s + len(p) + len(ans)] = torch.tensor(p), torch.tensor(ans)
        prompt_mask[r, :s + len(p)] = True
        pad[r, :s] = True
    return ids, prompt_mask, pad


def dev_accuracy(net, tok, family, n, gen_length, block_size, decoder=None):
    """Accuracy on the first n dev problems at one token per step (the quality the issue asks for).
    decoder(net, prompts) -> (x, stats) replaces the plain decoder (train_residual.py: RCD decoding)."""
    import decode
    recs = tasks.tiny_records("dev", n)
    prompts = [encode(tok, r["question"], r["answer"], family)[0] for r in recs]
    net.eval()
    with torch.no_grad():
        if decoder is not None:
            x, st = decoder(net, prompts)
        elif family == "llada":
            x, st = decode.generate(net, prompts, steps=gen_length, gen_length=gen_length, block_length=8)
        else:
            x, st = decode.block_generate(net, prompts, gen_length=gen_length, block_length=block_size,
                                          denoising_steps=block_size)
    net.train()
    outs = [tok.decode(x[i, s:s + k].tolist())
            for i, (s, k) in enumerate(zip(st["gen_start"], st["gen_tokens"]))]
    right = [tasks.is_correct("tiny", tasks.extract_answer("tiny", o), r["gold"]) for o, r in zip(outs, recs)]
    return sum(right) / n

# -----------------------------------------------------------------------------
# Masked-diffusion losses


def add_noise(ids, prompt_mask, mask_id, generator, eps=1e-3):
    """LLaDA's forward process: per sample t ~ U(0, 1), p = (1 - eps) t + eps; mask answer tokens w.p. p.
    The batch's t are stratified, t_i = (i + u) / B for one u ~ U(0, 1) (MDLM's low-discrepancy sampler):
    each t is still uniform, so the loss is unbiased, but a small batch covers all noise levels."""
    B, T = ids.shape
    t = (torch.arange(B) + torch.rand(1, generator=generator)) / B
    p = ((1 - eps) * t[torch.randperm(B, generator=generator)] + eps)[:, None].expand(B, T)
    masked = (torch.rand(B, T, generator=generator) < p).to(ids.device) & ~prompt_mask
    p = p.to(ids.device)
    return torch.where(masked, mask_id, ids), masked, p


def diffusion_loss(logits, ids, masked, p, prompt_mask):
    """sum over masked tokens of CE / p, divided by each sample's answer length, averaged over the batch."""
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    answer_len = (~prompt_mask).sum(1, keepdim=True).expand_as(ids)[masked]
    return (ce / p[masked] / answer_len).sum() / ids.shape[0]


def block_diff_mask(n, block_size, device=None):
    """(2n, 2n) bool: who sees whom in [x_t | x_0] (BD3-LM's three sub-masks, blocks aligned to 0)."""
    i = torch.arange(2 * n, device=device)
    noisy, blk = i < n, (i % n) // block_size
    same_noisy = noisy[:, None] & noisy[None, :] & (blk[:, None] == blk[None, :])         # block-diagonal
    earlier_clean = noisy[:, None] & ~noisy[None, :] & (blk[None, :] < blk[:, None])     # offset block-causal
    clean_causal = ~noisy[:, None] & ~noisy[None, :] & (blk[None, :] <= blk[:, None])    # block-causal
    return same_noisy | earlier_clean | clean_causal


def noisy_logits(net, family, x_t, ids, pad, block_size, embed_hook=None):
    """Logits at the noisy positions in the family's training layout: LLaDA sees x_t with the padding hidden;
    SDAR sees [x_t | x_0] under block_diff_mask, same positions twice. embed_hook: see model.forward."""
    if family == "llada":
        return net(x_t, attention_mask=(~pad).long(), embed_hook=embed_hook)
    T = ids.shape[1]
    return net(torch.cat([x_t, ids], 1), position_ids=torch.arange(T, device=ids.device).repeat(2),
               attn_mask=block_diff_mask(T, block_size, ids.device)[None, None], embed_hook=embed_hook)[:, :T]


def loss_step(net, family, mask_id, ids, prompt_mask, pad, generator, block_size, residual=None):
    """One training loss. residual(x_t, ids, pad) -> embed_hook lets train_residual.py change the input."""
    x_t, masked, p = add_noise(ids, prompt_mask, mask_id, generator)
    hook = None if residual is None else residual(x_t, ids, pad)
    logits = noisy_logits(net, family, x_t, ids, pad, block_size, hook)
    return diffusion_loss(logits, ids, masked, p, prompt_mask)

# -----------------------------------------------------------------------------
# Training loop, shared with train_residual.py: resumable and atomic here, and the same code on GPUs
# (torchrun DDP or FSDP2, bf16 autocast, gradient accumulation, activation checkpointing)


def lr_at(step, steps, lr, warmup):
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def make_optimizer(net, lr, weight_decay=0.1):
    """AdamW with weight decay on matrices only (decaying norm gains towards 0 would fight the norms)."""
    params = [p for p in net.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def setup_distributed(device=None):
    """(rank, world, device): under torchrun one process per GPU (gloo on CPU), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return int(os.environ.get("RANK", 0)), world, device


def parallelize(net, world, fsdp=False, checkpointing=False):
    """Activation checkpointing per block; then FSDP2 (shard each block, then the rest) or DDP."""
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
        apply_activation_checkpointing(net, check_fn=lambda m: isinstance(m, M.Block))
    if world > 1 and fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in net.layers:
            fully_shard(block)
        return fully_shard(net)
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(net)
    return net


def unwrapped(net):
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def full_state(net):
    """The whole model's state dict on CPU (gathered from the shards under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrapped(net), options=options)


def save_state(folder, net, opt, step, rank):
    """Resumable state, written atomically: torch.save of everything on rank 0, or, under FSDP, one
    torch.distributed.checkpoint folder of shards (renamed into place once every rank has written)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    path = os.path.join(folder, "train_state.pt")
    model_sd, optim_sd = get_state_dict(unwrapped(net), opt)
    if dist.is_initialized() and hasattr(net, "reshard"):  # FSDP2
        import torch.distributed.checkpoint as dcp
        dcp.save({"model": model_sd, "optim": optim_sd, "step": step}, checkpoint_id=path + ".tmp")
        dist.barrier()
        if rank == 0:
            if os.path.isdir(path):
                os.rename(path, path + ".old")
            os.rename(path + ".tmp", path)
            shutil.rmtree(path + ".old", ignore_errors=True)
    elif rank == 0:
        torch.save({"model": model_sd, "optim": optim_sd, "step": step}, path + ".tmp")
        os.replace(path + ".tmp", path)
    if dist.is_initialized():
        dist.barrier()


def load_state(folder, net, opt):
    """The step to resume from (0 if there is nothing to resume)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    path = os.path.join(folder, "train_state.pt")
    if not os.path.exists(path):
        return 0
    if os.path.isdir(path):  # FSDP shards
        import torch.distributed.checkpoint as dcp
        model_sd, optim_sd = get_state_dict(unwrapped(net), opt)
        state = {"model": model_sd, "optim": optim_sd, "step": 0}
        dcp.load(state, checkpoint_id=path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torn, truncated or not ours: say so instead of a traceback
            raise SystemExit(f"{path}: cannot resume from it ({type(e).__name__}); rerun with --fresh to "
                             "start over") from None
    set_state_dict(unwrapped(net), opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return state["step"]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


def state_dir(out):
    """Where a run keeps train_state.pt and run.json (its settings): --out itself, except for a folder of the
    committed embedded models (models/), whose run lives in runs/state/<name>: an interrupted run leaves
    nothing there, and the folder changes only at the final export."""
    if not M.inside(out, M.EMBEDDED):
        return out
    name = os.path.relpath(os.path.realpath(out), os.path.realpath(M.EMBEDDED))
    return os.path.join(M.REPO, "runs", "state", name)


def fingerprint(name_or_path):
    """What identifies an input checkpoint for a resume: its config.json and the sizes of its weight files."""
    folder = M.resolve(name_or_path)
    with open(os.path.join(folder, "config.json"), "rb") as f:
        config = hashlib.sha256(f.read()).hexdigest()[:16]
    return [config, sorted((n, os.path.getsize(os.path.join(folder, n))) for n in M.checkpoint_names(folder))]


def file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def claim_out(out, settings, overwrite=False, fresh=False, inputs=()):
    """(state folder, resume?) for a run writing `out`, checked before anything is written or loaded (read
    only: every rank may call it). The folder must be empty or missing, hold this very run (a run.json with
    the same settings: resumed, or restarted with --fresh), or be given up with --overwrite; anything else,
    including a run whose settings differ, is refused in one line. inputs: see M.check_out_folder."""
    state = state_dir(out)
    settings = json.loads(json.dumps(settings))  # as it reads back from run.json
    M.check_out_folder(out, True, inputs)  # writing over an input is refused even with --overwrite
    record = os.path.join(state, "run.json")
    if os.path.isfile(record):
        try:
            old = M.read_json(record)
        except ValueError:
            old = {}
        if old == settings:
            return state, not fresh
        if not overwrite:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            diff = diff or "unreadable run.json"
            raise SystemExit(f"--out {out}: holds a run with other settings ({diff}); "
                             "rerun with those to resume it, or pass --overwrite to start this one over it")
        return state, False
    M.check_out_folder(out, overwrite)
    if state != out:  # a run of a models/ folder left without its record: not ours to resume
        M.check_out_folder(state, overwrite, flag="run state")
    return state, False


def begin_run(state, settings, resume):
    """Rank 0, once every check has passed: a new run drops earlier train state and records its settings."""
    if resume:
        return
    for name in ("train_state.pt", "train_state.pt.tmp", "run.json"):
        path = os.path.join(state, name)
        if os.path.isdir(path):  # FSDP's train state is a folder of shards
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    os.makedirs(state, exist_ok=True)
    with open(os.path.join(state, "run.json.tmp"), "w") as f:
        json.dump(settings, f, indent=1)
    os.replace(os.path.join(state, "run.json.tmp"), os.path.join(state, "run.json"))


or_exit = M.or_exit  # a loader's call for a command line: bad input is one line


def interrupted(main):
    """Run a training CLI's main; Ctrl-C ends it with one line instead of a traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None


def train(net, opt, steps, lr, warmup, out, batch_fn, loss_fn, save_every, desc, grad_accum=1, rank=0,
          world=1, device=torch.device("cpu"), amp_dtype=None, evaluate=None, eval_every=0):
    """batch_fn(i) -> tensors for micro-batch i (a pure function of i, so a resumed run is the same run);
    loss_fn(*tensors, i) -> loss. Micro-batch i = (step * grad_accum + micro) * world + rank."""
    from tqdm import tqdm
    start = load_state(out, net, opt)
    if start and rank == 0:
        print(f"resuming {out}/train_state.pt at step {start}")
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=rank != 0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        total = 0.0
        for micro in range(grad_accum):
            i = (step * grad_accum + micro) * world + rank
            sync = micro == grad_accum - 1 or not isinstance(net, torch.nn.parallel.DistributedDataParallel)
            autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                      enabled=amp_dtype is not None)
            with (contextlib.nullcontext() if sync else net.no_sync()), autocast:
                loss = loss_fn(*[t.to(device) for t in batch_fn(i)], i) / grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{total:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save_state(out, net, opt, step + 1, rank)
        if evaluate and eval_every and (step + 1) % eval_every == 0 and rank == 0:
            bar.write(f"step {step + 1}: dev accuracy {100 * evaluate():.1f}% (one token per step)")
    return net


def export(net, cfg, out, rank, dtype=torch.bfloat16, tokenizer_from=None):
    """Write the trained weights as an official checkpoint (rank 0), in bf16 like the official ones, with
    the tokenizer files of `tokenizer_from` (those it lacks are removed from out: no stale template)."""
    state = full_state(net)
    if rank == 0:
        with torch.device("meta"):
            final = M.Transformer(cfg)
        final.load_state_dict({k: v.to(dtype) for k, v in state.items()}, assign=True)
        if cfg.tie_embeddings:
            final.lm_head.weight = final.embed_tokens.weight
        M.save_pretrained(final, out)
        same = not tokenizer_from or os.path.realpath(tokenizer_from) == os.path.realpath(out)
        for name in () if same else TOKENIZER_FILES:
            src, dst = os.path.join(tokenizer_from, name), os.path.join(out, name)
            if os.path.isfile(src):
                shutil.copy(src, dst + ".tmp")
                os.replace(dst + ".tmp", dst)
            elif os.path.exists(dst):
                os.remove(dst)
    if dist.is_initialized():
        dist.barrier()


def fit(model, cfg, tok, args, out, rank, world, device, length, block_size, desc, sample=tasks.tiny_problem,
        residual=None, decoder=None, state=None, tokenizer_from=None):
    """The masked-diffusion objective on batches drawn from `sample` (the built-in task by default, never its
    dev/test problems), through `train`, then the official-format export. Shared by both training CLIs;
    `args` carries the loop's knobs (seed, batch_size, steps, lr, warmup, save_every, grad_accum, amp, ...).
    state: the folder of the resumable state (state_dir(out)); tokenizer_from: see export."""
    held_out = {r["question"] for split in ("test", "dev") for r in tasks.tiny_records(split)}
    gen = torch.Generator()

    def batch(i):
        gen.manual_seed(args.seed * 1_000_003 + i)  # the noise, too, is a function of the micro-batch
        return make_batch(tok, cfg.family, i, args.seed, args.batch_size, length, held_out, sample)

    def loss(ids, pm, pad, i):
        return loss_step(model, cfg.family, cfg.mask_token_id, ids, pm, pad, gen, block_size, residual)

    def evaluate():  # dev accuracy at one token per step
        return dev_accuracy(unwrapped(model), tok, cfg.family, args.eval_n, 56, block_size, decoder)
    t0 = time.time()
    amp = getattr(torch, args.amp) if args.amp else None
    train(model, make_optimizer(model, args.lr), args.steps, args.lr, args.warmup, state or out, batch, loss,
          args.save_every, desc, args.grad_accum, rank, world, device, amp, evaluate=evaluate,
          eval_every=0 if args.fsdp else args.eval_every)
    export(model, cfg, out, rank, tokenizer_from=tokenizer_from)
    if rank == 0:
        print(f"saved {out} ({(time.time() - t0) / 60:.1f} min this run)")
    if dist.is_initialized():
        dist.destroy_process_group()


def add_loop_args(ap, steps, lr, warmup, save_every, seed, eval_every):
    """The training loop's flags, shared by train.py, train_residual.py (and their GPU runs)."""
    ap.add_argument("--steps", type=int, default=steps, help="optimizer steps" + (
        "" if steps else " (default: 3000 for llada, 1800 for sdar: under 30 minutes each on 2 CPU cores)"))
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per micro-batch (per process)")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--lr", type=float, default=lr,
                    help="peak learning rate (AdamW; warm-up, then cosine to 0.1x)")
    ap.add_argument("--warmup", type=int, default=warmup, help="linear warm-up steps")
    ap.add_argument("--seed", type=int, default=seed,
                    help="seed for data order and noise (and fresh weights)")
    ap.add_argument("--save-every", type=int, default=save_every, help="steps between resumable checkpoints")
    ap.add_argument("--eval-every", type=int, default=eval_every,
                    help="steps between dev accuracy checks (0: never)")
    ap.add_argument("--eval-n", type=int, default=64, help="dev problems per check")
    ap.add_argument("--device", default=None,
                    help="cuda / cpu (default: cuda if available; cuda:LOCAL_RANK under torchrun)")
    ap.add_argument("--amp", choices=["bfloat16", "float16"], default=None,
                    help="autocast dtype (default: float32 throughout)")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    ap.add_argument("--fsdp", action="store_true", help="under torchrun: FSDP2 instead of DDP")
    ap.add_argument("--fresh", action="store_true", help="start this run over instead of resuming it")
    ap.add_argument("--overwrite", action="store_true",
                    help="write into --out even though it holds another model, a committed embedded model "
                         "(models/), other files or a run with other settings")


def loop_settings(args, world, **more):
    """The settings a resume must match (run.json): everything that changes the batches or the updates."""
    keys = ("seed", "lr", "warmup", "steps", "batch_size", "grad_accum", "amp")
    return {**{k: getattr(args, k) for k in keys}, "world": world, **more}


SHAPE_ARGS = ("n_embd", "n_layer", "n_head", "n_kv_head", "length", "block_size")  # a resume must match


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["llada", "sdar"], required=True,
                    help="checkpoint format and training recipe")
    ap.add_argument("--out", required=True,
                    help="output folder (checkpoint, tokenizer, resumable train_state.pt)")
    add_loop_args(ap, steps=None, lr=2e-3, warmup=100, save_every=250, seed=0, eval_every=500)
    ap.add_argument("--n-embd", type=int, default=128, help="hidden size")
    ap.add_argument("--n-layer", type=int, default=6, help="layers")
    ap.add_argument("--n-head", type=int, default=4, help="attention heads (head_dim = n_embd / n_head)")
    ap.add_argument("--n-kv-head", type=int, default=None,
                    help="key/value heads (default: n_head for llada, n_head/2 for sdar)")
    ap.add_argument("--length", type=int, default=None,
                    help="llada: answer tokens, the gen_length used at inference (default 56); sdar: "
                         "prompt + answer (default 96, a multiple of the block size)")
    ap.add_argument("--block-size", type=int, default=4, help="SDAR block size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    sdar = args.family == "sdar"
    args.steps = args.steps or (3000 if args.family == "llada" else 1800)
    args.n_kv_head = args.n_kv_head or (args.n_head // 2 if sdar else args.n_head)
    args.length = args.length or (96 if sdar else 56)
    loop = ("steps", "batch_size", "grad_accum", "save_every")
    bad = next((k for k in loop + SHAPE_ARGS if getattr(args, k) <= 0), None)
    if bad or args.n_embd % args.n_head or args.n_head % args.n_kv_head or not args.lr > 0:
        raise SystemExit(f"--{bad.replace('_', '-')} must be > 0" if bad else
                         "need --lr > 0, --n-head dividing --n-embd and --n-kv-head dividing --n-head")
    return args


def model_config(args, tok):
    """The model's Config: the family's layout (LLaDA-8B's or SDAR's switches) at --n-embd x --n-layer,
    with the tokenizer's special ids and its vocabulary padded to a multiple of 64."""
    sdar, ids = args.family == "sdar", tok.special_ids
    vocab = -(-tok.vocab_size // 64) * 64  # padded, as real checkpoints pad theirs
    if sdar:
        stop_ids = (ids["<|im_end|>"], ids["<|endoftext|>"])
    else:
        stop_ids = (ids["<|endoftext|>"], ids["<|eot_id|>"])
    return M.Config(family=args.family, vocab_size=vocab, n_embd=args.n_embd, n_layer=args.n_layer,
                    n_head=args.n_head, n_kv_head=args.n_kv_head, head_dim=args.n_embd // args.n_head,
                    intermediate_size=args.n_embd * 8 // 3 // 16 * 16, rope_theta=1e6 if sdar else 5e5,
                    max_seq_len=1024, norm_eps=1e-6 if sdar else 1e-5, qk_norm=sdar, rope_fp32=not sdar,
                    norm_gain_fp32=sdar, block_size=args.block_size if sdar else None,
                    mask_token_id=ids["<|MASK|>" if sdar else "<|mdm_mask|>"],
                    eos_token_id=ids["<|endoftext|>"], stop_ids=stop_ids)


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = setup_distributed(args.device)
    settings = loop_settings(args, world, command="train.py", family=args.family,
                             **{k: getattr(args, k) for k in SHAPE_ARGS})
    state, resume = claim_out(args.out, settings, args.overwrite, args.fresh)
    print(f"rank {rank}/{world}: device={device} amp={args.amp or 'off (float32)'} "
          f"threads={torch.get_num_threads()}")
    if rank == 0:
        begin_run(state, settings, resume)
        if not resume or not os.path.isfile(os.path.join(state, "tokenizer.json")):
            write_tokenizer(state, args.family, seed=args.seed)  # copied into --out at the export
    if dist.is_initialized():
        dist.barrier()
    tok = load_tokenizer(state)
    cfg = model_config(args, tok)
    torch.manual_seed(args.seed)
    net = M.Transformer(cfg)
    net.init_weights()
    if rank == 0:
        print(f"{args.family}: {sum(p.numel() for p in net.parameters()):,} parameters, "
              f"vocab {tok.vocab_size} (padded {cfg.vocab_size})")
    model = parallelize(net.to(device), world, args.fsdp, args.checkpointing)
    fit(model, cfg, tok, args, args.out, rank, world, device, args.length, args.block_size,
        f"train {args.family}", state=state, tokenizer_from=state)


if __name__ == "__main__":
    interrupted(main)
