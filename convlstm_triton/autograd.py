"""Autograd over a whole sequence (as cuDNN's RNN): the Triton forward and backward, and the
autograd formula that ties them together.

The two halves run as the custom ops ``torch.ops.convlstm_triton.forward`` and
``torch.ops.convlstm_triton.backward`` (``ops.py``: schemas, fake implementations, and the
registration of ``setup_context`` / ``backward`` below with ``torch.library.register_autograd``),
so that ``torch.compile(fullgraph=True)`` sees two opaque ops instead of tracing into Triton
launches. ``sequence_forward`` and ``sequence_backward`` are the ops' real implementations.

Forward saves, in the compute dtype, the state sequence h (it is the output) and the gate
pre-activations, and the cell states c in fp32; backward re-reads them instead of recomputing
the recurrent convs (a recompute would redo the forward's recurrent GEMMs once more per step),
and recomputes the gates from the pre-activations (cheap elementwise work inside a GEMM kernel,
and it gives every activation, silu and gelu included, an exact derivative). With
``save_preact=False`` (``conv_lstm(recompute_gates=True)``) backward recomputes the
pre-activations instead.
Time runs in processing order here: ``go_backwards`` is handled by the caller flipping x.
"""

from dataclasses import dataclass

import torch

from . import launchers
from .launchers import KernelGeometry

# Differentiable inputs of the forward op, in order (the rest are masks and config).
GRAD_INPUTS = ("x", "kernel2d", "recurrent_kernel2d", "bias", "h0", "c0", "peephole")


@dataclass(frozen=True)
class StepSpec:
    """Everything non-tensor the kernels need: geometry, activation codes, dot precision, and
    the forward variant: ``input_variant`` "hoisted" (one input-projection GEMM over all frames,
    then xg is added in each step) or "fused_input" (the input conv inside each step's K loop);
    ``fused_cell`` False runs the cell update as a separate kernel (the unfused baseline);
    ``four_dots`` True runs the first kernel design (four gate dots of N = BLOCK_F, a K loop per
    tap, per-gate input-projection tiles) instead of the wide-MMA one, for comparisons."""

    geometry: KernelGeometry
    act: int
    ract: int
    precision: str
    input_variant: str = "hoisted"
    fused_cell: bool = True
    four_dots: bool = False
    # the recurrent conv's tiles through tensor descriptors (TMA) where the layout allows
    tma: bool = False
    # False: backward recomputes the pre-activations step by step (one more recurrent GEMM per
    # step, and the input projection again) instead of keeping B*T*P*4F of them from forward.
    save_preact: bool = True


# conv_lstm's forward_variant -> StepSpec's (input_variant, fused_cell, four_dots, tma); "auto"
# resolves to "hoisted" or "fused_input" by measurement (ops.choose_forward_variant)
FORWARD_VARIANT_FLAGS = {
    "hoisted": ("hoisted", True, False, False),
    "hoisted_tma": ("hoisted", True, False, True),
    "fused_input": ("fused_input", True, False, False),
    "unfused": ("hoisted", False, False, False),
    "hoisted_four_dots": ("hoisted", True, True, False),
    "fused_input_four_dots": ("fused_input", True, True, False),
}


def sequence_forward(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask,
                     hmask, spec: StepSpec, training: bool):
    """(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask)
    -> (states, h_T, c_T, c_all, preact).

    x (B, T, D, H, W, C_in) contiguous; kernel2d (K_in, 4F); recurrent_kernel2d (K_rec, 4F);
    bias (4F,) or None; h0 (B, P, F) compute dtype, contiguous; c0 (B, P, F) any float dtype;
    peephole (3F,) per-channel peephole weights w_ci, w_cf, w_co, or None;
    mask (B, T) int8 or None; xmask (4, B, D, H, W, C_in) and hmask (4, B, P, F) per-gate
    dropout masks (compute dtype, contiguous) or None.
    states (B, T, P, F): the state h after every step (equal to the output sequence except at
    leading masked steps, which the caller zeroes); h_T (B, P, F); c_T (B, P, F) fp32.
    ``training``: keep what backward reads: c_all (B, T+1, P, F) fp32 (slot 0 holds c0) and,
    with ``spec.save_preact``, preact (B, T, P, 4F) compute dtype; otherwise those two are
    returned empty (numel 0) and nothing of their size is allocated (inference ping-pongs two
    cell-state slots and keeps no pre-activations).
    """
    geom = spec.geometry
    B, T = x.shape[:2]
    P = geom.out_pixels
    F = recurrent_kernel2d.shape[1] // 4

    xg = None
    if spec.input_variant == "hoisted":
        xg = launchers.input_projection(x, kernel2d, bias, xmask, geom, spec.precision,
                                        four_dots=spec.four_dots)
    # the gate-interleaved weight copies are made once here, not at every step
    kernel2d = launchers.GateWeights(kernel2d)
    recurrent_kernel2d = launchers.GateWeights(recurrent_kernel2d)
    states = launchers.new_buffer((B, T, P, F), x.device, x.dtype)
    c_all = launchers.new_buffer((B, T + 1 if training else 2, P, F), x.device, torch.float32)
    c_all[:, 0] = c0
    # Pre-activations: all steps when backward reads them; one step's scratch for the
    # unfused cell kernel otherwise.
    keep_preact = training and spec.save_preact
    preact = None
    if keep_preact or not spec.fused_cell:
        preact = launchers.new_buffer((B, T if keep_preact else 1, P, 4 * F), x.device,
                                      x.dtype)
    for s in range(T):
        h_prev = h0 if s == 0 else states[:, s - 1]
        c_in, c_out = (s, s + 1) if training else (s % 2, (s + 1) % 2)
        preact_s = preact[:, s if keep_preact else 0] if preact is not None else None
        inputs = (dict(xg_t=xg[:, s]) if xg is not None else
                  dict(xg_t=None, x_t=x[:, s], kernel2d=kernel2d, bias=bias, xmask=xmask))
        launchers.step_forward(
            h_prev=h_prev, c_prev=c_all[:, c_in], rk2d=recurrent_kernel2d,
            h_out=states[:, s], c_out=c_all[:, c_out], preact_t=preact_s,
            mask_t=mask[:, s] if mask is not None else None, hmask=hmask,
            peephole=peephole, geom=geom, act=spec.act, ract=spec.ract,
            precision=spec.precision, cell=spec.fused_cell, four_dots=spec.four_dots,
            tma=spec.tma, **inputs,
        )
        if not spec.fused_cell:
            launchers.cell_forward(preact_s, c_all[:, c_in], spec.act, spec.ract,
                                   h_out=states[:, s], c_out=c_all[:, c_out])
    del xg
    # Fresh contiguous outputs: a custom op's outputs may not alias each other.
    c_final = c_all[:, T if training else T % 2].clone(memory_format=torch.contiguous_format)
    h_final = states[:, T - 1].clone(memory_format=torch.contiguous_format)
    if not training:
        c_all = x.new_empty((0,), dtype=torch.float32)
    if not keep_preact:
        preact = x.new_empty((0,))
    return states, h_final, c_final, c_all, preact


def sequence_backward(d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states,
                      c_all, preact, peephole, mask, xmask, hmask, spec: StepSpec, needs):
    """Gradients of ``sequence_forward``'s (states, h_T, c_T) -> one per entry of
    ``GRAD_INPUTS``: dx (x's shape and dtype), then d kernel2d, d recurrent_kernel2d, d bias,
    dh0, dc0, d peephole, all fp32 (the caller casts them to the inputs' dtypes). ``needs``: 7
    bools (``GRAD_INPUTS``); a gradient not needed (or of an absent bias/peephole) is an empty
    fp32 tensor. ``preact`` None: recompute the pre-activations (``spec.save_preact`` False).
    Incoming gradients may be None (unused outputs)."""
    geom = spec.geometry
    B, T = x.shape[:2]
    P, F = states.shape[2:]
    need_x, need_k, need_rk, need_b, need_h0, need_c0, need_peep = needs
    need_b = need_b and bias is not None
    need_peep = need_peep and peephole is not None

    # The carries are rewritten in place by the kernels, which index them as contiguous
    # (B, P, F): a fresh contiguous copy whatever layout the incoming gradient has.
    dh_carry = (d_h.float().clone(memory_format=torch.contiguous_format) if d_h is not None
                else torch.zeros((B, P, F), device=x.device, dtype=torch.float32))
    dc_carry = (d_c.float().clone(memory_format=torch.contiguous_format) if d_c is not None
                else torch.zeros((B, P, F), device=x.device, dtype=torch.float32))
    d_states = d_states.contiguous() if d_states is not None else None
    dgates = launchers.new_buffer((B, T, P, 4 * F), x.device, x.dtype)
    recompute = _Recompute(spec, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all,
                           mask, xmask, hmask, peephole) if preact is None else None
    for s in reversed(range(T)):
        preact_s = recompute.preact(s) if recompute is not None else preact[:, s]
        launchers.step_backward(
            dgates[:, s + 1] if s + 1 < T else None, recurrent_kernel2d,
            d_states[:, s] if d_states is not None else None, dh_carry, dc_carry,
            preact_s, c_all[:, s + 1], c_all[:, s],
            mask[:, s] if mask is not None else None, hmask, peephole, dgates[:, s],
            geom, spec.act, spec.ract, spec.precision,
        )

    def empty():
        return torch.empty((0,), device=x.device, dtype=torch.float32)

    dh0 = dc0 = dx = dk = drk = db = dpeep = None
    if need_h0:
        launchers.step_backward(dgates[:, 0], recurrent_kernel2d, None, dh_carry, dc_carry,
                                None, None, None, None, hmask, None, None, geom, spec.act,
                                spec.ract, spec.precision, cell=False)
        dh0 = dh_carry
    if need_c0:
        dc0 = dc_carry
    if need_x:
        dx = launchers.input_grad(dgates, kernel2d, xmask, geom, x.shape[-1], spec.precision)
        dx = dx.view(x.shape)
    if need_k or need_b:
        dk, db = launchers.weight_grad(x, dgates, xmask, geom, need_b, spec.precision)
        dk = dk if need_k else None
    if need_rk:
        rgeom = geom.recurrent_as_conv()
        # h_{s-1} for s >= 1 is states[:, s-1]; for s = 0 it is h0: two launches, one sum.
        h0_frames = h0.view(B, 1, *geom.out_spatial, F)
        drk, _ = launchers.weight_grad(h0_frames, dgates[:, :1], hmask, rgeom, False,
                                       spec.precision)
        if T > 1:
            prev = states[:, : T - 1].view(B, T - 1, *geom.out_spatial, F)
            drk += launchers.weight_grad(prev, dgates[:, 1:], hmask, rgeom, False,
                                         spec.precision)[0]
    if need_peep:
        # sum over (b, t, p) of d_i * c_{t-1}, d_f * c_{t-1}, d_o * c_t; masked steps have
        # zero gate gradients. Elementwise on saved tensors: torch does it at copy speed.
        dg = dgates.view(B, T, P, 4, F).float()
        dpeep = torch.stack([
            (dg[:, :, :, 0] * c_all[:, :T]).sum((0, 1, 2)),
            (dg[:, :, :, 1] * c_all[:, :T]).sum((0, 1, 2)),
            (dg[:, :, :, 3] * c_all[:, 1:]).sum((0, 1, 2)),
        ]).reshape(-1)
    return tuple(g if g is not None else empty() for g in (dx, dk, drk, db, dh0, dc0, dpeep))


class _Recompute:
    """Backward's source of pre-activations when forward did not keep them: step s reruns the
    forward step kernel from the saved h_{s-1} and c_{s-1} (same variant, masks and peepholes,
    so the numbers are forward's own) into one step's scratch."""

    def __init__(self, spec, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, mask,
                 xmask, hmask, peephole):
        B, T = x.shape[:2]
        P, F = states.shape[2:]
        self.spec, self.x, self.bias, self.xmask = spec, x, bias, xmask
        self.kernel2d = launchers.GateWeights(kernel2d)
        self.recurrent_kernel2d = launchers.GateWeights(recurrent_kernel2d)
        self.h0, self.states, self.c_all = h0, states, c_all
        self.mask, self.hmask, self.peephole = mask, hmask, peephole
        self.xg = (launchers.input_projection(x, kernel2d, bias, xmask, spec.geometry,
                                              spec.precision, four_dots=spec.four_dots)
                   if spec.input_variant == "hoisted" else None)
        self.preact_buf = launchers.new_buffer((B, P, 4 * F), x.device, x.dtype)
        self.h_scratch = launchers.new_buffer((B, P, F), x.device, x.dtype)
        self.c_scratch = launchers.new_buffer((B, P, F), x.device, torch.float32)

    def preact(self, s):
        spec = self.spec
        inputs = (dict(xg_t=self.xg[:, s]) if self.xg is not None else
                  dict(xg_t=None, x_t=self.x[:, s], kernel2d=self.kernel2d, bias=self.bias,
                       xmask=self.xmask))
        launchers.step_forward(
            h_prev=self.h0 if s == 0 else self.states[:, s - 1], c_prev=self.c_all[:, s],
            rk2d=self.recurrent_kernel2d, h_out=self.h_scratch, c_out=self.c_scratch,
            preact_t=self.preact_buf, mask_t=self.mask[:, s] if self.mask is not None else None,
            hmask=self.hmask, peephole=self.peephole, geom=spec.geometry, act=spec.act,
            ract=spec.ract, precision=spec.precision, cell=True, four_dots=spec.four_dots,
            tma=spec.tma, **inputs,
        )
        return self.preact_buf


# ---------------------------------------------------------------------------------------------
# The autograd formula of torch.ops.convlstm_triton.forward (registered in ops.py).


def setup_context(ctx, inputs, output):
    (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask, geometry,
     act, ract, precision, variant, training, save_preact) = inputs
    states, _, _, c_all, preact = output
    ctx.mark_non_differentiable(c_all, preact)
    ctx.set_materialize_grads(False)  # unused outputs: no zero-filled gradients
    ctx.config = (list(geometry), act, ract, precision, variant)
    ctx.save_preact = save_preact
    ctx.dtypes = tuple(t.dtype if t is not None else None
                       for t in (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole))
    if not training:
        # The caller asks for training buffers exactly when autograd records this op, so
        # this is a caller bug, not a user error.
        raise RuntimeError("convlstm_triton.forward ran with training=False under autograd")
    ctx.save_for_backward(x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all,
                          preact if save_preact else None, peephole, mask, xmask, hmask)


def backward(ctx, d_states, d_h, d_c, _d_c_all, _d_preact):
    needs = [bool(n) for n in ctx.needs_input_grad[:len(GRAD_INPUTS)]]
    grads = torch.ops.convlstm_triton.backward(d_states, d_h, d_c, *ctx.saved_tensors,
                                               *ctx.config, needs)
    out = [g.to(dtype) if need else None for g, need, dtype in zip(grads, needs, ctx.dtypes)]
    # mask, xmask, hmask and the 7 config arguments get no gradient
    return (*out, None, None, None) + (None,) * 7
