"""Activation functions and their derivatives, selected by a constexpr code.

Codes (must match ``convlstm_triton/activations.py``):
    0 linear, 1 tanh, 2 sigmoid, 3 hard_sigmoid (Keras 3: clip(x/6 + 1/2, 0, 1)), 4 relu.
Every supported activation's derivative is a function of its output ``y``, so backward needs only
the saved activated gates, never the pre-activations. Math is done in fp32.
"""

import triton
import triton.language as tl


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh via sigmoid: exp overflows to inf for x << 0, giving exactly -1, never NaN.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def activate(x, CODE: tl.constexpr):
    if CODE == 1:
        y = _tanh(x)
    elif CODE == 2:
        y = _sigmoid(x)
    elif CODE == 3:
        y = tl.minimum(tl.maximum(x * (1.0 / 6.0) + 0.5, 0.0), 1.0)
    elif CODE == 4:
        y = tl.maximum(x, 0.0)
    else:
        y = x
    return y


@triton.jit
def activation_grad_from_output(y, CODE: tl.constexpr):
    """d act(x) / dx expressed through y = act(x)."""
    if CODE == 1:
        g = 1.0 - y * y
    elif CODE == 2:
        g = y * (1.0 - y)
    elif CODE == 3:
        # torch's hardsigmoid passes gradient strictly inside (-3, 3), i.e. 0 < y < 1.
        g = tl.where((y > 0.0) & (y < 1.0), 1.0 / 6.0, 0.0)
    elif CODE == 4:
        g = tl.where(y > 0.0, 1.0, 0.0)
    else:
        g = y * 0.0 + 1.0
    return g
