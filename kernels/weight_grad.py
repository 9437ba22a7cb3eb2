"""Weight (and bias) gradient of a conv as one split reduction over frames x pixels.

    dW[k, g*F + f] = sum_{frame, p} im2col(src * smask[g])[frame, p, k] * dgates[frame, p, g*F + f]
    db[n]          = sum_{frame, p} dgates[frame, p, n]
Serves both ``kernel`` (src = x, the input conv's geometry) and ``recurrent_kernel``
(src = h_{t-1}, stride 1 "same"). Rows r = (frame, p) are split into SPLIT contiguous ranges;
each program writes fp32 partials (SPLIT, K, N) that the launcher sums: deterministic, no atomics.
src and dgates may be strided (B, T) views: frame (b, t) starts at b * stride_b + t * stride_t.
Column tiles stay inside one gate so the gate's dropout mask smask[g] (4, B, D, H, W, C;
constant over time) can scale the src tile (HAS_DROPOUT).
"""

import triton
import triton.language as tl

from .im2col import conv_gather, gate_columns, split_rows

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_R=64, BLOCK_K=32, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_R=128, BLOCK_K=32, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_R=64, BLOCK_K=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_R=128, BLOCK_K=64, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_R=64, BLOCK_K=32, BLOCK_N=32, num_warps=4, num_stages=3),
]


@triton.jit
def weight_grad_kernel(
    src_ptr, stride_sb, stride_st,
    dg_ptr, stride_gb, stride_gt,
    smask_ptr, stride_smask_gate,
    dw_ptr, db_ptr,
    T, R_TOTAL, ROWS_PER_SPLIT,
    C, D, H, W, Po, Ho, Wo, F,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_BIAS_GRAD: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(2)
    K_TOTAL = KD * KH * KW * C
    N = 4 * F
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    gate, cols, col_mask = gate_columns(tl.program_id(1), F, BLOCK_N)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    r_start = pid_s * ROWS_PER_SPLIT
    r_end = tl.minimum(r_start + ROWS_PER_SPLIT, R_TOTAL)
    for r0 in range(r_start, r_end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_mask = rows < r_end
        frame, od, oh, ow = split_rows(rows, Po, Ho, Wo)
        frame = frame.to(tl.int64)
        fb = frame // T
        ft = frame % T
        a = conv_gather(src_ptr, fb * stride_sb + ft * stride_st, od, oh, ow, row_mask, ks,
                        K_TOTAL, C, D, H, W, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
        if HAS_DROPOUT:
            mask_base = gate.to(tl.int64) * stride_smask_gate + fb * (D * H * W * C)
            a = a * conv_gather(smask_ptr, mask_base, od, oh, ow, row_mask, ks, K_TOTAL, C, D, H,
                                W, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
        g_offs = (fb * stride_gb + ft * stride_gt + (rows % Po) * N)[:, None] + cols[None, :]
        g = tl.load(dg_ptr + g_offs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(tl.trans(a), g, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS_GRAD:
            bias_acc += tl.sum(g.to(tl.float32), axis=0)

    out_offs = pid_s.to(tl.int64) * K_TOTAL * N + ks[:, None] * N + cols[None, :]
    tl.store(dw_ptr + out_offs, acc, mask=(ks < K_TOTAL)[:, None] & col_mask[None, :])
    if HAS_BIAS_GRAD:
        if pid_k == 0:
            tl.store(db_ptr + pid_s * N + cols, bias_acc, mask=col_mask)
