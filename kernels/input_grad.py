"""Input gradient: one transposed conv of the gate gradients over all B*T frames.

    dx[frame, q, c] = sum_{tap, n} dgates[frame, p(q, tap), n] * kernel[tap, c, n]
with p(q, tap) = (q + pad - tap * dil) / stride where that divides exactly and lands inside the
output. GEMM view: M = B*T*D*H*W (input pixels), N = C_in, K = KD*KH*KW*4F.
"""

import triton
import triton.language as tl

from .im2col import split_rows, tconv_gather, tconv_weight_tile

# (BLOCK_M, BLOCK_C, BLOCK_K, num_warps)
DEFAULT_CONFIG = (64, 16, 64, 4)


@triton.jit
def input_grad_kernel(
    dg_ptr, w_ptr, dx_ptr,
    M, C, D, H, W, P_in, N, Do, Ho, Wo, Po,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    frame, qd, qh, qw = split_rows(rows, P_in, H, W)
    frame = frame.to(tl.int64)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)

    K_TOTAL = KD * KH * KW * N
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, K_TOTAL, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tconv_gather(dg_ptr, frame * Po * N, qd, qh, qw, row_mask, ks, K_TOTAL, N, Do, Ho, Wo,
                         KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
        w = tconv_weight_tile(w_ptr, ks, cs, K_TOTAL, C, N)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)

    out_offs = rows.to(tl.int64)[:, None] * C + cs[None, :]
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty),
             mask=row_mask[:, None] & (cs < C)[None, :])
