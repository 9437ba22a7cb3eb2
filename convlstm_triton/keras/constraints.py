"""Keras 3 weight constraints, in torch.

Formulas (``keras/src/constraints/constraints.py``, Keras 3.15), with
``norms = sqrt(sum(w**2, axis=axis, keepdims=True))`` and ``eps = 1e-7``
(``keras.backend.epsilon()``)::

    MaxNorm(max_value=2, axis=0)     w * (clip(norms, 0, max_value) / (eps + norms))
    MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=0)
        w * ((rate * clip(norms, min_value, max_value) + (1 - rate) * norms) / (eps + norms))
    UnitNorm(axis=0)                 w / (eps + norms)
    NonNeg()                         maximum(w, 0)

The norms are taken over ``axis`` (an int or a list of ints) of the weight **as stored**, which for
this library is the Keras layout: a ConvLSTM kernel ``(*kernel_size, C_in, 4F)``, so the default
``axis=0`` is the first kernel axis (as in Keras: pass e.g. ``axis=[0, 1, 2]`` for 2D to constrain
each output channel's filter); the bias ``(4F,)`` with ``axis=0`` is normalized as one vector.

Identifiers (``get``): a name (``"max_norm"``, ``"non_neg"``, ``"unit_norm"``, ``"min_max_norm"``
or the class names ``"MaxNorm"`` ...; Keras' defaults), a dict in Keras' serialized form
``{"class_name": "MaxNorm", "config": {"max_value": 3, "axis": [0, 1, 2]}}`` (``"module"`` and
``"registered_name"``, ``"shared_object_id"`` are ignored), a Keras constraint object of one of
these classes (converted
through its ``get_config()``; Keras is not imported), or any callable ``fn(tensor) -> tensor`` of
the same shape. Constraints are applied by ``layer.apply_constraints()``, which the user calls after
``optimizer.step()`` (Keras applies them after every optimizer update).
"""

import torch

from .identifiers import resolve

__all__ = ["MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "KNOWN_CONSTRAINTS", "get", "EPSILON"]

EPSILON = 1e-7  # keras.backend.epsilon() default


def _check_axis(axis):
    if isinstance(axis, bool):
        raise ValueError(f"axis must be an int or a list of ints, got {axis!r}")
    if isinstance(axis, int):
        return axis
    if isinstance(axis, (list, tuple)) and axis and all(
        isinstance(a, int) and not isinstance(a, bool) for a in axis
    ):
        return list(axis)
    raise ValueError(f"axis must be an int or a non-empty list of ints, got {axis!r}")


def _check_number(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return value


class Constraint:
    """Base class: ``__call__(w) -> projected w``; ``check_rank(ndim)`` validates the axes."""

    def __call__(self, w):
        return w

    def get_config(self):
        return {}

    def check_rank(self, ndim):
        """Raise a ValueError if this constraint cannot apply to a weight of rank ``ndim``."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


class _NormConstraint(Constraint):
    def _dims(self):
        return self.axis if isinstance(self.axis, int) else tuple(self.axis)

    def _norms(self, w):
        return torch.sqrt(torch.sum(torch.square(w), dim=self._dims(), keepdim=True))

    def check_rank(self, ndim):
        axes = [self.axis] if isinstance(self.axis, int) else self.axis
        bad = [a for a in axes if not -ndim <= a < ndim]
        if bad:
            raise ValueError(f"axis={self.axis!r} is out of range for a weight of rank {ndim}")


class MaxNorm(_NormConstraint):
    """Keras ``MaxNorm(max_value=2, axis=0)``."""

    def __init__(self, max_value=2, axis=0):
        self.max_value = _check_number(max_value, "max_value")
        self.axis = _check_axis(axis)

    def __call__(self, w):
        norms = self._norms(w)
        desired = torch.clamp(norms, 0, self.max_value)
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class MinMaxNorm(_NormConstraint):
    """Keras ``MinMaxNorm(min_value=0.0, max_value=1.0, rate=1.0, axis=0)``."""

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value = _check_number(min_value, "min_value")
        self.max_value = _check_number(max_value, "max_value")
        self.rate = _check_number(rate, "rate")
        self.axis = _check_axis(axis)

    def __call__(self, w):
        norms = self._norms(w)
        desired = (
            self.rate * torch.clamp(norms, self.min_value, self.max_value)
            + (1 - self.rate) * norms
        )
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {
            "min_value": self.min_value,
            "max_value": self.max_value,
            "rate": self.rate,
            "axis": self.axis,
        }


class UnitNorm(_NormConstraint):
    """Keras ``UnitNorm(axis=0)``."""

    def __init__(self, axis=0):
        self.axis = _check_axis(axis)

    def __call__(self, w):
        return w / (EPSILON + self._norms(w))

    def get_config(self):
        return {"axis": self.axis}


class NonNeg(Constraint):
    """Keras ``NonNeg()``: ``maximum(w, 0)``."""

    def __call__(self, w):
        return torch.clamp_min(w, 0)


_CLASSES = {
    "MaxNorm": MaxNorm,
    "max_norm": MaxNorm,
    "NonNeg": NonNeg,
    "non_neg": NonNeg,
    "UnitNorm": UnitNorm,
    "unit_norm": UnitNorm,
    "MinMaxNorm": MinMaxNorm,
    "min_max_norm": MinMaxNorm,
}

KNOWN_CONSTRAINTS = ("max_norm", "min_max_norm", "non_neg", "unit_norm")

_FORMS = (
    f"None, a name (one of {list(KNOWN_CONSTRAINTS)} or the class names 'MaxNorm', "
    "'MinMaxNorm', 'NonNeg', 'UnitNorm'), a Keras-serialized dict "
    "{'class_name': 'MaxNorm', 'config': {'max_value': .., 'axis': ..}}, "
    "or a callable fn(tensor) -> tensor"
)


def _from_class(class_name, config, argument, identifier):
    cls = _CLASSES.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(
            f"{argument}={identifier!r}: unknown constraint class {class_name!r}; accepted: "
            + _FORMS
        )
    if not isinstance(config, dict):
        raise ValueError(f"{argument}={identifier!r}: 'config' must be a dict; accepted: {_FORMS}")
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{argument}={identifier!r}: bad config for {cls.__name__}: {e}") from None


def get(identifier, argument="constraint"):
    """Resolve a constraint identifier to a callable ``fn(tensor) -> tensor``, or None.

    Raises a ValueError naming ``argument`` and listing the accepted forms for anything else.
    """
    return resolve(identifier, argument, "constraint", names=_CLASSES,
                   keras_classes=_CLASSES, own_type=Constraint, from_class=_from_class,
                   forms=_FORMS)
