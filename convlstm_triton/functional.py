"""Functional ConvLSTM: validation, autocast, backend dispatch, and the Triton path's tensor
plumbing (the kernels run inside the custom ops of ``ops.py``).

**Autocast.** Inside a ``torch.autocast`` region for x's device (CUDA or CPU) with an eligible x
(float32/float16/bfloat16; float64 is left alone, as autocast does), ``conv_lstm`` runs as
cuDNN's RNN does under autocast: x, the weights, bias, peepholes, h0 and the dropout masks are
cast to the autocast dtype, the whole sequence runs in that dtype (the kernels keep c in fp32
inside, as always) and seq, h and c come back in that dtype. The casts are ordinary autograd
ops, so fp32 parameters receive fp32 gradients. The reference backend runs in the autocast
dtype too (autocast itself is switched off inside it, so it computes exactly as for inputs of
that dtype, c included).

**torch.compile.** The Triton path is two custom ops (``torch.ops.convlstm_triton.forward`` /
``backward``), opaque to dynamo; the reference path is plain torch. Both compile with
``fullgraph=True``. While compiling, the data-dependent check that a float ``mask`` holds only
0 and 1 is skipped (it would need the mask's values at trace time).
"""

import math
import os
import warnings

import torch

from . import autograd, cuda_graphs, ops
from .activations import KERNEL_ACTIVATION_CODES
from .launchers import KernelGeometry, dot_precision
from .platform import platform
from .reference import conv_lstm_reference
from .validation import call_signature, check_mask_values, validate_conv_lstm_args

__all__ = ["conv_lstm"]

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_warned = set()


def _autocast_dtype(x):
    """The dtype ``torch.autocast`` asks for on x's device, or None (autocast off there, or x
    not eligible: float64 and non-float tensors are never cast, as by autocast itself)."""
    device_type = x.device.type
    if device_type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device_type):
        return None
    if x.dtype not in _KERNEL_DTYPES:
        return None
    return torch.get_autocast_dtype(device_type)


def _cast(t, dtype):
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def triton_interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _fallback_reason(x, activation, recurrent_activation):
    """Why the Triton kernels cannot run this call, or None."""
    if x.dtype not in _KERNEL_DTYPES:
        return f"dtype {x.dtype} (the kernels take float32, float16 and bfloat16)"
    for name in (activation, recurrent_activation):
        if callable(name):
            return f"a Python callable as activation ({getattr(name, '__name__', name)!r})"
        if name not in KERNEL_ACTIVATION_CODES:
            return f"the channel-wise activation {name!r} (the kernels work per element)"
    return None


def _resolve_backend(backend, x, reason):
    if backend == "reference":
        return "reference"
    if backend == "auto" and not x.is_cuda:
        return "reference"
    if not x.is_cuda and not triton_interpreter_enabled():
        raise ValueError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on the "
            f"CPU through Triton's interpreter); x is on {x.device}"
        )
    if reason is not None:
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"convlstm_triton: the Triton kernels do not support {reason}; "
                          "falling back to the PyTorch reference implementation", stacklevel=3)
        return "reference"
    return "triton"


def conv_lstm(x, kernel, recurrent_kernel, bias=None, initial_state=None, *, strides=1,
              padding="valid", dilation_rate=1, activation="tanh",
              recurrent_activation="sigmoid", go_backwards=False, mask=None, backend="auto",
              input_dropout_mask=None, recurrent_dropout_mask=None, peephole=None,
              allow_tf32=None, forward_variant="auto", recompute_gates="auto",
              cuda_graph=False):
    """ConvLSTM over a whole sequence with Keras 3 semantics.

    Args:
        x: (B, T, *spatial, C_in), channels-last, 1 to 3 spatial dims.
        kernel: (*kernel_size, C_in, 4F), gates i, f, c, o along the last axis (Keras layout).
        recurrent_kernel: (*kernel_size, F, 4F).
        bias: (4F,) or None.
        initial_state: None (zeros) or (h0, c0), each (B, *out_spatial, F).
        strides, padding ("valid"/"same", TF-style), dilation_rate: the input conv's; the
            recurrent conv is always stride 1, "same".
        activation, recurrent_activation: Keras names.
        go_backwards: process time reversed; the returned sequence is in processing order.
        mask: (B, T) bool; at a masked step state and output carry over (output zeros before
            the first unmasked step).
        backend: "auto" (CUDA -> triton, CPU -> reference), "triton", "reference".
        input_dropout_mask: (4, B, *spatial, C_in) per-gate scaled dropout masks, or None.
        recurrent_dropout_mask: (4, B, *out_spatial, F), or None.
        peephole: (3, F) per-channel peephole weights (w_ci, w_cf, w_co; Shi et al. 2015, not
            in Keras): i and f see ``+ w_ci * c_prev``, ``+ w_cf * c_prev``, o ``+ w_co * c``.
        allow_tf32: fp32 dots in TF32 where the GPU has it (NVIDIA sm_80 on, AMD gfx942:
            xf32; full fp32 elsewhere, e.g. gfx90a); default ``torch.backends.cudnn.allow_tf32``.
        forward_variant: how the Triton forward is built (backward is the same for all):
            "hoisted" (the input conv of a time chunk's frames as one GEMM, then the fused
            step kernel),
            "fused_input" (the input conv inside the step kernel's K loop: no xg tensor),
            "unfused" (hoisted, and the cell update as a separate elementwise kernel: the
            baseline that shows what fusion buys; no mask or peephole), "hoisted_four_dots" /
            "fused_input_four_dots" (the first kernel design: four gate GEMMs of N = BLOCK_F
            and a K loop per tap instead of one wide GEMM and one pipelined K loop; kept to
            measure what the new design buys), or "auto": hoisted or
            fused_input, whichever is faster for the shape, measured on its first call on a GPU
            and cached (``convlstm_triton.tuning``); hoisted where nothing can be measured.
        recompute_gates: training memory for time: backward recomputes the gate
            pre-activations step by step instead of keeping them from forward (saves
            B*T*P*4F elements, the largest saved tensor; costs one more recurrent GEMM per step
            and the input projection again). "auto": recompute where those pre-activations
            would take at least ``autograd.RECOMPUTE_MIN_BYTES`` (256 MiB), keep them below.
        cuda_graph: False, True or "auto": capture the Triton path's whole time loop (forward,
            and backward when training) in CUDA graphs on a problem's first call and replay
            them afterwards (``convlstm_triton.cuda_graphs``: cache key, memory, limits).
            True needs CUDA tensors (a ValueError otherwise); "auto" graphs CUDA problems whose
            per-step gate GEMM, 2 * B * P * 4F * prod(kernel_size) * (C_in + F) FLOP, is
            below ``cuda_graphs.AUTO_MAX_STEP_FLOP`` (2e9: launch-bound steps) and runs the
            plain path elsewhere. The reference backend, torch.compile tracing and a capture
            of the caller's own always run the plain path. Each cached graph holds about one
            call's peak memory.

    Returns:
        seq (B, T, *out_spatial, F), h (B, *out_spatial, F), c (B, *out_spatial, F); in the
        autocast dtype inside a ``torch.autocast`` region (see the module docstring).
    """
    autocast_dtype = _autocast_dtype(x) if isinstance(x, torch.Tensor) else None
    if autocast_dtype is not None:
        x, kernel, recurrent_kernel, bias, peephole, input_dropout_mask, recurrent_dropout_mask = (
            _cast(t, autocast_dtype) if isinstance(t, torch.Tensor) else t
            for t in (x, kernel, recurrent_kernel, bias, peephole, input_dropout_mask,
                      recurrent_dropout_mask))
        if isinstance(initial_state, (tuple, list)) and len(initial_state) == 2:
            # h0 in the compute dtype; c0 as given (the kernels keep c in fp32 anyway)
            h0, c0 = initial_state
            initial_state = (_cast(h0, autocast_dtype) if isinstance(h0, torch.Tensor) else h0,
                             c0)
    call = _validated(x, kernel, recurrent_kernel, bias, initial_state, mask, input_dropout_mask,
                      recurrent_dropout_mask, peephole, (
                          strides, padding, dilation_rate, activation, recurrent_activation,
                          go_backwards, backend, forward_variant, recompute_gates, cuda_graph))
    use_graph = cuda_graphs.resolve(cuda_graph, x, call.step_flop) if cuda_graph else False
    reason = call.fallback_reason
    if _resolve_backend(backend, x, reason) == "reference":
        if autocast_dtype is None:
            return _reference(x, kernel, recurrent_kernel, bias, initial_state, strides, padding,
                              dilation_rate, activation, recurrent_activation, go_backwards,
                              mask, input_dropout_mask, recurrent_dropout_mask, peephole)
        if initial_state is not None:
            initial_state = (initial_state[0], _cast(initial_state[1], x.dtype))
        with torch.autocast(x.device.type, enabled=False):
            return _reference(x, kernel, recurrent_kernel, bias, initial_state, strides, padding,
                              dilation_rate, activation, recurrent_activation, go_backwards,
                              mask, input_dropout_mask, recurrent_dropout_mask, peephole)
    if allow_tf32 is None:
        allow_tf32 = torch.backends.cudnn.allow_tf32
    return _conv_lstm_triton(x, kernel, recurrent_kernel, bias, initial_state, call, go_backwards,
                             mask, input_dropout_mask, recurrent_dropout_mask, peephole,
                             dot_precision(x.dtype, allow_tf32 and platform(x.device).tf32),
                             forward_variant,
                             recompute_gates, use_graph)


class _Call:
    """A call signature's validated arguments and what follows from them alone."""

    __slots__ = ("args", "fallback_reason", "step_flop", "geometry", "op_geometry", "act",
                 "ract")

    def __init__(self, args, x, kernel):
        self.args = args
        self.fallback_reason = _fallback_reason(x, args.activation, args.recurrent_activation)
        self.step_flop = cuda_graphs.step_flop(
            args.batch, math.prod(args.geometry.out_spatial), args.in_channels, args.filters,
            kernel.shape[:args.rank])
        if self.fallback_reason is None:
            self.geometry = KernelGeometry.from_conv(args.geometry)
            self.op_geometry = ops.geometry_to_ints(self.geometry)
            self.act = KERNEL_ACTIVATION_CODES[args.activation]
            self.ract = KERNEL_ACTIVATION_CODES[args.recurrent_activation]


_calls = {}  # validation.call_signature -> _Call
CALLS_KEPT = 1024


def _validated(x, kernel, recurrent_kernel, bias, initial_state, mask, input_dropout_mask,
               recurrent_dropout_mask, peephole, options):
    """The call's ``_Call``: validated once per call signature (``call_signature``: shapes,
    dtypes, devices, options), the mask's values at every call."""
    key = call_signature(x, kernel, recurrent_kernel, bias, initial_state, mask,
                         input_dropout_mask, recurrent_dropout_mask, peephole, options)
    call = _calls.get(key) if key is not None else None
    if call is not None:
        if mask is not None:
            check_mask_values(mask)
        return call
    strides, padding, dilation_rate, activation, recurrent_activation, go_backwards, backend, \
        forward_variant, recompute_gates, cuda_graph = options
    args = validate_conv_lstm_args(x, kernel, recurrent_kernel, bias, initial_state, strides,
                                   padding, dilation_rate, activation, recurrent_activation,
                                   go_backwards, mask, backend, input_dropout_mask,
                                   recurrent_dropout_mask, peephole, forward_variant,
                                   recompute_gates, cuda_graph)
    call = _Call(args, x, kernel)
    if key is not None:
        if len(_calls) >= CALLS_KEPT:
            _calls.clear()
        _calls[key] = call
    return call


def _reference(x, kernel, recurrent_kernel, bias, initial_state, strides, padding, dilation_rate,
               activation, recurrent_activation, go_backwards, mask, input_dropout_mask,
               recurrent_dropout_mask, peephole):
    return conv_lstm_reference(
        x, kernel, recurrent_kernel, bias, initial_state, strides=strides,
        padding=padding.lower(), dilation_rate=dilation_rate, activation=activation,
        recurrent_activation=recurrent_activation, go_backwards=go_backwards, mask=mask,
        input_dropout_mask=input_dropout_mask, recurrent_dropout_mask=recurrent_dropout_mask,
        peephole=peephole,
    )


def _conv_lstm_triton(x, kernel, recurrent_kernel, bias, initial_state, call, go_backwards, mask,
                      input_dropout_mask, recurrent_dropout_mask, peephole, precision,
                      forward_variant, recompute_gates, use_graph=False):
    args, geom = call.args, call.geometry
    B, T, C, F = args.batch, args.steps, args.in_channels, args.filters
    P = geom.out_pixels
    frames = x.reshape(B, T, *geom.in_spatial, C)
    if go_backwards:
        frames = frames.flip(1)  # one copy of x; the kernels then run in processing order
    frames = frames.contiguous()
    if initial_state is None:
        h0 = x.new_zeros((B, P, F))
        c0 = torch.zeros((B, P, F), device=x.device, dtype=torch.float32)
    else:
        h0 = initial_state[0].reshape(B, P, F).contiguous()
        c0 = initial_state[1].reshape(B, P, F)
    step_mask = None
    if mask is not None:
        step_mask = (mask.flip(1) if go_backwards else mask).to(torch.int8).contiguous()
    # Dropout masks are constant over time, so go_backwards needs no flip of them.
    xmask = hmask = None
    if input_dropout_mask is not None:
        xmask = input_dropout_mask.reshape(4, B, *geom.in_spatial, C).contiguous()
    if recurrent_dropout_mask is not None:
        hmask = recurrent_dropout_mask.reshape(4, B, P, F).contiguous()
    tensors = (frames, kernel.reshape(-1, 4 * F).contiguous(),
               recurrent_kernel.reshape(-1, 4 * F).contiguous(),
               bias.contiguous() if bias is not None else None, h0, c0,
               peephole.reshape(-1).contiguous() if peephole is not None else None,
               step_mask, xmask, hmask)
    # Keep what backward reads exactly when autograd will record the op.
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in tensors)
    if recompute_gates == "auto":  # only training keeps gates (asked only then: no shape guard)
        recompute_gates = training and autograd.recompute_by_default(B, T, P, F,
                                                                     x.element_size())
    op_config = (list(call.op_geometry), call.act, call.ract, precision, forward_variant,
                 training, not recompute_gates)
    graphed = cuda_graphs.graphed_forward(tensors, op_config, go_backwards) if use_graph else None
    if graphed is not None:
        states, h, c = graphed
    else:
        states, h, c, _, _ = ops.run_forward(*tensors, *op_config)
    seq = states
    if step_mask is not None:
        # Keras: the output carries the previous *output*, which is zero before the first
        # unmasked step, while the state stays at h0 there.
        started = step_mask.cumsum(1) > 0
        # where, not a product: NaN/Inf in h0 must not leak into the zeros (NaN * 0 = NaN)
        seq = torch.where(started[:, :, None, None], states, states.new_zeros(()))
    out_spatial = args.geometry.out_spatial
    return (seq.reshape(B, T, *out_spatial, F), h.reshape(B, *out_spatial, F),
            c.to(x.dtype).reshape(B, *out_spatial, F))
