"""Input projection: the input-to-gates conv of all B*T frames as one implicit GEMM.

    xg[frame, p, g*F + f] = bias[g*F + f] + sum_k im2col(x * xmask[g])[frame, p, k] * W[k, g*F + f]
GEMM view: M = B*T*Do*Ho*Wo, N = 4F, K = KD*KH*KW*C_in. It does not depend on the state, so it
runs once before the time loop and the step kernel only adds ``xg`` in its epilogue.
x may be a strided (B, T) view: frame (b, t) starts at b * stride_xb + t * stride_xt.
Column tiles stay inside one gate so that the gate's input-dropout mask xmask[g]
(4, B, D, H, W, C_in; constant over time) can scale the A tile (HAS_DROPOUT).
"""

import triton
import triton.language as tl

from .im2col import conv_gather, gate_columns, split_rows

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
]


@triton.jit
def input_projection_kernel(
    x_ptr, stride_xb, stride_xt, T,
    w_ptr, bias_ptr, xmask_ptr, stride_mask_gate, out_ptr,
    M, F, C, D, H, W, Po, Ho, Wo,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    frame, od, oh, ow = split_rows(rows, Po, Ho, Wo)
    frame = frame.to(tl.int64)
    x_base = (frame // T) * stride_xb + (frame % T) * stride_xt
    gate, cols, col_mask = gate_columns(tl.program_id(1), F, BLOCK_N)
    N = 4 * F
    if HAS_DROPOUT:
        mask_base = gate.to(tl.int64) * stride_mask_gate + (frame // T) * (D * H * W * C)

    K_TOTAL = KD * KH * KW * C
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K_TOTAL, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = conv_gather(x_ptr, x_base, od, oh, ow, row_mask, ks, K_TOTAL, C, D, H, W,
                        KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
        if HAS_DROPOUT:
            a = a * conv_gather(xmask_ptr, mask_base, od, oh, ow, row_mask, ks, K_TOTAL, C, D, H,
                                W, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
        b = tl.load(w_ptr + ks[:, None] * N + cols[None, :],
                    mask=(ks < K_TOTAL)[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
