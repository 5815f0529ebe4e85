"""
LLaDA2.0-mini (inclusionAI, `model_type` "llada2_moe", the Ling-2.0 architecture): the block-diffusion
mixture of experts that Elastic-dLLM augments. 16B parameters, 1.4B of them active per token.

The model is model.py's Transformer (embedding, attention, RMSNorm, RoPE, KV cache, forward: everything a
decoder or method calls) with the SwiGLU MLP of every layer from `first_k_dense_replace` on replaced by a
`SparseMoE`. What else differs from SDAR is configuration (model.llada2_config): RoPE on the first half of
each head only (`partial_rotary_factor` 0.5), the RMSNorm gain in the activation dtype, and the checkpoint's
names (model.LLADA2_KEYS), whose fused `query_key_value` matrix and per-expert tensors `assemble` turns into
the model's separate q/k/v and stacked experts once, at load time.

A MoE layer, per token h (the post-attention-norm hidden state), as the Hugging Face remote code
`modeling_llada2_moe.py` does it (LLaDA2MoeGate, LLaDA2MoeSparseMoeBlock.moe_infer):
    s = sigmoid(W_g h)                     E expert scores, in fp32 whatever the activations' dtype
    experts in n_group contiguous groups; a group scores the sum of its 2 best (s + expert_bias);
    keep the topk_group best groups, take the top_k experts of s + expert_bias inside them
    w_j = s_j / (sum_j s_j + 1e-20) * routed_scaling_factor    the bias only selects (no sum for top_k 1)
    y = sum_j w_j expert_j(h)  (in fp32, cast back)  +  shared_expert(h)
with expert(h) = down(silu(gate(h)) * up(h)).

How it differs from the official code:
  - the routed experts run without a host sync: the official loop over experts reads the token counts on
    the host (`tokens_per_expert.cpu()`) and runs one small matmul per expert that got tokens. Here the
    (token, expert) pairs are sorted by expert and each of the three projections is one grouped matmul
    (F.grouped_mm) whose group ends come from a searchsorted on the device, so the forward compiles with
    torch.compile(fullgraph=True). F.grouped_mm takes bf16 (the checkpoint's dtype, what a GPU runs);
    other dtypes (fp32 on the CPU: the tests, the parity check) run every expert on every token and keep
    each token's chosen outputs, E / top_k times the work, the same numbers up to the matmuls' rounding.
    Either way the combine is the official one: fp32, in the router's top-k order.
  - why a grouped matmul at decoding shapes: a block-diffusion step feeds one block (32 tokens) per sample,
    so N = 32 B tokens make 8 N (token, expert) pairs over 256 experts. Decoding is bound by reading the
    weights. Gathering each token's expert weights (gpt-fast's Mixtral: one matrix per pair, 256 matrices,
    1.6 GB per layer at B = 1) reads an expert once per token that chose it; running all experts reads all
    256. The grouped matmul reads each expert that got a token once (about 160 of 256 for 32 tokens routed
    at random; 8 for a single token) and does exactly the 8 N rows of work, in three matmul kernels.
  - no training path (the official `self.training` branch), no biases (the real checkpoint has none; one
    that stores `dense.bias` or a q/k/v bias is refused), no saving.
"""
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import model as M


def route(h, weight, expert_bias, moe):
    """LLaDA2MoeGate for hidden states h (N, C): each token's top_k experts (N, k), in torch.topk's order,
    and their weights (N, k) in fp32."""
    N = h.shape[0]
    scores = F.linear(h.float(), weight.float()).sigmoid()                 # (N, E), always fp32
    biased = scores + expert_bias                                           # for selection only
    groups = biased.view(N, moe.n_group, -1)                                # (N, G, E/G), contiguous groups
    group_scores = groups.topk(2, dim=-1).values.sum(-1)                    # (N, G): a group's 2 best experts
    best = group_scores.topk(moe.topk_group, dim=-1, sorted=False).indices  # (N, topk_group)
    keep = torch.zeros_like(group_scores).scatter_(1, best, 1).bool()
    biased = biased.masked_fill(~keep[..., None].expand_as(groups).reshape(N, -1), float("-inf"))
    idx = biased.topk(moe.top_k, dim=-1).indices                            # (N, k)
    w = scores.gather(1, idx)                                               # the un-biased scores
    if moe.top_k > 1:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return idx, w * moe.routed_scaling_factor


def experts_grouped(x, idx, gate_proj, up_proj, down_proj):
    """(N, k, C) outputs of each token's k experts: the (token, expert) pairs sorted by expert, then one
    grouped matmul per projection. Reads every chosen expert once; no host sync."""
    N, k = idx.shape
    order = idx.flatten().argsort(stable=True)                              # (N k,) pairs, by expert
    experts = torch.arange(gate_proj.shape[0], device=x.device)
    ends = torch.searchsorted(idx.flatten()[order], experts, right=True).int()  # (E,) where each group ends
    xs = x[order // k]                                                      # (N k, C) each pair's token
    mm = lambda a, w: F.grouped_mm(a, w.transpose(1, 2), offs=ends)         # rows of group e times w[e]^T
    ys = mm(F.silu(mm(xs, gate_proj)) * mm(xs, up_proj), down_proj)         # (N k, C)
    out = torch.empty_like(ys)
    out[order] = ys                                                         # back to (token, choice) order
    return out.view(N, k, -1)


def experts_dense(x, idx, gate_proj, up_proj, down_proj):
    """(N, k, C) as experts_grouped, for dtypes F.grouped_mm does not take: every expert on every token,
    then each token's chosen outputs."""
    a = F.silu(torch.einsum("nc,eic->nei", x, gate_proj)) * torch.einsum("nc,eic->nei", x, up_proj)
    y = torch.einsum("nei,eci->nec", a, down_proj)                          # (N, E, C)
    return y.gather(1, idx[..., None].expand(-1, -1, y.shape[-1]))


class Router(nn.Module):
    """The `mlp.gate` of a MoE layer: its (E, C) weight and the (E,) expert_bias."""

    def __init__(self, moe, n_embd):
        super().__init__()
        self.moe = moe
        self.weight = nn.Parameter(torch.empty(moe.n_experts, n_embd))
        # a buffer in the official code (load balancing sets it, not gradients); a parameter here, so that
        # what allocates and initialises the weights (to_empty, init_weights in bench.py) covers it too
        self.expert_bias = nn.Parameter(torch.zeros(moe.n_experts), requires_grad=False)

    def forward(self, h):
        return route(h, self.weight, self.expert_bias, self.moe)


class Experts(nn.Module):
    """A layer's routed experts, stacked: expert e is down_proj[e] (silu(gate_proj[e] x) * up_proj[e] x)."""

    def __init__(self, moe, n_embd):
        super().__init__()
        E, I = moe.n_experts, moe.intermediate_size
        self.gate_proj = nn.Parameter(torch.empty(E, I, n_embd))
        self.up_proj = nn.Parameter(torch.empty(E, I, n_embd))
        self.down_proj = nn.Parameter(torch.empty(E, n_embd, I))

    def forward(self, x, idx):
        # F.grouped_mm wants bf16 and 16-byte aligned rows (8 bf16 values); real shapes are 2048 and 512
        grouped = x.dtype == torch.bfloat16 and x.shape[-1] % 8 == 0 and self.gate_proj.shape[1] % 8 == 0
        run = experts_grouped if grouped else experts_dense
        return run(x, idx, self.gate_proj, self.up_proj, self.down_proj)


class SparseMoE(nn.Module):
    """LLaDA2MoeSparseMoeBlock: routed experts plus the always-on shared expert(s), for (B, T, C) inputs."""

    def __init__(self, cfg):
        super().__init__()
        moe = cfg.moe
        self.gate = Router(moe, cfg.n_embd)
        self.experts = Experts(moe, cfg.n_embd)
        self.shared_experts = M.MLP(replace(cfg, intermediate_size=moe.intermediate_size * moe.n_shared)) \
            if moe.n_shared else None

    def forward(self, x):
        B, T, C = x.shape
        h = x.reshape(B * T, C)
        idx, w = self.gate(h)
        y = self.experts(h, idx)                                            # (N, k, C) in x's dtype
        y = (y.float() * w[..., None]).sum(1).to(x.dtype).view(B, T, C)     # the official combine
        return y if self.shared_experts is None else y + self.shared_experts(x)


def build(cfg):
    """A LLaDA2.0 model for a model.Config with `moe` set (on whatever device is current; from_pretrained and
    bench.py build on the meta device): the Transformer, its MLPs from layer first_dense on made MoE."""
    net = M.Transformer(cfg)
    for layer in net.layers[cfg.moe.first_dense:]:
        layer.mlp = SparseMoE(cfg)
    return net

# -----------------------------------------------------------------------------
# Loading: the official checkpoint fuses q/k/v and stores every expert apart


def stored_shapes(cfg, want):
    """The model's {name: shape} as an official checkpoint stores it (the names of model.LLADA2_KEYS): one
    fused q/k/v matrix per layer, three matrices per expert."""
    want = dict(want)
    for i in range(cfg.n_layer):
        a = f"layers.{i}.self_attn."
        rows = sum(want.pop(f"{a}{p}_proj.weight")[0] for p in "qkv")
        want[a + "query_key_value.weight"] = (rows, cfg.n_embd)
        for p in M.SWIGLU if i >= cfg.moe.first_dense else ():
            E, *shape = want.pop(f"layers.{i}.mlp.experts.{p}")
            want.update({f"layers.{i}.mlp.experts.{e}.{p}": tuple(shape) for e in range(E)})
    return want


def assemble(cfg, state):
    """Checkpoint tensors -> the model's: split each fused q/k/v matrix (rows: the query heads, then the key
    heads, then the value heads; views, no copy) and stack each layer's experts."""
    rows = [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim]
    for i in range(cfg.n_layer):
        a = f"layers.{i}.self_attn."
        qkv = state.pop(a + "query_key_value.weight").split(rows)
        state.update({f"{a}{p}_proj.weight": t for p, t in zip("qkv", qkv)})
        for p in M.SWIGLU if i >= cfg.moe.first_dense else ():
            e = f"layers.{i}.mlp.experts."
            state[e + p] = torch.stack([state.pop(f"{e}{j}.{p}") for j in range(cfg.moe.n_experts)])
    return state


if __name__ == "__main__":
    # the real shape on the meta device: no memory, no weights
    with torch.device("meta"):
        net = build(M.PRESETS["llada2-mini"])
    cfg, moe = net.config, net.config.moe
    total = sum(p.numel() for p in net.parameters())
    idle = (moe.n_experts - moe.top_k) * sum(p[0].numel() for p in net.layers[-1].mlp.experts.parameters())
    active = total - idle * (cfg.n_layer - moe.first_dense)
    tables = net.embed_tokens.weight.numel() + net.lm_head.weight.numel()
    print(f"llada2-mini: {total / 1e9:.2f}B parameters, {active / 1e9:.2f}B active per token "
          f"({(active - tables) / 1e9:.2f}B without the embedding and the LM head)")
