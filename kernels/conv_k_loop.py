"""The K loop of an implicit-GEMM convolution: one pipelined loop over taps x channel blocks.

    acc[rows, cols] += sum_k im2col(src)[rows, k] * W[k, cols]     k = tap * C + c

One ``for`` loop covers every K step of the conv, so Triton's software pipeliner prefetches the
A and B tiles ``num_stages`` deep across tap boundaries (a loop per tap would drain the stage
buffers at the end of every tap: 9 drains per tile at k = 3, 25 at k = 5).
The channel count C and the kernel geometry are constexpr: a K step's tap and channel block,
and the tap's (kd, kh, kw), are divisions by constants (shifts and multiplies), never calls to
a runtime division routine.

K layouts (constexpr TAP_MAJOR):
    True   K step = (tap, block of BLOCK_K channels): index math per row, loads contiguous
           along channels (channels-last); lanes past C are masked (C >= 16 wastes little).
    False  K step = BLOCK_K consecutive k of the flattened (tap, channel) index: every lane
           used (C_in = 1 fills them), index math per element.
Glossary: see ``im2col.py``. ``rows`` are output pixels (d, h, w) of one frame each, whose
channels-last source frame starts at ``src_base`` (int64 element offset).
"""

import triton
import triton.language as tl

from .im2col import conv_gather_offsets, conv_tap_offsets


@triton.jit
def k_step_count(C: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 TAP_MAJOR: tl.constexpr, BLOCK_K: tl.constexpr):
    if TAP_MAJOR:
        return KD * KH * KW * ((C + BLOCK_K - 1) // BLOCK_K)
    else:
        return (KD * KH * KW * C + BLOCK_K - 1) // BLOCK_K


@triton.jit
def k_step_a_tile(src_ptr, src_base, od, oh, ow, row_mask, it, C: tl.constexpr, D, H, W,
                  KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                  LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                  TAP_MAJOR: tl.constexpr, BLOCK_K: tl.constexpr):
    """K step ``it``: the im2col A tile [rows, BLOCK_K], its element offsets within the frame
    and valid mask (a dropout mask of src's layout sits at the same offsets), the weight rows
    ``ks`` it multiplies and which of them exist."""
    if TAP_MAJOR:
        C_BLOCKS: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
        tap = it // C_BLOCKS
        cs = (it % C_BLOCKS) * BLOCK_K + tl.arange(0, BLOCK_K)
        pix, ok = conv_tap_offsets(od, oh, ow, row_mask, tap, C, D, H, W, KH, KW,
                                   SD, SH, SW, PD, PH, PW, LD, LH, LW)
        offs = pix[:, None] + cs[None, :]
        k_ok = cs < C
        if C % BLOCK_K == 0:
            # the mask is constant along the channels: channel runs load as vectors
            valid = ok[:, None] & (cs >= 0)[None, :]
        else:
            valid = ok[:, None] & k_ok[None, :]
        ks = tap * C + cs
    else:
        K_TOTAL: tl.constexpr = KD * KH * KW * C
        ks = it * BLOCK_K + tl.arange(0, BLOCK_K)
        offs, valid = conv_gather_offsets(od, oh, ow, row_mask, ks, K_TOTAL, C, D, H, W, KH, KW,
                                          SD, SH, SW, PD, PH, PW, LD, LH, LW)
        k_ok = ks < K_TOTAL
    a = tl.load(src_ptr + src_base[:, None] + offs, mask=valid, other=0.0)
    return a, offs, valid, ks, k_ok


@triton.jit
def conv_k_loop(acc, src_ptr, src_base, od, oh, ow, row_mask, C: tl.constexpr, D, H, W,
                w_ptr, w_cols, w_col_mask, W_ROW: tl.constexpr,
                amask_ptr, amask_base, HAS_AMASK: tl.constexpr,
                KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                TAP_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc [rows, cols] += im2col(src * amask) @ W[:, w_cols]: one ``tl.dot`` per K step, as
    wide as the column tile (all four gates of a channel block: N = 4 * BLOCK_F). W is row-major
    with W_ROW elements per row. HAS_AMASK: a dropout mask of src's layout (rows at amask_base,
    int64) scales the A tile; it must be the same for every column of the tile."""
    for it in range(0, k_step_count(C, KD, KH, KW, TAP_MAJOR, BLOCK_K)):
        a, offs, valid, ks, k_ok = k_step_a_tile(
            src_ptr, src_base, od, oh, ow, row_mask, it, C, D, H, W, KD, KH, KW,
            SD, SH, SW, PD, PH, PW, LD, LH, LW, TAP_MAJOR, BLOCK_K)
        if HAS_AMASK:
            a = a * tl.load(amask_ptr + amask_base[:, None] + offs, mask=valid, other=0.0)
        w = tl.load(w_ptr + ks[:, None] * W_ROW + w_cols[None, :],
                    mask=k_ok[:, None] & w_col_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def gate_dot(a, offs, valid, w_ptrs, w_mask, acc, gate: tl.constexpr, GATE_COLS: tl.constexpr,
             gmask_ptr, gmask_base, stride_gmask_gate, HAS_GMASK: tl.constexpr,
             DOT_PRECISION: tl.constexpr):
    """acc += (a * gmask[gate]) @ W[:, w_cols + gate * GATE_COLS]; the dropout mask shares
    src's layout, so its tile sits at the same offsets as the A tile."""
    if HAS_GMASK:
        # int64 gate offset: 3 * stride passes 2**31 for masks of over ~7e8 elements per gate
        gate_base = gmask_base + tl.full((), gate, tl.int64) * stride_gmask_gate
        a = a * tl.load(gmask_ptr + gate_base[:, None] + offs, mask=valid, other=0.0)
    w = tl.load(w_ptrs + gate * GATE_COLS, mask=w_mask, other=0.0)
    return tl.dot(a, w, acc, input_precision=DOT_PRECISION)


@triton.jit
def four_gate_dots(a, offs, valid, w_ptrs, w_mask, acc_i, acc_f, acc_c, acc_o,
                   GATE_COLS: tl.constexpr, gmask_ptr, gmask_base, stride_gmask_gate,
                   HAS_GMASK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """One A tile against the four gates' weight columns (gate g at + g * GATE_COLS), each
    with its own dropout mask (HAS_GMASK): four dots of N = the column tile."""
    acc_i = gate_dot(a, offs, valid, w_ptrs, w_mask, acc_i, 0, GATE_COLS, gmask_ptr, gmask_base,
                     stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    acc_f = gate_dot(a, offs, valid, w_ptrs, w_mask, acc_f, 1, GATE_COLS, gmask_ptr, gmask_base,
                     stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    acc_c = gate_dot(a, offs, valid, w_ptrs, w_mask, acc_c, 2, GATE_COLS, gmask_ptr, gmask_base,
                     stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    acc_o = gate_dot(a, offs, valid, w_ptrs, w_mask, acc_o, 3, GATE_COLS, gmask_ptr, gmask_base,
                     stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    return acc_i, acc_f, acc_c, acc_o


@triton.jit
def conv_k_loop_gate_masked(acc_i, acc_f, acc_c, acc_o, src_ptr, src_base, od, oh, ow, row_mask,
                            C: tl.constexpr, D, H, W, w_ptr, w_cols, w_col_mask,
                            W_ROW: tl.constexpr, GATE_COLS: tl.constexpr,
                            gmask_ptr, gmask_base, stride_gmask_gate,
                            KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                            SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                            PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                            LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                            TAP_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """Per-gate dropout masks (gmask[g], src's layout) make the four gates' A tiles differ, so
    they cannot share one wide dot: four dots of N = BLOCK_F, one pipelined K loop all the same.
    Gate g's columns are ``w_cols + g * GATE_COLS``."""
    for it in range(0, k_step_count(C, KD, KH, KW, TAP_MAJOR, BLOCK_K)):
        a, offs, valid, ks, k_ok = k_step_a_tile(
            src_ptr, src_base, od, oh, ow, row_mask, it, C, D, H, W, KD, KH, KW,
            SD, SH, SW, PD, PH, PW, LD, LH, LW, TAP_MAJOR, BLOCK_K)
        acc_i, acc_f, acc_c, acc_o = four_gate_dots(
            a, offs, valid, w_ptr + ks[:, None] * W_ROW + w_cols[None, :],
            k_ok[:, None] & w_col_mask[None, :], acc_i, acc_f, acc_c, acc_o, GATE_COLS,
            gmask_ptr, gmask_base, stride_gmask_gate, True, DOT_PRECISION)
    return acc_i, acc_f, acc_c, acc_o


@triton.jit
def split_gates(acc, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """[BLOCK_M, 4 * BLOCK_F] accumulator of gate-interleaved columns (i, f, c, o blocks of
    BLOCK_F) -> four [BLOCK_M, BLOCK_F] pre-activations i, f, c, o."""
    g = tl.permute(tl.reshape(acc, (BLOCK_M, 4, BLOCK_F)), (0, 2, 1))
    even, odd = tl.split(tl.reshape(g, (BLOCK_M, BLOCK_F, 2, 2)))  # gate = 2 * a + b; split b
    acc_i, acc_c = tl.split(even)
    acc_f, acc_o = tl.split(odd)
    return acc_i, acc_f, acc_c, acc_o


@triton.jit
def conv_k_loop_tma(acc, src_ptr, stride_sample, b, d, h0, w0, B, D, H, W,
                    w_ptr, w_col0, C: tl.constexpr, W_ROW: tl.constexpr,
                    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """``conv_k_loop`` for a stride-1, undilated conv whose rows are one TILE_H x TILE_W
    spatial block at (b, d, h0, w0) of a channels-last src (B, D, H, W, C), through tensor
    descriptors (TMA on Hopper): each K step is one box load of the src at the tap's shifted
    origin, whose out-of-bounds zero fill is the "same" padding, and one box of the weight
    (columns w_col0 ...). Channel blocks past C load zeros (and so cancel the next tap's weight
    rows they meet). Needs C * element size and the sample stride multiples of 16 bytes."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    src = tl.make_tensor_descriptor(src_ptr, shape=[B, D, H, W, C],
                                    strides=[stride_sample, H * W * C, W * C, C, 1],
                                    block_shape=[1, 1, TILE_H, TILE_W, BLOCK_K])
    K_ROWS: tl.constexpr = KD * KH * KW * C
    weights = tl.make_tensor_descriptor(w_ptr, shape=[K_ROWS, W_ROW], strides=[W_ROW, 1],
                                        block_shape=[BLOCK_K, BLOCK_N])
    C_BLOCKS: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
    for it in range(0, KD * KH * KW * C_BLOCKS):
        tap = it // C_BLOCKS
        c0 = (it % C_BLOCKS) * BLOCK_K
        kd = tap // (KH * KW)
        kh = (tap // KW) % KH
        kw = tap % KW
        a = src.load([b, d + kd - PD, h0 + kh - PH, w0 + kw - PW, c0])
        w = weights.load([tap * C + c0, w_col0])
        acc = tl.dot(tl.reshape(a, (BLOCK_M, BLOCK_K)), w, acc, input_precision=DOT_PRECISION)
    return acc
