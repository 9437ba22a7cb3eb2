"""Fused ConvLSTM step: recurrent conv of all four gates + cell update in the epilogue.

One program owns BLOCK_M state pixels x BLOCK_F channels of all four gates, so the epilogue sees
i, f, c, o of its channels and gate pre-activations never make a round trip through memory.

    a_g   = xg[b, p, g*F + f] + sum_k im2col(h_prev * hmask[g])[b, p, k] * R[k, g*F + f]
    i, f, o = ract(a_i), ract(a_f), ract(a_o);  g = act(a_c)
    c     = f * c_prev + i * g;   h = o * act(c)
    masked sample (mask[b] == 0): h, c = h_prev, c_prev

GEMM design (constexpr FOUR_DOTS):
    False  (default) R and W arrive in gate-interleaved tile order, (K, 4 * F_pad) with
           F_pad = F rounded up to BLOCK_F (launchers.GateWeights): one ``tl.dot`` of
           N = 4 * BLOCK_F per K step (a Hopper wgmma of N >= 128 from BLOCK_F = 32), and one K
           loop over taps x channel blocks that the pipeliner prefetches across taps
           (conv_k_loop.py); the accumulator is split into the gates in the epilogue. Dropout
           masks (HAS_RDROP/HAS_XDROP) give every gate its own A tile: that conv then runs four
           dots of N = BLOCK_F in the same single K loop.
    True   the first design, kept so benchmarks can show what the above buys: gate-major
           R, W (K, 4F), four dots of N = BLOCK_F, one K loop per tap (drains at every tap).
Input variants (constexpr FUSED_INPUT):
    False  "hoisted": xg, the input conv of all frames, was computed before the time loop.
    True   "fused input": the step's K loop also runs over im2col(x_t * xmask[g]) against the
           input kernel W (input conv geometry S*, IP*, L*), and the bias is added here: no xg
           tensor at all (best when C_in is small).
Epilogue variants (constexpr CELL): True applies the cell update; False only stores the
pre-activations a_* (the "unfused" variant: a separate cell kernel follows). STORE_STATE False
(with CELL) stores only the pre-activations, peephole terms included: backward's recomputation,
whose h and c forward already saved. preact may alias xg (backward's recomputation writes a
step's pre-activations over its xg): every stored element depends on the loaded one.
Channel counts F and C_IN are constexpr (one compile per channel count, like the kernel size):
the im2col index math then divides by constants only.

Shapes (per step): h_prev, h (B, P, F) in the compute dtype, rows b at a sample stride (h is a
time slice of the output sequence); c_prev, c (B, P, F) fp32; xg (B, P, 4F) gate-major; R
(KD*KH*KW*F, 4F or 4F_pad); x_t (B, D_in, H_in, W_in, C_in) at a sample stride; W
(KD*KH*KW*C_in, 4F or 4F_pad); bias (4F,); xmask (4, B, D_in, H_in, W_in, C_in) and hmask
(4, B, P, F) dropout masks (HAS_XDROP/HAS_RDROP); peephole (3, F) per-channel weights w_ci,
w_cf, w_co (HAS_PEEPHOLE, see cell.lstm_cell); preact (B, P, 4F) gate-major pre-activations
a_*, saved for backward when SAVE_PREACT. The recurrent conv is stride 1, "same" (padding
before = P*).
"""

import triton
import triton.language as tl

from .cell import load_peephole, lstm_cell
from .conv_k_loop import (
    conv_k_loop,
    conv_k_loop_gate_masked,
    conv_k_loop_tma,
    four_gate_dots,
    split_gates,
)
from .im2col import conv_gather_offsets, conv_tap_offsets, step_tile

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_F=32, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=32, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=32, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=32, BLOCK_K=64, num_warps=8, num_stages=3),
    # BLOCK_F = 64 (N = 256) with 8 warps: two warpgroups share the 64 rows and split N into
    # two wgmma of N = 128 (128 accumulator registers per thread). With 4 warps (one wgmma of
    # N = 256) the epilogue of a training step spills at every BLOCK_K, and so do 128-row tiles.
    dict(BLOCK_M=64, BLOCK_F=64, BLOCK_K=32, num_warps=8, num_stages=3),
    # F < 32 only (the launcher keeps N = 4 * BLOCK_F >= 128 from F = 32 on)
    dict(BLOCK_M=64, BLOCK_F=16, BLOCK_K=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=16, BLOCK_K=32, num_warps=4, num_stages=3),
    # 128 x 256 tiles (all four gates of 64 channels): half the L2 bytes per FLOP of the 64 x
    # 128 default, in four stages (192 KiB of 16-bit tiles; no fp32 twin fits: pruned). Four
    # warpgroups hold the 128 x 256 accumulator at 64 registers a thread (~120 in all); two
    # hold it at 128 (~200 in all, sm_90) and issue half the main loop's instructions (one
    # wgmma of N = 256 a warpgroup). The two-warpgroup tile spilled in the training epilogue
    # until the cell's activations took the short exp2 / fast-division forms (activations.py).
    dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=16, num_stages=4),
    dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=8, num_stages=4),
]


@triton.jit
def _conv_all_gates(src_ptr, src_base, d, hh, ww, row_mask, C, D, H, W,
                    w_ptr, fs, f_mask, F, acc_i, acc_f, acc_c, acc_o,
                    gmask_ptr, gmask_base, stride_gmask_gate,
                    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                    TAP_MAJOR: tl.constexpr, ALIGNED: tl.constexpr, HAS_GMASK: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """The whole K loop of one conv for all four gates, as an implicit GEMM over the
    channels-last src (rows at src_base) and the gate-major weight (KD*KH*KW*C, 4F).

    TAP_MAJOR: loop taps, then channel blocks (cheap row index math, loads contiguous along
    channels; wastes K lanes when C < BLOCK_K). Otherwise one flattened K = taps * C loop
    (every lane used, per-element index math): the choice for small C."""
    N = 4 * F
    if TAP_MAJOR:
        for tap in range(0, KD * KH * KW):
            pix, ok = conv_tap_offsets(d, hh, ww, row_mask, tap, C, D, H, W, KH, KW,
                                       SD, SH, SW, PD, PH, PW, LD, LH, LW)
            rows_at = src_base + pix
            if ALIGNED:
                # C is a multiple of BLOCK_K and the sample stride of 16: every row starts
                # 16-element aligned, so channel runs can be loaded with vector instructions.
                rows_at = tl.multiple_of(rows_at, 16)
            for c0 in range(0, C, BLOCK_K):
                cs = c0 + tl.arange(0, BLOCK_K)
                offs = pix[:, None] + cs[None, :]
                if ALIGNED:
                    # C is a multiple of BLOCK_K: the mask is constant along the channels,
                    # which lets the compiler vectorize the loads
                    valid = ok[:, None] & (cs[None, :] >= 0)
                    w_mask = (cs[:, None] >= 0) & f_mask[None, :]
                else:
                    valid = ok[:, None] & (cs < C)[None, :]
                    w_mask = (cs < C)[:, None] & f_mask[None, :]
                a = tl.load(src_ptr + rows_at[:, None] + cs[None, :], mask=valid, other=0.0)
                w_ptrs = w_ptr + (tap * C + cs)[:, None] * N + fs[None, :]
                acc_i, acc_f, acc_c, acc_o = four_gate_dots(
                    a, offs, valid, w_ptrs, w_mask, acc_i, acc_f, acc_c, acc_o, F,
                    gmask_ptr, gmask_base, stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    else:
        K_TOTAL = KD * KH * KW * C
        for k0 in range(0, K_TOTAL, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            offs, valid = conv_gather_offsets(d, hh, ww, row_mask, ks, K_TOTAL, C, D, H, W, KH,
                                              KW, SD, SH, SW, PD, PH, PW, LD, LH, LW)
            a = tl.load(src_ptr + src_base[:, None] + offs, mask=valid, other=0.0)
            w_ptrs = w_ptr + ks[:, None] * N + fs[None, :]
            w_mask = (ks < K_TOTAL)[:, None] & f_mask[None, :]
            acc_i, acc_f, acc_c, acc_o = four_gate_dots(
                a, offs, valid, w_ptrs, w_mask, acc_i, acc_f, acc_c, acc_o, F,
                gmask_ptr, gmask_base, stride_gmask_gate, HAS_GMASK, DOT_PRECISION)
    return acc_i, acc_f, acc_c, acc_o


@triton.jit
def step_forward_kernel(
    h_prev_ptr, stride_hp,
    c_prev_ptr, stride_cp,
    xg_ptr, stride_xg,
    r_ptr,
    x_ptr, stride_x, w_ptr, bias_ptr, xmask_ptr, stride_xmask_gate,
    h_ptr, stride_h,
    c_ptr, stride_c,
    preact_ptr, stride_pa,
    mask_ptr, stride_mask,
    hmask_ptr, stride_hmask_gate,
    peephole_ptr,
    M, P, B, D, H, W, D_IN, H_IN, W_IN,
    F: tl.constexpr, C_IN: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    IPD: tl.constexpr, IPH: tl.constexpr, IPW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    ACT: tl.constexpr, RACT: tl.constexpr,
    FUSED_INPUT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_XDROP: tl.constexpr,
    REC_TAP_MAJOR: tl.constexpr, IN_TAP_MAJOR: tl.constexpr,
    REC_ALIGNED: tl.constexpr, IN_ALIGNED: tl.constexpr,
    CELL: tl.constexpr, STORE_STATE: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_RDROP: tl.constexpr,
    HAS_PEEPHOLE: tl.constexpr, SAVE_PREACT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FOUR_DOTS: tl.constexpr, TMA: tl.constexpr, SPATIAL_TILES: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # M tile = a TILE_H x TILE_W block of one sample's (d) slice where SPATIAL_TILES (row
    # coordinates by constant shifts, and the box of a tensor descriptor), else flat rows
    b_s, d_s, h0, w0, b, p, d, hh, ww, row_mask, fs, f_mask = step_tile(
        M, P, B, D, H, W, F, SPATIAL_TILES, TILE_H, TILE_W, BLOCK_M, BLOCK_F)
    N: tl.constexpr = 4 * F

    if FOUR_DOTS:
        # The first design, kept to measure what the wide MMA and the single K loop buy:
        # gate-major weights (K, 4F), four dots of N = BLOCK_F, one K loop per tap.
        acc_i = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        acc_f = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        acc_c = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        acc_o = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
        acc_i, acc_f, acc_c, acc_o = _conv_all_gates(
            h_prev_ptr, b * stride_hp, d, hh, ww, row_mask, F, D, H, W,
            r_ptr, fs, f_mask, F, acc_i, acc_f, acc_c, acc_o,
            hmask_ptr, b * (P * F), stride_hmask_gate,
            KD, KH, KW, 1, 1, 1, PD, PH, PW, 1, 1, 1, REC_TAP_MAJOR, REC_ALIGNED, HAS_RDROP,
            DOT_PRECISION, BLOCK_K)
        if FUSED_INPUT:
            acc_i, acc_f, acc_c, acc_o = _conv_all_gates(
                x_ptr, b * stride_x, d, hh, ww, row_mask, C_IN, D_IN, H_IN, W_IN,
                w_ptr, fs, f_mask, F, acc_i, acc_f, acc_c, acc_o,
                xmask_ptr, b * (D_IN * H_IN * W_IN * C_IN), stride_xmask_gate,
                KD, KH, KW, SD, SH, SW, IPD, IPH, IPW, LD, LH, LW, IN_TAP_MAJOR, IN_ALIGNED,
                HAS_XDROP, DOT_PRECISION, BLOCK_K)
    else:
        # Weights in gate-interleaved tile order (see launchers.GateWeights): this program's
        # columns i, f, c, o of its BLOCK_F channels are one contiguous run of 4 * BLOCK_F, so
        # one wgmma of N = 4 * BLOCK_F computes all four gates from one shared A tile.
        W_ROW: tl.constexpr = 4 * ((F + BLOCK_F - 1) // BLOCK_F) * BLOCK_F
        w_cols = tl.program_id(1) * (4 * BLOCK_F) + tl.arange(0, 4 * BLOCK_F)
        w_col_ok = w_cols >= 0  # padded channels hold zero weights: nothing to mask
        acc = tl.zeros((BLOCK_M, 4 * BLOCK_F), dtype=tl.float32)
        if TMA:
            acc = conv_k_loop_tma(acc, h_prev_ptr, stride_hp, b_s, d_s, h0, w0, B, D, H, W,
                                  r_ptr, tl.program_id(1) * (4 * BLOCK_F), F, W_ROW, KD, KH, KW,
                                  PD, PH, PW, DOT_PRECISION, TILE_H, TILE_W, BLOCK_K,
                                  4 * BLOCK_F)
        elif not HAS_RDROP:
            acc = conv_k_loop(acc, h_prev_ptr, b * stride_hp, d, hh, ww, row_mask, F, D, H, W,
                              r_ptr, w_cols, w_col_ok, W_ROW, h_prev_ptr, b, False,
                              KD, KH, KW, 1, 1, 1, PD, PH, PW,
                              1, 1, 1, REC_TAP_MAJOR, DOT_PRECISION, BLOCK_K)
        if FUSED_INPUT and not HAS_XDROP:
            acc = conv_k_loop(acc, x_ptr, b * stride_x, d, hh, ww, row_mask, C_IN, D_IN, H_IN,
                              W_IN, w_ptr, w_cols, w_col_ok, W_ROW, x_ptr, b, False,
                              KD, KH, KW, SD, SH, SW,
                              IPD, IPH, IPW, LD, LH, LW, IN_TAP_MAJOR, DOT_PRECISION, BLOCK_K)
        acc_i, acc_f, acc_c, acc_o = split_gates(acc, BLOCK_M, BLOCK_F)
        # Per-gate dropout masks give each gate its own A tile: four narrower dots.
        gate_cols = tl.program_id(1) * (4 * BLOCK_F) + tl.arange(0, BLOCK_F)
        gate_col_ok = gate_cols >= 0
        if HAS_RDROP:
            acc_i, acc_f, acc_c, acc_o = conv_k_loop_gate_masked(
                acc_i, acc_f, acc_c, acc_o, h_prev_ptr, b * stride_hp, d, hh, ww, row_mask,
                F, D, H, W, r_ptr, gate_cols, gate_col_ok, W_ROW, BLOCK_F,
                hmask_ptr, b * (P * F), stride_hmask_gate, KD, KH, KW, 1, 1, 1, PD, PH, PW,
                1, 1, 1, REC_TAP_MAJOR, DOT_PRECISION, BLOCK_K)
        if FUSED_INPUT and HAS_XDROP:
            acc_i, acc_f, acc_c, acc_o = conv_k_loop_gate_masked(
                acc_i, acc_f, acc_c, acc_o, x_ptr, b * stride_x, d, hh, ww, row_mask,
                C_IN, D_IN, H_IN, W_IN, w_ptr, gate_cols, gate_col_ok, W_ROW, BLOCK_F,
                xmask_ptr, b * (D_IN * H_IN * W_IN * C_IN), stride_xmask_gate,
                KD, KH, KW, SD, SH, SW, IPD, IPH, IPW, LD, LH, LW, IN_TAP_MAJOR, DOT_PRECISION,
                BLOCK_K)
    if FUSED_INPUT and HAS_BIAS:
        acc_i += tl.load(bias_ptr + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        acc_f += tl.load(bias_ptr + F + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        acc_c += tl.load(bias_ptr + 2 * F + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        acc_o += tl.load(bias_ptr + 3 * F + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]

    tile_mask = row_mask[:, None] & f_mask[None, :]
    a_i, a_f, a_c, a_o = acc_i, acc_f, acc_c, acc_o
    if not FUSED_INPUT:
        xg_ptrs = xg_ptr + (b * stride_xg + p * N)[:, None] + fs[None, :]
        a_i += tl.load(xg_ptrs, mask=tile_mask, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
        a_f += tl.load(xg_ptrs + F, mask=tile_mask, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
        a_c += tl.load(xg_ptrs + 2 * F, mask=tile_mask, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
        a_o += tl.load(xg_ptrs + 3 * F, mask=tile_mask, other=0.0,
                       eviction_policy="evict_first").to(tl.float32)
    state_offs = (p * F)[:, None] + fs[None, :]
    if CELL:
        # eviction: xg, c_prev are read for the last time here and preact not before backward;
        # h (read by the next step's 9-25 taps) is what should stay in L2
        c_prev = tl.load(c_prev_ptr + (b * stride_cp)[:, None] + state_offs, mask=tile_mask,
                         other=0.0, eviction_policy="evict_first")
        w_ci, w_cf, w_co = load_peephole(peephole_ptr, fs, f_mask, F, HAS_PEEPHOLE)
        a_i, a_f, a_o, c_new, h_new = lstm_cell(a_i, a_f, a_c, a_o, c_prev, w_ci, w_cf, w_co,
                                                HAS_PEEPHOLE, ACT, RACT)
        if HAS_MASK:
            keep = tl.load(mask_ptr + b * stride_mask, mask=row_mask, other=0) != 0
            h_prev = tl.load(h_prev_ptr + (b * stride_hp)[:, None] + state_offs, mask=tile_mask,
                             other=0.0).to(tl.float32)
            h_new = tl.where(keep[:, None], h_new, h_prev)
            c_new = tl.where(keep[:, None], c_new, c_prev)
        if STORE_STATE:
            tl.store(h_ptr + (b * stride_h)[:, None] + state_offs,
                     h_new.to(h_ptr.dtype.element_ty), mask=tile_mask)
            tl.store(c_ptr + (b * stride_c)[:, None] + state_offs, c_new, mask=tile_mask)
    if SAVE_PREACT:
        pa_ptrs = preact_ptr + (b * stride_pa + p * N)[:, None] + fs[None, :]
        pdt = preact_ptr.dtype.element_ty
        tl.store(pa_ptrs, a_i.to(pdt), mask=tile_mask, eviction_policy="evict_first")
        tl.store(pa_ptrs + F, a_f.to(pdt), mask=tile_mask, eviction_policy="evict_first")
        tl.store(pa_ptrs + 2 * F, a_c.to(pdt), mask=tile_mask, eviction_policy="evict_first")
        tl.store(pa_ptrs + 3 * F, a_o.to(pdt), mask=tile_mask, eviction_policy="evict_first")
