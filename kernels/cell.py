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
def _rows(M, P, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """This program's tile of (B, P, F) states: sample b (int64), pixel p, channels, mask."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows < M)[:, None] & (fs < F)[None, :]
    return (rows // P).to(tl.int64), rows % P, fs, mask


@triton.jit
def _offsets(b, p, fs, stride, width):
    """Offsets of a (B, P, width) tensor at a sample stride, channels fs."""
    return (b * stride + p * width)[:, None] + fs[None, :]


@triton.jit
def _load_preact(pre_ptr, gate_offs, mask, F):
    a_i = tl.load(pre_ptr + gate_offs, mask=mask, other=0.0).to(tl.float32)
    a_f = tl.load(pre_ptr + gate_offs + F, mask=mask, other=0.0).to(tl.float32)
    a_c = tl.load(pre_ptr + gate_offs + 2 * F, mask=mask, other=0.0).to(tl.float32)
    a_o = tl.load(pre_ptr + gate_offs + 3 * F, mask=mask, other=0.0).to(tl.float32)
    return a_i, a_f, a_c, a_o


@triton.jit
def cell_forward_kernel(
    pre_ptr, stride_pre, c_prev_ptr, stride_cp, h_ptr, stride_h, c_ptr, stride_c, M, P, F,
    ACT: tl.constexpr, RACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """(B, P, ...) tensors at sample strides, so h and c can be time slices of sequences."""
    b, p, fs, mask = _rows(M, P, F, BLOCK_M, BLOCK_F)
    a_i, a_f, a_c, a_o = _load_preact(pre_ptr, _offsets(b, p, fs, stride_pre, 4 * F), mask, F)
    c_prev = tl.load(c_prev_ptr + _offsets(b, p, fs, stride_cp, F), mask=mask, other=0.0)
    _, _, _, c, h = lstm_cell(a_i, a_f, a_c, a_o, c_prev, 0.0, 0.0, 0.0, False, ACT, RACT)
    tl.store(c_ptr + _offsets(b, p, fs, stride_c, F), c, mask=mask)
    tl.store(h_ptr + _offsets(b, p, fs, stride_h, F), h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def cell_backward_kernel(
    dh_ptr, dc_ptr, pre_ptr, c_ptr, c_prev_ptr, dpre_ptr, dc_prev_ptr, M, F,
    ACT: tl.constexpr, RACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    """Contiguous (M, 4F) / (M, F) tensors."""
    b, p, fs, mask = _rows(M, 1, F, BLOCK_M, BLOCK_F)
    gate_offs = _offsets(b, p, fs, 4 * F, 4 * F)
    state_offs = _offsets(b, p, fs, F, F)
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
