"""The functional API: argument errors, backend dispatch, fallbacks."""

import warnings

import pytest
import torch
from helpers import assert_close, triton_available_here

from convlstm_triton import functional
from convlstm_triton.functional import conv_lstm


def small_inputs(rank=2, B=2, T=3, C=3, F=4, k=3, dtype=torch.float32):
    spatial = (5, 6, 4)[:rank] if rank < 3 else (3, 4, 5)
    x = torch.randn(B, T, *spatial, C, dtype=dtype)
    kernel = torch.randn(*(k,) * rank, C, 4 * F, dtype=dtype) * 0.2
    rkernel = torch.randn(*(k,) * rank, F, 4 * F, dtype=dtype) * 0.2
    bias = torch.randn(4 * F, dtype=dtype)
    return x, kernel, rkernel, bias


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_output_shapes(rank):
    x, kernel, rkernel, bias = small_inputs(rank)
    seq, h, c = conv_lstm(x, kernel, rkernel, bias, padding="same")
    assert seq.shape == (*x.shape[:-1], 4)
    assert h.shape == c.shape == (x.shape[0], *x.shape[2:-1], 4)
    seq, h, _ = conv_lstm(x, kernel, rkernel, bias, padding="valid", strides=2)
    out = tuple((n - 3) // 2 + 1 for n in x.shape[2:-1])
    assert seq.shape == (*x.shape[:2], *out, 4) and h.shape == (x.shape[0], *out, 4)


def bad_calls():
    x, kernel, rkernel, bias = small_inputs()
    h0 = torch.zeros(2, 5, 6, 4)  # the *input* spatial shape: valid padding shrinks the state
    return [
        ("x", TypeError, dict(x=x.numpy())),
        ("x must have shape", ValueError, dict(x=x[..., 0])),
        ("kernel must have shape", ValueError, dict(kernel=kernel[..., :1, :])),
        ("kernel must have shape", ValueError, dict(kernel=kernel[..., :15])),
        ("recurrent_kernel must have shape", ValueError, dict(recurrent_kernel=rkernel[..., :8])),
        ("bias must have shape", ValueError, dict(bias=bias[:5])),
        ("kernel has dtype", TypeError, dict(kernel=kernel.double())),
        ("padding", ValueError, dict(padding="full")),
        ("strides", ValueError, dict(strides=0)),
        ("strides", ValueError, dict(strides=(1, 1, 1))),
        ("dilation_rate", TypeError, dict(dilation_rate="2")),
        ("`strides > 1` is not compatible with `dilation_rate > 1`", ValueError,
         dict(strides=2, dilation_rate=2)),
        ("too small", ValueError, dict(kernel=torch.randn(7, 7, 3, 16),
                                       recurrent_kernel=torch.randn(7, 7, 4, 16))),
        ("initial_state", TypeError, dict(initial_state=h0)),
        ("initial_state\\[0\\]", ValueError, dict(initial_state=(h0, h0))),
        ("mask must have shape", ValueError, dict(mask=torch.ones(2, 4, dtype=torch.bool))),
        ("mask must be boolean", ValueError, dict(mask=torch.full((2, 3), 0.5))),
        ("activation", ValueError, dict(activation="swishy")),
        ("recurrent_activation", TypeError, dict(recurrent_activation=3)),
        ("go_backwards", TypeError, dict(go_backwards=1)),
        ("backend", ValueError, dict(backend="cuda")),
        ("input_dropout_mask", ValueError, dict(input_dropout_mask=torch.ones(4, 2, 5, 6, 2))),
    ]


@pytest.mark.parametrize("match,error,override", bad_calls(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_raise_clear_errors(match, error, override):
    x, kernel, rkernel, bias = small_inputs()
    args = dict(x=x, kernel=kernel, recurrent_kernel=rkernel, bias=bias)
    positional = {k: override.pop(k) if k in override else v for k, v in args.items()}
    with pytest.raises(error, match=match):
        conv_lstm(*positional.values(), **override)


def test_auto_backend_on_cpu_is_the_reference(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the Triton path must not run for CPU tensors with backend='auto'")

    monkeypatch.setattr(functional, "_conv_lstm_triton", fail)
    conv_lstm(*small_inputs())


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        conv_lstm(*small_inputs(), backend="triton")


@pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_unsupported_dtype_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(functional, "_warned", set())
    x, kernel, rkernel, bias = small_inputs(dtype=torch.float64)
    with pytest.warns(UserWarning, match="falling back"):
        out = conv_lstm(x, kernel, rkernel, bias, backend="triton")
    ref = conv_lstm(x, kernel, rkernel, bias, backend="reference")
    for a, r in zip(out, ref):
        assert torch.equal(a, r)


def test_reference_backend_gradcheck_through_functional():
    x, kernel, rkernel, bias = small_inputs(rank=1, B=1, T=2, C=2, F=2, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, kernel, rkernel, bias)]

    def fn(*args):
        return conv_lstm(*args, padding="same", backend="reference")

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_allow_tf32_override_is_accepted():
    x, kernel, rkernel, bias = small_inputs()
    out = conv_lstm(x, kernel, rkernel, bias, backend="triton", allow_tf32=False)
    ref = conv_lstm(x, kernel, rkernel, bias, backend="reference")
    assert_close(out[0], ref[0], torch.float32, "seq")


@pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_callable_activation_runs_on_the_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(functional, "_warned", set())
    x, kernel, rkernel, bias = small_inputs()

    def my_tanh(t):
        return torch.tanh(t)

    with pytest.warns(UserWarning, match="callable.*falling back"):
        out = conv_lstm(x, kernel, rkernel, bias, activation=my_tanh, backend="triton")
    ref = conv_lstm(x, kernel, rkernel, bias, activation="tanh", backend="reference")
    for a, r in zip(out, ref):
        assert torch.equal(a, r)
    # once: a second call warns no more, even where Python would repeat every warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conv_lstm(x, kernel, rkernel, bias, activation=my_tanh, backend="triton")
    assert not [w for w in caught if "falling back" in str(w.message)]


def test_reference_peephole_gradcheck():
    x, kernel, rkernel, bias = small_inputs(rank=1, B=1, T=3, C=2, F=2, dtype=torch.float64)
    peephole = torch.randn(3, 2, dtype=torch.float64)
    h0 = torch.randn(1, 5, 2, dtype=torch.float64)
    c0 = torch.randn(1, 5, 2, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, kernel, rkernel, bias, peephole, h0, c0)]

    def fn(x, kernel, rkernel, bias, peephole, h0, c0):
        return conv_lstm(x, kernel, rkernel, bias, (h0, c0), padding="same", peephole=peephole,
                         backend="reference")

    assert torch.autograd.gradcheck(fn, inputs)


def test_peephole_shape_is_checked():
    x, kernel, rkernel, bias = small_inputs()
    with pytest.raises(ValueError, match="peephole must have shape \\(3, 4\\)"):
        conv_lstm(x, kernel, rkernel, bias, peephole=torch.zeros(4, 4))


@pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")
def test_channel_wise_activation_runs_on_the_reference_with_a_warning(monkeypatch):
    monkeypatch.setattr(functional, "_warned", set())
    x, kernel, rkernel, bias = small_inputs()
    with pytest.warns(UserWarning, match="channel-wise activation 'softmax'.*falling back"):
        out = conv_lstm(x, kernel, rkernel, bias, recurrent_activation="softmax",
                        backend="triton")
    ref = conv_lstm(x, kernel, rkernel, bias, recurrent_activation="softmax",
                    backend="reference")
    for a, r in zip(out, ref):
        assert torch.equal(a, r)


def test_channel_wise_activation_with_channels_first_is_refused():
    from convlstm_triton import ConvLSTM2D

    with pytest.raises(ValueError, match="activation='sparsemax' with data_format="):
        ConvLSTM2D(3, 3, activation="sparsemax", data_format="channels_first")
    ConvLSTM2D(3, 3, activation="sparsemax")  # channels_last: over the channels, as Keras
