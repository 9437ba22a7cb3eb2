"""Activation functions and their derivatives, selected by a constexpr code.

Codes (must match ``convlstm_triton/activations.py``):
    0 linear, 1 tanh, 2 sigmoid, 3 hard_sigmoid (Keras 3: clip(x/6 + 1/2, 0, 1)), 4 relu,
    5 relu6, 6 elu (alpha 1), 7 selu, 8 silu, 9 gelu (exact, erf), 10 softsign, 11 softplus,
    12 exponential, 13 hard_sigmoid_legacy (Keras 2: clip(0.2 x + 1/2, 0, 1)), 14 celu
    (alpha 1), 15 hard_shrink (threshold 1/2), 16 hard_silu, 17 hard_tanh, 18 leaky_relu
    (negative slope 0.2, Keras' default), 19 log_sigmoid, 20 mish, 21 soft_shrink (threshold
    1/2), 22 sparse_plus, 23 sparse_sigmoid, 24 squareplus (b = 4), 25 tanh_shrink.
Derivatives take the *pre-activation* x (backward recomputes from the saved pre-activations);
at kinks they follow torch's autograd of the reference (relu'(0) = 0, clip passes gradient
strictly inside, torch.where the branch it takes). NaN propagates as through torch's functions
(comparisons are written so that a NaN takes the branch that returns it). Math is fp32.
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

SELU_ALPHA: tl.constexpr = tl.constexpr(1.6732632423543772)
SELU_SCALE: tl.constexpr = tl.constexpr(1.0507009873554805)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
# libdevice has no NumPy twin in Triton's interpreter: plain division there. The switch @jit
# itself reads to choose the interpreter (at import, as @jit does).
_INTERPRETED: tl.constexpr = tl.constexpr(bool(triton.knobs.runtime.interpret))


@triton.jit
def _max(x, y):
    # NaN in -> NaN out, as torch's clamps and relu do (plain tl.maximum would drop it)
    return tl.maximum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min(x, y):
    return tl.minimum(x, y, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _exp_ftz(x):
    """e^x with results below 2^-126 flushed to 0: one FMUL and one MUFU.EX2 on NVIDIA
    (``tl.exp`` adds a compare and two scaling FMULs per call to keep denormal results)."""
    return tl.math.exp2(x * LOG2E)


@triton.jit
def _over_one_plus(num, e):
    """num / (1 + e) for e >= 0 or +inf (the logistic's denominator). A fast division (MUFU.RCP
    and a multiply, 2 ulp as the default division): where 1 + e > 2^126 it gives 0, the exact
    quotient being below 2^-124; ``/`` spends ten more instructions on that range."""
    if _INTERPRETED:
        q = num / (1.0 + e)
    else:
        q = libdevice.fast_dividef(num, 1.0 + e)
    return q


@triton.jit
def _sigmoid(x):
    # e^-x flushed below 2^-126 changes nothing: 1 + e^-x rounds to 1 long before
    return _over_one_plus(1.0, _exp_ftz(-x))


@triton.jit
def _tanh(x):
    # tanh via sigmoid: exp overflows to inf for x << 0, giving exactly -1, never NaN.
    return _over_one_plus(2.0, _exp_ftz(-2.0 * x)) - 1.0


@triton.jit
def _expm1_neg(x):
    """exp(min(x, 0)) - 1: the negative branch of elu/selu without overflow on the other."""
    return tl.exp(_min(x, 0.0)) - 1.0


@triton.jit
def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log(1 + e^-|x|), exact where e^x would overflow
    return _max(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


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
        y = _softplus(x)
    elif CODE == 12:
        y = tl.exp(x)
    elif CODE == 13:
        y = _min(_max(x * 0.2 + 0.5, 0.0), 1.0)
    elif CODE == 14:
        y = tl.where(x > 0.0, x, _expm1_neg(x))  # celu, alpha 1: elu's formula
    elif CODE == 15:
        y = tl.where((x >= -0.5) & (x <= 0.5), 0.0, x)
    elif CODE == 16:
        y = x * (_min(_max(x + 3.0, 0.0), 6.0) * (1.0 / 6.0))
    elif CODE == 17:
        y = _min(_max(x, -1.0), 1.0)
    elif CODE == 18:
        y = tl.where(x > 0.0, x, x * 0.2)
    elif CODE == 19:
        # log(sigmoid(x)) = min(x, 0) - log(1 + e^-|x|), exact where e^-x would overflow
        y = _min(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))
    elif CODE == 20:
        y = x * _tanh(_softplus(x))
    elif CODE == 21:
        y = tl.where(x > 0.5, x - 0.5, tl.where(x < -0.5, x + 0.5, x * 0.0))
    elif CODE == 22:
        y = tl.where(x <= -1.0, 0.0, tl.where(x < 1.0, 0.25 * (x + 1.0) * (x + 1.0), x))
    elif CODE == 23:
        y = tl.where(x <= -1.0, 0.0, tl.where(x >= 1.0, 1.0, 0.5 * (x + 1.0)))
    elif CODE == 24:
        y = (x + tl.sqrt(x * x + 4.0)) * 0.5
    elif CODE == 25:
        y = x - _tanh(x)
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
    elif CODE == 14:
        g = tl.where(x > 0.0, 1.0, tl.exp(_min(x, 0.0)))
    elif CODE == 15 or CODE == 21:  # hard_shrink, soft_shrink
        g = tl.where((x >= -0.5) & (x <= 0.5), 0.0, 1.0)
    elif CODE == 16:
        g = tl.where(x < -3.0, 0.0, tl.where(x <= 3.0, x * (1.0 / 3.0) + 0.5, 1.0))
    elif CODE == 17:
        g = tl.where((x <= -1.0) | (x >= 1.0), 0.0, 1.0)
    elif CODE == 18:
        g = tl.where(x > 0.0, 1.0, 0.2)
    elif CODE == 19:
        g = _sigmoid(-x)
    elif CODE == 20:
        t = _tanh(_softplus(x))
        g = t + x * (1.0 - t * t) * _sigmoid(x)
    elif CODE == 22:
        g = tl.where(x <= -1.0, 0.0, tl.where(x < 1.0, 0.5 * (x + 1.0), 1.0))
    elif CODE == 23:
        g = tl.where((x <= -1.0) | (x >= 1.0), 0.0, 0.5)
    elif CODE == 24:
        g = 0.5 + 0.5 * x / tl.sqrt(x * x + 4.0)
    elif CODE == 25:
        t = _tanh(x)
        g = t * t
    else:
        g = x * 0.0 + 1.0
    return g
