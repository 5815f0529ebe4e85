"""
The transformer behind LLaDA and SDAR (and LLaDA2.0, whose mixture of experts is in moe.py), written from
scratch in one file, and a loader for their official safetensors checkpoints (a local folder or a Hugging
Face repo id).

All three are a Llama-style pre-norm stack (RMSNorm -> attention -> RMSNorm -> SwiGLU MLP, or in LLaDA2.0
a mixture of SwiGLU experts) used as a *mask predictor*: the logits at position i predict the token at
position i (no shift). They differ in a handful of switches, which live in `Config`:

  family  attention                                  layout                      numerics
  llada   bidirectional (+ key padding for batches)  MHA, no QK-norm, untied     q/k rotated in fp32
  sdar    block-causal, blocks aligned to pos 0      Qwen3: GQA, q/k RMSNorm      rotation in the activation
                                                     before RoPE, head_dim free   dtype; norm gain in fp32
  llada2  block-causal, blocks aligned to pos 0      Ling-2.0: as sdar, RoPE on   as sdar, but the norm gain
          (LLaDA2.0-mini, its MoE in moe.py)         half of each head, MoE MLPs  in the activation dtype

Mirrors: LLaDA's `modeling_llada.py` (GSAI-ML/LLaDA-8B-Instruct; the Oct-2025 revision for
`attention_mask`), JetAstra/SDAR `training/model/SDAR-4B-Chat/modeling_sdar.py` (Qwen3 + block-causal
masks), and Fast-dLLM's `llada/model/modeling_llada.py` for what a LLaDA KV cache must do.
How it differs from those files:
  - one forward serves everything that comes later: explicit `position_ids` (the official LLaDA file has
    none), an exact KV cache (`KVCache`, written in place by slot, gpt-fast style), `inputs_embeds`
    (RCD), the final post-norm hidden state (MRP) and an explicit attention mask (MRP verification,
    Elastic-dLLM's anchor);
  - the attention mask is derived from positions (block-causal: key block <= query block), so prefill,
    cached block decoding and whole-sequence forwards share one rule;
  - no global SDPA backend flags (the official LLaDA constructor flips them process-wide);
  - a forward never reads a value back from the device (rotary tables built once, a given mask always
    applied, cache slots written by index), so torch.compile takes it whole, CUDA graphs included
    (compile_forward, gpt-fast's recipe);
  - padding is a boolean key mask instead of an additive finfo.min bias: same softmax weights.
"""
import copy
import json
import math
import os
import re
import time
import weakref
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Config


@dataclass
class Config:
    family: str = "llada"            # "llada" (bidirectional), "sdar" (block-causal Qwen3 layout), "llada2"
    vocab_size: int = 126464         # rows of the embedding matrix (the padded vocabulary)
    n_embd: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int = 32              # < n_head means grouped-query attention
    head_dim: int = 128              # independent of n_embd (SDAR-4B: 32 heads x 128 = 4096 > 2560)
    intermediate_size: int = 12288
    rope_theta: float = 500000.0
    max_seq_len: int = 4096
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qk_norm: bool = False            # SDAR: RMSNorm over head_dim on q and k, before RoPE
    rope_fp32: bool = True           # LLaDA rotates q/k in fp32 (`rope_full_precision`); SDAR does not
    norm_gain_fp32: bool = False     # SDAR's repo RMSNorm multiplies by the gain before casting back
    block_size: int | None = None    # block-causal attention for plain calls; None = bidirectional
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    stop_ids: tuple = (126081, 126348)  # ids that end an answer (LLaDA: EOS, <|eot_id|>)
    rope_dim: int | None = None      # LLaDA2.0: RoPE on the first rope_dim dims of each head only; None = all
    moe: "MoEConfig | None" = None   # LLaDA2.0: its mixture-of-experts MLPs (moe.py); None = dense MLPs


@dataclass
class MoEConfig:
    """LLaDA2.0's MLPs from layer `first_dense` on (moe.py): `n_experts` SwiGLU experts of width
    `intermediate_size`, `top_k` per token chosen within the best `topk_group` of `n_group` expert groups,
    plus `n_shared` always-on experts. Names in config.json: num_experts, num_experts_per_tok, n_group,
    topk_group, routed_scaling_factor, moe_intermediate_size, num_shared_experts, first_k_dense_replace."""
    n_experts: int = 256
    top_k: int = 8
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    intermediate_size: int = 512
    n_shared: int = 1
    first_dense: int = 1


SDAR = Config(family="sdar", vocab_size=151936, n_embd=4096, n_layer=36, n_head=32, n_kv_head=8,
              rope_theta=1e6, max_seq_len=32768, norm_eps=1e-6, qk_norm=True, rope_fp32=False,
              norm_gain_fp32=True, block_size=4, mask_token_id=151669, eos_token_id=151643,
              stop_ids=(151645, 151643))
# the real checkpoints' shapes (their config.json files); handy for benchmarks and shrinking into tests
PRESETS = {
    "llada-8b": Config(), "sdar-8b": SDAR, "sdar-4b": replace(SDAR, n_embd=2560, intermediate_size=9728),
    "sdar-1.7b": replace(SDAR, n_embd=2048, n_layer=28, n_head=16, intermediate_size=6144),
    # LLaDA2.0-mini (inclusionAI/LLaDA2.0-mini): 16B parameters, 1.4B active; build it with moe.build
    "llada2-mini": Config(family="llada2", vocab_size=157184, n_embd=2048, n_layer=20, n_head=16, n_kv_head=4,
                          intermediate_size=5120, rope_theta=600000.0, max_seq_len=32768, norm_eps=1e-6,
                          qk_norm=True, rope_fp32=False, block_size=32, mask_token_id=156895,
                          eos_token_id=156892, stop_ids=(156892,), rope_dim=64, moe=MoEConfig()),
}

CACHE_ROUND = 256  # KV-cache lengths are rounded up to a multiple of this (Transformer.new_cache)

# -----------------------------------------------------------------------------
# Small functions: RMSNorm, RoPE, the attention rule


def rms_norm(x, weight, eps, gain_fp32=False):
    # Statistics in fp32 whatever the activation dtype. LLaDA (and HF Llama/Qwen3) cast back before the
    # gain; SDAR's repo copy uses flash-attn's rms_norm_fn, which applies the gain in fp32 first.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    # fp32 gain: fp32 * (bf16 or fp32) weight promotes the weight exactly, so no cast kernel is needed
    return (h * weight).to(x.dtype) if gain_fp32 else weight * h.to(x.dtype)


def rope_table(n, head_dim, theta):
    """cos/sin for positions 0..n-1, [n, head_dim] each, built on the CPU in fp32 as LLaDA does (so the
    tables are bit-identical wherever the model later runs). Layout: non-interleaved rotate-half."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device="cpu") / head_dim))
    angle = torch.outer(torch.arange(n, dtype=torch.float, device="cpu"), inv_freq)  # (n, head_dim/2)
    angle = torch.cat((angle, angle), dim=-1)                          # (n, head_dim)
    return angle.cos(), angle.sin()


def apply_rope(x, cos, sin, fp32):
    # x: (B, H, T, D); cos/sin: (B, 1, T, R) in fp32 (run_layers passes them in x's dtype when not fp32)
    R = cos.shape[-1]
    if R < x.shape[-1]:  # partial rotary (LLaDA2.0): only the first R dims of a head rotate (rotate-half)
        return torch.cat([apply_rope(x[..., :R], cos, sin, fp32), x[..., R:]], dim=-1)
    dtype = x.dtype
    if fp32:
        x = x.float()                                    # LLaDA: rotate in fp32, cast back after
    else:
        cos, sin = cos.to(dtype), sin.to(dtype)          # Qwen3/SDAR: rotate in the activation dtype
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(dtype)


def attention_rule(q_pos, k_pos, k_valid, block_size):
    """Which keys each query may see, from absolute positions: (B, 1, Tq, Tk) bool, or None for 'all'.
    Block-causal (SDAR): key block <= query block, blocks of `block_size` counted from position 0, so
    the same rule covers prefill, cached block decoding and whole-sequence forwards. Padding: keys with
    k_valid False are hidden (LLaDA's Oct-2025 `attention_mask`). A mask that is given is always applied:
    asking the device whether it hides anything would stop the host until the device caught up."""
    allowed = None
    if block_size:
        allowed = (k_pos[:, None, :] // block_size) <= (q_pos[:, :, None] // block_size)  # (B, Tq, Tk)
    if k_valid is not None:
        allowed = k_valid[:, None, :] if allowed is None else allowed & k_valid[:, None, :]
    if allowed is None:
        return None
    # A query with nothing to see (a pad row) would come out NaN and could leak through V at later layers;
    # let it see everything instead. Its output is never read.
    return (allowed | ~allowed.any(-1, keepdim=True))[:, None]

# -----------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated post-RoPE K/V for every layer, addressed by *slot* (gpt-fast style: static buffers
    written in place by index, so neither shapes nor addresses change and a CUDA graph can replay the
    step). A forward over T tokens writes slots [start, start+T) and attends to slots [0, end): in fact to
    every slot, with the mask hiding those from `end` on and those never written, so that the shapes do
    not depend on the step. That one operation is every cache the decoders need: SDAR's block step and
    its store-KV pass (the same call; the last write of a block is the clean one), Fast-dLLM's prefix
    cache (write the tail, attend to all) and dual cache (overwrite the block in place, attend to the
    stale suffix too). `pos` and `valid` remember each slot's position and padding (False: padding, or
    not written yet) so masks can be derived for cached keys."""

    def __init__(self, n_layer, batch, n_kv_head, length, head_dim, dtype, device):
        # a (B, Hkv, S, D) tensor per layer, not one (L, B, Hkv, S, D) tensor: a compiled step writes each in
        # place, where a write through a per-layer view would make the compiler copy that layer's slice
        shape = (batch, n_kv_head, length, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros_like(k) for k in self.k]
        self.pos = torch.zeros(batch, length, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, length, dtype=torch.bool, device=device)
        for t in self.buffers():  # CUDA graphs: inputs written in place at a fixed address, never copied in
            torch._dynamo.mark_static_address(t, guard=False)

    def __len__(self):
        return self.pos.shape[1]

    def buffers(self):
        return [*self.k, *self.v, self.pos, self.valid]

    def clear(self):
        """Forget every slot (Transformer.new_cache hands the buffers out again)."""
        for t in self.buffers():
            t.zero_()

# -----------------------------------------------------------------------------
# Modules. Names follow Hugging Face Llama/Qwen3, so SDAR's key map is the identity; LLaDA's is a rename.


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, gain_fp32):
        super().__init__()
        self.weight, self.eps, self.gain_fp32 = nn.Parameter(torch.ones(dim)), eps, gain_fp32

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, self.gain_fp32)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_gain_fp32)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_gain_fp32)

    def forward(self, x, cos, sin, mask, kv=None):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.q_proj(x).view(B, T, cfg.n_head, cfg.head_dim)
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim)
        if cfg.qk_norm:  # per head, before RoPE (Qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        q, k = apply_rope(q, cos, sin, cfg.rope_fp32), apply_rope(k, cos, sin, cfg.rope_fp32)
        if kv is not None:  # write this chunk's K/V at its slots, then attend over slots [0, n)
            cache, layer, slots, n = kv                          # slots: (T,) indices
            k_buf, v_buf = cache.k[layer], cache.v[layer]        # (B, Hkv, S, D)
            k_buf.index_copy_(2, slots, k)
            v_buf.index_copy_(2, slots, v)
            k, v = k_buf[:, :, :n], v_buf[:, :, :n]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=cfg.n_kv_head != cfg.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim))  # (B, T, H*D)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gain_fp32)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gain_fp32)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, kv=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


def check_span(cache, cache_start, T, kv_end):
    end = cache_start + T
    if not end <= (kv_end or end) <= len(cache):
        raise ValueError(f"cache of {len(cache)} slots cannot take slots {cache_start}..{end} "
                         f"and attend to {kv_end}")


def run_layers(layers, rope, x, attention_mask=None, position_ids=None, cache=None, cache_start=0,
               kv_end=None, block_size=None, attn_mask=None):
    """The blocks of a forward, with its bookkeeping: positions, KV-cache slots and the attention rule.
    Shared by Transformer.forward and MRP's decoder layers (mrp.py), which keep a KV cache of their own.
    cache_start and kv_end are Python ints or 0-d tensors (compiled steps pass tensors, see compile_forward);
    nothing here reads a value back from the device."""
    B, T, _ = x.shape
    slots = cache_start + torch.arange(T, device=x.device)  # the cache slots this chunk writes
    position_ids = (slots if position_ids is None else position_ids).expand(B, T)
    valid = None if attention_mask is None else attention_mask.bool().expand(B, T)
    k_pos, kv = position_ids, [None] * len(layers)
    if cache is not None:
        end = cache_start + T if kv_end is None else kv_end
        if isinstance(end, int) and isinstance(cache_start, int):  # on the host (compile_forward: before)
            check_span(cache, cache_start, T, kv_end)
        cache.pos.index_copy_(1, slots, position_ids)
        written = torch.ones_like(position_ids, dtype=torch.bool) if valid is None else valid
        cache.valid.index_copy_(1, slots, written)
        # keys: slots [0, end) when `end` is an int (eager); every slot when it is a tensor (a compiled step,
        # whose shapes must not depend on the step), the mask hiding those from `end` on (unwritten or stale)
        n = end if isinstance(end, int) else len(cache)
        k_pos, valid = cache.pos[:, :n], cache.valid[:, :n] & (torch.arange(n, device=x.device) < end)
        kv = [(cache, i, slots, n) for i in range(len(layers))]
        if attn_mask is not None:  # a given mask covers slots [0, end): hide the rest
            attn_mask = F.pad(attn_mask, (0, n - attn_mask.shape[-1]), value=False)
    if attn_mask is None:
        attn_mask = attention_rule(position_ids, k_pos, valid, block_size)
    cos, sin = rope(position_ids)
    # Qwen3/SDAR rotate in the activation dtype: cast the tables once per forward, not twice per layer
    # (each cast is a kernel)
    if not layers[0].self_attn.cfg.rope_fp32:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    for layer, layer_kv in zip(layers, kv):
        x = layer(x, cos, sin, attn_mask, layer_kv)
    return x


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps, cfg.norm_gain_fp32)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.build_rope()
        self._cache_pool = None  # see new_cache

    def init_weights(self, std=0.02):
        """Fresh weights for training from scratch (train.py): N(0, std) matrices, unit norm gains."""
        for name, p in self.named_parameters():
            nn.init.ones_(p) if name.endswith("norm.weight") else nn.init.normal_(p, std=std)

    def build_rope(self, n=None):
        """The rotary tables for positions 0..n-1 (default max_seq_len), built once here rather than grown
        in a forward (which would have to ask the device for its largest position). Buffers, so they move
        with the model; not saved with it. A caller that feeds positions past max_seq_len (Elastic-dLLM's
        original positions extrapolate) builds longer tables first."""
        cfg = self.config  # LLaDA2.0 rotates only the first rope_dim dims of a head
        cos, sin = rope_table(n or cfg.max_seq_len, cfg.rope_dim or cfg.head_dim, cfg.rope_theta)
        device = self.embed_tokens.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .to_empty() reach the tables as well: rebuild them, so that they stay fp32 (a cast
        # to bf16 would round them) and are never left uninitialised
        super()._apply(fn, recurse)
        self.build_rope(len(self.rope_cos))
        return self

    def rope(self, position_ids):
        return self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None]  # (B, 1, T, D)

    def new_cache(self, batch, length):
        """A KVCache of `batch` rows and `length` slots rounded up to a multiple of CACHE_ROUND (so that a
        whole evaluation shares a few shapes, hence a few compiled graphs; the extra slots are never
        attended to). The previous cache's buffers are handed out again, cleared, when they fit and
        nothing holds that cache any more: a CUDA graph replays on fixed addresses, and a fresh allocation
        for every generation would make it record again."""
        cfg, w = self.config, self.lm_head.weight
        length = -(-length // CACHE_ROUND) * CACHE_ROUND
        buffers, lent = self._cache_pool or (None, None)
        if buffers is not None and lent() is None and buffers.pos.shape == (batch, length) \
                and (buffers.k[0].dtype, buffers.k[0].device) == (w.dtype, w.device):
            buffers.clear()
        else:
            buffers = KVCache(cfg.n_layer, batch, cfg.n_kv_head, length, cfg.head_dim, w.dtype, w.device)
        cache = copy.copy(buffers)  # its own handle on the same tensors: once dropped, they are free again
        self._cache_pool = (buffers, weakref.ref(cache))
        return cache

    def forward(self, input_ids=None, attention_mask=None, *, inputs_embeds=None, position_ids=None,
                cache=None, cache_start=0, kv_end=None, block_size=None, attn_mask=None, return_hidden=False,
                embed_hook=None):
        """Logits (B, T, V) for `input_ids` (B, T), or for `inputs_embeds` (B, T, C) given instead.
        attention_mask: (B, T) 1 = token, 0 = padding (keys hidden). position_ids: (B, T) or (T,) absolute
        positions, default cache_start + 0..T-1. cache: a KVCache; this chunk is written at slots
        [cache_start, cache_start+T) and attends to slots [0, kv_end) (default: up to its own end).
        block_size: block-causal block length (default config.block_size; generation passes its own).
        attn_mask: (B|1, 1, T, Tk) bool, replaces the derived rule. return_hidden: also return the final
        post-norm hidden state (B, T, C). embed_hook(x, input_ids, embedding_weight) -> x edits the input
        embeddings inside the forward, where FSDP has gathered the weights (RCD's training uses it)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if embed_hook is not None:
            x = embed_hook(x, input_ids, self.embed_tokens.weight)
        x = run_layers(self.layers, self.rope, x, attention_mask, position_ids, cache, cache_start, kv_end,
                       block_size or self.config.block_size, attn_mask)
        h = self.norm(x)
        logits = self.lm_head(h)  # logits stay in the activation dtype, as in both official files
        return (logits, h) if return_hidden else logits


def compile_forward(model, mode=None, backend="inductor"):
    """Compile `model`'s forward in place, gpt-fast's way, and return the model: fullgraph=True (a graph
    break is an error, not a silent slowdown) and, on CUDA, mode="reduce-overhead": CUDA graphs, so that
    a step is one launch instead of a few thousand. The decoders pass cache_start / kv_end as Python ints
    that change at every block; a graph would bake them in as constants and compile (and record) once per
    block, so they reach it as 0-d tensors, made by a fill kernel (nothing is copied from the host).
    Shapes stay static within a generation (canvas, cache), so each kind of forward compiles once per
    shape. model.compile_seconds adds up the wall time of the calls that compiled. backend="eager" traces
    the graph without generating code (tests check graph capture that way, in seconds)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # shapes x kinds
    on_cuda = model.lm_head.weight.is_cuda and backend == "inductor"
    step = torch.compile(model.forward, fullgraph=True, backend=backend,
                         mode=mode or ("reduce-overhead" if on_cuda else None))
    model.compile_seconds = 0.0

    def forward(input_ids=None, *args, cache=None, cache_start=0, kv_end=None, return_hidden=False, **kw):
        if cache is not None and not torch.is_tensor(cache_start):
            T = (input_ids if input_ids is not None else kw["inputs_embeds"]).shape[1]
            check_span(cache, cache_start, T, kv_end)
            index = lambda i: torch.full((), i, dtype=torch.long, device=cache.pos.device)
            cache_start, kv_end = index(cache_start), None if kv_end is None else index(kv_end)
        graphs, t0 = torch._dynamo.utils.counters["stats"]["unique_graphs"], time.time()
        # always with the hidden state: SDAR's block step and its store pass then share one graph
        logits, h = step(input_ids, *args, cache=cache, cache_start=cache_start, kv_end=kv_end,
                         return_hidden=True, **kw)
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
            model.compile_seconds += time.time() - t0
        return (logits, h) if return_hidden else logits
    model.forward = forward
    return model

# -----------------------------------------------------------------------------
# Official config.json <-> Config

# what LLaDA-8B uses; anything else we refuse rather than misread
LLADA_FIXED = {"block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
               "include_bias": False, "include_qkv_bias": False, "alibi": False,
               "attention_layer_norm": False, "scale_logits": False, "input_emb_norm": False,
               "layer_norm_with_affine": True, "bias_for_layer_norm": False}


# config.json fields checked before use, named as in the file (both families' names)
SIZE_FIELDS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "mlp_ratio",
               "vocab_size", "embedding_size", "max_sequence_length", "hidden_size", "num_attention_heads",
               "num_key_value_heads", "num_hidden_layers", "head_dim", "intermediate_size",
               "max_position_embeddings", "block_size")
ID_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "eot_token_id")
FLAG_FIELDS = ("weight_tying", "tie_word_embeddings", "rope_full_precision")


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_fields(hf, where):
    """Refuse, in one line naming the field, what would otherwise break later or be misread."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got a {type(hf).__name__}")
    for key in SIZE_FIELDS:
        if hf.get(key) is not None and not (is_int(hf[key]) and hf[key] > 0):
            raise ValueError(f"{where}: {key} must be a positive integer, got {hf[key]!r}")
    for key in ("rope_theta", "rms_norm_eps"):
        v = hf.get(key)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if v is not None and not (number and 0 < v < math.inf):
            raise ValueError(f"{where}: {key} must be a positive number, got {v!r}")
    for key in ID_FIELDS:
        v = hf.get(key)
        if v is not None and not all(is_int(i) and i >= 0 for i in (v if isinstance(v, list) else [v])):
            raise ValueError(f"{where}: {key} must be a token id (an integer >= 0) or a list of them, "
                             f"got {v!r}")
    for key in FLAG_FIELDS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            raise ValueError(f"{where}: {key} must be true or false, got {hf[key]!r}")


def check_shape(cfg, hf, where):
    """Head counts that divide, and special ids inside the vocabulary (names as in config.json)."""
    llada = cfg.family == "llada"
    heads, kv, hidden = (("n_heads", "n_kv_heads", "d_model") if llada else
                         ("num_attention_heads", "num_key_value_heads", "hidden_size"))
    if (llada or not hf.get("head_dim")) and cfg.n_embd % cfg.n_head:
        raise ValueError(f"{where}: {heads} {cfg.n_head} does not divide {hidden} {cfg.n_embd}")
    if cfg.n_head % cfg.n_kv_head:
        raise ValueError(f"{where}: {kv} {cfg.n_kv_head} does not divide {heads} {cfg.n_head}")
    vocab = "embedding_size" if llada and hf.get("embedding_size") else "vocab_size"
    eos = hf.get("eos_token_id")
    given = [("mask_token_id", cfg.mask_token_id), ("eos_token_id", cfg.eos_token_id),
             *(("eos_token_id", i) for i in (eos if isinstance(eos, list) else []))]
    if cfg.family == "llada2" and "mask_token_id" not in hf:  # LLaDA2.0 names no mask id: generate is given
        given = given[1:]                                       # one (its default belongs to the real vocab)
    for name, i in given:  # (other stop ids are only compared with, never embedded: harmless)
        if not 0 <= i < cfg.vocab_size:
            raise ValueError(f"{where}: {name} {i} is outside the vocabulary ({vocab} {cfg.vocab_size})")


def config_from_hf(hf, where="config.json", stop_ids=()):
    """Config from an official config.json (stop_ids: generation_config.json's eos ids, if any)."""
    check_fields(hf, where)
    try:
        cfg = _config_from_hf(hf, where, stop_ids)
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e}") from None
    check_shape(cfg, hf, where)
    return cfg


def _config_from_hf(hf, where, stop_ids):
    kind, eos = hf.get("model_type"), hf.get("eos_token_id")
    stop = tuple(dict.fromkeys([*(eos if isinstance(eos, list) else [eos]), *stop_ids]))  # ordered, unique
    if kind == "llada":
        return llada_config(hf, where, stop)
    if kind == "sdar":
        return sdar_config(hf, where, stop)
    if kind == "llada2_moe":
        return llada2_config(hf, where, [s for s in stop if s is not None])
    raise ValueError(f"{where}: unknown model_type {kind!r} (expected 'llada', 'sdar' or 'llada2_moe')")


def llada_config(hf, where, stop):
    """LLaDA's config.json (configuration_llada.py's names). stop: the eos ids found, None where none."""
    for key, want in LLADA_FIXED.items():
        if hf.get(key, want) not in (want, None):
            raise ValueError(f"{where}: LLaDA setting {key}={hf[key]!r} is not supported (need {want!r})")
    d, nh, eos = hf["d_model"], hf["n_heads"], stop[0] if stop[0] is not None else 126081
    return Config(family="llada", vocab_size=hf.get("embedding_size") or hf["vocab_size"], n_embd=d,
                  n_layer=hf["n_layers"], n_head=nh, n_kv_head=hf.get("n_kv_heads") or nh, head_dim=d // nh,
                  intermediate_size=hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * d,
                  rope_theta=hf.get("rope_theta", 10000.0), max_seq_len=hf.get("max_sequence_length", 4096),
                  norm_eps=hf.get("rms_norm_eps", 1e-5), tie_embeddings=bool(hf.get("weight_tying", False)),
                  rope_fp32=bool(hf.get("rope_full_precision", True)), block_size=None,
                  mask_token_id=hf.get("mask_token_id", 126336), eos_token_id=eos,
                  # <|eot_id|> is a tokenizer id, not in the config
                  stop_ids=(eos, hf.get("eot_token_id", 126348)))


def sdar_config(hf, where, stop):
    """SDAR's config.json (Qwen3's names plus block_size). stop: the eos ids found, None where none."""
    for key in ("rope_scaling", "attention_bias", "use_sliding_window"):
        if hf.get(key):
            raise ValueError(f"{where}: SDAR setting {key}={hf[key]!r} is not supported")
    if "block_size" not in hf:  # the Hugging Face original may lack it; SDAR-*-Chat are trained with 4
        print(f"{where}: no block_size, using 4 for plain forwards (generation passes its own block length)")
    stop = stop if stop[0] is not None else (151643,)
    d, nh = hf["hidden_size"], hf["num_attention_heads"]
    return Config(family="sdar", vocab_size=hf["vocab_size"], n_embd=d, n_layer=hf["num_hidden_layers"],
                  n_head=nh, n_kv_head=hf.get("num_key_value_heads") or nh,
                  head_dim=hf.get("head_dim") or d // nh, intermediate_size=hf["intermediate_size"],
                  rope_theta=hf.get("rope_theta", 1e6), max_seq_len=hf.get("max_position_embeddings", 32768),
                  norm_eps=hf.get("rms_norm_eps", 1e-6),
                  tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qk_norm=True, rope_fp32=False,
                  norm_gain_fp32=True, block_size=hf.get("block_size", 4),
                  mask_token_id=hf.get("mask_token_id", 151669), eos_token_id=stop[0], stop_ids=stop)


def llada2_config(hf, where, stop):
    """LLaDA2.0's config.json. A missing field takes the official config class's default; the file names no
    mask id (generate's default, 156895, unless the file has mask_token_id) and names its EOS only as
    pad_token_id. No block size either: plain calls use the card's 32 (generation passes its own)."""
    for key, want in (("rope_scaling", None), ("use_qkv_bias", False), ("score_function", "sigmoid")):
        if hf.get(key, want) != want:
            raise ValueError(f"{where}: LLaDA2.0 setting {key}={hf[key]!r} is not supported (need {want!r})")
    d, nh = hf["hidden_size"], hf["num_attention_heads"]
    hd = hf.get("head_dim") or d // nh
    moe = MoEConfig(hf.get("num_experts", 16), hf.get("num_experts_per_tok", 2), hf.get("n_group", 8),
                    hf.get("topk_group", 4), hf.get("routed_scaling_factor", 2.5),
                    hf["moe_intermediate_size"], hf.get("num_shared_experts") or 0,
                    hf.get("first_k_dense_replace", 0))
    E, G = moe.n_experts, moe.n_group
    per_group = E // G if G and E % G == 0 else 0
    if per_group < 2 or not 0 < moe.topk_group <= G or not 0 < moe.top_k <= moe.topk_group * per_group:
        raise ValueError(f"{where}: num_experts {E}, n_group {G}, topk_group {moe.topk_group}, "
                         f"num_experts_per_tok {moe.top_k}: need groups of >= 2 experts and "
                         "num_experts_per_tok <= topk_group * experts per group")
    rope_dim = int(hd * hf.get("partial_rotary_factor", 0.5))
    if rope_dim % 2 or not 0 < rope_dim <= hd:
        raise ValueError(f"{where}: partial_rotary_factor {hf['partial_rotary_factor']} gives {rope_dim} "
                         f"rotated dims of {hd}: need an even number > 0")
    eos = stop[0] if stop else hf.get("pad_token_id", 156892)
    dense = hf["intermediate_size"] if moe.first_dense else hf.get("intermediate_size") or 0
    return Config(family="llada2", vocab_size=hf["vocab_size"], n_embd=d, n_layer=hf["num_hidden_layers"],
                  n_head=nh, n_kv_head=hf.get("num_key_value_heads") or nh, head_dim=hd,
                  intermediate_size=dense, rope_theta=hf.get("rope_theta", 10000.0),
                  max_seq_len=hf.get("max_position_embeddings", 16384),
                  norm_eps=hf.get("rms_norm_eps", 1e-5), tie_embeddings=bool(hf.get("tie_word_embeddings")),
                  qk_norm=bool(hf.get("use_qk_norm", True)), rope_fp32=False,
                  block_size=hf.get("block_size", 32), mask_token_id=hf.get("mask_token_id", 156895),
                  eos_token_id=eos, stop_ids=tuple(stop) or (eos,), rope_dim=rope_dim, moe=moe)


def config_to_hf(cfg):
    """The official config.json for a Config, so checkpoints we train also load in the official code."""
    if cfg.family == "llada":
        return {"model_type": "llada", "architectures": ["LLaDAModelLM"], **LLADA_FIXED,
                "d_model": cfg.n_embd, "n_layers": cfg.n_layer, "n_heads": cfg.n_head,
                "n_kv_heads": cfg.n_kv_head, "mlp_hidden_size": cfg.intermediate_size,
                "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size, "rope_theta": cfg.rope_theta,
                "rope_full_precision": cfg.rope_fp32, "max_sequence_length": cfg.max_seq_len,
                "rms_norm_eps": cfg.norm_eps, "weight_tying": cfg.tie_embeddings,
                "mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id,
                "pad_token_id": cfg.eos_token_id, "eot_token_id": cfg.stop_ids[-1],
                "precision": "amp_bf16", "use_cache": False}
    return {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_size": cfg.n_embd,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size, "hidden_act": "silu", "vocab_size": cfg.vocab_size,
            "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
            "block_size": cfg.block_size, "mask_token_id": cfg.mask_token_id,
            "eos_token_id": list(cfg.stop_ids), "torch_dtype": "bfloat16"}

# -----------------------------------------------------------------------------
# Official checkpoint key names -> ours ("{}" is the layer index). LLaDA's ff_proj is the SwiGLU *gate*; a
# block's ff_out is the down projection, the top-level ff_out the LM head.

LLADA_KEYS = {
    "model.transformer.wte.weight": "embed_tokens.weight",
    "model.transformer.blocks.{}.attn_norm.weight": "layers.{}.input_layernorm.weight",
    "model.transformer.blocks.{}.q_proj.weight": "layers.{}.self_attn.q_proj.weight",
    "model.transformer.blocks.{}.k_proj.weight": "layers.{}.self_attn.k_proj.weight",
    "model.transformer.blocks.{}.v_proj.weight": "layers.{}.self_attn.v_proj.weight",
    "model.transformer.blocks.{}.attn_out.weight": "layers.{}.self_attn.o_proj.weight",
    "model.transformer.blocks.{}.ff_norm.weight": "layers.{}.post_attention_layernorm.weight",
    "model.transformer.blocks.{}.ff_proj.weight": "layers.{}.mlp.gate_proj.weight",
    "model.transformer.blocks.{}.up_proj.weight": "layers.{}.mlp.up_proj.weight",
    "model.transformer.blocks.{}.ff_out.weight": "layers.{}.mlp.down_proj.weight",
    "model.transformer.ln_f.weight": "norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
# a Qwen3 decoder layer's weights, named as in Hugging Face and in our Block
LAYER_PARAMS = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SDAR_KEYS = {
    "model.embed_tokens.weight": "embed_tokens.weight",
    **{f"model.layers.{{}}.{name}.weight": f"layers.{{}}.{name}.weight" for name in LAYER_PARAMS},
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
SWIGLU = ("gate_proj", "up_proj", "down_proj")
# LLaDA2.0 (Ling-2.0 names). The fused q/k/v matrix and each expert's tensors load under names of their own;
# moe.assemble then splits q/k/v and stacks the experts. Dense layers (mlp.*_proj) and MoE layers (mlp.gate,
# mlp.experts, mlp.shared_experts) share the mlp prefix.
LLADA2_KEYS = {
    "model.word_embeddings.weight": "embed_tokens.weight",
    **{f"model.layers.{{}}.{n}.weight": f"layers.{{}}.{n}.weight"
       for n in ("input_layernorm", "post_attention_layernorm", *(f"mlp.{p}" for p in SWIGLU),
                 *(f"mlp.shared_experts.{p}" for p in SWIGLU), "mlp.gate")},
    "model.layers.{}.attention.query_key_value.weight": "layers.{}.self_attn.query_key_value.weight",
    "model.layers.{}.attention.query_layernorm.weight": "layers.{}.self_attn.q_norm.weight",
    "model.layers.{}.attention.key_layernorm.weight": "layers.{}.self_attn.k_norm.weight",
    "model.layers.{}.attention.dense.weight": "layers.{}.self_attn.o_proj.weight",
    "model.layers.{}.mlp.gate.expert_bias": "layers.{}.mlp.gate.expert_bias",
    **{f"model.layers.{{}}.mlp.experts.{{}}.{p}.weight": f"layers.{{}}.mlp.experts.{{}}.{p}" for p in SWIGLU},
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
KEY_MAPS = {"llada": LLADA_KEYS, "sdar": SDAR_KEYS, "llada2": LLADA2_KEYS}


def translate(name, pairs):
    """Map `name` through (pattern, target) pairs with '{}' layer wildcards; None if no pattern matches."""
    for pattern, target in pairs:
        m = re.fullmatch(re.escape(pattern).replace(r"\{\}", r"(\d+)"), name)
        if m:
            return target.format(*m.groups())
    return None


def rename(key, table):
    """Map one key through a key table; None if the table has no such key."""
    return translate(key, table.items())


def official_name(ours, table):
    """The inverse of rename: our name -> the checkpoint's key (for messages about missing keys)."""
    return translate(ours, ((dst, src) for src, dst in table.items())) or ours

# -----------------------------------------------------------------------------
# Loading


REPO = os.path.dirname(os.path.abspath(__file__))
EMBEDDED = os.path.join(REPO, "models")  # the committed embedded models
# What a checkpoint is made of: the files resolve fetches for a repo id, and all that loading reads
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "*.jinja"]


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path != folder and os.path.commonpath([path, folder]) == folder


def resolve(name_or_path):
    """A local folder, or a Hugging Face repo id fetched (or found in the cache when offline). A path that
    cannot be a repo id, or whose first folder exists here (`models/nope`), is a typo, not a download."""
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        return path
    if inside(path, EMBEDDED):
        name = os.path.relpath(os.path.realpath(path), os.path.realpath(EMBEDDED))
        made = {"tiny-llada": "train.py --family llada",
                "tiny-sdar": "train.py --family sdar --block-size 32"}
        how = (f"`python {made[name]} --out models/{name}`" if name in made
               else "the command RESULTS.md section 10 gives")
        have = ", ".join(sorted(os.listdir(EMBEDDED))) if os.path.isdir(EMBEDDED) else ""
        raise FileNotFoundError(f"{name_or_path}: no such folder; the embedded models are committed: restore "
                                f"it with `git checkout -- models/{name}`, or make it with {how} "
                                f"(models/ holds: {have or 'nothing'})")
    first = path.split("/")[0]
    if (os.path.exists(path) or path.startswith((".", "/")) or os.path.isdir(first)
            or not re.fullmatch(r"[\w.-]+/[\w.-]+", path)):
        raise FileNotFoundError(f"{name_or_path}: no such folder "
                                "(and not a Hugging Face repo id 'owner/name')")
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(name_or_path, allow_patterns=HUB_FILES)
    except Exception as online_error:  # offline or unreachable: fall back to the local cache
        try:
            return snapshot_download(name_or_path, allow_patterns=HUB_FILES, local_files_only=True)
        except Exception:
            first_line = (str(online_error).strip() or "-").splitlines()[0][:150]  # the hub's are long
            raise FileNotFoundError(f"{name_or_path}: not a local folder, and not in the Hugging Face cache "
                                    f"nor downloadable ({type(online_error).__name__}: {first_line}); check "
                                    "the name and the network, or give a folder holding the checkpoint"
                                    ) from None


def read_json(path, required=True):
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"{os.path.dirname(path) or '.'}: no {os.path.basename(path)}")
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def checkpoint_files(folder):
    """{checkpoint key: shard path}: from model.safetensors.index.json if present, else model.safetensors."""
    from safetensors import safe_open
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no weight_map (an object of tensor name -> shard file)")
        for key, shard in weight_map.items():  # lexically inside the folder (hub snapshots are symlinks)
            if not isinstance(shard, str) or os.path.isabs(shard) or ".." in re.split(r"[/\\]", shard):
                raise ValueError(f"{index}: weight_map entry {key!r} -> {shard!r} is not a file in the "
                                 "folder")
        shards = {s: os.path.join(folder, s) for s in set(weight_map.values())}
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        shards, weight_map = {"model.safetensors": os.path.join(folder, "model.safetensors")}, None
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    where = {}
    for shard, path in sorted(shards.items()):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: shard named in the index is missing")
        try:
            with safe_open(path, "pt") as f:
                where.update({k: path for k in f.keys()})
        except Exception as e:  # truncated or not a safetensors file
            raise ValueError(f"{path}: unreadable safetensors file ({e})") from None
    if weight_map is not None:
        lost = sorted(k for k, s in weight_map.items() if where.get(k) != shards[s])
        if lost:
            raise ValueError(f"{index}: {len(lost)} keys are not in the shards named for them, "
                             f"e.g. {lost[:3]}")
    return where


def finite(t):
    """No NaN or inf in t: min and max propagate NaN, so two reductions (no full-size temporary) and one
    host sync per tensor, at load time only."""
    return t.numel() == 0 or bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


def read_state(where, table, want, device, dtype, what):
    """{our name: tensor} for the checkpoint keys in `where` ({key: file}), through a key table: every name in
    `want` ({name: shape}) must arrive with its shape, and no key may be left unmapped."""
    from safetensors import safe_open
    ours = {k: rename(k, table) for k in where}
    unknown = sorted(k for k, v in ours.items() if v not in want)
    missing = sorted(set(want) - set(ours.values()))
    if unknown or missing:
        missing = [official_name(k, table) for k in missing]  # named as the checkpoint would name them
        raise KeyError(f"{what}: unknown keys {unknown[:4]}{'...' if len(unknown) > 4 else ''}, "
                       f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
    state = {}
    for path in sorted(set(where.values())):
        with safe_open(path, "pt") as f:
            for key in (k for k in f.keys() if k in ours):
                shape, stored = tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()
                if shape != tuple(want[ours[key]]):
                    raise ValueError(f"{path}: {key} has shape {list(shape)}, "
                                     f"expected {list(want[ours[key]])}")
                if not stored.startswith(("F", "BF")):  # an integer or bool tensor is no weight
                    raise ValueError(f"{path}: {key} holds {stored} values; weights must be floating point")
                t = f.get_tensor(key)
                state[ours[key]] = t.to(device=device, dtype=dtype)
                if not finite(state[ours[key]]):  # a NaN / inf weight poisons every output
                    why = "holds NaN or inf" if not finite(t) else f"overflows {dtype}"
                    raise ValueError(f"{path}: {key} {why}")
    return state


def default_dtype(where, device):
    """The checkpoint's dtype on CUDA, float32 elsewhere; printed, since it is decided here."""
    from safetensors import safe_open
    if device.type != "cuda":
        return torch.float32
    with safe_open(next(iter(where.values())), "pt") as f:
        stored = f.get_slice(next(iter(f.keys()))).get_dtype()  # e.g. "BF16"
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)


def from_pretrained(name_or_path, device=None, dtype=None, skip=()):
    """Load an official LLaDA, SDAR or LLaDA2.0 checkpoint (folder or repo id). Default device: CUDA if
    available; default dtype: the checkpoint's on CUDA, float32 on CPU. Every expected key must be present
    with the right shape and nothing may be left over. The model is built on the meta device and the tensors
    are assigned one at a time (safetensors maps the files copy-on-write), so no second copy is ever made
    (but of LLaDA2.0's experts, which are stacked). skip: key prefixes a caller loads itself (mrp.py: the
    `mrp_modules.` of an MRP checkpoint)."""
    folder = resolve(name_or_path)
    gen_path = os.path.join(folder, "generation_config.json")
    gen = read_json(gen_path, required=False)
    check_fields({"eos_token_id": gen.get("eos_token_id")} if isinstance(gen, dict) else gen, gen_path)
    gen = gen.get("eos_token_id") or []
    cfg = config_from_hf(read_json(os.path.join(folder, "config.json")), os.path.join(folder, "config.json"),
                         gen if isinstance(gen, list) else [gen])
    where = {k: v for k, v in checkpoint_files(folder).items() if not k.startswith(tuple(skip))}
    has_head = any(rename(k, KEY_MAPS[cfg.family]) == "lm_head.weight" for k in where)
    if not has_head and not cfg.tie_embeddings:
        print(f"{folder}: the checkpoint has no LM head, so it is tied to the input embedding")
        cfg.tie_embeddings = True
    if cfg.tie_embeddings:  # a tied head *is* the embedding; a saved copy is ignored, as Hugging Face does
        where = {k: v for k, v in where.items() if rename(k, KEY_MAPS[cfg.family]) != "lm_head.weight"}
    if cfg.moe:  # LLaDA2.0: the Transformer with MoE MLPs; its checkpoint stores some tensors differently
        import moe
    with torch.device("meta"):
        model = moe.build(cfg) if cfg.moe else Transformer(cfg)
    want = {k: v.shape for k, v in model.state_dict().items()
            if not (cfg.tie_embeddings and k == "lm_head.weight")}
    want = moe.stored_shapes(cfg, want) if cfg.moe else want
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = default_dtype(where, device)
        print(f"model: {cfg.family} on {device} in {dtype} "
              f"({'the checkpoint dtype' if device.type == 'cuda' else 'float32 on the CPU'})")
    state = read_state(where, KEY_MAPS[cfg.family], want, device, dtype,
                       f"{folder}: not a {cfg.family} checkpoint of this config")
    state = moe.assemble(cfg, state) if cfg.moe else state
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:  # load_state_dict(assign=True) makes two Parameters; make them one again
        model.lm_head.weight = model.embed_tokens.weight
    model.build_rope()  # built on the meta device with the rest; derived, so not in the checkpoint
    return model.eval()


def or_exit(fn, *args, **kwargs):
    """fn(...) for a command line: bad input (a checkpoint, a tokenizer, an argument; the message names the
    file or field) ends the program in one line instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except (KeyError, ValueError, OSError) as e:
        raise SystemExit(str(e.args[0] if e.args else e)) from None


# -----------------------------------------------------------------------------
# Saving


def official_state(model):
    """{official key: tensor} for our model, through the inverse of its family's key map."""
    if model.config.moe:
        raise NotImplementedError("saving LLaDA2.0 (split q/k/v, stacked experts) is not implemented")
    inverse = {v: k for k, v in KEY_MAPS[model.config.family].items()}
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue
        m = re.fullmatch(r"layers\.(\d+)\.(.*)", name)
        key = inverse[f"layers.{{}}.{m.group(2)}"].format(m.group(1)) if m else inverse[name]
        state[key] = t.detach().contiguous()
    return state


def checkpoint_names(folder):
    """The weight files a folder holds now: model.safetensors, its index, and the shards (by the official
    naming pattern and by what the index names)."""
    if not os.path.isdir(folder):
        return set()
    names = {n for n in os.listdir(folder) if n in ("model.safetensors", "model.safetensors.index.json")
             or re.fullmatch(r"model-\d+-of-\d+\.safetensors", n)}
    try:
        index = read_json(os.path.join(folder, "model.safetensors.index.json"), required=False)
        weight_map = index["weight_map"]
        names |= {n for n in weight_map.values() if isinstance(n, str) and "/" not in n and "\\" not in n
                  and n not in ("", ".", "..") and os.path.isfile(os.path.join(folder, n))}
    except (KeyError, TypeError, ValueError):  # no index, or one loading would refuse anyway
        pass
    return names


def check_out_folder(out, overwrite=False, inputs=(), flag="--out"):
    """Refuse, in one line and before anything is written, to write a checkpoint into `out` when it holds
    something already: a model (another one, or a committed embedded model under models/) or any other
    files, unless `overwrite` (an explicit --overwrite). inputs: (flag, path) pairs the command reads
    (--base, --reference, ...): writing over one of those is refused even with --overwrite."""
    for name, path in inputs:
        if path and os.path.isdir(path) and os.path.realpath(path) == os.path.realpath(out):
            raise SystemExit(f"{flag} {out} is also {name}: the run would write over its own input; "
                             f"choose another {flag}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"{flag} {out}: is a file, not a folder")
    if overwrite or not os.path.isdir(out) or not os.listdir(out):
        return
    try:
        kind = read_json(os.path.join(out, "config.json"), required=False).get("model_type")
    except (ValueError, AttributeError):
        kind = None
    what = (f"holds a {kind} model" if kind else f"is not empty ({len(os.listdir(out))} files)") + \
        (", one of the committed embedded models" if inside(out, EMBEDDED) else "")
    raise SystemExit(f"{flag} {out}: {what}; pass --overwrite to replace it, or choose another {flag} "
                     f"(e.g. under runs/)")


def save_pretrained(model, folder, max_shard_bytes=None, extra_tensors=None, extra_config=None):
    """Write config.json and model.safetensors (or shards + index) in the official format and key names,
    plus any extra tensors and config fields (an MRP head). Each file is written to a temporary name and
    renamed, so an interrupted save never leaves a torn file; weight files of an earlier save that no
    longer belong (a sharded checkpoint replaced by one file, or by fewer shards) are removed after the
    new ones are in place, the old index first, so loading never reads a stale shard."""
    from safetensors.torch import save_file
    state = {**official_state(model), **(extra_tensors or {})}
    shards = [[]]
    for key in state:  # fill shards in order up to max_shard_bytes
        size = sum(state[k].nbytes for k in shards[-1])
        if max_shard_bytes and shards[-1] and size + state[key].nbytes > max_shard_bytes:
            shards.append([])
        shards[-1].append(key)
    stale = checkpoint_names(folder)
    os.makedirs(folder, exist_ok=True)

    def write(name, fn):
        tmp = os.path.join(folder, name + ".tmp")
        fn(tmp)
        os.replace(tmp, os.path.join(folder, name))

    def dump(obj):
        def fn(p):
            with open(p, "w") as f:
                json.dump(obj, f, indent=2)
        return fn
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, keys in zip(names, shards):
        write(name, lambda p, keys=keys: save_file({k: state[k] for k in keys}, p, metadata={"format": "pt"}))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in state.values())},
                 "weight_map": {k: n for n, keys in zip(names, shards) for k in keys}}
        write("model.safetensors.index.json", dump(index))
        names.append("model.safetensors.index.json")
    write("config.json", dump({**config_to_hf(model.config), **(extra_config or {})}))
    for name in sorted(stale - set(names), key=lambda n: not n.endswith(".index.json")):  # the index first
        os.remove(os.path.join(folder, name))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Load a LLaDA/SDAR checkpoint, run one forward, print shapes.")
    ap.add_argument("model", help="local folder or Hugging Face repo id, e.g. GSAI-ML/LLaDA-8B-Instruct")
    ap.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: the checkpoint's dtype on CUDA, float32 on CPU")
    args = ap.parse_args()
    # a bad checkpoint is one line naming the file and the field or tensor
    m = or_exit(from_pretrained, args.model, args.device, getattr(torch, args.dtype) if args.dtype else None)
    n = sum(p.numel() for p in m.parameters())
    ids = torch.tensor([[m.config.mask_token_id] * 8], device=m.lm_head.weight.device)
    with torch.no_grad():
        logits, h = m(ids, return_hidden=True)
    print(f"{m.config.family}: {n:,} parameters; logits {tuple(logits.shape)}, hidden {tuple(h.shape)}")
