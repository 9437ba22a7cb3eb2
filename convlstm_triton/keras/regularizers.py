"""Keras 3 weight and activity regularizers, in torch.

Formulas (``keras/src/regularizers/regularizers.py``, Keras 3.15), computed in the weight's dtype::

    L1(l1=0.01)            l1 * sum(|x|)
    L2(l2=0.01)            l2 * sum(x ** 2)                 (no 1/2)
    L1L2(l1=0.0, l2=0.0)   l1 * sum(|x|) + l2 * sum(x ** 2)  (a zero factor adds nothing)

Identifiers (``get``):

* a name: ``"l1"`` / ``"L1"`` -> ``L1(0.01)``; ``"l2"`` / ``"L2"`` -> ``L2(0.01)``;
  ``"l1_l2"`` -> ``L1L2(l1=0.01, l2=0.01)`` (the defaults Keras documents for the ``'l1_l2'``
  string and Keras 2's ``l1_l2()``; Keras 3.15's own ``regularizers.get`` rejects ``"l1_l2"``);
  ``"l1l2"`` / ``"L1L2"`` -> ``L1L2()`` with Keras 3's class defaults ``l1 = l2 = 0`` (what
  ``keras.regularizers.get("l1l2")`` returns: no penalty).
* a dict in Keras' serialized form ``{"class_name": "L1L2", "config": {"l1": .., "l2": ..}}``
  (``"module"``, ``"registered_name"`` and ``"shared_object_id"`` keys are accepted and ignored;
  missing config keys take
  the class defaults), or a plain dict ``{"l1": .., "l2": ..}`` (-> ``L1L2``, missing = 0).
* a Keras ``L1`` / ``L2`` / ``L1L2`` object (converted through its ``get_config()``; Keras is not
  imported), or any other callable ``fn(tensor) -> scalar tensor``, used as is.

Keras' ``OrthogonalRegularizer`` (defined only for rank-2 weights) is not provided.
"""

import math

import torch

from .identifiers import resolve

__all__ = ["L1", "L2", "L1L2", "KNOWN_REGULARIZERS", "get"]


def _factor(value, name):
    value = 0.0 if value is None else value  # Keras: None means 0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or math.isinf(value)
        or math.isnan(value)
        or value < 0
    ):
        raise ValueError(
            f"regularization factor {name} must be a non-negative float, got {value!r}"
        )
    return float(value)


class L1L2:
    """``l1 * sum(|x|) + l2 * sum(x**2)`` (Keras ``L1L2``; defaults 0, as in Keras 3)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor(l1, "l1")
        self.l2 = _factor(l2, "l2")

    def __call__(self, x):
        # Keras: start from a zero of x's dtype, add each term only when its factor is nonzero.
        out = torch.zeros((), dtype=x.dtype, device=x.device)
        if self.l1 != 0.0:
            out = out + torch.tensor(self.l1, dtype=x.dtype) * x.abs().sum()
        if self.l2 != 0.0:
            out = out + torch.tensor(self.l2, dtype=x.dtype) * x.square().sum()
        return out

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self):
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


class L1(L1L2):
    """``l1 * sum(|x|)`` (Keras ``L1``, default 0.01)."""

    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1, l2=0.0)

    def __call__(self, x):
        # Keras keeps L1's factor as a float32 tensor (only L1 does): round through float32.
        factor = torch.tensor(self.l1, dtype=torch.float32).to(x.dtype)
        return factor * x.abs().sum()

    def get_config(self):
        return {"l1": self.l1}

    def __repr__(self):
        return f"L1(l1={self.l1})"


class L2(L1L2):
    """``l2 * sum(x**2)`` (Keras ``L2``, default 0.01; no factor 1/2)."""

    def __init__(self, l2=0.01):
        super().__init__(l1=0.0, l2=0.01 if l2 is None else l2)

    def __call__(self, x):
        return torch.tensor(self.l2, dtype=x.dtype) * x.square().sum()

    def get_config(self):
        return {"l2": self.l2}

    def __repr__(self):
        return f"L2(l2={self.l2})"


_NAMES = {
    "l1": lambda: L1(),
    "L1": lambda: L1(),
    "l2": lambda: L2(),
    "L2": lambda: L2(),
    "l1_l2": lambda: L1L2(l1=0.01, l2=0.01),
    "l1l2": lambda: L1L2(),
    "L1L2": lambda: L1L2(),
}
_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2, "l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}

KNOWN_REGULARIZERS = ("l1", "l2", "l1_l2", "l1l2")

_FORMS = (
    f"None, a name (one of {list(KNOWN_REGULARIZERS)}, or the class names 'L1', 'L2', 'L1L2'), "
    "a Keras-serialized dict {'class_name': 'L1L2', 'config': {'l1': .., 'l2': ..}}, "
    "a dict {'l1': .., 'l2': ..}, or a callable fn(tensor) -> scalar tensor"
)


def _from_class(class_name, config, argument, identifier):
    cls = _CLASSES.get(class_name)
    if cls is None:
        raise ValueError(
            f"{argument}={identifier!r}: unknown regularizer class {class_name!r}; accepted: "
            + _FORMS
        )
    if not isinstance(config, dict):
        raise ValueError(f"{argument}={identifier!r}: 'config' must be a dict; accepted: {_FORMS}")
    allowed = {L1: {"l1"}, L2: {"l2"}, L1L2: {"l1", "l2"}}[cls]
    extra = set(config) - allowed
    if extra:
        raise ValueError(
            f"{argument}={identifier!r}: unexpected config keys {sorted(extra)} for "
            f"{cls.__name__} (expected {sorted(allowed)})"
        )
    try:
        return cls(**config)
    except ValueError as e:
        raise ValueError(f"{argument}={identifier!r}: {e}") from None


def get(identifier, argument="regularizer"):
    """Resolve a regularizer identifier to a callable ``fn(tensor) -> 0-dim tensor``, or None.

    Raises a ValueError naming ``argument`` and listing the accepted forms for anything else.
    """
    return resolve(identifier, argument, "regularizer", names=_NAMES,
                   keras_classes=("L1", "L2", "L1L2"), own_type=L1L2, from_class=_from_class,
                   forms=_FORMS, plain_dict=_plain_dict)


def _plain_dict(identifier, argument):
    """``{"l1": .., "l2": ..}`` -> L1L2 (missing factors 0)."""
    if identifier and set(identifier) <= {"l1", "l2"}:
        return _from_class("L1L2", identifier, argument, identifier)
    return None
