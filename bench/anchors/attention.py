"""Attention forward, non-causal, FlashAttention-2's algorithm (one program per BLOCK_M query
rows of one head; K and V streamed in BLOCK_N tiles with an online softmax in base 2): the
algorithm and autotune set of Triton's fused-attention tutorial (triton-lang/triton
python/tutorials/06-fused-attention.py, ``_attn_fwd``), written anew here. q, k, v, o:
(B, H, S, D) contiguous."""

import triton
import triton.language as tl

# the tutorial's forward autotune set (its Hopper variant): BLOCK_M 64 / 128, BLOCK_N 32 / 64 /
# 128, 3 / 4 stages, 4 / 8 warps (BLOCK_M 64 with 8 warps left out: one warpgroup's rows)
CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, num_stages=s, num_warps=w)
           for bm in (64, 128) for bn in (32, 64, 128) for s in (3, 4) for w in (4, 8)
           if not (bm == 64 and w == 8)]


@triton.jit
def attention_forward_kernel(q, k, v, o, scale, S, H: tl.constexpr, D: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block = tl.program_id(0)
    head = tl.program_id(1)  # batch * H + head
    base = head.to(tl.int64) * S * D
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    d = tl.arange(0, D)
    queries = tl.load(q + base + rows[:, None] * D + d[None, :])
    qk_scale = scale * 1.44269504  # exp(x) = exp2(x * log2(e))
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    for start in range(0, S, BLOCK_N):
        keys = tl.load(k + base + (start + cols)[None, :] * D + d[:, None])
        s = tl.dot(queries, keys) * qk_scale
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        values = tl.load(v + base + (start + cols)[:, None] * D + d[None, :])
        acc = tl.dot(p.to(values.dtype), values, acc * alpha[:, None])
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o + base + rows[:, None] * D + d[None, :], acc.to(o.dtype.element_ty))


def launch(batch, heads, seq, head_dim, dtype, config):
    """(kernel, args, kwargs, grid, useful FLOP) of one launch on CPU tensors (nothing runs);
    seq must be a multiple of the config's blocks (the published sizes are)."""
    import torch

    q, k, v, o = (torch.empty(batch, heads, seq, head_dim, dtype=dtype) for _ in range(4))
    grid = (triton.cdiv(seq, config["BLOCK_M"]), batch * heads)
    args = (q, k, v, o, head_dim ** -0.5, seq)
    kwargs = dict(config, H=heads, D=head_dim)
    return attention_forward_kernel, args, kwargs, grid, 4.0 * batch * heads * seq * seq * head_dim
