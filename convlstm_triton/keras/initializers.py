"""Keras 3 weight initializers by name, in torch.

Every initializer fills a tensor of a *Keras* weight shape (``kernel_size + (C_in, 4F)`` for a
ConvLSTM kernel) with Keras' fan computation (``keras/src/initializers/random_initializers.py``,
``compute_fans``): for a shape of rank >= 3 (a conv kernel ``(*k, in, out)``)
``fan_in = prod(k) * in`` and ``fan_out = prod(k) * out``; rank 2 ``(in, out)``; rank 1
``fan_in = fan_out = shape[0]``.

Known names (Keras spelling; Keras' aliases ``normal``, ``uniform``, ``zero``, ``one`` and the
CamelCase class names are accepted too)::

    glorot_uniform   U(-l, l),  l = sqrt(6 / (fan_in + fan_out))
    glorot_normal    truncated normal, stddev = sqrt(2 / (fan_in + fan_out)) / 0.8796...
    he_uniform       U(-l, l),  l = sqrt(6 / fan_in)
    he_normal        truncated normal, stddev = sqrt(2 / fan_in) / 0.8796...
    lecun_uniform    U(-l, l),  l = sqrt(3 / fan_in)
    lecun_normal     truncated normal, stddev = sqrt(1 / fan_in) / 0.8796...
    orthogonal       QR of a normal matrix on the 2D flatten (prod(shape[:-1]), shape[-1]), gain 1
    zeros, ones
    constant         Constant(value=0.0): every element = value
    random_normal    N(0, 0.05)
    random_uniform   U(-0.05, 0.05)
    truncated_normal N(0, 0.05) truncated to mean +- 2 stddev

(``0.8796...`` is the stddev of a unit normal truncated to [-2, 2]; Keras divides by it so the
*truncated* distribution has the nominal variance.) The truncated normals are exactly truncated
(``torch.nn.init.trunc_normal_``); Keras' torch backend instead keeps the first of four draws that
lies in (-2, 2), which is the same distribution up to a ~4e-6 chance per element.

A dict in Keras' serialized form is accepted too, e.g. ``{"class_name": "Constant", "config":
{"value": 0.5}}`` (what ``keras.initializers.serialize`` and a Keras layer config hold; ``"module"``
and ``"registered_name"``, ``"shared_object_id"`` are ignored). Config keys: ``value``
(Constant), ``mean``/``stddev``
(RandomNormal, TruncatedNormal), ``minval``/``maxval`` (RandomUniform), ``gain`` (Orthogonal);
``seed`` is ignored (Keras' random streams cannot be reproduced in torch), and keys set to None
(e.g. the variance-scaling initializers' ``input_axes``/``output_axes``) are ignored; anything else
is a ValueError. ``constant(value)`` returns the Constant initializer as a callable.

A callable is accepted in place of a name: ``fn(shape, *, dtype, device, generator)`` must return a
tensor of exactly ``shape`` (``generator`` is a ``torch.Generator`` or None for torch's global RNG).
Random draws of the named initializers happen on the CPU (from ``generator`` or torch's global CPU
RNG, so ``torch.manual_seed`` makes them reproducible independent of the target device) and are
then copied to the target dtype/device.
"""

import math

import torch

from .identifiers import KERAS_DICT_KEYS as _KERAS_DICT_KEYS

__all__ = [
    "KNOWN_INITIALIZERS", "get", "initialize", "initialize_", "compute_fans", "constant",
]

# stddev of a unit normal truncated to [-2, 2] (Keras' constant)
_TRUNCATED_STDDEV = 0.87962566103423978


def compute_fans(shape):
    """Keras' ``compute_fans``: ``(fan_in, fan_out)`` for a weight of Keras shape ``shape``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _draw_dtype(dtype):
    # Draw in float64 for float64 targets, float32 otherwise (bf16/fp16 are rounded afterwards).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _uniform(shape, low, high, dtype, generator):
    out = torch.empty(shape, dtype=_draw_dtype(dtype))
    return out.uniform_(low, high, generator=generator)


def _normal(shape, mean, std, dtype, generator):
    out = torch.empty(shape, dtype=_draw_dtype(dtype))
    return out.normal_(mean, std, generator=generator)


def _truncated_normal(shape, mean, std, dtype, generator):
    out = torch.empty(shape, dtype=_draw_dtype(dtype))
    torch.nn.init.trunc_normal_(
        out, mean=mean, std=std, a=mean - 2 * std, b=mean + 2 * std, generator=generator
    )
    return out


def _variance_scaling(scale, mode, distribution):
    def init(shape, dtype, generator):
        fan_in, fan_out = compute_fans(shape)
        if mode == "fan_in":
            s = scale / max(1.0, fan_in)
        elif mode == "fan_out":
            s = scale / max(1.0, fan_out)
        else:
            s = scale / max(1.0, (fan_in + fan_out) / 2.0)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * s)
            return _uniform(shape, -limit, limit, dtype, generator)
        return _truncated_normal(shape, 0.0, math.sqrt(s) / _TRUNCATED_STDDEV, dtype, generator)

    return init


def _orthogonal(shape, dtype, generator, gain=1.0):
    if len(shape) < 2:
        raise ValueError(
            f"the orthogonal initializer needs a weight of rank >= 2, got shape {tuple(shape)}"
        )
    rows = math.prod(shape[:-1])
    cols = shape[-1]
    a = torch.empty((max(rows, cols), min(rows, cols)), dtype=torch.float64)
    a.normal_(0.0, 1.0, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))  # make Q uniform over the orthogonal group
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).to(_draw_dtype(dtype))


def _constant(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"the constant initializer's value must be a number, got {value!r}")

    def init(shape, dtype, generator):
        # Keras: cast(value, dtype) * ones -- one rounding from the Python float to dtype.
        return torch.full(shape, float(value), dtype=torch.float64)

    return init


_INITIALIZERS = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "truncated_normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "truncated_normal"),
    "orthogonal": _orthogonal,
    "zeros": lambda shape, dtype, generator: torch.zeros(shape, dtype=_draw_dtype(dtype)),
    "ones": lambda shape, dtype, generator: torch.ones(shape, dtype=_draw_dtype(dtype)),
    "constant": _constant(0.0),
    "random_normal": lambda shape, dtype, generator: _normal(shape, 0.0, 0.05, dtype, generator),
    "random_uniform": lambda shape, dtype, generator: _uniform(
        shape, -0.05, 0.05, dtype, generator
    ),
    "truncated_normal": lambda shape, dtype, generator: _truncated_normal(
        shape, 0.0, 0.05, dtype, generator
    ),
}

KNOWN_INITIALIZERS = tuple(sorted(_INITIALIZERS))

# Initializers with Keras config parameters: name -> (factory(**config) -> draw fn, defaults).
_PARAMETRIC = {
    "constant": (_constant, {"value": 0.0}),
    "random_normal": (
        lambda mean, stddev: lambda shape, dtype, generator: _normal(
            shape, mean, stddev, dtype, generator
        ),
        {"mean": 0.0, "stddev": 0.05},
    ),
    "truncated_normal": (
        lambda mean, stddev: lambda shape, dtype, generator: _truncated_normal(
            shape, mean, stddev, dtype, generator
        ),
        {"mean": 0.0, "stddev": 0.05},
    ),
    "random_uniform": (
        lambda minval, maxval: lambda shape, dtype, generator: _uniform(
            shape, minval, maxval, dtype, generator
        ),
        {"minval": -0.05, "maxval": 0.05},
    ),
    "orthogonal": (
        lambda gain: lambda shape, dtype, generator: _orthogonal(shape, dtype, generator, gain),
        {"gain": 1.0},
    ),
}

_ALIASES = {
    "normal": "random_normal",
    "uniform": "random_uniform",
    "zero": "zeros",
    "one": "ones",
    "glorotuniform": "glorot_uniform",
    "glorotnormal": "glorot_normal",
    "heuniform": "he_uniform",
    "henormal": "he_normal",
    "lecununiform": "lecun_uniform",
    "lecunnormal": "lecun_normal",
    "randomnormal": "random_normal",
    "randomuniform": "random_uniform",
    "truncatednormal": "truncated_normal",
}


def _canonical_name(name):
    if name in _INITIALIZERS:
        return name
    key = name.lower()
    if key in _INITIALIZERS:
        return key
    return _ALIASES.get(key.replace("_", ""))


def _wrap(draw, name):
    def init(shape, *, dtype=torch.float32, device=None, generator=None):
        return draw(tuple(shape), dtype, generator).to(dtype=dtype, device=device)

    init.__name__ = name
    return init


def constant(value=0.0):
    """Keras ``Constant(value)``: ``fn(shape, *, dtype, device, generator)`` filling ``value``."""
    return _wrap(_constant(value), "constant")


def _from_dict(identifier, argument):
    extra = set(identifier) - _KERAS_DICT_KEYS
    class_name = identifier.get("class_name")
    config = identifier.get("config", {})
    name = _canonical_name(class_name) if isinstance(class_name, str) else None
    if extra or name is None or not isinstance(config, dict):
        raise ValueError(
            f"{argument}={identifier!r} is not a known initializer; a dict must be Keras' "
            "serialized form {'class_name': ..., 'config': {...}} with a class_name among "
            f"{list(KNOWN_INITIALIZERS)} (Keras spelling)"
        )
    factory, defaults = _PARAMETRIC.get(name, (None, {}))
    kwargs = dict(defaults)
    for key, value in config.items():
        if key == "seed" or (value is None and key not in defaults):
            continue  # Keras' seeded streams cannot be reproduced; None = not set
        if key not in defaults:
            raise ValueError(
                f"{argument}={identifier!r}: config key {key!r} is not supported for {name} "
                f"(supported: {sorted(defaults) + ['seed']})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{argument}={identifier!r}: {key} must be a number, got {value!r}")
        kwargs[key] = float(value)
    draw = factory(**kwargs) if factory is not None else _INITIALIZERS[name]
    return _wrap(draw, name)


def get(identifier, argument="initializer"):
    """Resolve a name, Keras dict or callable to ``fn(shape, *, dtype, device, generator)``.

    Raises a ValueError listing the known names for an unknown name or dict, a TypeError for
    anything that is neither a string, a dict nor a callable; both name ``argument``.
    """
    if isinstance(identifier, str):
        name = _canonical_name(identifier)
        if name is None:
            raise ValueError(
                f"{argument}={identifier!r} is not a known initializer; expected one of "
                f"{list(KNOWN_INITIALIZERS)}, a Keras dict {{'class_name': ..., 'config': ...}} "
                "or a callable fn(shape, *, dtype, device, generator)"
            )
        return _wrap(_INITIALIZERS[name], name)
    if isinstance(identifier, dict):
        return _from_dict(identifier, argument)
    if callable(identifier):
        return identifier
    raise TypeError(
        f"{argument} must be an initializer name (one of {list(KNOWN_INITIALIZERS)}), a Keras "
        "dict {'class_name': ..., 'config': ...} or a callable "
        f"fn(shape, *, dtype, device, generator), got {type(identifier).__name__}"
    )


def initialize(identifier, shape, *, dtype=torch.float32, device=None, generator=None,
               argument="initializer"):
    """A new tensor of Keras shape ``shape`` drawn from initializer ``identifier``."""
    shape = tuple(int(s) for s in shape)
    out = get(identifier, argument)(shape, dtype=dtype, device=device, generator=generator)
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out)
    if tuple(out.shape) != shape:
        raise ValueError(
            f"{argument} returned a tensor of shape {tuple(out.shape)}, expected {shape}"
        )
    return out.to(dtype=dtype, device=device)


@torch.no_grad()
def initialize_(tensor, identifier, *, generator=None, argument="initializer"):
    """Fill ``tensor`` (a Keras-shaped weight) in place from initializer ``identifier``."""
    value = initialize(
        identifier, tensor.shape, dtype=tensor.dtype, device=tensor.device,
        generator=generator, argument=argument,
    )
    tensor.copy_(value)
    return tensor
