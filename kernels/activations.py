"""Activation functions and their derivatives, selected by a constexpr code.

Codes (must match ``convlstm_triton/activations.py``):
    0 linear, 1 tanh, 2 sigmoid, 3 hard_sigmoid (Keras 3: clip(x/6 + 1/2, 0, 1)), 4 relu,
    5 relu6, 6 elu (alpha 1), 7 selu, 8 silu, 9 gelu (exact, erf), 10 softsign, 11 softplus,
    12 exponential, 13 hard_sigmoid_legacy (Keras 2: clip(0.2 x + 1/2, 0, 1)).
Derivatives take the *pre-activation* x (backward recomputes from the saved pre-activations);
at kinks they follow torch's autograd (relu'(0) = 0, clip passes gradient strictly inside).
Math is fp32.
"""

import triton
import triton.language as tl

SELU_ALPHA: tl.constexpr = tl.constexpr(1.6732632423543772)
SELU_SCALE: tl.constexpr = tl.constexpr(1.0507009873554805)


@triton.jit
def _max(x, y):
    # NaN in -> NaN out, as torch's clamps and relu do (plain tl.maximum would drop it)
    return tl.maximum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min(x, y):
    return tl.minimum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh via sigmoid: exp overflows to inf for x << 0, giving exactly -1, never NaN.
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _expm1_neg(x):
    """exp(min(x, 0)) - 1: the negative branch of elu/selu without overflow on the other."""
    return tl.exp(_min(x, 0.0)) - 1.0


@triton.jit
def activate(x, CODE: tl.constexpr):
    if CODE == 1:
        y = _tanh(x)
    elif CODE == 2:
        y = _sigmoid(x)
    elif CODE == 3:
        y = _min(_max(x * (1.0 / 6.0) + 0.5, 0.0), 1.0)
    elif CODE == 4:
        y = _max(x, 0.0)
    elif CODE == 5:
        y = _min(_max(x, 0.0), 6.0)
    elif CODE == 6:
        y = tl.where(x > 0.0, x, _expm1_neg(x))
    elif CODE == 7:
        y = SELU_SCALE * tl.where(x > 0.0, x, SELU_ALPHA * _expm1_neg(x))
    elif CODE == 8:
        y = x * _sigmoid(x)
    elif CODE == 9:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif CODE == 10:
        y = x / (1.0 + tl.abs(x))
    elif CODE == 11:
        # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), exact where e^x would overflow
        y = _max(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
    elif CODE == 12:
        y = tl.exp(x)
    elif CODE == 13:
        y = _min(_max(x * 0.2 + 0.5, 0.0), 1.0)
    else:
        y = x
    return y


@triton.jit
def activation_grad(x, CODE: tl.constexpr):
    """d act(x) / dx at the pre-activation x."""
    if CODE == 1:
        t = _tanh(x)
        g = 1.0 - t * t
    elif CODE == 2:
        s = _sigmoid(x)
        g = s * (1.0 - s)
    elif CODE == 3:
        g = tl.where((x > -3.0) & (x < 3.0), 1.0 / 6.0, 0.0)
    elif CODE == 4:
        g = tl.where(x > 0.0, 1.0, 0.0)
    elif CODE == 5:
        g = tl.where((x > 0.0) & (x < 6.0), 1.0, 0.0)
    elif CODE == 6:
        g = tl.where(x > 0.0, 1.0, tl.exp(_min(x, 0.0)))
    elif CODE == 7:
        g = SELU_SCALE * tl.where(x > 0.0, 1.0, SELU_ALPHA * tl.exp(_min(x, 0.0)))
    elif CODE == 8:
        s = _sigmoid(x)
        g = s * (1.0 + x * (1.0 - s))
    elif CODE == 9:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        g = cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif CODE == 10:
        d = 1.0 + tl.abs(x)
        g = 1.0 / (d * d)
    elif CODE == 11:
        g = _sigmoid(x)
    elif CODE == 12:
        g = tl.exp(x)
    elif CODE == 13:
        g = tl.where((x > -2.5) & (x < 2.5), 0.2, 0.0)
    else:
        g = x * 0.0 + 1.0
    return g
