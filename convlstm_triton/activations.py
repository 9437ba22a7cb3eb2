"""Activation names (Keras spelling) -> torch functions for the reference, codes for the kernels.

The kernel codes must match ``kernels/activations.py``. Every kernel-supported activation has a
derivative that is a function of its *output*, which lets backward use the saved activated gates.
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
}

TORCH_ACTIVATIONS = {
    "linear": lambda x: x,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "relu": torch.relu,
}


def check_activation(name, argument):
    """``name`` if it is a supported activation, else a ValueError naming ``argument``."""
    if not isinstance(name, str):
        raise TypeError(
            f"{argument} must be an activation name (one of {sorted(TORCH_ACTIVATIONS)}), "
            f"got {type(name).__name__}"
        )
    if name not in TORCH_ACTIVATIONS:
        raise ValueError(
            f"{argument}={name!r} is not a supported activation; "
            f"expected one of {sorted(TORCH_ACTIVATIONS)}"
        )
    return name


def torch_activation(name):
    return TORCH_ACTIVATIONS[check_activation(name, "activation")]


def kernel_activation_code(name):
    return KERNEL_ACTIVATION_CODES[check_activation(name, "activation")]
