"""Input gradient: the transposed input conv of the gate gradients over all B*T frames.

    dx[frame, q, c] = sum_g xmask[g][b, q, c] * sum_{tap, f} dgates[frame, p(q, tap), g*F + f]
                                                           * kernel[tap * C + c, g*F + f]
where output pixel p feeds input pixel q through a tap when q = p * S - P + tap * L per dim
(S stride, P padding before, L dilation; the library never combines S > 1 with L > 1).

Sub-pixel decomposition. Along a dim, input coordinates q = phi + S * j of one phase
phi = q mod S are reached exactly by the taps t = t0 + i * S (t0 = (phi + P) mod S, i < count),
from output coordinate p = j + off0 - i * L (off0 = (phi + P) // S); the other taps miss them
for every q of the phase. So each of the S_D * S_H * S_W phases is a dense implicit GEMM of its
own: rows j of the phase's input sub-grid (a program owns rows of ONE phase, grid axis 2), a K
loop over only that phase's taps (``phase_taps``) x blocks of the 4F gate channels, no MMA on
taps that miss, no per-element division. A phase without taps (k < S) writes zeros. Stride 1
is the one-phase case: a stride-1 dilated conv of dgates with the flipped kernel (taps
t = 0..k-1 read p = q + P - t * L). The K loop walks the phase's taps with loop-carried
counters (an odometer: channel block, tap w, h, d), so a step costs no division at all.

Two kernels (the launcher picks by C_in, threshold launchers.INPUT_GRAD_GEMM_MIN_CHANNELS):
    input_grad_kernel         GEMM view per phase: M = rows, N = C_in (BLOCK_C), K = taps x 4F.
                              A = dgates rows at the tap's shift (loads contiguous along the
                              gate channels), B = kernel2d[(tap, c), n] read as (n, c): K-major,
                              as TF32 wgmma needs, so no transposed copy of the weight. Without
                              dropout one K loop over taps x 4F (one accumulator); with input
                              dropout (HAS_DROPOUT; xmask (4, B, D, H, W, C) constant over time)
                              one K loop per gate over taps x F, whose partial sum takes the
                              gate's mask before it is added.
    input_grad_reduce_kernel  small C_in (C_in = 1 would use 1 of the 16 columns of the
                              narrowest MMA): per input channel (grid axis 1) a reduction over
                              taps x 4F on CUDA cores, fp32 [BLOCK_M, BLOCK_K] partial products
                              accumulated elementwise and summed along K once at the end. Its K
                              loop runs taps fastest inside a channel block, so the dgates halo
                              of a tile (tile + k - 1 pixels per dim x BLOCK_K channels) is
                              re-read from L1 by the next taps.
Rows (constexpr SPATIAL_TILES): a TILE_H x TILE_W block of one (frame, d) slice of the phase's
sub-grid, row coordinates by constant shifts (``im2col.spatial_block``); otherwise BLOCK_M
consecutive rows of the phase's flattened (frame, j) grid (a 32-bit division per row, once per
tile). The phase sub-grids of one launch share the size of phase 0's (ceil(size / S) per dim);
rows past a phase's own size are masked.
Shapes: dgates (B, T, Do, Ho, Wo, 4F) contiguous; kernel2d (KD*KH*KW*C, 4F) gate-major,
row-major; dx (B, T, D, H, W, C), frames contiguous, samples ``stride_dx`` elements apart (a
time chunk's frames of the sequence's dx). C and F are constexpr (divisions by constants only).
"""

import triton
import triton.language as tl

from .im2col import spatial_block, split_rows

# Autotuning candidates of each kernel (convlstm_triton.tuning picks one per shape); the first
# is the default, used untuned and under the interpreter. Every block dim >= 16, as tl.dot
# needs on a GPU. With dropout masks the launcher keeps GEMM configs of at most 32 fp32
# accumulator elements per thread: the gate's partial sum and the total are both live.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_C=64, BLOCK_K=64, num_warps=4, num_stages=3),
    # fp32 (TF32 dots): BLOCK_K = 32 keeps two CTAs of 96 KiB stage buffers per SM
    dict(BLOCK_M=128, BLOCK_C=64, BLOCK_K=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_C=128, BLOCK_K=32, num_warps=8, num_stages=3),  # C_in >= 128
    dict(BLOCK_M=128, BLOCK_C=32, BLOCK_K=64, num_warps=4, num_stages=3),  # 16 <= C_in <= 32
]
# The reduction has no MMA for the pipeliner to feed: one stage. Its accumulator is
# [BLOCK_M, BLOCK_K] fp32; 64 elements per thread (and a 64-element fp32 A tile) is the most
# that stays clear of spills with dropout masks.
REDUCE_CONFIGS = [
    dict(BLOCK_M=64, BLOCK_K=64, num_warps=4, num_stages=1),
    dict(BLOCK_M=32, BLOCK_K=128, num_warps=4, num_stages=1),
]


@triton.jit
def phase_taps(phi, K: tl.constexpr, S: tl.constexpr, P: tl.constexpr):
    """One dim of a phase: input coordinates q = phi + S * j are reached by the taps
    t = t0 + i * S for i < count, from output coordinate p = j + off0 - i * L (L = dilation;
    S = 1 or L = 1). Returns (t0, count, off0); count = 0 when t0 >= K."""
    t0 = (phi + P) % S
    return t0, (K - t0 + S - 1) // S, (phi + P) // S


@triton.jit
def phase_rows(FRAMES, D, H, W, SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
               SPATIAL_TILES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
               BLOCK_M: tl.constexpr):
    """This program's phase (program id 2) and rows: (phase coordinates pd, ph, pw; per row
    frame (int32), sub-grid coordinates jd, jh, jw, row_ok). Input pixel q = phi + S * j."""
    phase = tl.program_id(2)
    pd = phase // (SH * SW)
    ph = (phase // SW) % SH
    pw = phase % SW
    JD = tl.cdiv(D, SD)  # phase 0's sub-grid, the largest: the grid's row tiles cover it
    JH = tl.cdiv(H, SH)
    JW = tl.cdiv(W, SW)
    if SPATIAL_TILES:
        n_s, _, _, _, _, jd, jh, jw, row_ok = spatial_block(FRAMES, JD, JH, JW, TILE_H, TILE_W)
        frame = tl.zeros((BLOCK_M,), tl.int32) + n_s
    else:
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        frame, jd, jh, jw = split_rows(rows, JD * JH * JW, JH, JW)
        row_ok = rows < FRAMES * (JD * JH * JW)
    # this phase's own sub-grid: ceil((size - phi) / S) per dim
    row_ok = (row_ok & (jd < (D - pd + SD - 1) // SD) & (jh < (H - ph + SH - 1) // SH)
              & (jw < (W - pw + SW - 1) // SW))
    return pd, ph, pw, frame, jd, jh, jw, row_ok


@triton.jit
def _next(i, n, carry):
    """One digit of the K loop's odometer: i advanced by ``carry`` (bool), wrapping at n;
    and the carry into the next digit."""
    i = tl.where(carry, i + 1, i)
    wrap = i >= n
    return tl.where(wrap, 0, i), wrap


@triton.jit
def _tap_step(i_d, i_h, i_w, jd, jh, jw, row_ok, t0d, t0h, t0w, odd, odh, odw, Do, Ho, Wo,
              KH: tl.constexpr, KW: tl.constexpr, SD: tl.constexpr, SH: tl.constexpr,
              SW: tl.constexpr, LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr):
    """The phase's tap (i_d, i_h, i_w): its kernel tap index, the source pixel shift of the rows
    (output pixel p = j + offset per dim, flattened) and which rows it reaches."""
    tap = ((t0d + i_d * SD) * KH + t0h + i_h * SH) * KW + t0w + i_w * SW
    od = odd - i_d * LD
    oh = odh - i_h * LH
    ow = odw - i_w * LW
    # 0 <= j + offset < size as one unsigned compare per dim
    ok = (row_ok & ((jd + od).to(tl.uint32) < Do) & ((jh + oh).to(tl.uint32) < Ho)
          & ((jw + ow).to(tl.uint32) < Wo))
    return tap, (od * Ho + oh) * Wo + ow, ok


@triton.jit
def _phase_k_loop(acc, dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo, w_ptr, cs, c_ok,
                  n0, taps_d, taps_h, taps_w,
                  NG: tl.constexpr, N: tl.constexpr, C: tl.constexpr,
                  KH: tl.constexpr, KW: tl.constexpr,
                  SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc [rows, cs] += sum over the phase's taps x gate channels [n0, n0 + NG) of
    dgates[row's source pixel, n] * kernel2d[tap * C + c, n]: one pipelined loop, tap-major
    (K step = tap x BLOCK_K channels). taps_*: (t0, count, off0) of each dim (phase_taps)."""
    t0d, nd, odd = taps_d
    t0h, nh, odh = taps_h
    t0w, nw, odw = taps_w
    C_BLOCKS: tl.constexpr = (NG + BLOCK_K - 1) // BLOCK_K
    ks = tl.arange(0, BLOCK_K)
    # B tile [BLOCK_K (n), cols (c)] = kernel2d[tap * C + c, n0 + k]: K-major (n contiguous)
    w_offs = ks[:, None] + (cs * N)[None, :]
    cb = tl.zeros((), tl.int32)
    i_d = tl.zeros((), tl.int32)
    i_h = tl.zeros((), tl.int32)
    i_w = tl.zeros((), tl.int32)
    for _ in range(0, nd * nh * nw * C_BLOCKS):
        tap, shift, ok = _tap_step(i_d, i_h, i_w, jd, jh, jw, row_ok, t0d, t0h, t0w, odd, odh,
                                   odw, Do, Ho, Wo, KH, KW, SD, SH, SW, LD, LH, LW)
        ch = n0 + cb * BLOCK_K
        if NG % BLOCK_K == 0:
            # no channel mask: constant along the channels, so runs load as vectors
            a_mask = ok[:, None]
            w_mask = c_ok[None, :]
        else:
            k_ok = cb * BLOCK_K + ks < NG
            a_mask = ok[:, None] & k_ok[None, :]
            w_mask = k_ok[:, None] & c_ok[None, :]
        a = tl.load(dg_ptr + src_rows[:, None] + (shift * N + ch + ks)[None, :], mask=a_mask,
                    other=0.0)
        w = tl.load(w_ptr + (tap * (C * N) + ch) + w_offs, mask=w_mask, other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        # advance: channel block, then tap w, h, d
        cb, carry = _next(cb, C_BLOCKS, True)
        i_w, carry = _next(i_w, nw, carry)
        i_h, carry = _next(i_h, nh, carry)
        i_d, carry = _next(i_d, nd, carry)
    return acc


@triton.jit
def _dx_frame(frame, T, stride_dx, frame_size, DX_CONTIGUOUS: tl.constexpr):
    """Offset (int64) of frame ``frame`` = b * T + t of the launch's (B, T) frames in dx,
    whose samples lie ``stride_dx`` elements apart: a time chunk's frames are written in place
    into the sequence's dx (stride_dx = T_sequence * frame_size), or into a dx of their own
    (``DX_CONTIGUOUS``: stride_dx = T * frame_size, no division; the division costs the
    dropout variant ~45 registers on sm_90, though no spills)."""
    if DX_CONTIGUOUS:
        return frame.to(tl.int64) * frame_size
    sample = frame // T
    return sample.to(tl.int64) * stride_dx + (frame - sample * T).to(tl.int64) * frame_size


@triton.jit
def input_grad_kernel(
    dg_ptr, w_ptr, xmask_ptr, stride_xmask_gate, dx_ptr, stride_dx,
    T, FRAMES, D, H, W, Do, Ho, Wo,
    C: tl.constexpr, F: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, DX_CONTIGUOUS: tl.constexpr, SPATIAL_TILES: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    N: tl.constexpr = 4 * F
    pd, ph, pw, frame, jd, jh, jw, row_ok = phase_rows(FRAMES, D, H, W, SD, SH, SW,
                                                       SPATIAL_TILES, TILE_H, TILE_W, BLOCK_M)
    taps_d = phase_taps(pd, KD, SD, PD)
    taps_h = phase_taps(ph, KH, SH, PH)
    taps_w = phase_taps(pw, KW, SW, PW)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cs < C
    # a row's source pixels are those of the j grid of the output frame, shifted per tap
    src_rows = (frame.to(tl.int64) * (Do * Ho * Wo) + (jd * Ho + jh) * Wo + jw) * N

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    q = ((pd + SD * jd) * H + ph + SH * jh) * W + pw + SW * jw  # input pixel of each row
    tile_mask = row_ok[:, None] & c_ok[None, :]
    if HAS_DROPOUT:
        # per-gate masks: each gate's partial sum (K = taps x F) takes its own mask
        m_rows = (frame // T).to(tl.int64) * (D * H * W * C) + q * C  # the sample's mask pixel
        for gate in range(4):  # a runtime loop: one copy of the K loop, not four
            part = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            part = _phase_k_loop(part, dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo,
                                 w_ptr, cs, c_ok, gate * F, taps_d, taps_h, taps_w, F, N, C,
                                 KH, KW, SD, SH, SW, LD, LH, LW, DOT_PRECISION, BLOCK_K)
            # the [rows, cols] offsets here, not before the loops: an int64 tile live through
            # the K loops would take two registers per element. int64 gate offset: 3 * stride
            # passes 2**31 for masks of over ~7e8 elements.
            gate_base = (tl.zeros((), tl.int64) + gate) * stride_xmask_gate
            m_offs = (gate_base + m_rows)[:, None] + cs[None, :]
            acc += part * tl.load(xmask_ptr + m_offs, mask=tile_mask, other=0.0).to(tl.float32)
    else:
        acc = _phase_k_loop(acc, dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo,
                            w_ptr, cs, c_ok, 0, taps_d, taps_h, taps_w, N, N, C,
                            KH, KW, SD, SH, SW, LD, LH, LW, DOT_PRECISION, BLOCK_K)

    out_frame = _dx_frame(frame, T, stride_dx, D * H * W * C, DX_CONTIGUOUS)
    out_offs = (out_frame + q * C)[:, None] + cs[None, :]
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _phase_reduce(dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo, w_ptr, c,
                  n0, taps_d, taps_h, taps_w,
                  NG: tl.constexpr, N: tl.constexpr, C: tl.constexpr,
                  KH: tl.constexpr, KW: tl.constexpr,
                  SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """[rows]: sum over the phase's taps x gate channels [n0, n0 + NG) of
    dgates[row's source pixel, n] * kernel2d[tap * C + c, n], on CUDA cores in fp32 (w_ptr: the
    launcher's fp32 copy of kernel2d). The K loop runs taps fastest within a channel block (the
    tile's dgates halo stays in L1)."""
    t0d, nd, odd = taps_d
    t0h, nh, odh = taps_h
    t0w, nw, odw = taps_w
    C_BLOCKS: tl.constexpr = (NG + BLOCK_K - 1) // BLOCK_K
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    cb = tl.zeros((), tl.int32)
    i_d = tl.zeros((), tl.int32)
    i_h = tl.zeros((), tl.int32)
    i_w = tl.zeros((), tl.int32)
    for _ in range(0, nd * nh * nw * C_BLOCKS):
        tap, shift, ok = _tap_step(i_d, i_h, i_w, jd, jh, jw, row_ok, t0d, t0h, t0w, odd, odh,
                                   odw, Do, Ho, Wo, KH, KW, SD, SH, SW, LD, LH, LW)
        ch = n0 + cb * BLOCK_K
        if NG % BLOCK_K == 0:
            a_mask = ok[:, None]
            w = tl.load(w_ptr + (tap * C + c) * N + ch + ks)
        else:
            k_ok = cb * BLOCK_K + ks < NG
            a_mask = ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + (tap * C + c) * N + ch + ks, mask=k_ok, other=0.0)
        a = tl.load(dg_ptr + src_rows[:, None] + (shift * N + ch + ks)[None, :], mask=a_mask,
                    other=0.0)
        # elementwise partial products; the sum along K waits for the end of the loop
        acc += a.to(tl.float32) * w[None, :]
        # advance: tap w, h, d, then channel block
        i_w, carry = _next(i_w, nw, True)
        i_h, carry = _next(i_h, nh, carry)
        i_d, carry = _next(i_d, nd, carry)
        cb, carry = _next(cb, C_BLOCKS, carry)
    return tl.sum(acc, axis=1)


@triton.jit
def input_grad_reduce_kernel(
    dg_ptr, w_ptr, xmask_ptr, stride_xmask_gate, dx_ptr, stride_dx,
    T, FRAMES, D, H, W, Do, Ho, Wo,
    C: tl.constexpr, F: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, DX_CONTIGUOUS: tl.constexpr, SPATIAL_TILES: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    N: tl.constexpr = 4 * F
    pd, ph, pw, frame, jd, jh, jw, row_ok = phase_rows(FRAMES, D, H, W, SD, SH, SW,
                                                       SPATIAL_TILES, TILE_H, TILE_W, BLOCK_M)
    taps_d = phase_taps(pd, KD, SD, PD)
    taps_h = phase_taps(ph, KH, SH, PH)
    taps_w = phase_taps(pw, KW, SW, PW)
    c = tl.program_id(1)  # one input channel per program
    src_rows = (frame.to(tl.int64) * (Do * Ho * Wo) + (jd * Ho + jh) * Wo + jw) * N
    q = ((pd + SD * jd) * H + ph + SH * jh) * W + pw + SW * jw  # input pixel of each row

    if HAS_DROPOUT:
        m_offs = (frame // T).to(tl.int64) * (D * H * W * C) + q * C + c
        acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for gate in range(4):  # a runtime loop: one copy of the K loop, not four
            part = _phase_reduce(dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo, w_ptr, c,
                                 gate * F, taps_d, taps_h, taps_w, F, N, C, KH, KW,
                                 SD, SH, SW, LD, LH, LW, BLOCK_M, BLOCK_K)
            gate_base = (tl.zeros((), tl.int64) + gate) * stride_xmask_gate
            acc += part * tl.load(xmask_ptr + gate_base + m_offs, mask=row_ok,
                                  other=0.0).to(tl.float32)
    else:
        acc = _phase_reduce(dg_ptr, src_rows, jd, jh, jw, row_ok, Do, Ho, Wo, w_ptr, c,
                            0, taps_d, taps_h, taps_w, N, N, C, KH, KW,
                            SD, SH, SW, LD, LH, LW, BLOCK_M, BLOCK_K)

    out_offs = _dx_frame(frame, T, stride_dx, D * H * W * C, DX_CONTIGUOUS) + q * C + c
    tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=row_ok)
