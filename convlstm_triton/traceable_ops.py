"""The inference forward as a ``torch.library.triton_op``: a program exported for serving holds
the Triton kernels themselves, so that AOTInductor compiles them into its package (which then
loads and runs without ``import convlstm_triton``).

``torch.ops.convlstm_triton.forward_inference`` takes the forward op's arguments up to
``variant`` (``ops.FORWARD_SCHEMA``, without ``training`` / ``save_preact``) and returns
(states, h_T, c_T). Its implementation is the forward op's own (``ops._sequence_forward``, no
cell states or pre-activations kept) with every launch made through
``torch.library.wrap_triton`` (``launch_plans.traceable_launches``): ``torch.export`` keeps it
as one op in the program (serializable, runnable in Python); ``run_decompositions(
decompose_custom_triton_ops=True)`` and AOTInductor see its kernels, one node per launch.

Only static shapes are traced this way (``usable``): the launchers' tile and time-chunk
arithmetic on a symbolic batch or length would specialize it, so a program exported with a
dynamic dimension keeps the opaque ``convlstm_triton::forward`` (and needs this library to
load), as before; so does one exported under Triton's interpreter (CPU), whose kernels are
Python functions that cannot be traced. Configs: the tuning cache's (tune ahead on the GPU
before exporting), else each kernel's default, said once; no tensor-descriptor (TMA) variant
and no timed choice of variant (``"auto"`` is ``"hoisted"``).
"""


import torch
from triton.runtime.jit import JITFunction

from . import ops
from .kernels import step_forward as step_forward_kernels
from .launch_plans import traceable_launches

__all__ = ["forward_inference", "usable", "run"]

try:  # private: False while the op runs eagerly (triton_op's own kernel), True while traced
    from torch._library.triton import is_wrap_triton_enabled
except ImportError:  # pragma: no cover - a torch without it: always the traceable launches
    def is_wrap_triton_enabled():
        return True

# variants whose launches cannot be traced -> the variant run instead: "auto" picks hoisted or
# fused_input by timing, which a trace cannot do; the TMA twin computes the hoisted variant's
# tiles through tensor descriptors, which a traced launch cannot build
_TRACED_VARIANT = {"auto": "hoisted", "hoisted_tma": "hoisted"}


@torch.library.triton_op("convlstm_triton::forward_inference", mutates_args=())
def forward_inference(x: torch.Tensor, kernel2d: torch.Tensor, recurrent_kernel2d: torch.Tensor,
                      bias: torch.Tensor | None, h0: torch.Tensor, c0: torch.Tensor,
                      peephole: torch.Tensor | None, mask: torch.Tensor | None,
                      xmask: torch.Tensor | None, hmask: torch.Tensor | None,
                      geometry: list[int], act: int, ract: int, precision: str,
                      variant: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    args = (x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole, mask, xmask, hmask,
            geometry, act, ract, precision, _TRACED_VARIANT.get(variant, variant), False, False)
    if not is_wrap_triton_enabled():
        # the op run eagerly (an exported program in Python): the usual launches, plans and all
        states, h, c, _, _ = ops._sequence_forward(*args)
        return states, h, c
    with traceable_launches():
        states, h, c, _, _ = ops._sequence_forward(*args)
    return states, h, c


def _refuse_backward(ctx, *grads):
    raise RuntimeError(
        "convlstm_triton: this ConvLSTM ran its inference forward, which keeps nothing for "
        "a backward pass: the program was traced or exported under torch.no_grad() (or "
        "inference mode). To train through it, trace or export it with grad enabled.")


# a program exported under no_grad may run with grad enabled (its outputs then require grad);
# only a backward through it is refused
torch.library.register_autograd("convlstm_triton::forward_inference", _refuse_backward,
                                setup_context=lambda ctx, inputs, output: None)


def usable(args):
    """Whether the forward op's call ``args`` (``ops.FORWARD_SCHEMA``) goes through
    ``forward_inference``: an inference call (``training`` False) being exported, its tensors
    of static shapes."""
    return (not args[15] and torch.compiler.is_exporting() and _kernels_traceable()
            and all(isinstance(s, int) for t in args[:10] if t is not None for s in t.shape))


def _kernels_traceable():
    # under TRITON_INTERPRET, @triton.jit made InterpretedFunctions, which wrap_triton runs as is
    return isinstance(step_forward_kernels.step_forward_kernel, JITFunction)


def run(*args):
    """``ops.forward(*args)``'s five outputs through ``forward_inference`` (see ``usable``):
    c_all and preact are empty, as the forward op leaves them in inference."""
    states, h, c = forward_inference(*args[:15])
    x = args[0]
    return states, h, c, x.new_empty((0,), dtype=torch.float32), x.new_empty((0,))
