"""Activation names (Keras spelling) -> torch functions for the reference, codes for the kernels.

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
}
ALIASES = {"swish": "silu"}

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
    "gelu": F.gelu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "exponential": torch.exp,
    "hard_sigmoid_legacy": lambda x: torch.clamp(0.2 * x + 0.5, 0.0, 1.0),
}


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
    if name not in TORCH_ACTIVATIONS:
        raise ValueError(
            f"{argument}={name!r} is not a supported activation; "
            f"expected one of {sorted(TORCH_ACTIVATIONS) + sorted(ALIASES)}"
        )
    return name


def torch_activation(name):
    name = check_activation(name, "activation")
    return name if callable(name) else TORCH_ACTIVATIONS[name]
