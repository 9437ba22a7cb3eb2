"""Input projection: the input-to-gates conv of all B*T frames as one implicit GEMM.

    xg[frame, p, g*F + f] = bias[g*F + f] + sum_k im2col(x * xmask[g])[frame, p, k] * W[k, g*F + f]
GEMM view: M = B*T*Do*Ho*Wo, N = 4F, K = KD*KH*KW*C_in. It does not depend on the state, so it
runs once before the time loop and the step kernel only adds ``xg`` in its epilogue.
x may be a strided (B, T) view: frame (b, t) starts at b * stride_xb + t * stride_xt
(FRAMES_CONTIGUOUS: stride_xb == T * stride_xt, frame f at f * stride_xt).

Column tiles (constexpr GATE_TILES):
    False  (default) plain GEMM tiles over all N = 4F columns (a tile may span gates): wide
           wgmma, every column used.
    True   tiles stay inside one gate, so that the gate's input-dropout mask xmask[g]
           (4, B, D, H, W, C_in; constant over time) can scale the A tile (HAS_DROPOUT needs it;
           also the first design, kept for comparison with TAP_MAJOR False).
The K loop is conv_k_loop's single pipelined loop; row index math (frame, pixel) is done once
per tile, outside it, and with SPATIAL_TILES (a TILE_H x TILE_W block of one frame per program)
without any runtime division per row. C (C_in) and F are constexpr: index math divides by
constants only.
"""

import triton
import triton.language as tl

from .conv_k_loop import conv_k_loop
from .im2col import gate_columns, spatial_block, split_rows

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    # narrow problems (4F or, with per-gate tiles, F below 128)
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4),
    # all 4F = 256 columns of a 128-row tile: each tap of x is read once per column tile, and
    # four stages hide the short K loop's latency (192 KiB of 16-bit tiles; fp32: pruned)
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=16, num_stages=4),
]


@triton.jit
def input_projection_kernel(
    x_ptr, stride_xb, stride_xt, T,
    w_ptr, bias_ptr, xmask_ptr, stride_mask_gate, out_ptr,
    M, FRAMES, D, H, W, Do, Ho, Wo, Po,
    F: tl.constexpr, C: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_DROPOUT: tl.constexpr, GATE_TILES: tl.constexpr,
    FRAMES_CONTIGUOUS: tl.constexpr, SPATIAL_TILES: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    TAP_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    N: tl.constexpr = 4 * F
    if SPATIAL_TILES:
        # one TILE_H x TILE_W block of one frame: no runtime division per row
        frame_s, _, _, _, frame, od, oh, ow, row_mask = spatial_block(FRAMES, Do, Ho, Wo,
                                                                       TILE_H, TILE_W)
        rows = frame * Po + (od * Ho + oh) * Wo + ow
        # the frame's sample: one scalar 32-bit division per program
        sample = tl.zeros_like(oh) + frame_s // T
        if FRAMES_CONTIGUOUS:
            x_base = frame * stride_xt
        else:
            # a (B, T) view with a sample stride of its own (a time chunk of x): the frame's
            # (b, t), int64 only after the (32-bit) division
            x_base = (sample.to(tl.int64) * stride_xb
                      + (frame_s - sample * T).to(tl.int64) * stride_xt)
    else:
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        frame32, od, oh, ow = split_rows(rows, Po, Ho, Wo)
        frame = frame32.to(tl.int64)
        # 32-bit division by T, int64 after it: a 64-bit one is a runtime routine call
        sample = frame32 // T
        if FRAMES_CONTIGUOUS:
            x_base = frame * stride_xt  # frames evenly spaced: no division by T
        else:
            x_base = (sample.to(tl.int64) * stride_xb
                      + (frame32 - sample * T).to(tl.int64) * stride_xt)
    if GATE_TILES:
        gate, cols, col_mask = gate_columns(tl.program_id(1), F, BLOCK_N)
    else:
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_DROPOUT:
        # this tile's gate's input-dropout mask, constant over time: the sample's frame
        mask_base = (gate.to(tl.int64) * stride_mask_gate
                     + sample.to(tl.int64) * (D * H * W * C))
    else:
        mask_base = x_base
    acc = conv_k_loop(acc, x_ptr, x_base, od, oh, ow, row_mask, C, D, H, W, w_ptr, cols,
                      col_mask, N, xmask_ptr, mask_base, HAS_DROPOUT,
                      KD, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW,
                      TAP_MAJOR, DOT_PRECISION, BLOCK_K)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_offs = rows.to(tl.int64)[:, None] * N + cols[None, :]  # rows may pass 2**31 / N
    # xg is read once, by a later step: keep it from pushing the state out of L2
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :], eviction_policy="evict_first")
