"""``torch.autograd.gradcheck`` (float64) on the reference w.r.t. every differentiable input.

The reference is the oracle for the Triton backward, so its autograd gradients must themselves be
right: x, kernel, recurrent_kernel, bias, h0 and c0, through masks, go_backwards and dropout.
Shapes are tiny because gradcheck runs two forwards per input element.
"""

import pytest
import torch

from convlstm_triton.geometry import ConvGeometry, normalize_tuple
from convlstm_triton.reference import conv_lstm_reference

DT = torch.float64


def _dropout_mask(*shape, rate):
    keep = (torch.rand(*shape, dtype=DT) >= rate).to(DT)
    return keep / (1 - rate)


CASES = [
    # spatial, C_in, F, kernel_size, reference kwargs, extras
    pytest.param((5,), 2, 2, 3, {"padding": "same"}, {}, id="1d_k3_same"),
    pytest.param((6,), 2, 2, 2, {"padding": "same", "strides": 2}, {}, id="1d_k2_same_s2"),
    pytest.param(
        (6,),
        2,
        2,
        3,
        {"padding": "valid", "dilation_rate": 2, "go_backwards": True},
        {"mask": True},
        id="1d_k3_valid_d2_backwards_mask",
    ),
    pytest.param((4, 5), 2, 2, 3, {"padding": "same"}, {}, id="2d_k3_same"),
    pytest.param((4, 5), 2, 2, 2, {"padding": "same"}, {"mask": True}, id="2d_k2_same_mask"),
    pytest.param((5, 5), 2, 2, 3, {"padding": "valid", "strides": 2}, {}, id="2d_k3_valid_s2"),
    pytest.param(
        (4, 4),
        2,
        2,
        3,
        {"padding": "same", "go_backwards": True},
        {"input_dropout": 0.3, "recurrent_dropout": 0.4},
        id="2d_k3_same_backwards_dropout",
    ),
    pytest.param(
        (4, 4),
        2,
        2,
        3,
        {"padding": "same", "activation": "relu", "recurrent_activation": "hard_sigmoid"},
        {"mask": True, "recurrent_dropout": 0.4},
        id="2d_k3_same_relu_hard_sigmoid_mask_rdropout",
    ),
    pytest.param((2, 3, 3), 2, 2, 2, {"padding": "same"}, {}, id="3d_k2_same"),
    pytest.param(
        (3, 3, 3),
        1,
        2,
        2,
        {"padding": "valid", "go_backwards": True},
        {"mask": True, "input_dropout": 0.3},
        id="3d_k2_valid_backwards_mask_dropout",
    ),
]

# Leading, middle and trailing masked steps (T = 3), in input time order.
MASK = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.bool)


@pytest.mark.parametrize("spatial, c_in, filters, kernel_size, kwargs, extras", CASES)
def test_reference_gradcheck(spatial, c_in, filters, kernel_size, kwargs, extras):
    rank = len(spatial)
    ksize = normalize_tuple(kernel_size, rank, "kernel_size")
    batch, steps = (MASK.shape[0], MASK.shape[1]) if extras.get("mask") else (2, 2)
    geom = ConvGeometry.build(
        spatial,
        ksize,
        normalize_tuple(kwargs.get("strides", 1), rank, "strides"),
        normalize_tuple(kwargs.get("dilation_rate", 1), rank, "dilation_rate"),
        kwargs["padding"],
    )
    state_shape = (batch, *geom.out_spatial, filters)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=DT) * scale).requires_grad_()

    inputs = (
        leaf(batch, steps, *spatial, c_in),
        leaf(*ksize, c_in, 4 * filters, scale=0.5),
        leaf(*ksize, filters, 4 * filters, scale=0.5),
        leaf(4 * filters, scale=0.5),
        leaf(*state_shape),
        leaf(*state_shape),
    )
    mask = MASK if extras.get("mask") else None
    in_drop = rec_drop = None
    if "input_dropout" in extras:
        in_drop = _dropout_mask(4, batch, *spatial, c_in, rate=extras["input_dropout"])
    if "recurrent_dropout" in extras:
        rec_drop = _dropout_mask(4, *state_shape, rate=extras["recurrent_dropout"])

    def fn(x, kernel, recurrent_kernel, bias, h0, c0):
        return conv_lstm_reference(
            x,
            kernel,
            recurrent_kernel,
            bias,
            (h0, c0),
            mask=mask,
            input_dropout_mask=in_drop,
            recurrent_dropout_mask=rec_drop,
            **kwargs,
        )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_reference_gradcheck_zero_state_no_bias():
    # The default path: no initial state (zeros created inside), no bias.
    inputs = (
        torch.randn(2, 3, 4, 5, 2, dtype=DT).requires_grad_(),
        (torch.randn(3, 3, 2, 8, dtype=DT) * 0.5).requires_grad_(),
        (torch.randn(3, 3, 2, 8, dtype=DT) * 0.5).requires_grad_(),
    )

    def fn(x, kernel, recurrent_kernel):
        return conv_lstm_reference(x, kernel, recurrent_kernel, padding="same")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize(
    "spatial, kernel_size, kwargs",
    [
        pytest.param((3,), 2, {"padding": "same"}, id="1d_k2_same"),
        pytest.param((3, 3), 3, {"padding": "same", "go_backwards": True}, id="2d_k3_same_back"),
        pytest.param((2, 2, 3), 2, {"padding": "same"}, id="3d_k2_same"),
    ],
)
def test_reference_gradcheck_full_jacobian(spatial, kernel_size, kwargs):
    # fast_mode above checks one random projection of the Jacobian per input; here the whole
    # Jacobian, on minimal shapes (one backward per output element), with every extra enabled.
    rank = len(spatial)
    ksize = (kernel_size,) * rank
    batch, steps, c_in, filters = 3, 3, 2, 1
    state_shape = (batch, *spatial, filters)  # "same", stride 1
    inputs = (
        torch.randn(batch, steps, *spatial, c_in, dtype=DT).requires_grad_(),
        (torch.randn(*ksize, c_in, 4 * filters, dtype=DT) * 0.5).requires_grad_(),
        (torch.randn(*ksize, filters, 4 * filters, dtype=DT) * 0.5).requires_grad_(),
        (torch.randn(4 * filters, dtype=DT) * 0.5).requires_grad_(),
        torch.randn(*state_shape, dtype=DT).requires_grad_(),
        torch.randn(*state_shape, dtype=DT).requires_grad_(),
    )
    in_drop = _dropout_mask(4, batch, *spatial, c_in, rate=0.3)
    rec_drop = _dropout_mask(4, *state_shape, rate=0.3)

    def fn(x, kernel, recurrent_kernel, bias, h0, c0):
        return conv_lstm_reference(
            x,
            kernel,
            recurrent_kernel,
            bias,
            (h0, c0),
            mask=MASK,
            input_dropout_mask=in_drop,
            recurrent_dropout_mask=rec_drop,
            **kwargs,
        )

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
