"""The Triton path under torch.func transforms (grad, vjp, vmap, jacrev, functional_call).

A custom op's autograd registration cannot run under functorch transforms (its autograd.Function
has no ``setup_context``), and Triton kernels cannot take vmap's batched tensors. Here the
forward and the backward are autograd.Functions of their own with ``setup_context`` and an
explicit ``vmap`` rule: a vmapped dimension is looped over, one call of the kernels per slice,
stacked (samples are independent, so per-sample results are exact; the loop costs a call per
slice). So ``vmap(grad(loss))`` gives per-sample gradients, and ``vmap`` over a stacked ensemble
of weights runs each member. Forward-mode AD (``jvp``, ``jacfwd``) and double backward are not
implemented by the kernels: a clear error says so (``backend="reference"`` has both).
"""

import torch

from . import autograd

_NO_FORWARD_AD = ("convlstm_triton: forward-mode AD (torch.func.jvp, jacfwd) is not implemented "
                  "by the Triton kernels; use reverse mode (grad, vjp, jacrev) or "
                  "backend='reference'")


def _loop_vmap(apply, info, in_dims, args):
    """vmap by a loop: ``apply`` on each slice of the vmapped dim, outputs stacked on dim 0."""
    results = []
    for i in range(info.batch_size):
        results.append(apply(*[
            a.select(d, i) if d is not None and isinstance(a, torch.Tensor) else a
            for a, d in zip(args, in_dims)]))
    outputs, dims = [], []
    for parts in zip(*results):
        if all(p is None for p in parts):
            outputs.append(None)
            dims.append(None)
        else:
            outputs.append(torch.stack(parts))
            dims.append(0)
    return tuple(outputs), tuple(dims)


class _Sliced(torch.autograd.Function):
    """A Function run slice by slice under vmap, without forward-mode AD."""

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_FORWARD_AD)

    @classmethod
    def vmap(cls, info, in_dims, *args):
        return _loop_vmap(cls.apply, info, in_dims, args)


class _Forward(_Sliced):
    """``torch.ops.convlstm_triton.forward`` with its autograd formula, for functorch."""

    @staticmethod
    def forward(*args):
        from .ops import forward_impl

        return forward_impl(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        autograd.setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, *grads):
        return autograd.backward(ctx, *grads, backward_op=_Backward.apply)


class _Backward(_Sliced):
    """``torch.ops.convlstm_triton.backward`` (once differentiable), for functorch."""

    @staticmethod
    def forward(*args):
        from .ops import backward_impl

        return tuple(backward_impl(*args))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("convlstm_triton: double backward through the Triton kernels is "
                           "not implemented (the backward is once differentiable); use "
                           "backend='reference' for higher-order gradients")


def forward(*args):
    """The forward op under functorch transforms (see the module docstring)."""
    return _Forward.apply(*args)
