"""Switching a trained model's ConvLSTM layers between the Triton kernels and the plain-torch
reference, e.g. before an ONNX export (ONNX has no Triton kernels; the reference is plain torch
ops with the same semantics and the same weights)."""

from torch import nn


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set ``backend`` on every ConvLSTM layer of ``model`` (``ConvLSTM1D/2D/3D``,
    ``ConvLSTM``, ``ConvLSTMCell``, ``compat``'s cells, also inside a ``keras.load_model``
    module); returns
    ``model``. Weights, buffers and state are untouched."""
    from . import compat
    from .keras.layers import _ConvLSTM
    from .torch_modules import ConvLSTM, ConvLSTMCell, _check_backend

    _check_backend(backend)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = 0
    for module in model.modules():
        if isinstance(module, (_ConvLSTM, ConvLSTM, ConvLSTMCell, compat.ConvLSTMCell)):
            module.backend = backend
            found += 1
    if not found:
        raise ValueError(f"model ({type(model).__name__}) holds no ConvLSTM layer of this "
                         "library")
    return model
