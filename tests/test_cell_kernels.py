"""The standalone (unfused) cell kernels against autograd of the plain-torch cell."""

import pytest
import torch
from helpers import assert_close, kernel_device, triton_available_here

from convlstm_triton import launchers
from convlstm_triton.activations import KERNEL_ACTIVATION_CODES, torch_activation

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]


def torch_cell(pre, c_prev, act, ract):
    a_i, a_f, a_c, a_o = pre.chunk(4, dim=-1)
    act_fn, ract_fn = torch_activation(act), torch_activation(ract)
    c = ract_fn(a_f) * c_prev + ract_fn(a_i) * act_fn(a_c)
    return ract_fn(a_o) * act_fn(c), c


ACTIVATION_PAIRS = [
    ("tanh", "sigmoid"), ("relu", "hard_sigmoid"), ("linear", "tanh"), ("relu6", "elu"),
    ("selu", "silu"), ("gelu", "softsign"), ("softplus", "exponential"),
    ("tanh", "hard_sigmoid_legacy"), ("celu", "hard_silu"), ("hard_shrink", "hard_tanh"),
    ("leaky_relu", "log_sigmoid"), ("mish", "soft_shrink"), ("sparse_plus", "sparse_sigmoid"),
    ("squareplus", "tanh_shrink"),
]


@pytest.mark.parametrize("act,ract", ACTIVATION_PAIRS)
@pytest.mark.parametrize("M,F", [(50, 7), (130, 37)], ids=["M50_F7", "M130_F37"])
def test_cell_forward_and_backward(M, F, act, ract, poison_buffers):
    device = kernel_device()
    pre = torch.randn(M, 4 * F, device=device) * 2
    if act == "exponential" or ract == "exponential":
        pre = pre.clamp(max=2.0)  # keep c = f*c_prev + i*exp(.) in a range fp32 compares well
    c_prev = torch.randn(M, F, device=device)
    dh = torch.randn(M, F, device=device)
    dc = torch.randn(M, F, device=device)
    codes = KERNEL_ACTIVATION_CODES[act], KERNEL_ACTIVATION_CODES[ract]

    h, c = launchers.cell_forward(pre, c_prev, *codes)
    dpre, dc_prev = launchers.cell_backward(dh, dc, pre, c, c_prev, *codes)

    pre_ref = pre.double().requires_grad_()
    c_prev_ref = c_prev.double().requires_grad_()
    h_ref, c_ref = torch_cell(pre_ref, c_prev_ref, act, ract)
    (h_ref * dh.double()).sum().add((c_ref * dc.double()).sum()).backward()

    assert_close(h, h_ref, torch.float32, "h")
    assert_close(c, c_ref, torch.float32, "c")
    assert_close(dpre, pre_ref.grad, torch.float32, "d pre-activations")
    assert_close(dc_prev, c_prev_ref.grad, torch.float32, "dc_prev")


def test_poisoned_buffer_that_a_kernel_skips_fails(poison_buffers, monkeypatch):
    """The NaN poisoning is live: a launcher that leaves one step unwritten is caught."""
    from convlstm_triton.functional import conv_lstm

    real_step = launchers.step_forward
    records = []

    def skip_last_step(*args, **kwargs):
        if len(records) < 2:
            records.append(real_step(*args, **kwargs))
            return records[-1]  # its launch record (launch plans keep it)
        return records[-1]  # launches nothing; a record, as a launcher returns

    monkeypatch.setattr(launchers, "step_forward", skip_last_step)
    device = kernel_device()
    x = torch.randn(1, 3, 4, 5, 2, device=device)
    seq, _, _ = conv_lstm(x, torch.randn(3, 3, 2, 8, device=device),
                          torch.randn(3, 3, 2, 8, device=device), backend="triton")
    assert torch.isnan(seq[:, 2]).all() and not torch.isnan(seq[:, :2]).any()
