"""Keras regularizers and constraints: ``regularizers.py``, ``constraints.py``, the layers'
``regularization_loss()`` / ``apply_constraints()``, and the ``constant`` initializer."""

import copy

import numpy as np
import pytest
import torch
from helpers import assert_close

from convlstm_triton import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D
from convlstm_triton.keras import constraints, initializers
from convlstm_triton.keras import regularizers as regs

# Keras' numpy conversion of its torch tensors warns under numpy 2 (Keras' issue).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-6


def _keras():
    return pytest.importorskip("keras", reason="Keras 3 is the oracle for these formulas")


def _np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _layer(cls=ConvLSTM2D, filters=2, kernel_size=3, in_channels=3, **kwargs):
    layer = cls(filters, kernel_size, in_channels=in_channels, backend="reference", **kwargs)
    with torch.no_grad():  # random, not Keras' init: penalties / norms of generic values
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    return layer


# ----------------------------------------------------------------------------- regularizers


def test_regularizer_names_and_defaults():
    assert regs.get("l1") == regs.L1(0.01)
    assert regs.get("L2") == regs.L2(0.01)
    assert regs.get("l1_l2") == regs.L1L2(0.01, 0.01)
    assert regs.get("l1l2") == regs.L1L2(0.0, 0.0)  # Keras 3: the class defaults
    assert regs.get({"class_name": "L1L2", "config": {"l1": 0.1, "l2": 0.2}}) == regs.L1L2(
        0.1, 0.2
    )
    assert regs.get({"l2": 0.3}) == regs.L1L2(0.0, 0.3)
    assert regs.get(None) is None
    fn = lambda w: w.sum()
    assert regs.get(fn) is fn


def test_regularizer_hand_computed():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    assert regs.L1(0.1)(w).item() == pytest.approx(0.1 * 3.5)
    assert regs.L2(0.1)(w).item() == pytest.approx(0.1 * 5.25)  # no 1/2
    assert regs.L1L2(0.1, 0.2)(w).item() == pytest.approx(0.1 * 3.5 + 0.2 * 5.25)
    assert regs.get("l2")(w).item() == pytest.approx(0.01 * 5.25)
    assert regs.get("l1l2")(w).item() == 0.0
    assert regs.L2(0.1)(w).dim() == 0


@pytest.mark.parametrize("keras_name, ours", [
    ("l1", "l1"), ("l2", "l2"), ("l1l2", "l1l2"),
    ({"class_name": "L1L2", "config": {"l1": 0.03, "l2": 0.07}}, None),
    ({"class_name": "L1", "config": {"l1": 0.2}}, None),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regularizers_match_keras_objects(keras_name, ours, dtype):
    keras = _keras()
    w = np.random.default_rng(0).standard_normal((3, 3, 2, 8)).astype(dtype)
    theirs = keras.regularizers.get(keras_name)(keras.ops.convert_to_tensor(w))
    mine = regs.get(keras_name if ours is None else ours)(torch.from_numpy(w))
    assert mine.dtype == torch.from_numpy(w).dtype
    # Same formula in the weight's dtype (incl. L1's float32-rounded factor): rounding-level.
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(_np(mine), _np(theirs), rtol=rtol)
    # A Keras regularizer object is converted to ours through its config.
    converted = regs.get(keras.regularizers.get(keras_name))
    assert isinstance(converted, regs.L1L2)
    np.testing.assert_allclose(_np(converted(torch.from_numpy(w))), _np(theirs), rtol=1e-6)


def test_regularization_loss_weights_hand_computed():
    layer = _layer(
        kernel_regularizer="l2", recurrent_regularizer={"l1": 0.1},
        bias_regularizer=regs.L1L2(0.2, 0.3),
    )
    k, r, b = layer.kernel, layer.recurrent_kernel, layer.bias
    expected = (
        0.01 * (k**2).sum() + 0.1 * r.abs().sum() + 0.2 * b.abs().sum() + 0.3 * (b**2).sum()
    )
    loss = layer.regularization_loss()
    assert loss.dim() == 0
    assert_close(loss, expected, torch.float32, "regularization_loss", tol=TOL)
    loss.backward()
    assert_close(k.grad, 0.02 * k, torch.float32, "d kernel", tol=TOL)
    assert_close(r.grad, 0.1 * torch.sign(r), torch.float32, "d recurrent", tol=TOL)


def test_regularization_loss_zero_when_unconfigured():
    layer = _layer()
    loss = layer.regularization_loss()
    assert loss.dim() == 0 and loss.item() == 0.0
    layer(torch.randn(2, 3, 5, 5, 3))
    assert layer.regularization_loss().item() == 0.0
    lazy = ConvLSTM2D(2, 3, kernel_regularizer="l2")
    assert lazy.regularization_loss().item() == 0.0  # unbuilt: no weights, no penalty


def test_frozen_weights_are_not_regularized():
    # Keras regularizes trainable weights only.
    layer = _layer(kernel_regularizer="l2", bias_regularizer="l1")
    layer.kernel.requires_grad_(False)
    expected = 0.01 * layer.bias.abs().sum()
    assert_close(layer.regularization_loss(), expected, torch.float32, "frozen", tol=TOL)


@pytest.mark.parametrize("return_state", [False, True])
def test_activity_regularizer_hand_computed(return_state):
    layer = _layer(activity_regularizer="l2", return_sequences=True, return_state=return_state)
    x = torch.randn(3, 4, 5, 5, 3, requires_grad=True)
    out = layer(x)
    outs = out if return_state else (out,)
    # Keras: regularizer(each returned tensor) / batch size, summed.
    expected = sum(0.01 * (t**2).sum() / t.shape[0] for t in outs)
    loss = layer.regularization_loss()
    assert_close(loss, expected, torch.float32, "activity", tol=TOL)
    loss.backward()  # keeps the forward's graph
    assert x.grad is not None and x.grad.abs().sum() > 0
    # The penalty is the *last* call's.
    x2 = torch.zeros(2, 4, 5, 5, 3)
    out2 = layer(x2)
    outs2 = out2 if return_state else (out2,)
    expected2 = sum(0.01 * (t**2).sum() / t.shape[0] for t in outs2)
    assert_close(layer.regularization_loss(), expected2, torch.float32, "last call", tol=TOL)


@pytest.mark.parametrize("cls, name, spatial, kwargs", [
    (ConvLSTM1D, "ConvLSTM1D", (6,), {"return_sequences": True}),
    (ConvLSTM2D, "ConvLSTM2D", (5, 4), {"return_state": True, "padding": "same"}),
    (ConvLSTM3D, "ConvLSTM3D", (3, 4, 3), {}),
])
def test_regularization_loss_matches_keras_layer_losses(cls, name, spatial, kwargs):
    keras = _keras()
    regs_kwargs = {
        "kernel_regularizer": "l2",
        "recurrent_regularizer": {"class_name": "L1L2", "config": {"l1": 0.02, "l2": 0.05}},
        "bias_regularizer": "l1",
        "activity_regularizer": {"class_name": "L2", "config": {"l2": 0.3}},
    }
    x = np.random.default_rng(1).standard_normal((2, 3) + spatial + (2,)).astype(np.float32)
    theirs = getattr(keras.layers, name)(2, 2, **regs_kwargs, **kwargs)
    theirs.build(x.shape)
    rng = np.random.default_rng(2)
    theirs.set_weights([rng.standard_normal(w.shape).astype(np.float32)
                        for w in theirs.get_weights()])
    theirs(x)
    keras_total = sum(float(_np(loss)) for loss in theirs.losses)
    assert len(theirs.losses) == 3 + (3 if kwargs.get("return_state") else 1)

    ours = cls(2, 2, **regs_kwargs, **kwargs, backend="reference")
    ours.set_keras_weights(theirs.get_weights())
    ours(torch.from_numpy(x))
    assert ours.regularization_loss().item() == pytest.approx(keras_total, rel=1e-5)


def test_callable_regularizers():
    layer = _layer(kernel_regularizer=lambda w: w.sum(), activity_regularizer=lambda t: 2.0)
    out = layer(torch.randn(4, 2, 5, 5, 3))
    assert out.shape[0] == 4
    expected = layer.kernel.sum() + 2.0 / 4  # a plain-number activity penalty works too
    assert_close(layer.regularization_loss(), expected, torch.float32, "callables", tol=TOL)


def test_activity_penalty_not_copied():
    layer = _layer(activity_regularizer="l1")
    layer.train()
    layer(torch.randn(2, 2, 5, 5, 3))
    clone = copy.deepcopy(layer)  # a non-leaf tensor would make deepcopy fail
    assert clone.regularization_loss().item() == 0.0
    assert layer.regularization_loss().item() > 0.0


# ----------------------------------------------------------------------------- constraints


CONSTRAINT_CASES = [
    "max_norm", "non_neg", "unit_norm", "min_max_norm", "MaxNorm",
    {"class_name": "MaxNorm", "config": {"max_value": 0.5, "axis": [0, 1, 2]}},
    {"class_name": "MinMaxNorm", "config": {"min_value": 0.2, "max_value": 0.9, "rate": 0.5,
                                            "axis": -1}},
    {"class_name": "UnitNorm", "config": {"axis": [0, 2]}},
    {"module": "keras.constraints", "class_name": "NonNeg", "config": {},
     "registered_name": None},
]


def _axis(identifier):
    return identifier.get("config", {}).get("axis", 0) if isinstance(identifier, dict) else 0


@pytest.mark.parametrize("identifier, shape", [
    pytest.param(c, shape, id=f"{str(c)[:40]}-{name}")
    for c in CONSTRAINT_CASES
    for shape, name in (((3, 3, 2, 8), "kernel"), ((8,), "bias"))
    if len(shape) > 1 or _axis(c) in (0, -1)
])
def test_constraints_match_keras_objects(identifier, shape):
    keras = _keras()
    w = (np.random.default_rng(3).standard_normal(shape) * 0.7).astype(np.float32)
    theirs = _np(keras.constraints.get(identifier)(keras.ops.convert_to_tensor(w)))
    mine = constraints.get(identifier)(torch.from_numpy(w))
    np.testing.assert_allclose(_np(mine), theirs, rtol=1e-6, atol=1e-7)
    converted = constraints.get(keras.constraints.get(identifier))
    np.testing.assert_allclose(_np(converted(torch.from_numpy(w))), theirs, rtol=1e-6, atol=1e-7)


def test_constraint_defaults_and_hand_computed():
    assert constraints.get("max_norm") == constraints.MaxNorm(2, axis=0)
    assert constraints.get("min_max_norm") == constraints.MinMaxNorm(0.0, 1.0, 1.0, 0)
    assert constraints.get("unit_norm") == constraints.UnitNorm(0)
    w = torch.tensor([[3.0, 0.1], [4.0, 0.0]])  # column norms (axis=0): 5, 0.1
    out = constraints.MaxNorm(2)(w)
    np.testing.assert_allclose(out.numpy(), [[3 * 2 / (5 + 1e-7), 0.1 * 0.1 / (0.1 + 1e-7)],
                                             [4 * 2 / (5 + 1e-7), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(constraints.UnitNorm()(w).numpy(),
                               [[0.6, 1.0], [0.8, 0.0]], rtol=1e-5)
    assert torch.equal(constraints.NonNeg()(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_apply_constraints_after_optimizer_step():
    keras = _keras()
    layer = _layer(
        kernel_constraint={"class_name": "MaxNorm", "config": {"max_value": 0.5,
                                                              "axis": [0, 1, 2]}},
        recurrent_constraint="unit_norm", bias_constraint="non_neg",
    )
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(2, 3, 5, 5, 3)).square().mean().backward()
    opt.step()
    before = [p.detach().clone().numpy() for p in (layer.kernel, layer.recurrent_kernel,
                                                   layer.bias)]
    assert (before[2] < 0).any()
    ids = [id(p) for p in layer.parameters()]
    layer.apply_constraints()
    assert [id(p) for p in layer.parameters()] == ids  # in place: the optimizer keeps them
    expect = [
        keras.constraints.MaxNorm(0.5, axis=[0, 1, 2])(keras.ops.convert_to_tensor(before[0])),
        keras.constraints.UnitNorm()(keras.ops.convert_to_tensor(before[1])),
        keras.constraints.NonNeg()(keras.ops.convert_to_tensor(before[2])),
    ]
    for p, e, name in zip((layer.kernel, layer.recurrent_kernel, layer.bias), expect,
                          ("kernel", "recurrent", "bias")):
        np.testing.assert_allclose(_np(p), _np(e), rtol=1e-6, atol=1e-7, err_msg=name)
    assert layer.kernel.grad is not None  # no_grad projection: grads untouched, no graph
    norms = layer.kernel.detach().square().sum(dim=(0, 1, 2)).sqrt()
    assert (norms <= 0.5 + 1e-5).all()


def test_apply_constraints_callable_and_unconfigured():
    layer = _layer(kernel_constraint=lambda w: w.clamp(-0.1, 0.1))
    bias = layer.bias.detach().clone()
    layer.apply_constraints()
    assert layer.kernel.abs().max() <= 0.1
    assert torch.equal(layer.bias, bias)
    bad = _layer(bias_constraint=lambda w: w[:2])
    with pytest.raises(ValueError, match="bias_constraint"):
        bad.apply_constraints()
    ConvLSTM2D(2, 3, kernel_constraint="non_neg").apply_constraints()  # lazy: no-op


# ----------------------------------------------------------------------------- bad arguments

BAD = [
    ("kernel_regularizer", "l3"),
    ("recurrent_regularizer", {"class_name": "Orthogonal", "config": {}}),
    ("bias_regularizer", {"l1": -1.0}),
    ("activity_regularizer", 0.01),
    ("activity_regularizer", {"l3": 0.1}),
    ("kernel_constraint", "maxnorm"),
    ("recurrent_constraint", {"class_name": "MaxNorm", "config": {"max_val": 2}}),
    ("bias_constraint", 3),
    ("bias_constraint", {"class_name": "MaxNorm", "config": {"axis": 1}}),  # bias has rank 1
    ("kernel_constraint", {"class_name": "UnitNorm", "config": {"axis": 4}}),
]


@pytest.mark.parametrize("argument, value", BAD, ids=lambda v: str(v)[:30])
def test_bad_names_raise_naming_the_argument(argument, value):
    with pytest.raises(ValueError, match=argument):
        ConvLSTM2D(2, 3, **{argument: value})


def test_error_lists_accepted_forms():
    with pytest.raises(ValueError, match="l1_l2.*callable"):
        ConvLSTM2D(2, 3, kernel_regularizer="L3")
    with pytest.raises(ValueError, match="max_norm.*callable"):
        ConvLSTM2D(2, 3, kernel_constraint="clip")


def test_repr_shows_configured():
    r = repr(ConvLSTM2D(2, 3, kernel_regularizer="l2", bias_constraint="non_neg"))
    assert "kernel_regularizer=L2(l2=0.01)" in r and "bias_constraint=NonNeg()" in r


# ----------------------------------------------------------------------------- constant init


def test_constant_initializer():
    keras = _keras()
    w = initializers.initialize("constant", (2, 3))
    assert torch.equal(w, torch.zeros(2, 3))
    spec = {"class_name": "Constant", "config": {"value": 0.5}}
    w = initializers.initialize(spec, (2, 3), dtype=torch.float64)
    assert torch.equal(w, torch.full((2, 3), 0.5, dtype=torch.float64))
    serialized = keras.initializers.serialize(keras.initializers.Constant(0.3))
    theirs = keras.initializers.get(serialized)((4,), dtype="bfloat16")
    mine = initializers.initialize(serialized, (4,), dtype=torch.bfloat16)
    assert torch.equal(mine, torch.as_tensor(theirs).cpu())  # one rounding to bf16, as Keras
    assert torch.equal(initializers.constant(2.0)((3,)), torch.full((3,), 2.0))
    layer = ConvLSTM2D(2, 3, in_channels=1, bias_initializer=spec)
    assert torch.equal(layer.bias.detach(), torch.tensor([0.5] * 2 + [1.0] * 2 + [0.5] * 4))
    # Other Keras-serialized initializers: default configs accepted, seed ignored.
    glorot = keras.initializers.serialize(keras.initializers.GlorotUniform(seed=3))
    assert initializers.get(glorot).__name__ == "glorot_uniform"
    g = initializers.initialize({"class_name": "RandomNormal",
                                 "config": {"mean": 1.0, "stddev": 0.0}}, (3,))
    assert torch.equal(g, torch.ones(3))
    with pytest.raises(ValueError, match="bias_initializer"):
        ConvLSTM2D(2, 3, bias_initializer={"class_name": "Constant", "config": {"value": "a"}})
    with pytest.raises(ValueError, match="kernel_initializer"):
        ConvLSTM2D(2, 3, kernel_initializer={"class_name": "VarianceScaling", "config": {}})
