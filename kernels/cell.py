"""The LSTM cell update, forward and backward: shared math plus standalone elementwise kernels.

``lstm_cell`` / ``lstm_cell_grad`` are the epilogues of the fused step kernels. The standalone
``cell_forward_kernel`` / ``cell_backward_kernel`` are the *unfused* variant (pre-activations
round-trip through memory), kept to measure what fusion buys.
Shapes: pre-activations (M, 4F) gate-major (i, f, c, o blocks of F) in the compute dtype;
c, c_prev (M, F) fp32; h (M, F) compute dtype. Backward recomputes the gates from the
pre-activations, which is what lets every activation (silu, gelu, ...) have a kernel path.
"""

import triton
import triton.language as tl

from .activations import activate, activation_grad

# (BLOCK_M, BLOCK_F, num_warps)
DEFAULT_CONFIG = (64, 32, 4)


@triton.jit
def lstm_cell(a_i, a_f, a_c, a_o, c_prev, w_ci, w_cf, w_co, HAS_PEEPHOLE: tl.constexpr,
              ACT: tl.constexpr, RACT: tl.constexpr):
    """fp32 pre-activations -> (a_i, a_f, a_o, c, h); with peepholes (Shi et al. 2015, one
    weight per channel) a_i, a_f gain w_ci * c_prev, w_cf * c_prev and a_o gains w_co * c, and
    the updated pre-activations are returned for backward."""
    if HAS_PEEPHOLE:
        a_i += w_ci * c_prev
        a_f += w_cf * c_prev
    c = activate(a_f, RACT) * c_prev + activate(a_i, RACT) * activate(a_c, ACT)
    if HAS_PEEPHOLE:
        a_o += w_co * c
    return a_i, a_f, a_o, c, activate(a_o, RACT) * activate(c, ACT)


@triton.jit
def lstm_cell_grad(dh, dc_carry, a_i, a_f, a_c, a_o, c, c_prev, w_ci, w_cf, w_co,
                   HAS_PEEPHOLE: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr):
    """Gradients of the pre-activations (d_i, d_f, d_c, d_o) and of c_prev, all fp32.

    Gates are recomputed from the saved pre-activations a_* (peephole terms included); dh is the
    total gradient of h, dc_carry the gradient reaching c from the next step.
    """
    gate_i = activate(a_i, RACT)
    gate_f = activate(a_f, RACT)
    gate_c = activate(a_c, ACT)
    gate_o = activate(a_o, RACT)
    d_o = dh * activate(c, ACT) * activation_grad(a_o, RACT)
    dc = dc_carry + dh * gate_o * activation_grad(c, ACT)
    if HAS_PEEPHOLE:
        dc += d_o * w_co
    d_i = dc * gate_c * activation_grad(a_i, RACT)
    d_f = dc * c_prev * activation_grad(a_f, RACT)
    d_c = dc * gate_i * activation_grad(a_c, ACT)
    dc_prev = dc * gate_f
    if HAS_PEEPHOLE:
        dc_prev += d_i * w_ci + d_f * w_cf
    return d_i, d_f, d_c, d_o, dc_prev


@triton.jit
def load_peephole(peephole_ptr, fs, f_mask, F, HAS_PEEPHOLE: tl.constexpr):
    """Per-channel peephole weights (3, F) as [1, BLOCK_F] rows (zeros without peepholes)."""
    if HAS_PEEPHOLE:
        w_ci = tl.load(peephole_ptr + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        w_cf = tl.load(peephole_ptr + F + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
        w_co = tl.load(peephole_ptr + 2 * F + fs, mask=f_mask, other=0.0).to(tl.float32)[None, :]
    else:
        w_ci = tl.zeros((1, fs.shape[0]), dtype=tl.float32)
        w_cf = w_ci
        w_co = w_ci
    return w_ci, w_cf, w_co


@triton.jit
def _tile(M, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows < M)[:, None] & (fs < F)[None, :]
    return rows[:, None] * (4 * F) + fs[None, :], rows[:, None] * F + fs[None, :], mask


@triton.jit
def _load_preact(pre_ptr, gate_offs, mask, F):
    a_i = tl.load(pre_ptr + gate_offs, mask=mask, other=0.0).to(tl.float32)
    a_f = tl.load(pre_ptr + gate_offs + F, mask=mask, other=0.0).to(tl.float32)
    a_c = tl.load(pre_ptr + gate_offs + 2 * F, mask=mask, other=0.0).to(tl.float32)
    a_o = tl.load(pre_ptr + gate_offs + 3 * F, mask=mask, other=0.0).to(tl.float32)
    return a_i, a_f, a_c, a_o


@triton.jit
def cell_forward_kernel(
    pre_ptr, c_prev_ptr, h_ptr, c_ptr, M, F,
    ACT: tl.constexpr, RACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    gate_offs, state_offs, mask = _tile(M, F, BLOCK_M, BLOCK_F)
    a_i, a_f, a_c, a_o = _load_preact(pre_ptr, gate_offs, mask, F)
    c_prev = tl.load(c_prev_ptr + state_offs, mask=mask, other=0.0)
    _, _, _, c, h = lstm_cell(a_i, a_f, a_c, a_o, c_prev, 0.0, 0.0, 0.0, False, ACT, RACT)
    tl.store(c_ptr + state_offs, c, mask=mask)
    tl.store(h_ptr + state_offs, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def cell_backward_kernel(
    dh_ptr, dc_ptr, pre_ptr, c_ptr, c_prev_ptr, dpre_ptr, dc_prev_ptr, M, F,
    ACT: tl.constexpr, RACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    gate_offs, state_offs, mask = _tile(M, F, BLOCK_M, BLOCK_F)
    a_i, a_f, a_c, a_o = _load_preact(pre_ptr, gate_offs, mask, F)
    dh = tl.load(dh_ptr + state_offs, mask=mask, other=0.0).to(tl.float32)
    dc = tl.load(dc_ptr + state_offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + state_offs, mask=mask, other=0.0)
    c_prev = tl.load(c_prev_ptr + state_offs, mask=mask, other=0.0)
    d_i, d_f, d_c, d_o, dc_prev = lstm_cell_grad(dh, dc, a_i, a_f, a_c, a_o, c, c_prev, 0.0, 0.0,
                                                 0.0, False, ACT, RACT)
    gdt = dpre_ptr.dtype.element_ty
    tl.store(dpre_ptr + gate_offs, d_i.to(gdt), mask=mask)
    tl.store(dpre_ptr + gate_offs + F, d_f.to(gdt), mask=mask)
    tl.store(dpre_ptr + gate_offs + 2 * F, d_c.to(gdt), mask=mask)
    tl.store(dpre_ptr + gate_offs + 3 * F, d_o.to(gdt), mask=mask)
    tl.store(dc_prev_ptr + state_offs, dc_prev, mask=mask)
