"""``ConvLSTM1D/2D/3D`` modules: Keras parity (both backends), initializers, lazy
parameters, Keras weight I/O, stateful, dropout, argument validation, state_dict, gradients."""

import copy
import math
import os
import threading
import time

import numpy as np
import pytest
import torch
from helpers import TF32_TOLERANCE, assert_close, kernel_device, triton_available_here

import convlstm_triton
from convlstm_triton import ConvLSTM1D, ConvLSTM2D, ConvLSTM3D
from convlstm_triton.keras import initializers
from convlstm_triton.keras import layers as layers_module

CLASSES = {1: ConvLSTM1D, 2: ConvLSTM2D, 3: ConvLSTM3D}
KERAS_NAMES = {1: "ConvLSTM1D", 2: "ConvLSTM2D", 3: "ConvLSTM3D"}
KERAS_TOL = 1e-5  # float32, same torch convs underneath: rounding level

# Keras' get_weights() / numpy conversion of its torch tensors warns under numpy 2 (Keras' issue).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _np(t):
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _t(a):
    return torch.from_numpy(np.array(_np(a)))


def _keras():
    return pytest.importorskip("keras")


def _keras_layer(rank, filters, kernel_size, x_np, **kwargs):
    keras = _keras()
    layer = getattr(keras.layers, KERAS_NAMES[rank])(filters, kernel_size, **kwargs)
    layer.build(x_np.shape)
    return layer


# Keras parity on both backends; the Triton one on CPU tensors through the interpreter (on a GPU
# machine the kernels are compared with the reference by test_kernels_vs_reference.py).
PARITY_BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton", marks=[
        pytest.mark.kernels,
        pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                           reason="Keras parity of the Triton path runs under TRITON_INTERPRET=1"),
    ]),
]


def _ours_from_keras(keras_layer, rank, filters, kernel_size, backend="reference", **kwargs):
    layer = CLASSES[rank](filters, kernel_size, backend=backend, **kwargs)
    layer.set_keras_weights(keras_layer.get_weights())
    return layer


def _call_capturing_conv_lstm_kwargs(layer, x, **call_kwargs):
    """Run the layer and return (its output, the keyword arguments it gave conv_lstm)."""
    captured = {}
    run = layers_module.conv_lstm

    def spy(*args, **kw):
        captured.update(kw)
        return run(*args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(layers_module, "conv_lstm", spy)
        out = layer(x, **call_kwargs)
    return out, captured


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _compare(ours, theirs):
    ours, theirs = _as_tuple(ours), _as_tuple(theirs)
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close(a.detach(), _t(b), torch.float32, f"output[{i}]", tol=KERAS_TOL)


# ----------------------------------------------------------------------------- Keras parity

# (rank, input shape without B/T (layer's data_format), filters, kernel_size, layer kwargs)
PARITY_CASES = [
    pytest.param(1, (6, 3), 2, 3, {}, id="1d_defaults"),
    pytest.param(1, (6, 2), 3, 2, {"strides": 2, "padding": "same", "return_sequences": True},
                 id="1d_stride2_same_seq"),
    pytest.param(2, (5, 6, 2), 3, 3,
                 {"padding": "same", "return_sequences": True, "return_state": True,
                  "bias_initializer": "random_normal"}, id="2d_same_seq_state"),
    pytest.param(2, (6, 5, 2), 2, (3, 2),
                 {"dilation_rate": 2, "return_state": True, "unit_forget_bias": False,
                  "bias_initializer": "random_uniform"}, id="2d_dilated_valid_state"),
    pytest.param(2, (5, 5, 3), 2, 3,
                 {"go_backwards": True, "return_sequences": True, "return_state": True,
                  "padding": "same"}, id="2d_go_backwards"),
    pytest.param(2, (2, 5, 6), 3, 3,
                 {"data_format": "channels_first", "return_sequences": True,
                  "return_state": True, "padding": "same",
                  "bias_initializer": "random_normal"}, id="2d_channels_first_seq_state"),
    pytest.param(2, (2, 6, 5), 2, 2,
                 {"data_format": "channels_first", "strides": (2, 1)}, id="2d_channels_first_last"),
    pytest.param(2, (5, 4, 2), 3, 3, {"use_bias": False, "return_sequences": True},
                 id="2d_no_bias"),
    pytest.param(2, (4, 4, 2), 2, 3,
                 {"activation": "relu", "recurrent_activation": "hard_sigmoid",
                  "padding": "same", "return_sequences": True}, id="2d_relu_hard_sigmoid"),
    pytest.param(3, (3, 4, 4, 2), 2, 2,
                 {"padding": "same", "return_state": True, "go_backwards": True,
                  "bias_initializer": "random_normal"}, id="3d_same_backwards_state"),
    pytest.param(3, (2, 3, 4, 2), 2, (1, 2, 2),
                 {"data_format": "channels_first", "return_sequences": True,
                  "return_state": True}, id="3d_channels_first"),
]


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
@pytest.mark.parametrize("rank, shape, filters, kernel_size, kwargs", PARITY_CASES)
def test_keras_parity(rank, shape, filters, kernel_size, kwargs, backend):
    x = torch.randn(2, 3, *shape)
    kl = _keras_layer(rank, filters, kernel_size, _np(x), **kwargs)
    ours = _ours_from_keras(kl, rank, filters, kernel_size, backend, **kwargs)
    _compare(ours(x), kl(_np(x)))


@pytest.mark.parametrize("channels_first", [False, True], ids=["channels_last", "channels_first"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_keras_parity_initial_state_and_mask(channels_first, return_sequences, backend):
    kwargs = {"padding": "same", "return_state": True, "return_sequences": return_sequences,
              "bias_initializer": "random_normal",
              "data_format": "channels_first" if channels_first else "channels_last"}
    batch, steps, spatial, c_in, filters = 3, 4, (4, 5), 2, 3
    x = torch.randn(batch, steps, *spatial, c_in)
    h0 = torch.randn(batch, *spatial, filters)
    c0 = torch.randn(batch, *spatial, filters)
    if channels_first:
        x, h0, c0 = x.movedim(-1, 2), h0.movedim(-1, 1), c0.movedim(-1, 1)
    # sample 0: leading masked steps; sample 1: a gap; sample 2: every step masked (the last
    # output is then zeros while h, c are the initial state).
    mask = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    kl = _keras_layer(2, filters, 3, _np(x), **kwargs)
    ours = _ours_from_keras(kl, 2, filters, 3, backend, **kwargs)
    out = ours(x, initial_state=(h0, c0), mask=mask)
    ref = kl(_np(x), initial_state=[_np(h0), _np(c0)], mask=_np(mask))
    _compare(out, ref)
    last = out[0] if not return_sequences else out[0][:, -1]
    assert torch.all(last[2] == 0)
    assert torch.equal(out[1][2], h0[2])


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_keras_parity_go_backwards_mask_initial_state(backend):
    kwargs = {"go_backwards": True, "return_sequences": True, "return_state": True}
    x = torch.randn(2, 4, 6, 2)
    h0, c0 = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    kl = _keras_layer(1, 3, 3, _np(x), **kwargs)
    ours = _ours_from_keras(kl, 1, 3, 3, backend, **kwargs)
    _compare(
        ours(x, initial_state=(h0, c0), mask=mask),
        kl(_np(x), initial_state=[_np(h0), _np(c0)], mask=_np(mask)),
    )


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_keras_parity_stateful(backend):
    kwargs = {"stateful": True, "return_state": True, "padding": "same"}
    x1, x2 = torch.randn(2, 3, 4, 4, 2), torch.randn(2, 2, 4, 4, 2)
    kl = _keras_layer(2, 2, 3, _np(x1), **kwargs)
    ours = _ours_from_keras(kl, 2, 2, 3, backend, **kwargs)
    _compare(ours(x1), kl(_np(x1)))
    _compare(ours(x2), kl(_np(x2)))  # continues from the first call's state
    ours.reset_states()
    kl.reset_states()
    _compare(ours(x2), kl(_np(x2)))


@pytest.mark.parametrize("backend", PARITY_BACKENDS)
def test_keras_parity_dropout_masks(backend):
    """Same per-gate masks in Keras' cell and ours -> same training-mode outputs."""
    kwargs = {"dropout": 0.3, "recurrent_dropout": 0.4, "seed": 7, "padding": "same",
              "return_sequences": True, "return_state": True}
    x = torch.randn(2, 3, 5, 4, 2)
    kl = _keras_layer(2, 3, 3, _np(x), **kwargs)
    ours = _ours_from_keras(kl, 2, 3, 3, backend, **kwargs).train()
    out, captured = _call_capturing_conv_lstm_kwargs(ours, x)
    dm, rm = captured["input_dropout_mask"], captured["recurrent_dropout_mask"]
    assert dm.shape == (4, 2, 5, 4, 2) and rm.shape == (4, 2, 5, 4, 3)
    # Keras reuses cached masks (cleared after each call): pre-populate them with ours.
    kl.cell._dropout_mask = [dm[g].clone() for g in range(4)]
    kl.cell._recurrent_dropout_mask = [rm[g].clone() for g in range(4)]
    _compare(out, kl(_np(x), training=True))


# ----------------------------------------------------------------------------- initializers


def test_compute_fans_matches_keras():
    _keras()
    from keras.src.initializers.random_initializers import compute_fans

    for shape in [(7,), (3, 5), (3, 2, 8), (3, 3, 4, 12), (2, 3, 3, 5, 8)]:
        assert initializers.compute_fans(shape) == compute_fans(shape)


@pytest.mark.parametrize(
    "name, kind, scale, mode",
    [
        ("glorot_uniform", "uniform", 1.0, "avg"),
        ("glorot_normal", "normal", 1.0, "avg"),
        ("he_uniform", "uniform", 2.0, "in"),
        ("he_normal", "normal", 2.0, "in"),
        ("lecun_uniform", "uniform", 1.0, "in"),
        ("lecun_normal", "normal", 1.0, "in"),
    ],
)
def test_variance_scaling_statistics(name, kind, scale, mode):
    shape = (3, 3, 16, 32)
    fan_in, fan_out = 3 * 3 * 16, 3 * 3 * 32
    fan = fan_in if mode == "in" else (fan_in + fan_out) / 2
    std = math.sqrt(scale / fan)  # Keras: the variance of the (truncated) distribution
    w = initializers.initialize(name, shape, generator=torch.Generator().manual_seed(0))
    assert w.shape == shape and w.dtype == torch.float32
    assert abs(w.mean().item()) < 0.05 * std
    assert abs(w.std().item() / std - 1) < 0.03
    if kind == "uniform":
        limit = math.sqrt(3 * scale / fan)
        assert w.abs().max().item() <= limit
        assert w.abs().max().item() > 0.99 * limit
    else:
        bound = 2 * std / 0.87962566103423978
        assert w.abs().max().item() <= bound * (1 + 1e-6)


def test_simple_initializers():
    g = torch.Generator().manual_seed(1)
    shape = (64, 64)
    assert torch.equal(initializers.initialize("zeros", shape), torch.zeros(shape))
    assert torch.equal(initializers.initialize("ones", shape), torch.ones(shape))
    w = initializers.initialize("random_uniform", shape, generator=g)
    assert w.abs().max() <= 0.05 and w.abs().max() > 0.049
    w = initializers.initialize("random_normal", shape, generator=g)
    assert abs(w.std().item() / 0.05 - 1) < 0.05
    w = initializers.initialize("truncated_normal", shape, generator=g)
    assert w.abs().max() <= 0.1
    # Keras aliases and class names
    assert torch.equal(initializers.initialize("Zeros", shape), torch.zeros(shape))
    assert torch.equal(initializers.initialize("one", shape), torch.ones(shape))
    assert initializers.get("GlorotUniform").__name__ == "glorot_uniform"


@pytest.mark.parametrize("shape", [(3, 3, 4, 16), (3, 2, 8), (2, 2, 2, 5, 20)])
def test_orthogonal(shape):
    w = initializers.initialize("orthogonal", shape, dtype=torch.float64)
    flat = w.reshape(-1, shape[-1])
    rows, cols = flat.shape
    gram = flat.T @ flat if rows >= cols else flat @ flat.T
    assert torch.allclose(gram, torch.eye(min(rows, cols), dtype=torch.float64), atol=1e-10)


def test_initializer_errors_and_callable():
    with pytest.raises(ValueError, match="glorot_uniform"):
        initializers.get("glorot_uniformm")
    with pytest.raises(TypeError, match="kernel_initializer"):
        initializers.get(3, "kernel_initializer")
    with pytest.raises(ValueError, match="kernel_initializer.*not a known initializer"):
        ConvLSTM2D(2, 3, kernel_initializer="nope")

    def constant(shape, *, dtype, device, generator):
        return torch.full(shape, 0.25, dtype=dtype, device=device)

    layer = ConvLSTM2D(2, 3, kernel_initializer=constant, in_channels=3)
    assert torch.all(layer.kernel == 0.25)

    def wrong_shape(shape, *, dtype, device, generator):
        return torch.zeros(3)

    with pytest.raises(ValueError, match="recurrent_initializer.*shape"):
        ConvLSTM2D(2, 3, recurrent_initializer=wrong_shape, in_channels=3)


def test_layer_default_initialization():
    filters, c_in, k = 8, 4, (3, 3)
    layer = ConvLSTM2D(filters, k, in_channels=c_in)
    assert layer.kernel.shape == (3, 3, c_in, 4 * filters)
    assert layer.recurrent_kernel.shape == (3, 3, filters, 4 * filters)
    assert layer.bias.shape == (4 * filters,)
    limit = math.sqrt(6 / (9 * c_in + 9 * 4 * filters))
    assert layer.kernel.abs().max() <= limit
    flat = layer.recurrent_kernel.detach().double().reshape(-1, 4 * filters)
    assert torch.allclose(flat.T @ flat, torch.eye(4 * filters, dtype=torch.float64), atol=1e-5)
    bias = layer.bias.detach()
    assert torch.equal(bias[filters:2 * filters], torch.ones(filters))  # forget gate set to 1
    assert torch.equal(bias[:filters], torch.zeros(filters))
    assert torch.equal(bias[2 * filters:], torch.zeros(2 * filters))

    # unit_forget_bias with a random bias_initializer: the forget slice is *set* to 1.
    layer = ConvLSTM1D(filters, 3, in_channels=c_in, bias_initializer="random_normal")
    bias = layer.bias.detach()
    assert torch.equal(bias[filters:2 * filters], torch.ones(filters))
    assert (bias[:filters] != 0).all() and (bias[2 * filters:] != 0).all()

    layer = ConvLSTM1D(filters, 3, in_channels=c_in, unit_forget_bias=False)
    assert torch.equal(layer.bias.detach(), torch.zeros(4 * filters))
    layer = ConvLSTM3D(filters, 2, in_channels=c_in, use_bias=False)
    assert layer.bias is None and len(list(layer.parameters())) == 2


def test_dtype_and_device_arguments():
    layer = ConvLSTM1D(2, 3, in_channels=2, dtype=torch.float64, device="cpu",
                       backend="reference", return_sequences=True)
    assert all(p.dtype == torch.float64 for p in layer.parameters())
    out = layer(torch.randn(1, 2, 5, 2, dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == (1, 2, 3, 2)
    lazy = ConvLSTM1D(2, 3, dtype=torch.float64, backend="reference")
    lazy(torch.randn(1, 2, 5, 2, dtype=torch.float64))
    assert all(p.dtype == torch.float64 for p in lazy.parameters())


# ----------------------------------------------------------------------------- lazy parameters


def test_lazy_in_channels():
    x = torch.randn(2, 3, 5, 5, 4)
    layer = ConvLSTM2D(3, 3, backend="reference", padding="same")
    assert layer.in_channels is None and layer.has_uninitialized_params()
    assert "lazy" in repr(layer)
    with pytest.raises(RuntimeError, match="uninitialized"):
        layer.get_keras_weights()
    out = layer(x)
    assert out.shape == (2, 5, 5, 3)
    assert layer.in_channels == 4 and not layer.has_uninitialized_params()
    assert layer.kernel.shape == (3, 3, 4, 12)
    assert all(type(p) is torch.nn.Parameter for p in layer.parameters())
    assert "in_channels=4" in repr(layer)

    # An optimizer created after the first call trains the materialized parameters.
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    layer(x).square().mean().backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, layer.parameters()))

    with pytest.raises(ValueError, match="4 input channels.*got x with 5"):
        layer(torch.randn(2, 3, 5, 5, 5))


def test_lazy_channels_first_and_same_init_as_eager():
    x = torch.randn(1, 2, 3, 5, 4)  # channels_first: C = 3
    torch.manual_seed(123)
    eager = ConvLSTM2D(2, 3, data_format="channels_first", in_channels=3, backend="reference")
    torch.manual_seed(123)
    lazy = ConvLSTM2D(2, 3, data_format="channels_first", backend="reference")
    out = lazy(x)
    assert lazy.in_channels == 3
    for a, b in zip(eager.parameters(), lazy.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(out, eager(x))


def test_lazy_state_dict():
    x = torch.randn(2, 2, 6, 3)
    src = ConvLSTM1D(2, 3, in_channels=3, backend="reference", bias_initializer="random_normal")
    lazy = ConvLSTM1D(2, 3, backend="reference", bias_initializer="random_normal")
    lazy.load_state_dict(src.state_dict())  # materializes from the loaded shapes
    assert lazy.in_channels == 3
    assert torch.equal(lazy(x), src(x))
    # A lazy module's state_dict loads into another lazy module (both stay lazy).
    other = ConvLSTM1D(2, 3, backend="reference")
    other.load_state_dict(ConvLSTM1D(2, 3).state_dict())
    assert other.has_uninitialized_params()


BAD_FIRST_CALLS = [
    pytest.param(lambda: (torch.randn(1, 2, 5, 5, 0),), {}, id="no_channels"),
    pytest.param(lambda: (torch.randn(1, 2, 5, 5, 3),), {"mask": torch.ones(1, 7)},
                 id="bad_mask"),
    pytest.param(lambda: (torch.randn(1, 2, 5, 5, 3),),
                 {"initial_state": (torch.zeros(1, 3, 3, 5), torch.zeros(1, 3, 3, 5))},
                 id="bad_initial_state"),
]


@pytest.mark.parametrize("args,kwargs", BAD_FIRST_CALLS)
def test_failed_first_call_leaves_the_layer_lazy(args, kwargs):
    """A first call that raises leaves no trace: the layer stays lazy, and its real first call
    builds it as a fresh layer's would (same weights from the same seed)."""
    x = torch.randn(1, 2, 5, 5, 3)
    layer = ConvLSTM2D(4, 3, backend="reference")
    with pytest.raises(ValueError):
        layer(*args(), **kwargs)
    assert layer.in_channels is None and layer.has_uninitialized_params()
    assert all(type(p) is torch.nn.parameter.UninitializedParameter for p in layer.parameters())
    torch.manual_seed(7)
    out = layer(x)
    torch.manual_seed(7)
    fresh = ConvLSTM2D(4, 3, backend="reference")
    assert torch.equal(out, fresh(x)) and layer.in_channels == 3
    for a, b in zip(layer.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert not layer._forward_pre_hooks  # initialized: no hook left


def test_failed_first_call_then_load_state_dict():
    layer = ConvLSTM2D(4, 3, backend="reference")
    with pytest.raises(ValueError):
        layer(torch.randn(1, 2, 5, 5, 0))
    src = ConvLSTM2D(4, 3, in_channels=2, backend="reference")
    layer.load_state_dict(src.state_dict())  # still lazy: materialized from the state_dict
    x = torch.randn(1, 2, 5, 5, 2)
    assert layer.in_channels == 2 and torch.equal(layer(x), src(x))


def test_concurrent_first_calls_initialize_once():
    """8 threads call a lazy layer for the first time at once: one initializes it (torch's lazy
    modules initialize once per thread, and raised removing their hook twice), the others wait
    and run on its weights."""
    layer = ConvLSTM2D(3, 3, padding="same", return_sequences=True, backend="reference")
    x = torch.randn(1, 2, 4, 4, 2)
    materialized = []
    materialize = layer._materialize

    def slow_materialize(in_channels):
        materialized.append(in_channels)
        time.sleep(0.05)  # widens the race: without the lock every thread gets here
        materialize(in_channels)

    layer._materialize = slow_materialize
    n = 8
    barrier = threading.Barrier(n)
    outputs, errors = [None] * n, []

    def first_call(i):
        try:
            barrier.wait(timeout=60)
            outputs[i] = layer(x)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_call, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)  # only catches a hang
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert materialized == [2]
    want = layer(x)  # the weights the layer kept
    assert all(torch.equal(out, want) for out in outputs)
    assert not layer._forward_pre_hooks


# ----------------------------------------------------------------------------- Keras weight I/O


def test_keras_weights_round_trip():
    weights = [np.random.randn(3, 2, 5, 16).astype("float32"),
               np.random.randn(3, 2, 4, 16).astype("float32"),
               np.random.randn(16).astype("float32")]
    layer = ConvLSTM2D(4, (3, 2))
    layer.set_keras_weights(weights)  # initializes the lazy layer
    assert layer.in_channels == 5
    got = layer.get_keras_weights()
    assert len(got) == 3
    for a, b in zip(got, weights):
        assert isinstance(a, np.ndarray) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    # tensors are accepted too, and the result is a copy
    layer.set_keras_weights([torch.from_numpy(w) * 2 for w in weights])
    np.testing.assert_array_equal(layer.get_keras_weights()[2], weights[2] * 2)
    got[0][...] = 0
    assert layer.kernel.abs().sum() > 0

    no_bias = ConvLSTM1D(4, 3, use_bias=False)
    no_bias.set_keras_weights([np.zeros((3, 2, 16)), np.zeros((3, 4, 16))])
    assert len(no_bias.get_keras_weights()) == 2


def test_keras_weights_errors():
    layer = ConvLSTM2D(4, 3, in_channels=2)
    good = layer.get_keras_weights()
    with pytest.raises(ValueError, match=r"expected 3 weights"):
        layer.set_keras_weights(good[:2])
    with pytest.raises(ValueError, match=r"kernel must have shape \(3, 3, 2, 16\)"):
        layer.set_keras_weights([np.zeros((3, 3, 5, 16)), good[1], good[2]])
    with pytest.raises(ValueError, match=r"recurrent_kernel must have shape \(3, 3, 4, 16\) "
                       r"\(last axis: 4 gates x filters=4 = 16\), got \(3, 3, 4, 12\)"):
        layer.set_keras_weights([good[0], np.zeros((3, 3, 4, 12)), good[2]])
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        layer.set_keras_weights([good[0], good[1], np.zeros(12)])
    with pytest.raises(ValueError, match=r"kernel must have shape"):
        layer.set_keras_weights([np.zeros((3, 2, 16)), good[1], good[2]])
    with pytest.raises(TypeError, match="weights must be a list"):
        layer.set_keras_weights(torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected 2 weights"):
        ConvLSTM2D(4, 3, use_bias=False).set_keras_weights(good)


# ----------------------------------------------------------------------------- stateful


def test_stateful_continues_and_resets():
    x = torch.randn(2, 4, 5, 2)
    layer = ConvLSTM1D(3, 3, in_channels=2, stateful=True, return_sequences=True,
                       return_state=True, padding="same", backend="reference")
    plain = copy.deepcopy(layer)
    plain.stateful = False
    full, h_full, c_full = plain(x)
    a, _, _ = layer(x[:, :2])
    b, h, c = layer(x[:, 2:])
    assert_close(torch.cat([a, b], 1), full, torch.float32, "seq")
    assert_close(h, h_full, torch.float32, "h")
    assert_close(c, c_full, torch.float32, "c")
    assert layer.states is not None and not layer.states[0].requires_grad
    with pytest.raises(ValueError, match="batch size 2.*batch size 3"):
        layer(torch.randn(3, 2, 5, 2))
    layer.reset_states()
    assert layer.states is None
    assert_close(layer(x)[0], full, torch.float32, "after reset")
    layer.reset_states()
    assert layer(torch.randn(3, 2, 5, 2))[0].shape == (3, 2, 5, 3)  # new batch size after reset
    # the kept state is not part of the state_dict
    assert set(layer.state_dict()) == {"kernel", "recurrent_kernel", "bias"}


def test_stateful_channels_first_states():
    layer = ConvLSTM2D(3, 3, stateful=True, data_format="channels_first", backend="reference")
    layer(torch.randn(2, 2, 4, 5, 6))
    h, c = layer.states
    assert h.shape == c.shape == (2, 3, 3, 4)


# ----------------------------------------------------------------------------- dropout


def _dropout_layer(seed=3):
    torch.manual_seed(0)
    return ConvLSTM2D(3, 3, in_channels=2, padding="same", dropout=0.4, recurrent_dropout=0.3,
                      seed=seed, return_sequences=True, backend="reference")


def test_dropout_eval_is_deterministic_and_off():
    x = torch.randn(2, 3, 4, 4, 2)
    layer = _dropout_layer().eval()
    no_dropout = ConvLSTM2D(3, 3, in_channels=2, padding="same", return_sequences=True,
                            backend="reference")
    no_dropout.load_state_dict(layer.state_dict())
    out = layer(x)
    assert torch.equal(out, layer(x))
    assert torch.equal(out, no_dropout(x))


def test_dropout_training_seeded():
    x = torch.randn(2, 3, 4, 4, 2)
    a, b = _dropout_layer().train(), _dropout_layer().train()
    ya1, ya2 = a(x), a(x)
    yb1, yb2 = b(x), b(x)
    assert torch.equal(ya1, yb1) and torch.equal(ya2, yb2)  # same seed: same mask stream
    assert not torch.equal(ya1, ya2)  # masks are redrawn at every call
    assert not torch.equal(ya1, a.eval()(x))
    c = _dropout_layer(seed=4).train()
    assert not torch.equal(c(x), ya1)
    # deepcopy carries the generator state along
    d = copy.deepcopy(a.train())
    assert torch.equal(d(x), a(x))


def test_seeded_dropout_compiles_fullgraph_and_matches_eager():
    """Seeded dropout has no torch.Generator to create inside a graph: the layer compiles with
    fullgraph=True, draws the same masks as in eager mode, and advances its stream per call."""
    x = torch.randn(2, 3, 4, 4, 2)
    compiled_layer, eager_layer = _dropout_layer().train(), _dropout_layer().train()
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    y1, y2 = compiled(x), compiled(x)
    assert torch.allclose(y1, eager_layer(x), atol=1e-6)
    assert torch.allclose(y2, eager_layer(x), atol=1e-6)
    assert not torch.equal(y1, y2)
    assert int(compiled_layer._dropout_draws) == int(eager_layer._dropout_draws) == 2


def test_seeded_masks_are_the_same_on_every_device_and_uniform():
    from convlstm_triton import seeded_random

    u = seeded_random.uniform((4, 50, 40), seed=7, stream=0, draw=3, device="cpu")
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005
    assert torch.equal(u, seeded_random.uniform((4, 50, 40), 7, 0, torch.tensor(3), "cpu"))
    for other in ((8, 0, 3), (7, 1, 3), (7, 0, 4)):  # seed, stream, draw each change it
        assert (u != seeded_random.uniform((4, 50, 40), *other, device="cpu")).float().mean() > 0.99
    if torch.cuda.is_available():
        assert torch.equal(u, seeded_random.uniform((4, 50, 40), 7, 0, 3, "cuda").cpu())


def test_dropout_masks_are_per_gate_inverted():
    layer = ConvLSTM2D(8, 3, in_channels=6, strides=2, dropout=0.25, recurrent_dropout=0.5,
                       backend="reference").train()
    _, captured = _call_capturing_conv_lstm_kwargs(layer, torch.randn(5, 2, 6, 5, 6))
    dm, rm = captured["input_dropout_mask"], captured["recurrent_dropout_mask"]
    assert dm.shape == (4, 5, 6, 5, 6) and rm.shape == (4, 5, 2, 2, 8)
    for m, rate in ((dm, 0.25), (rm, 0.5)):
        scale = torch.tensor(1 / (1 - rate))
        assert torch.all((m == 0) | (m == scale))
        assert not torch.equal(m[0], m[1])  # independent per gate
    assert abs(dm.mean().item() - 1) < 0.15

    _, captured = _call_capturing_conv_lstm_kwargs(layer.eval(), torch.randn(5, 2, 6, 5, 6))
    assert captured["input_dropout_mask"] is None and captured["recurrent_dropout_mask"] is None


# ----------------------------------------------------------------------------- argument errors

BAD_ARGS = [
    ({"filters": 0}, ValueError, "filters"),
    ({"filters": 2.5}, TypeError, "filters"),
    ({"filters": True}, TypeError, "filters"),
    ({"kernel_size": (3, 3, 3)}, ValueError, "kernel_size"),
    ({"kernel_size": 0}, ValueError, "kernel_size"),
    ({"strides": (1, 0)}, ValueError, "strides"),
    ({"strides": "2"}, TypeError, "strides"),
    ({"padding": "causal"}, ValueError, "padding"),
    ({"padding": 1}, ValueError, "padding"),
    ({"data_format": "NHWC"}, ValueError, "data_format"),
    ({"dilation_rate": -1}, ValueError, "dilation_rate"),
    ({"strides": 2, "dilation_rate": 2}, ValueError, "strides.*dilation_rate"),
    ({"activation": "geluu"}, ValueError, "activation"),
    ({"recurrent_activation": "swish2"}, ValueError, "recurrent_activation"),
    ({"activation": 3}, TypeError, "activation"),
    ({"kernel_initializer": "foo"}, ValueError, "kernel_initializer"),
    ({"recurrent_initializer": 1.0}, TypeError, "recurrent_initializer"),
    ({"bias_initializer": "bar"}, ValueError, "bias_initializer"),
    ({"kernel_regularizer": "l3"}, ValueError, "kernel_regularizer"),
    ({"recurrent_regularizer": "orthogonal_regularizer"}, ValueError, "recurrent_regularizer"),
    ({"bias_regularizer": {"l1": -1.0}}, ValueError, "bias_regularizer"),
    ({"activity_regularizer": 0.01}, ValueError, "activity_regularizer"),
    ({"kernel_constraint": "nonneg"}, ValueError, "kernel_constraint"),
    ({"recurrent_constraint": "maxnorm"}, ValueError, "recurrent_constraint"),
    ({"bias_constraint": {"class_name": "MaxNorm", "config": {"axis": 1}}}, ValueError,
     "bias_constraint"),
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"recurrent_dropout": 1.5}, ValueError, "recurrent_dropout"),
    ({"dropout": "0.1"}, TypeError, "dropout"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"in_channels": 0}, ValueError, "in_channels"),
    ({"in_channels": 2.0}, TypeError, "in_channels"),
    ({"backend": "cudnn"}, ValueError, "backend"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_ARGS, ids=lambda v: str(v)[:40])
def test_bad_arguments(kwargs, exc, match):
    args = {"filters": 2, "kernel_size": 3}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ConvLSTM2D(**args)


def test_case_insensitive_padding_and_data_format():
    layer = ConvLSTM2D(2, 3, padding="SAME", data_format="Channels_First")
    assert layer.padding == "same" and layer.data_format == "channels_first"
    assert ConvLSTM2D(2, 3, data_format=None).data_format == "channels_last"
    assert ConvLSTM2D(2, 3, activation=None).activation == "linear"  # Keras: None = linear


def test_bad_inputs():
    layer = ConvLSTM2D(2, 3, in_channels=2, backend="reference")
    with pytest.raises(ValueError, match="rank 5"):
        layer(torch.randn(2, 3, 4, 2))
    with pytest.raises(ValueError, match="initial_state"):
        layer(torch.randn(1, 2, 4, 4, 2), initial_state=torch.zeros(1, 2, 2, 2))


def test_positional_arguments_follow_keras_order():
    layer = ConvLSTM2D(4, 3, 2, "same", "channels_first", 1, "relu", "hard_sigmoid", False)
    assert layer.filters == 4 and layer.kernel_size == (3, 3) and layer.strides == (2, 2)
    assert layer.padding == "same" and layer.data_format == "channels_first"
    assert layer.activation == "relu" and layer.recurrent_activation == "hard_sigmoid"
    assert layer.use_bias is False
    keras_defaults = [1, "valid", None, 1, "tanh", "sigmoid", True, "glorot_uniform",
                      "orthogonal", "zeros", True, None, None, None, None, None, None, None,
                      0.0, 0.0, 5, True, True, True, True]  # strides ... stateful
    layer = ConvLSTM2D(4, 3, *keras_defaults)
    assert layer.seed == 5 and layer.return_sequences and layer.stateful
    with pytest.raises(TypeError, match="positional"):
        ConvLSTM2D(4, 3, *keras_defaults, 2)  # in_channels is keyword-only


def test_exports():
    assert convlstm_triton.ConvLSTM2D is ConvLSTM2D
    assert convlstm_triton.conv_lstm is layers_module.conv_lstm
    assert isinstance(convlstm_triton.__version__, str)


# ----------------------------------------------------------------------------- state_dict, grads


def test_state_dict_round_trip():
    x = torch.randn(2, 3, 2, 3, 4, 2)
    src = ConvLSTM3D(2, 2, in_channels=2, padding="same", bias_initializer="random_normal",
                     backend="reference", return_sequences=True)
    dst = ConvLSTM3D(2, 2, in_channels=2, padding="same", backend="reference",
                     return_sequences=True)
    assert not torch.equal(src(x), dst(x))
    dst.load_state_dict(src.state_dict())
    assert torch.equal(src(x), dst(x))
    assert set(src.state_dict()) == {"kernel", "recurrent_kernel", "bias"}


@pytest.mark.parametrize("channels_first", [False, True])
def test_gradients_flow(channels_first):
    data_format = "channels_first" if channels_first else "channels_last"
    layer = ConvLSTM2D(3, 3, padding="same", return_sequences=True, return_state=True,
                       data_format=data_format, backend="reference",
                       bias_initializer="random_normal")
    x = torch.randn(2, 3, 4, 5, 2)
    h0 = torch.randn(2, 4, 5, 3)
    c0 = torch.randn(2, 4, 5, 3)
    if channels_first:
        x, h0, c0 = x.movedim(-1, 2), h0.movedim(-1, 1), c0.movedim(-1, 1)
    x, h0, c0 = (t.contiguous().requires_grad_() for t in (x, h0, c0))
    seq, h, c = layer(x, initial_state=(h0, c0))
    (seq.square().sum() + h.sum() + c.sum()).backward()
    for name, t in [("x", x), ("h0", h0), ("c0", c0)] + list(layer.named_parameters()):
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_gradcheck_float64():
    layer = ConvLSTM1D(2, 2, in_channels=2, padding="same", return_sequences=True,
                       dtype=torch.float64, backend="reference")
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


@pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_triton_backend_matches_reference_through_the_module():
    """Module plumbing (channels_first, go_backwards, mask, initial_state) on the kernel path."""
    device = kernel_device()
    kwargs = {"padding": "same", "return_sequences": True, "return_state": True,
              "go_backwards": True, "data_format": "channels_first",
              "bias_initializer": "random_normal", "device": device}
    ref = ConvLSTM2D(3, 3, in_channels=2, backend="reference", **kwargs)
    tri = ConvLSTM2D(3, 3, in_channels=2, backend="triton", **kwargs)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 2, 4, 5, device=device)
    h0, c0 = torch.randn(2, 2, 3, 4, 5, device=device).unbind(0)
    mask = torch.tensor([[0, 1, 1], [1, 0, 1]], dtype=torch.bool, device=device)
    results = []
    for layer in (ref, tri):
        xs = [t.clone().requires_grad_() for t in (x, h0, c0)]
        seq, h, c = layer(xs[0], initial_state=(xs[1], xs[2]), mask=mask)
        (seq.square().sum() + h.sum() + 2 * c.sum()).backward()
        results.append([seq, h, c] + [t.grad for t in xs] + [p.grad for p in layer.parameters()])
    names = ["seq", "h", "c", "dx", "dh0", "dc0", "dkernel", "drecurrent_kernel", "dbias"]
    tol = TF32_TOLERANCE if device == "cuda" and torch.backends.cudnn.allow_tf32 else None
    for name, out, expected in zip(names, results[1], results[0]):
        assert_close(out, expected, torch.float32, name, tol=tol)


# ----------------------------------------------------------------------------- lazy first calls


def test_a_failing_first_call_leaves_the_layer_lazy():
    layer = ConvLSTM2D(4, 3, padding="same", backend="reference")
    with pytest.raises(ValueError, match="0 channels"):
        layer(torch.randn(1, 2, 5, 5, 0))
    with pytest.raises(ValueError, match="rank 5"):
        layer(torch.randn(1, 5, 5, 3))
    assert layer.in_channels is None  # still lazy: the next call builds it
    assert layer(torch.randn(1, 2, 5, 5, 3)).shape == (1, 5, 5, 4)
    assert layer.in_channels == 3


def test_first_call_from_many_threads_materializes_once():
    """Eight threads call a fresh lazy layer at once: one materialization, and every thread's
    output is what the final weights give (torch's LazyLinear re-initializes under the first
    thread, or fails on '_initialize_hook')."""
    import threading

    for attempt in range(5):
        layer = ConvLSTM2D(4, 3, padding="same", return_sequences=True, backend="reference")
        inits = []
        original = layer.reset_parameters

        def counting(*args, original=original, inits=inits, **kwargs):
            inits.append(1)
            return original(*args, **kwargs)

        layer.reset_parameters = counting
        xs = [torch.randn(1, 2, 6, 5, 3) for _ in range(8)]
        outs, errors = [None] * 8, []
        barrier = threading.Barrier(8)

        def call(i, layer=layer, xs=xs, outs=outs, errors=errors, barrier=barrier):
            barrier.wait(timeout=60)
            try:
                outs[i] = layer(xs[i]).detach()
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert len(inits) == 1, f"attempt {attempt}: materialized {len(inits)} times"
        for x, out in zip(xs, outs):
            assert torch.equal(out, layer(x).detach())
