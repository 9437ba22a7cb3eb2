"""Input gradient: one transposed conv of the gate gradients over all B*T frames.

    dx[frame, q, c] = sum_g xmask[g][b, q, c] * sum_{tap, f} dgates[frame, p(q, tap), g*F + f]
                                                           * kernel[tap, c, g*F + f]
with p(q, tap) = (q + pad - tap * dil) / stride where that divides exactly and lands inside the
output. GEMM view: M = B*T*D*H*W (input pixels), N = C_in, K = 4 * KD*KH*KW*F, run gate by gate so
each gate's partial sum can take its input-dropout mask (HAS_DROPOUT; xmask (4, B, D, H, W, C)).
"""

import triton
import triton.language as tl

from .im2col import split_rows, tconv_gather, tconv_weight_tile

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_C=16, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_C=16, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_C=32, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_C=64, BLOCK_K=32, num_warps=4, num_stages=3),
]


@triton.jit
def input_grad_kernel(
    dg_ptr, w_ptr, xmask_ptr, stride_xmask_gate, dx_ptr,
    M, T, C, D, H, W, P_in, F, Do, Ho, Wo, Po,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    frame, qd, qh, qw = split_rows(rows, P_in, H, W)
    frame = frame.to(tl.int64)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tile_mask = row_mask[:, None] & (cs < C)[None, :]
    N = 4 * F

    K_GATE = KD * KH * KW * F
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for gate in tl.static_range(4):
        part = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for k0 in range(0, K_GATE, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            a = tconv_gather(dg_ptr, frame * Po * N, qd, qh, qw, row_mask, ks, K_GATE, F,
                             gate * F, N, Do, Ho, Wo, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
            w = tconv_weight_tile(w_ptr, ks, cs, K_GATE, C, F, gate * F, N)
            part = tl.dot(a, w, part, input_precision=DOT_PRECISION)
        if HAS_DROPOUT:
            # the sample's mask pixel: frame (b, t) -> b, pixel q = rows % P_in
            m_offs = (tl.full((), gate, tl.int64) * stride_xmask_gate + (frame // T) * P_in * C
                      + (rows % P_in) * C)[:, None] + cs[None, :]
            part *= tl.load(xmask_ptr + m_offs, mask=tile_mask, other=0.0).to(tl.float32)
        acc += part

    out_offs = rows.to(tl.int64)[:, None] * C + cs[None, :]
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=tile_mask)
