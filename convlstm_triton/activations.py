"""Activation names (Keras spelling) -> torch functions for the reference, codes for the kernels.

The torch functions take the gate tensors channels-first, (B, F, *spatial), as the reference and
the eager peers hold them: the channel-wise activations (softmax, log_softmax, sparsemax: Keras
applies them over the last axis of its channels-last gate tensors, the F channels) reduce over
dim 1. They run on the reference only (the kernels work per element).

The kernel codes must match ``kernels/activations.py``. Backward recomputes every activation and
its derivative from the saved pre-activation, so any elementwise function can be a kernel code.
"""

import torch
import torch.nn.functional as F

# name -> constexpr code understood by kernels/activations.py
KERNEL_ACTIVATION_CODES = {
    "linear": 0,
    "tanh": 1,
    "sigmoid": 2,
    "hard_sigmoid": 3,  # Keras 3: clip(x / 6 + 0.5, 0, 1)
    "relu": 4,
    "relu6": 5,
    "elu": 6,  # alpha = 1 (Keras default)
    "selu": 7,
    "silu": 8,
    "gelu": 9,  # exact (erf), Keras' default approximate=False
    "softsign": 10,
    "softplus": 11,
    "exponential": 12,
    "hard_sigmoid_legacy": 13,  # Keras 2: clip(0.2 x + 0.5, 0, 1)
    # Keras 3's other elementwise activations, with Keras' defaults for their parameters
    "celu": 14,  # alpha = 1
    "hard_shrink": 15,  # threshold = 0.5
    "hard_silu": 16,  # x * hard_sigmoid(x)
    "hard_tanh": 17,
    "leaky_relu": 18,  # negative_slope = 0.2 (Keras' default; torch's is 0.01)
    "log_sigmoid": 19,
    "mish": 20,
    "soft_shrink": 21,  # threshold = 0.5
    "sparse_plus": 22,
    "sparse_sigmoid": 23,
    "squareplus": 24,  # b = 4
    "tanh_shrink": 25,
}
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}
# Keras activations that cannot be a gate activation: they change the channel count (glu
# halves it) or need arguments without defaults (threshold)
NOT_GATE_ACTIVATIONS = {
    "glu": "it halves the channel axis (Keras cannot use it as a ConvLSTM activation either)",
    "threshold": "it has no default threshold and value (Keras cannot use it by name either)",
}

# gelu(+inf) is +inf (as the kernels compute it): torch's own gives NaN on contiguous tensors
# (its vectorized path) but +inf on strided ones, so the reference's result would depend on
# memory layout.
TORCH_ACTIVATIONS = {
    "linear": lambda x: x,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "relu": torch.relu,
    "relu6": F.relu6,
    "elu": F.elu,
    "selu": F.selu,
    "silu": F.silu,
    "gelu": lambda x: torch.where(x == float("inf"), x, F.gelu(x)),
    "softsign": F.softsign,
    "softplus": F.softplus,
    "exponential": torch.exp,
    "hard_sigmoid_legacy": lambda x: torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
    # as Keras 3's torch backend computes them (keras/src/backend/torch/nn.py)
    "celu": F.celu,
    "hard_shrink": lambda x: F.hardshrink(x, 0.5),
    "hard_silu": F.hardswish,
    "hard_tanh": F.hardtanh,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "log_sigmoid": F.logsigmoid,
    "mish": lambda x: x * torch.tanh(F.softplus(x)),
    "soft_shrink": lambda x: F.softshrink(x, 0.5),
    "sparse_plus": lambda x: torch.where(
        x <= -1, torch.zeros_like(x), torch.where(x < 1, 0.25 * (x + 1) ** 2, x)),
    "sparse_sigmoid": lambda x: torch.where(
        x <= -1, torch.zeros_like(x), torch.where(x >= 1, torch.ones_like(x), 0.5 * (x + 1))),
    "squareplus": lambda x: (x + torch.sqrt(x * x + 4)) / 2,
    "tanh_shrink": F.tanhshrink,
    # channel-wise: over dim 1, the channels (see the module docstring)
    "softmax": lambda x: torch.softmax(x, dim=1),
    "log_softmax": lambda x: torch.log_softmax(x, dim=1),
    "sparsemax": lambda x: _sparsemax(x, dim=1),
}
# the activations that are not elementwise (no kernel code: the reference runs them)
CHANNEL_WISE_ACTIVATIONS = ("softmax", "log_softmax", "sparsemax")


def _sparsemax(x, dim):
    """Keras 3's sparsemax (keras/src/backend/torch/nn.py), along ``dim``."""
    z, _ = torch.sort(x, dim=dim, descending=True)
    cumsum = torch.cumsum(z, dim=dim)
    shape = [1] * x.dim()
    shape[dim] = -1
    r = torch.arange(1, x.shape[dim] + 1, device=x.device, dtype=x.dtype).view(shape)
    support = z - (cumsum - 1) / r > 0
    k = torch.sum(support, dim=dim, keepdim=True)
    tau = (torch.sum(torch.where(support, cumsum, torch.zeros_like(cumsum)), dim=dim,
                     keepdim=True) - 1) / k
    return torch.clamp(x - tau, min=0.0)


def check_activation(name, argument):
    """The canonical name of a supported activation (or a callable, which only the reference
    runs), else a ValueError/TypeError naming ``argument``."""
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"{argument} must be an activation name (one of {sorted(TORCH_ACTIVATIONS)}) or a "
            f"callable, got {type(name).__name__}"
        )
    name = ALIASES.get(name, name)
    if name in NOT_GATE_ACTIVATIONS:
        raise ValueError(f"{argument}={name!r} cannot be a ConvLSTM gate activation: "
                         f"{NOT_GATE_ACTIVATIONS[name]}")
    if name not in TORCH_ACTIVATIONS:
        raise ValueError(
            f"{argument}={name!r} is not a supported activation; "
            f"expected one of {sorted(TORCH_ACTIVATIONS) + sorted(ALIASES)}"
        )
    return name


def torch_activation(name):
    name = check_activation(name, "activation")
    return name if callable(name) else TORCH_ACTIVATIONS[name]
