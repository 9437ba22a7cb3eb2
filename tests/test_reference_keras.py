"""The torch reference equals Keras 3 ``ConvLSTM1D/2D/3D`` (torch backend), output and states.

Each case builds a Keras layer (channels_last, return_sequences and return_state), loads the same
random weights into it and into the reference, and compares ``seq``, ``h`` and ``c``. Keras runs in
float32; the reference runs in float32 on the same inputs (the ops are the same torch convs, so the
error is at float32 rounding level).
"""

import numpy as np
import pytest
import torch
from helpers import assert_close

from convlstm_triton.reference import conv_lstm_reference

keras = pytest.importorskip("keras")

# Keras float32 vs reference float32: identical math, different op order in places.
TOL = 1e-5

LAYERS = {1: "ConvLSTM1D", 2: "ConvLSTM2D", 3: "ConvLSTM3D"}


def _np(t):
    # Keras' torch backend returns torch tensors (on its default device); keras.ops'
    # convert_to_numpy would go through np.array(tensor), which warns under numpy 2.
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _rand(*shape, scale=1.0):
    return torch.randn(*shape, dtype=torch.float32) * scale


def _make_case(spatial, c_in, filters, kernel_size, batch=2, steps=3, use_bias=True):
    rank = len(spatial)
    kernel_size = (kernel_size,) * rank if isinstance(kernel_size, int) else kernel_size
    x = _rand(batch, steps, *spatial, c_in)
    # Scaled so that the gate pre-activations are O(1): saturated gates would hide errors.
    kernel = _rand(*kernel_size, c_in, 4 * filters, scale=0.4)
    recurrent_kernel = _rand(*kernel_size, filters, 4 * filters, scale=0.4)
    bias = _rand(4 * filters, scale=0.5) if use_bias else None
    return x, kernel, recurrent_kernel, bias


def _keras_layer(rank, filters, kernel_size, x, weights, **layer_kwargs):
    cls = getattr(keras.layers, LAYERS[rank])
    layer = cls(
        filters,
        kernel_size,
        return_sequences=True,
        return_state=True,
        data_format="channels_last",
        **layer_kwargs,
    )
    layer(_np(x))  # builds the weights
    layer.set_weights([_np(w) for w in weights])
    return layer


def _run_keras(layer, x, initial_state=None, mask=None, training=False):
    kwargs = {"training": training}
    if initial_state is not None:
        kwargs["initial_state"] = [_np(s) for s in initial_state]
    if mask is not None:
        kwargs["mask"] = _np(mask)
    seq, h, c = layer(_np(x), **kwargs)
    return tuple(torch.from_numpy(_np(t)) for t in (seq, h, c))


def _compare(ours, theirs):
    for name, a, b in zip(("seq", "h", "c"), ours, theirs):
        assert_close(a, b, torch.float32, name, tol=TOL)


# (spatial, C_in, F, kernel_size, layer kwargs)
GEOMETRY_CASES = [
    # 1D
    pytest.param((7,), 3, 4, 3, {"padding": "valid"}, id="1d_k3_valid"),
    pytest.param((7,), 3, 4, 3, {"padding": "same"}, id="1d_k3_same"),
    pytest.param((7,), 3, 4, 4, {"padding": "same"}, id="1d_k4_same_even"),
    pytest.param((8,), 3, 2, 3, {"padding": "same", "strides": 2}, id="1d_k3_same_s2"),
    pytest.param((9,), 2, 3, 2, {"padding": "valid", "strides": 3}, id="1d_k2_valid_s3"),
    pytest.param((9,), 3, 2, 3, {"padding": "valid", "dilation_rate": 2}, id="1d_k3_valid_d2"),
    pytest.param((7,), 3, 2, 2, {"padding": "same", "dilation_rate": 3}, id="1d_k2_same_d3"),
    # 2D
    pytest.param((5, 6), 3, 4, 3, {"padding": "valid"}, id="2d_k3_valid"),
    pytest.param((5, 6), 3, 4, 3, {"padding": "same"}, id="2d_k3_same"),
    pytest.param((5, 6), 3, 2, 2, {"padding": "same"}, id="2d_k2_same_even"),
    pytest.param((5, 6), 3, 3, (2, 3), {"padding": "same"}, id="2d_k2x3_same_mixed"),
    pytest.param((5, 6), 3, 4, 4, {"padding": "valid"}, id="2d_k4_valid_even"),
    pytest.param((5, 6), 3, 4, 3, {"padding": "same", "strides": 2}, id="2d_k3_same_s2"),
    pytest.param((5, 7), 3, 3, 4, {"padding": "same", "strides": 2}, id="2d_k4_same_s2_even"),
    pytest.param((6, 7), 2, 3, 3, {"padding": "valid", "strides": (2, 1)}, id="2d_k3_valid_s2x1"),
    pytest.param((7, 6), 3, 2, 3, {"padding": "same", "dilation_rate": 2}, id="2d_k3_same_d2"),
    pytest.param(
        (7, 8), 2, 3, 2, {"padding": "valid", "dilation_rate": (2, 3)}, id="2d_k2_valid_d2x3"
    ),
    # 3D
    pytest.param((3, 4, 5), 2, 3, 3, {"padding": "same"}, id="3d_k3_same"),
    pytest.param((3, 4, 5), 2, 3, 2, {"padding": "valid"}, id="3d_k2_valid"),
    pytest.param((3, 4, 5), 2, 2, 2, {"padding": "same"}, id="3d_k2_same_even"),
    pytest.param((4, 5, 5), 2, 3, 3, {"padding": "same", "strides": 2}, id="3d_k3_same_s2"),
    pytest.param(
        (4, 5, 6),
        2,
        2,
        (1, 2, 3),
        {"padding": "valid", "strides": (1, 2, 2)},
        id="3d_k1x2x3_valid_s1x2x2",
    ),
    pytest.param((3, 5, 5), 2, 2, 2, {"padding": "same", "dilation_rate": 2}, id="3d_k2_same_d2"),
]


@pytest.mark.parametrize("spatial, c_in, filters, kernel_size, kwargs", GEOMETRY_CASES)
def test_geometry_matches_keras(spatial, c_in, filters, kernel_size, kwargs):
    x, k, r, b = _make_case(spatial, c_in, filters, kernel_size)
    layer = _keras_layer(len(spatial), filters, kernel_size, x, (k, r, b), **kwargs)
    ours = conv_lstm_reference(x, k, r, b, **kwargs)
    _compare(ours, _run_keras(layer, x))


@pytest.mark.parametrize(
    "spatial, kwargs",
    [
        pytest.param((7,), {"padding": "same"}, id="1d_same"),
        pytest.param((5, 6), {"padding": "valid"}, id="2d_valid"),
        pytest.param((5, 6), {"padding": "same", "strides": 2}, id="2d_same_s2"),
        pytest.param((3, 4, 5), {"padding": "same"}, id="3d_same"),
    ],
)
def test_go_backwards_matches_keras(spatial, kwargs):
    x, k, r, b = _make_case(spatial, 3, 3, 3, steps=4)
    layer = _keras_layer(len(spatial), 3, 3, x, (k, r, b), go_backwards=True, **kwargs)
    ours = conv_lstm_reference(x, k, r, b, go_backwards=True, **kwargs)
    _compare(ours, _run_keras(layer, x))


@pytest.mark.parametrize(
    "spatial, kwargs",
    [
        pytest.param((6,), {"padding": "same"}, id="1d_same"),
        pytest.param((5, 6), {"padding": "same"}, id="2d_same"),
        pytest.param((6, 7), {"padding": "valid", "strides": 2}, id="2d_valid_s2"),
        pytest.param((5, 6), {"padding": "same", "go_backwards": True}, id="2d_same_backwards"),
        pytest.param((3, 4, 4), {"padding": "same"}, id="3d_same"),
    ],
)
def test_initial_state_matches_keras(spatial, kwargs):
    x, k, r, b = _make_case(spatial, 3, 4, 3)
    layer = _keras_layer(len(spatial), 4, 3, x, (k, r, b), **kwargs)
    state_shape = tuple(_run_keras(layer, x)[1].shape)
    h0, c0 = _rand(*state_shape), _rand(*state_shape)
    ours = conv_lstm_reference(x, k, r, b, (h0, c0), **kwargs)
    _compare(ours, _run_keras(layer, x, initial_state=(h0, c0)))


# Per sample, in input time order: leading masked steps, a masked step in the middle, trailing
# masked steps, all masked, none masked. With go_backwards "leading" and "trailing" swap roles.
MASK = torch.tensor(
    [
        [0, 0, 1, 1],
        [1, 0, 1, 1],
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 1, 1],
        [0, 1, 0, 1],
    ],
    dtype=torch.bool,
)


@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize(
    "spatial, kwargs",
    [
        pytest.param((6,), {"padding": "same"}, id="1d_same"),
        pytest.param((5, 6), {"padding": "same"}, id="2d_same"),
        pytest.param((5, 6), {"padding": "valid", "strides": 2}, id="2d_valid_s2"),
        pytest.param((3, 3, 4), {"padding": "same"}, id="3d_same"),
    ],
)
def test_mask_matches_keras(spatial, kwargs, with_state, go_backwards):
    batch, steps = MASK.shape
    x, k, r, b = _make_case(spatial, 3, 2, 3, batch=batch, steps=steps)
    layer = _keras_layer(len(spatial), 2, 3, x, (k, r, b), go_backwards=go_backwards, **kwargs)
    state = None
    if with_state:
        state_shape = tuple(_run_keras(layer, x)[1].shape)
        state = (_rand(*state_shape), _rand(*state_shape))
    ours = conv_lstm_reference(x, k, r, b, state, mask=MASK, go_backwards=go_backwards, **kwargs)
    theirs = _run_keras(layer, x, initial_state=state, mask=MASK)
    _compare(ours, theirs)

    # Pin the documented semantics independently of Keras. The sample whose first two steps in
    # *processing* order are masked is 0 ([0, 0, 1, 1]) forward and 2 ([1, 1, 0, 0]) backwards,
    # i.e. the mask is in input order and reversed with x. Its outputs there are zeros even with
    # a nonzero initial state; a fully masked sample (3) outputs zeros and keeps its initial state.
    seq, h, c = ours
    lead = 2 if go_backwards else 0
    assert torch.all(seq[lead, :2] == 0)
    assert not torch.all(seq[lead, 2] == 0)
    assert torch.all(seq[3] == 0)
    h0 = torch.zeros_like(h[3]) if state is None else state[0][3]
    c0 = torch.zeros_like(c[3]) if state is None else state[1][3]
    assert torch.equal(h[3], h0) and torch.equal(c[3], c0)


@pytest.mark.parametrize(
    "activation, recurrent_activation",
    [
        pytest.param("tanh", "hard_sigmoid", id="tanh_hard_sigmoid"),
        pytest.param("relu", "sigmoid", id="relu_sigmoid"),
        pytest.param("linear", "sigmoid", id="linear_sigmoid"),
        pytest.param("tanh", "linear", id="tanh_linear"),
        pytest.param("sigmoid", "relu", id="sigmoid_relu"),
        pytest.param("hard_sigmoid", "tanh", id="hard_sigmoid_tanh"),
        pytest.param("relu6", "sigmoid", id="relu6_sigmoid"),
        pytest.param("elu", "hard_sigmoid", id="elu_hard_sigmoid"),
        pytest.param("selu", "sigmoid", id="selu_sigmoid"),
        pytest.param("silu", "sigmoid", id="silu_sigmoid"),
        pytest.param("swish", "softsign", id="swish_softsign"),
        pytest.param("gelu", "sigmoid", id="gelu_sigmoid"),
        pytest.param("softplus", "sigmoid", id="softplus_sigmoid"),
        pytest.param("tanh", "exponential", id="tanh_exponential"),
        # exponential as the cell activation is exp(exp(.)) over steps: overflows on any data
        pytest.param("celu", "hard_silu", id="celu_hard_silu"),
        pytest.param("hard_shrink", "hard_swish", id="hard_shrink_hard_swish"),
        pytest.param("hard_tanh", "sparse_sigmoid", id="hard_tanh_sparse_sigmoid"),
        pytest.param("leaky_relu", "log_sigmoid", id="leaky_relu_log_sigmoid"),
        pytest.param("mish", "sigmoid", id="mish_sigmoid"),
        pytest.param("soft_shrink", "sigmoid", id="soft_shrink_sigmoid"),
        pytest.param("sparse_plus", "sigmoid", id="sparse_plus_sigmoid"),
        pytest.param("squareplus", "hard_tanh", id="squareplus_hard_tanh"),
        pytest.param("tanh_shrink", "sigmoid", id="tanh_shrink_sigmoid"),
        # channel-wise: over the F channels of Keras' channels-last gates
        pytest.param("softmax", "sigmoid", id="softmax_sigmoid"),
        pytest.param("tanh", "log_softmax", id="tanh_log_softmax"),
        pytest.param("sparsemax", "softmax", id="sparsemax_softmax"),
    ],
)
def test_activations_match_keras(activation, recurrent_activation):
    spatial = (5, 6)
    x, k, r, b = _make_case(spatial, 3, 3, 3)
    # Larger pre-activations so hard_sigmoid / relu actually hit their clipped regions; smaller
    # for the unbounded exponential, which otherwise overflows within three steps.
    exponential = "exponential" in (activation, recurrent_activation)
    x = x * (0.3 if exponential else 3)
    if exponential:
        r, b = r * 0.3, b * 0.3
    acts = {"activation": activation, "recurrent_activation": recurrent_activation}
    layer = _keras_layer(2, 3, 3, x, (k, r, b), padding="same", **acts)
    ours = conv_lstm_reference(x, k, r, b, padding="same", **acts)
    _compare(ours, _run_keras(layer, x))


@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 4)], ids=["1d", "2d", "3d"])
def test_no_bias_matches_keras(spatial):
    x, k, r, _ = _make_case(spatial, 3, 3, 3, use_bias=False)
    layer = _keras_layer(len(spatial), 3, 3, x, (k, r), padding="same", use_bias=False)
    ours = conv_lstm_reference(x, k, r, None, padding="same")
    _compare(ours, _run_keras(layer, x))


def test_hard_sigmoid_legacy_is_keras2_formula():
    """Keras 3 has no Keras 2 hard_sigmoid; check ``clip(0.2 x + 0.5, 0, 1)`` directly."""
    x, k, r, b = _make_case((5, 6), 3, 3, 3)
    ours = conv_lstm_reference(x * 3, k, r, b, padding="same",
                               recurrent_activation="hard_sigmoid_legacy")
    legacy = conv_lstm_reference(x * 3, k, r, b, padding="same",
                                 recurrent_activation=lambda t: (0.2 * t + 0.5).clamp(0, 1))
    for a, e in zip(ours, legacy):
        assert torch.equal(a, e)


def _capture_dropout_masks(cell, monkeypatch):
    """Record the masks Keras draws (it caches them on the cell for the call and reuses them at
    every step; DropoutRNNCell.get_dropout_mask / get_recurrent_dropout_mask return the cache)."""
    captured = {}

    def wrap(name):
        original = getattr(cell, name)

        def get_mask(step_input):
            masks = original(step_input)
            captured[name] = masks
            return masks

        monkeypatch.setattr(cell, name, get_mask)

    wrap("get_dropout_mask")
    wrap("get_recurrent_dropout_mask")
    return captured


@pytest.mark.parametrize(
    "spatial, rates, kwargs",
    [
        pytest.param((7,), (0.3, 0.4), {"padding": "same"}, id="1d_both"),
        pytest.param((5, 6), (0.3, 0.0), {"padding": "same"}, id="2d_input_only"),
        pytest.param((5, 6), (0.0, 0.4), {"padding": "same"}, id="2d_recurrent_only"),
        pytest.param(
            (6, 7), (0.25, 0.5), {"padding": "valid", "strides": 2}, id="2d_both_valid_s2"
        ),
        pytest.param(
            (5, 6),
            (0.3, 0.4),
            {"padding": "same", "go_backwards": True, "mask": True},
            id="2d_both_backwards_mask",
        ),
        pytest.param((3, 4, 4), (0.3, 0.4), {"padding": "same"}, id="3d_both"),
    ],
)
def test_dropout_matches_keras(spatial, rates, kwargs, monkeypatch):
    kwargs = dict(kwargs)
    use_mask = kwargs.pop("mask", False)
    batch, steps = (MASK.shape[0], MASK.shape[1]) if use_mask else (2, 3)
    x, k, r, b = _make_case(spatial, 3, 3, 3, batch=batch, steps=steps)
    layer = _keras_layer(
        len(spatial),
        3,
        3,
        x,
        (k, r, b),
        dropout=rates[0],
        recurrent_dropout=rates[1],
        seed=1234,
        **kwargs,
    )
    captured = _capture_dropout_masks(layer.cell, monkeypatch)
    mask = MASK if use_mask else None
    theirs = _run_keras(layer, x, mask=mask, training=True)

    def stacked(name):
        masks = captured.get(name)
        if masks is None:  # rate 0: Keras applies no dropout on that path
            return None
        out = torch.stack([torch.from_numpy(_np(m)) for m in masks])
        # Guard against a vacuous test: the masks really drop something and are scaled.
        assert (out == 0).any() and (out > 1).any(), name
        return out

    in_mask = stacked("get_dropout_mask")
    rec_mask = stacked("get_recurrent_dropout_mask")
    assert (in_mask is None) == (rates[0] == 0) and (rec_mask is None) == (rates[1] == 0)
    ours = conv_lstm_reference(
        x,
        k,
        r,
        b,
        mask=mask,
        input_dropout_mask=in_mask,
        recurrent_dropout_mask=rec_mask,
        **kwargs,
    )
    _compare(ours, theirs)
    # Dropout must change the result, or the comparison above proves nothing about it.
    plain = conv_lstm_reference(x, k, r, b, mask=mask, **kwargs)
    assert not torch.allclose(plain[0], ours[0])


@pytest.mark.parametrize("name", ["glu", "threshold"])
def test_keras_activations_that_cannot_gate_are_refused(name):
    with pytest.raises(ValueError, match=f"activation='{name}' cannot be a ConvLSTM gate"):
        conv_lstm_reference(*_make_case((5, 6), 2, 3, 3), activation=name)


def test_every_elementwise_keras_activation_is_supported():
    """Keras 3's activation names, each supported here (in the kernels, or channel-wise on the
    reference) or refused for a stated reason."""
    from keras.src.activations import ALL_OBJECTS_DICT

    from convlstm_triton.activations import (
        ALIASES,
        CHANNEL_WISE_ACTIVATIONS,
        KERNEL_ACTIVATION_CODES,
        NOT_GATE_ACTIVATIONS,
    )

    for name in ALL_OBJECTS_DICT:
        canonical = ALIASES.get(name, name)
        assert (canonical in KERNEL_ACTIVATION_CODES or canonical in CHANNEL_WISE_ACTIVATIONS
                or canonical in NOT_GATE_ACTIVATIONS), name
