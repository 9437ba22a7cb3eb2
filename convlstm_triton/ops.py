"""The Triton path as ``torch.library`` custom ops, so that ``torch.compile(fullgraph=True)``
treats a whole ConvLSTM sequence as two opaque ops (forward, backward) instead of tracing into
Python time loops and Triton launches.

``torch.ops.convlstm_triton.forward`` (schema ``FORWARD_SCHEMA``) -> (states, h_T, c_T, c_all,
preact) and ``torch.ops.convlstm_triton.backward`` (``BACKWARD_SCHEMA``) -> the 7 gradients of
``autograd.GRAD_INPUTS``. Non-tensor configuration travels as plain op arguments:

* ``geometry``: ``int[21]`` = the ``KernelGeometry`` tuples in_spatial, out_spatial,
  kernel_size, strides, pads, dilation, recurrent_pads, each in the kernels' (D, H, W) view;
* ``act``, ``ract``: kernel activation codes (``activations.KERNEL_ACTIVATION_CODES``);
* ``precision``: "ieee" or "tf32"; ``variant``: "hoisted", "fused_input", "unfused" or "auto"
  (resolved inside the op, by measurement on a GPU, see ``choose_forward_variant``);
* forward: ``training`` (keep c_all and preact for backward) and ``save_preact``;
  backward: ``needs``, ``bool[7]``, which gradients to compute.

Optional tensors (bias, peephole, mask, dropout masks; preact in backward) are ``Tensor?``.
The fake implementations give the outputs' shapes, dtypes and (contiguous) strides; outputs not
produced (a gradient not needed, preact not kept) are empty fp32 / compute-dtype tensors.
Autograd: ``autograd.setup_context`` / ``autograd.backward`` via ``register_autograd``.
Autocast is not registered: ``functional.conv_lstm`` casts the inputs before calling the op.
"""

import torch

from . import autograd, func_transforms, tuning
from .autograd import FORWARD_VARIANT_FLAGS, StepSpec
from .launchers import KernelGeometry

__all__ = ["forward", "backward", "geometry_to_ints", "geometry_from_ints",
           "choose_forward_variant", "FORWARD_SCHEMA", "BACKWARD_SCHEMA"]

_GEOMETRY_FIELDS = ("in_spatial", "out_spatial", "kernel_size", "strides", "pads", "dilation",
                    "recurrent_pads")

FORWARD_SCHEMA = (
    "(Tensor x, Tensor kernel2d, Tensor recurrent_kernel2d, Tensor? bias, Tensor h0, Tensor c0, "
    "Tensor? peephole, Tensor? mask, Tensor? xmask, Tensor? hmask, int[] geometry, int act, "
    "int ract, str precision, str variant, bool training, bool save_preact) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(Tensor? d_states, Tensor? d_h, Tensor? d_c, Tensor x, Tensor kernel2d, "
    "Tensor recurrent_kernel2d, Tensor? bias, Tensor h0, Tensor states, Tensor c_all, "
    "Tensor? preact, Tensor? peephole, Tensor? mask, Tensor? xmask, Tensor? hmask, "
    "int[] geometry, int act, int ract, str precision, str variant, bool[] needs) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def geometry_to_ints(geom: KernelGeometry):
    if torch.compiler.is_compiling():  # id() of a traced object is not the object's
        return [int(v) for field in _GEOMETRY_FIELDS for v in getattr(geom, field)]
    ints = _geometry_ints.get(id(geom))
    if ints is None or ints[0] is not geom:
        ints = (geom, [int(v) for field in _GEOMETRY_FIELDS for v in getattr(geom, field)])
        if len(_geometry_ints) < 4096:
            _geometry_ints[id(geom)] = ints
    return list(ints[1])


_geometry_ints = {}  # id(KernelGeometry) -> (it, its ints): launches ask for the same ones


def geometry_from_ints(ints) -> KernelGeometry:
    ints = [int(v) for v in ints]
    return KernelGeometry(*(tuple(ints[3 * i: 3 * i + 3]) for i in range(len(_GEOMETRY_FIELDS))))


def _out_pixels(geometry):
    return geometry[3] * geometry[4] * geometry[5]


def _contiguous(*tensors):
    return tuple(t.contiguous() if t is not None else None for t in tensors)


def _spec(geometry, act, ract, precision, variant, save_preact=True):
    # "auto" reaches here only in a backward that recomputes nothing (no variant is launched)
    input_variant, fused_cell, four_dots, tma = FORWARD_VARIANT_FLAGS[
        "hoisted" if variant == "auto" else variant]
    return StepSpec(geometry_from_ints(geometry), act, ract, precision,
                    input_variant=input_variant, fused_cell=fused_cell, four_dots=four_dots,
                    tma=tma, save_preact=save_preact)


def choose_forward_variant(tensors, geometry, act, ract, precision):
    """"hoisted" or "fused_input", whichever runs this shape's forward faster, measured once per
    shape on a GPU and cached with the kernel configs (``convlstm_triton.tuning``); "hoisted"
    without a GPU to measure on. ``tensors``: the forward op's first 10 arguments."""
    x, _, recurrent_kernel2d, bias, _, _, peephole, mask, xmask, hmask = tensors
    geom = geometry_from_ints(geometry)
    key = (tuning.bucket(x.shape[0] * x.shape[1] * geom.out_pixels), x.shape[-1],
           recurrent_kernel2d.shape[1] // 4, geom.kernel_size, geom.strides, geom.dilation,
           str(x.dtype).removeprefix("torch."), precision, bias is not None,
           peephole is not None, mask is not None, xmask is not None, hmask is not None)
    configs = [{"variant": "hoisted"}, {"variant": "fused_input"}]

    def run(cfg):
        spec = _spec(geometry, act, ract, precision, cfg["variant"])
        with torch.no_grad():
            autograd.sequence_forward(*tensors, spec, False)

    return tuning.pick_config("forward_variant", key, configs, run, x.device)["variant"]


def forward_impl(*args):
    """The forward op's implementation (``forward``'s, and ``run_forward``'s when training in
    eager mode): ``_sequence_forward`` with the buffers not kept as empty tensors."""
    states, h, c, c_all, preact = _sequence_forward(*args)
    x = args[0]
    if c_all is None:
        c_all = x.new_empty((0,), dtype=torch.float32)
    if preact is None:
        preact = x.new_empty((0,))
    return states, h, c, c_all, preact


def _sequence_forward(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask,
                      hmask, geometry, act, ract, precision, variant, training, save_preact):
    """``autograd.sequence_forward`` of the op's arguments: (states, h, c, c_all or None,
    preact or None)."""
    # The caller passes these contiguous; a compiler may hand over other strides.
    x, kernel2d, recurrent_kernel2d, bias, h0, peephole, mask, xmask, hmask = _contiguous(
        x, kernel2d, recurrent_kernel2d, bias, h0, peephole, mask, xmask, hmask)
    tensors = (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask)
    # the call's launch plans and spec (its variant chosen, once per problem)
    problem = autograd.problem_plans("forward", (tuple(geometry), act, ract, precision, variant,
                                                 training, save_preact), tensors)
    spec = problem.get("spec")
    if spec is None:
        if variant == "auto":
            variant = choose_forward_variant(tensors, geometry, act, ract, precision)
        spec = problem["spec"] = _spec(geometry, act, ract, precision, variant, save_preact)
    return autograd.sequence_forward(*tensors, spec, training, problem)


forward = torch.library.custom_op("convlstm_triton::forward", mutates_args=(),
                                  schema=FORWARD_SCHEMA)(forward_impl)


@forward.register_fake
def _(x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask, geometry,
      act, ract, precision, variant, training, save_preact):
    B, T = x.shape[:2]
    P = _out_pixels(geometry)
    F = recurrent_kernel2d.shape[1] // 4
    f32 = torch.float32
    states = x.new_empty((B, T, P, F))
    h = x.new_empty((B, P, F))
    c = x.new_empty((B, P, F), dtype=f32)
    c_all = x.new_empty((B, T + 1, P, F) if training else (0,), dtype=f32)
    preact = x.new_empty((B, T, P, 4 * F) if training and save_preact else (0,))
    return states, h, c, c_all, preact


def backward_impl(d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states,
                  c_all, preact, peephole, mask, xmask, hmask, geometry, act, ract, precision,
                  variant, needs):
    """The backward op's implementation (``backward``'s, and ``run_forward``'s autograd
    formula in eager mode)."""
    (x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, preact, peephole, mask, xmask,
     hmask) = _contiguous(x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, preact,
                          peephole, mask, xmask, hmask)
    needs = list(needs)
    problem = autograd.problem_plans(
        "backward", (tuple(geometry), act, ract, precision, variant, tuple(needs)),
        (d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, preact,
         peephole, mask, xmask, hmask))
    spec = problem.get("spec")
    if spec is None:
        if variant == "auto" and preact is None:
            # only the recomputation depends on the variant: the cached choice of forward
            tensors = (x, kernel2d, recurrent_kernel2d, bias, h0, c_all[:, 0], peephole, mask,
                       xmask, hmask)
            variant = choose_forward_variant(tensors, geometry, act, ract, precision)
        spec = problem["spec"] = _spec(geometry, act, ract, precision, variant,
                                       save_preact=preact is not None)
    return autograd.sequence_backward(d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias,
                                      h0, states, c_all, preact, peephole, mask, xmask, hmask,
                                      spec, needs, problem)


backward = torch.library.custom_op("convlstm_triton::backward", mutates_args=(),
                                   schema=BACKWARD_SCHEMA)(backward_impl)


@backward.register_fake
def _(d_states, d_h, d_c, x, kernel2d, recurrent_kernel2d, bias, h0, states, c_all, preact,
      peephole, mask, xmask, hmask, geometry, act, ract, precision, variant, needs):
    f32 = torch.float32

    def grad(shape, need, dtype=f32):
        return x.new_empty(shape if need else (0,), dtype=dtype if need else f32)

    B, P, F = h0.shape
    return (grad(x.shape, needs[0], x.dtype), grad(kernel2d.shape, needs[1]),
            grad(recurrent_kernel2d.shape, needs[2]),
            grad(bias.shape if bias is not None else (0,), needs[3] and bias is not None),
            grad((B, P, F), needs[4]), grad((B, P, F), needs[5]),
            grad(peephole.shape if peephole is not None else (0,),
                 needs[6] and peephole is not None))


torch.library.register_autograd("convlstm_triton::forward", autograd.backward,
                                setup_context=autograd.setup_context)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("convlstm_triton: double backward through the Triton kernels is not "
                       "implemented (the backward op is once_differentiable); use "
                       "backend='reference' for higher-order gradients")


torch.library.register_autograd("convlstm_triton::backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------------------------------------
# Eager mode without the dispatcher


def run_forward(*args):
    """``forward(*args)`` (in plain eager mode without autograd, c_all and preact are None: the
    caller reads neither). In plain eager mode the op's implementation runs directly (through
    an autograd.Function with the op's autograd formula when training), which saves the custom
    op's Python dispatch (~60 µs a call, and as much in backward): same kernels, same results.
    Whatever must see one opaque op goes through it: torch.compile and jit tracing, functorch
    transforms, dispatch and torch-function modes, tensor subclasses."""
    if not _plain_eager(args[:10]):
        if traceable_ops.usable(args):  # exported for serving: the kernels in the program
            return traceable_ops.run(*args)
        if (torch._C._are_functorch_transforms_active()
                and not torch.compiler.is_compiling()):
            return func_transforms.forward(*args)  # the op's autograd cannot run there
        return forward(*args)
    if args[15]:  # training: autograd records it
        return _Sequence.apply(*args)
    return _sequence_forward(*args)  # c_all and preact None: nothing reads them


def _plain_eager(tensors):
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack()):
        return False
    return all(t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter
               for t in tensors)


class _Sequence(torch.autograd.Function):
    """The forward op as an autograd.Function for eager mode (``run_forward``): the op's
    implementation and autograd formula; backward calls the backward op's implementation
    directly, or the op itself where a graph of the gradients is asked for
    (``create_graph=True``), whose own formula then refuses double backward as always.
    ``forward(ctx, ...)`` rather than a separate ``setup_context``: with one, every ``apply``
    binds its arguments through ``inspect.signature`` (~10 µs a call)."""

    @staticmethod
    def forward(ctx, *args):
        output = forward_impl(*args)
        autograd.setup_context(ctx, args, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            return autograd.backward(ctx, *grads)
        return autograd.backward(ctx, *grads, backward_op=backward_impl)


# the inference forward as a triton_op, for export (it calls _sequence_forward above)
from . import traceable_ops  # noqa: E402
