"""Fused ConvLSTM step backward: recurrent dgrad GEMM + cell backward in the epilogue.

For step s (reverse time), one program owns BLOCK_M pixels x BLOCK_F channels of dh_s:

    dh_s = dy_s + dh_carry + sum_g hmask[g] * (tconv(dgates_{s+1}[gate g]) @ R_g^T)  (dgrad GEMM)
    dc_s = dc_carry + dh_s * o * act'(c_s)
    dgates_s = (dc_s * g * ract'(a_i), dc_s * c_{s-1} * ract'(a_f), dc_s * i * act'(a_c),
                dh_s * act(c_s) * ract'(a_o))
    carries to step s-1: dc_carry = dc_s * f, dh_carry = 0
    masked sample (state carried over in forward): dgates_s = 0, dh_carry = dh_s, dc_carry = dc
The GEMM runs gate by gate so each gate's partial sum can take its recurrent-dropout mask
(HAS_RDROP); gates are recomputed from the saved pre-activations a_*. Peepholes (HAS_PEEPHOLE)
add d_o * w_co to dc and d_i * w_ci + d_f * w_cf to the dc carry (cell.lstm_cell_grad).

With CELL=False the epilogue only writes dh_s into the dh carry: that is the gradient of the
initial state h0 (launched once after step 0 with dgates_0 as "next").
Shapes: dgates (B, P, 4F) compute dtype, rows at a sample stride; R (KD*KH*KW*F, 4F);
dy (B, P, F); dh/dc carries (B, P, F) fp32, contiguous, read and rewritten in place (each element
by the program that owns it); preact (B, P, 4F); c, c_prev (B, P, F) fp32; hmask (4, B, P, F).
"""

import triton
import triton.language as tl

from .cell import load_peephole, lstm_cell_grad
from .im2col import state_tile, tconv_gather, tconv_weight_tile

# Autotuning candidates (convlstm_triton.tuning picks one per shape); the first is the default,
# used untuned and under the interpreter. Every block dim >= 16, as tl.dot needs on a GPU.
CONFIGS = [
    dict(BLOCK_M=64, BLOCK_F=32, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=32, BLOCK_K=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=64, BLOCK_K=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_F=16, BLOCK_K=64, num_warps=4, num_stages=3),
]


@triton.jit
def step_backward_kernel(
    dg_next_ptr, stride_dgn,
    r_ptr,
    dy_ptr, stride_dy,
    dh_ptr, dc_ptr,
    preact_ptr, stride_pa,
    c_ptr, stride_c,
    c_prev_ptr, stride_cp,
    mask_ptr, stride_mask,
    hmask_ptr, stride_hmask_gate,
    peephole_ptr,
    dg_ptr, stride_dg,
    M, P, D, H, W, F,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ACT: tl.constexpr, RACT: tl.constexpr,
    HAS_NEXT: tl.constexpr, HAS_DY: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_RDROP: tl.constexpr, HAS_PEEPHOLE: tl.constexpr, CELL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, row_mask, b, p, d, hh, ww, fs, f_mask = state_tile(M, P, H, W, F, BLOCK_M, BLOCK_F)
    N = 4 * F
    tile_mask = row_mask[:, None] & f_mask[None, :]
    state_offs = (p * F)[:, None] + fs[None, :]
    carry_ptrs = (b * P * F)[:, None] + state_offs

    acc = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
    if HAS_NEXT:
        K_GATE = KD * KH * KW * F
        for gate in tl.static_range(4):
            part = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
            for k0 in range(0, K_GATE, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                a = tconv_gather(dg_next_ptr, b * stride_dgn, d, hh, ww, row_mask, ks, K_GATE, F,
                                 gate * F, N, D, H, W, KH, KW, 1, 1, 1, PD, PH, PW, 1, 1, 1)
                w = tconv_weight_tile(r_ptr, ks, fs, K_GATE, F, F, gate * F, N)
                part = tl.dot(a, w, part, input_precision=DOT_PRECISION)
            if HAS_RDROP:
                # int64 gate offset: 3 * stride can pass 2**31
                gate_off = tl.full((), gate, tl.int64) * stride_hmask_gate
                part *= tl.load(hmask_ptr + (carry_ptrs + gate_off), mask=tile_mask,
                                other=0.0).to(tl.float32)
            acc += part

    dh = acc + tl.load(dh_ptr + carry_ptrs, mask=tile_mask, other=0.0)
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
        dh_next = tl.zeros((BLOCK_M, BLOCK_F), dtype=tl.float32)
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
        tl.store(dh_ptr + carry_ptrs, dh_next, mask=tile_mask)
    else:
        tl.store(dh_ptr + carry_ptrs, dh, mask=tile_mask)
