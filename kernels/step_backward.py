"""Fused ConvLSTM step backward: recurrent dgrad GEMM + cell backward in the epilogue.

For step s (reverse time), one program owns BLOCK_M pixels x BLOCK_F channels of dh_s:

    dh_s = dy_s + dh_carry + sum_g hmask[g] * dgrad_g(dgates_{s+1})            (dgrad GEMM)
    dc_s = dc_carry + dh_s * o * act'(c_s)
    dgates_s = (dc_s * g * ract'(a_i), dc_s * c_{s-1} * ract'(a_f), dc_s * i * act'(a_c),
                dh_s * act(c_s) * ract'(a_o))
    carries to step s-1: dc_carry = dc_s * f, dh_carry = 0
    masked sample (state carried over in forward): dgates_s = 0, dh_carry = dh_s, dc_carry = dc
Gates are recomputed from the saved pre-activations a_*. Peepholes (HAS_PEEPHOLE) add
d_o * w_co to dc and d_i * w_ci + d_f * w_cf to the dc carry (cell.lstm_cell_grad).
With CELL=False the epilogue only writes dh_s into the dh carry: that is the gradient of the
initial state h0 (launched once after step 0 with dgates_0 as "next").
HAS_DH=False: the dh carry is known to be zero and is not needed back (no masks: every step
leaves it zero), so it is neither read nor rewritten (CELL=False still writes dh0).

The dgrad as a stride-1 conv. The forward's recurrent conv is a[p, n] = sum_{tap, f}
h[p - pad + tap, f] * R[tap * F + f, n] ("same", stride 1, no dilation), so
    dh[q, f] = sum_{tap', n} dg_next[q - pad' + tap', n] * Rt[tap' * 4F + n, f]
with pad' = k - 1 - pad per dim and Rt[tap' * 4F + n, f] = R[(taps - 1 - tap') * F + f, n] (the
kernel flipped in every dim and transposed; launchers.DgradWeights makes it once per sequence).
That is an ordinary implicit-GEMM conv of dg_next (C = 4F channels) whose K runs over
taps x all four gates: one pipelined K loop (conv_k_loop.conv_k_loop: tap-major, per-row index
math, loads contiguous along the 4F channels) and one MMA chain of N = BLOCK_F. Recurrent
dropout (HAS_RDROP) scales each gate's partial sum by its own mask: four K loops of taps x F
then, one per gate, each folded into the sum with its mask.

Rows: a TILE_H x TILE_W spatial block of one sample (SPATIAL_TILES; row coordinates by
constant shifts, no runtime division per row, launchers.spatial_tiling), or BLOCK_M consecutive
pixels of the flattened (B, P) rows where spatial blocks would waste too many rows.
F is constexpr (one compile per channel count, as in the forward step): the index math
divides by constants only.
Shapes: dgates (B, P, 4F) compute dtype, rows at a sample stride; Rt (KD*KH*KW*4F, F);
dy (B, P, F); dh/dc carries (B, P, F) fp32, contiguous, read and rewritten in place (each element
by the program that owns it); preact (B, P, 4F); c, c_prev (B, P, F) fp32; hmask (4, B, P, F).
"""

import triton
import triton.language as tl

from .cell import load_peephole, lstm_cell_grad
from .conv_k_loop import conv_k_loop
from .im2col import conv_tap_offsets, step_tile

# Autotuning candidates (convlstm_triton.tuning picks one per shape), widest first (but the
# four-stage twins, last): the launcher (launchers.step_backward_configs) drops the blocks wider
# than the problem and the pipelines shared memory cannot hold, and the first left is the
# default, used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a
# GPU. The MMA is BLOCK_M x BLOCK_F: N = BLOCK_F >= 64 keeps wgmma off the shared-memory operand
# bound (N = 32 reaches 67 % of it, N = 16 40 %); 128-row tiles read the weights half as often
# per FLOP (the defaults), 64-row ones fit more CTAs per SM. Compiled for sm_90 (Triton 3.6 and
# 3.9, bf16 and TF32, F <= 128, with and without masks, peepholes, the cell epilogue), no config
# spills; recurrent dropout (two accumulators, four K loops) only at BLOCK_F <= 32.
CONFIGS = [
    dict(BLOCK_M=128, BLOCK_F=128, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=64, BLOCK_K=128, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=64, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=32, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=16, BLOCK_K=64, num_warps=4, num_stages=3),
    # four stages: the dgrad's K loop (taps x 4F) is latency-bound at three (sm_90 forecast:
    # mnist_l1 291 -> 227 us a step); 16-bit tiles (fp32: F = 128 pruned by shared memory)
    dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_F=128, BLOCK_K=64, num_warps=8, num_stages=4),
]

# Columns of one epilogue slice (see _epilogue; narrower tiles are halved once). Compiled for
# sm_90 (Triton 3.6, bf16, 64 rows per warpgroup): BLOCK_F = 64 in slices of 32 columns takes
# 254 registers, in slices of 16 128, for as many instructions per element.
EPILOGUE_COLS: tl.constexpr = tl.constexpr(16)


@triton.jit
def _gate_dgrad(acc, src_ptr, src_base, d, hh, ww, row_mask, gate: tl.constexpr,
                F: tl.constexpr, D, H, W, w_ptr, fs, f_mask,
                KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                TAP_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += the dgrad conv of one gate: dg_next's channels gate * F ... (4F channels a pixel)
    against Rt's rows tap * 4F + gate * F + j. One pipelined K loop over taps x F.

    TAP_MAJOR: K step = (tap, block of BLOCK_K of the gate's channels), index math per row.
    Otherwise K step = BLOCK_K consecutive k = tap * F + j (index math per element; every lane
    used when F is small)."""
    N: tl.constexpr = 4 * F
    TAPS: tl.constexpr = KD * KH * KW
    if TAP_MAJOR:
        F_BLOCKS: tl.constexpr = (F + BLOCK_K - 1) // BLOCK_K
        for it in range(0, TAPS * F_BLOCKS):
            tap = it // F_BLOCKS
            js = (it % F_BLOCKS) * BLOCK_K + tl.arange(0, BLOCK_K)
            pix, ok = conv_tap_offsets(d, hh, ww, row_mask, tap, N, D, H, W, KH, KW,
                                       1, 1, 1, PD, PH, PW, 1, 1, 1)
            cs = gate * F + js
            j_ok = js < F
            a = tl.load(src_ptr + (src_base + pix)[:, None] + cs[None, :],
                        mask=ok[:, None] & j_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (tap * N + cs)[:, None] * F + fs[None, :],
                        mask=j_ok[:, None] & f_mask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    else:
        K_TOTAL: tl.constexpr = TAPS * F
        for k0 in range(0, K_TOTAL, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            tap = ks // F
            cs = gate * F + ks % F
            k_ok = ks < K_TOTAL
            # the tap offsets of every (row, k) element: rows on axis 0, taps on axis 1
            pix, ok = conv_tap_offsets(d[:, None], hh[:, None], ww[:, None], row_mask[:, None],
                                       tap[None, :], N, D, H, W, KH, KW,
                                       1, 1, 1, PD, PH, PW, 1, 1, 1)
            a = tl.load(src_ptr + src_base[:, None] + pix + cs[None, :],
                        mask=ok & k_ok[None, :], other=0.0)
            w = tl.load(w_ptr + (tap * N + cs)[:, None] * F + fs[None, :],
                        mask=k_ok[:, None] & f_mask[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def step_backward_kernel(
    dg_next_ptr, stride_dgn,
    rt_ptr,
    dy_ptr, stride_dy,
    dh_ptr, dc_ptr,
    preact_ptr, stride_pa,
    c_ptr, stride_c,
    c_prev_ptr, stride_cp,
    mask_ptr, stride_mask,
    hmask_ptr, stride_hmask_gate,
    peephole_ptr,
    dg_ptr, stride_dg,
    M, P, B, D, H, W,
    F: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ACT: tl.constexpr, RACT: tl.constexpr,
    HAS_NEXT: tl.constexpr, HAS_DY: tl.constexpr, HAS_DH: tl.constexpr,
    HAS_MASK: tl.constexpr,
    HAS_RDROP: tl.constexpr, HAS_PEEPHOLE: tl.constexpr, CELL: tl.constexpr,
    TAP_MAJOR: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SPATIAL_TILES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PD, PH, PW: padding before of the dgrad conv, k - 1 - the forward's (see the module
    docstring); TAP_MAJOR: the K layout of the dgrad loop(s)."""
    _, _, _, _, b, p, d, hh, ww, row_mask, fs, f_mask = step_tile(
        M, P, B, D, H, W, F, SPATIAL_TILES, TILE_H, TILE_W, BLOCK_M, BLOCK_F)
    N: tl.constexpr = 4 * F

    acc = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
    if HAS_NEXT:
        if HAS_RDROP:
            for gate in tl.static_range(4):
                part = _gate_dgrad(tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32),
                                   dg_next_ptr, b * stride_dgn, d, hh, ww, row_mask, gate, F,
                                   D, H, W, rt_ptr, fs, f_mask, KD, KH, KW, PD, PH, PW,
                                   TAP_MAJOR, DOT_PRECISION, BLOCK_K)
                # int64 gate offset: 3 * stride can pass 2**31
                gate_off = tl.full((), gate, tl.int64) * stride_hmask_gate
                hmask_ptrs = (hmask_ptr + gate_off + (b * P * F + p * F)[:, None]
                              + fs[None, :])
                acc += part * tl.load(hmask_ptrs, mask=row_mask[:, None] & f_mask[None, :],
                                      other=0.0).to(tl.float32)
        else:
            # all four gates in one K loop of taps x 4F: one MMA chain of N = BLOCK_F
            acc = conv_k_loop(acc, dg_next_ptr, b * stride_dgn, d, hh, ww, row_mask, N, D, H, W,
                              rt_ptr, fs, f_mask, F, dg_next_ptr, b, False,
                              KD, KH, KW, 1, 1, 1, PD, PH, PW, 1, 1, 1,
                              TAP_MAJOR, DOT_PRECISION, BLOCK_K)

    _epilogue(acc, tl.program_id(1) * BLOCK_F, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr,
              dc_ptr, preact_ptr, stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp, mask_ptr,
              stride_mask, peephole_ptr, dg_ptr, stride_dg, F, ACT, RACT, HAS_DY, HAS_DH,
              HAS_MASK, HAS_PEEPHOLE, CELL, BLOCK_M, BLOCK_F,
              EPILOGUE_COLS if BLOCK_F > EPILOGUE_COLS else BLOCK_F // 2)


@triton.jit
def _epilogue(acc, f0, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr, dc_ptr,
              preact_ptr, stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp,
              mask_ptr, stride_mask, peephole_ptr, dg_ptr, stride_dg,
              F: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
              HAS_DY: tl.constexpr, HAS_DH: tl.constexpr, HAS_MASK: tl.constexpr,
              HAS_PEEPHOLE: tl.constexpr, CELL: tl.constexpr, BLOCK_M: tl.constexpr,
              COLS: tl.constexpr, SLICE: tl.constexpr):
    """The epilogue of columns f0 ... f0 + COLS (acc [BLOCK_M, COLS]), in slices of SLICE
    columns one after another (halving recursively). The cell backward keeps ~10 fp32 tiles
    alive: sliced, each slice's stores precede the next slice's loads, so its registers do not
    grow with BLOCK_F (a 64-column tile per warpgroup in one piece spills). The split moves no
    data (a wgmma accumulator's column halves are halves of its registers), and each slice's
    elementwise math runs in the loads' blocked layout after one conversion (unsplit, the
    accumulator's layout costs a dozen conversions through shared memory)."""
    if COLS > SLICE:
        lo, hi = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, COLS // 2)), (0, 2, 1)))
        _epilogue(lo, f0, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr, dc_ptr, preact_ptr,
                  stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp, mask_ptr, stride_mask,
                  peephole_ptr, dg_ptr, stride_dg, F, ACT, RACT, HAS_DY, HAS_DH, HAS_MASK,
                  HAS_PEEPHOLE, CELL, BLOCK_M, COLS // 2, SLICE)
        _epilogue(hi, f0 + COLS // 2, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr, dc_ptr,
                  preact_ptr, stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp, mask_ptr,
                  stride_mask, peephole_ptr, dg_ptr, stride_dg, F, ACT, RACT, HAS_DY, HAS_DH,
                  HAS_MASK, HAS_PEEPHOLE, CELL, BLOCK_M, COLS // 2, SLICE)
    else:
        _epilogue_cols(acc, f0, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr, dc_ptr,
                       preact_ptr, stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp, mask_ptr,
                       stride_mask, peephole_ptr, dg_ptr, stride_dg, F, ACT, RACT, HAS_DY,
                       HAS_DH, HAS_MASK, HAS_PEEPHOLE, CELL, BLOCK_M, COLS)


@triton.jit
def _epilogue_cols(acc, f0, b, p, row_mask, P, dy_ptr, stride_dy, dh_ptr, dc_ptr,
                   preact_ptr, stride_pa, c_ptr, stride_c, c_prev_ptr, stride_cp,
                   mask_ptr, stride_mask, peephole_ptr, dg_ptr, stride_dg,
                   F: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
                   HAS_DY: tl.constexpr, HAS_DH: tl.constexpr, HAS_MASK: tl.constexpr,
                   HAS_PEEPHOLE: tl.constexpr, CELL: tl.constexpr, BLOCK_M: tl.constexpr,
                   COLS: tl.constexpr):
    """The cell backward (CELL) or the h0 gradient (not CELL) of the columns f0 ... f0 + COLS
    of this program's rows, acc [BLOCK_M, COLS] their dgrad sum (see the module docstring)."""
    N: tl.constexpr = 4 * F
    fs = f0 + tl.arange(0, COLS)
    f_mask = fs < F
    # the tile offsets are made here, after the K loop(s), not kept alive across them
    tile_mask = row_mask[:, None] & f_mask[None, :]
    state_offs = (p * F)[:, None] + fs[None, :]
    carry_ptrs = (b * P * F)[:, None] + state_offs
    dh = acc
    if HAS_DH:
        dh += tl.load(dh_ptr + carry_ptrs, mask=tile_mask, other=0.0)
    if HAS_DY:
        dh += tl.load(dy_ptr + (b * stride_dy)[:, None] + state_offs, mask=tile_mask,
                      other=0.0).to(tl.float32)

    if CELL:
        pa_ptrs = preact_ptr + (b * stride_pa + p * N)[:, None] + fs[None, :]
        a_i = tl.load(pa_ptrs, mask=tile_mask, other=0.0).to(tl.float32)
        a_f = tl.load(pa_ptrs + F, mask=tile_mask, other=0.0).to(tl.float32)
        a_c = tl.load(pa_ptrs + 2 * F, mask=tile_mask, other=0.0).to(tl.float32)
        a_o = tl.load(pa_ptrs + 3 * F, mask=tile_mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + (b * stride_c)[:, None] + state_offs, mask=tile_mask, other=0.0)
        c_prev = tl.load(c_prev_ptr + (b * stride_cp)[:, None] + state_offs, mask=tile_mask,
                         other=0.0)
        dc_carry = tl.load(dc_ptr + carry_ptrs, mask=tile_mask, other=0.0)
        w_ci, w_cf, w_co = load_peephole(peephole_ptr, fs, f_mask, F, HAS_PEEPHOLE)
        d_i, d_f, d_c, d_o, dc_next = lstm_cell_grad(dh, dc_carry, a_i, a_f, a_c, a_o, c, c_prev,
                                                     w_ci, w_cf, w_co, HAS_PEEPHOLE, ACT, RACT)
        dh_next = tl.zeros((BLOCK_M, COLS), dtype=tl.float32)
        if HAS_MASK:
            keep = (tl.load(mask_ptr + b * stride_mask, mask=row_mask, other=0) != 0)[:, None]
            d_i = tl.where(keep, d_i, 0.0)
            d_f = tl.where(keep, d_f, 0.0)
            d_c = tl.where(keep, d_c, 0.0)
            d_o = tl.where(keep, d_o, 0.0)
            dc_next = tl.where(keep, dc_next, dc_carry)
            dh_next = tl.where(keep, dh_next, dh)

        dg_ptrs = dg_ptr + (b * stride_dg + p * N)[:, None] + fs[None, :]
        gdt = dg_ptr.dtype.element_ty
        tl.store(dg_ptrs, d_i.to(gdt), mask=tile_mask)
        tl.store(dg_ptrs + F, d_f.to(gdt), mask=tile_mask)
        tl.store(dg_ptrs + 2 * F, d_c.to(gdt), mask=tile_mask)
        tl.store(dg_ptrs + 3 * F, d_o.to(gdt), mask=tile_mask)
        tl.store(dc_ptr + carry_ptrs, dc_next, mask=tile_mask)
        if HAS_DH:
            tl.store(dh_ptr + carry_ptrs, dh_next, mask=tile_mask)
    else:
        tl.store(dh_ptr + carry_ptrs, dh, mask=tile_mask)
