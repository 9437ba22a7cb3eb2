"""convlstm_triton.compat against ConvLSTM_pytorch's computation, restated here in plain torch
(one conv over cat(x, h), gates split i, f, o, g, sigmoid / tanh, padding k // 2): forward and
every gradient on both backends (the Triton path through the interpreter on a CPU), state_dict
both ways, the same initialization under one seed, and the converter."""

import pytest
import torch
from helpers import kernel_device, triton_available_here
from torch import nn

from convlstm_triton.compat import ConvLSTM, ConvLSTMCell, from_concat_conv, keras_to_concat

TOL = dict(atol=2e-5, rtol=1e-4)
BACKENDS = ["reference", pytest.param("triton", marks=[
    pytest.mark.kernels,
    pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1")])]


class Original(nn.Module):
    """The original's parameters and computation, restated: cell_list.{i}.conv over cat(x, h)."""

    def __init__(self, input_dim, hidden, kernel_sizes, bias=True):
        super().__init__()
        dims = [input_dim] + hidden[:-1]
        self.hidden = hidden
        self.cell_list = nn.ModuleList(nn.Module() for _ in hidden)
        for cell, d, h, k in zip(self.cell_list, dims, hidden, kernel_sizes):
            cell.conv = nn.Conv2d(d + h, 4 * h, k, padding=(k[0] // 2, k[1] // 2), bias=bias)

    def forward(self, x, states=None):  # x (B, T, C, H, W)
        outputs, last = [], []
        for i, (cell, h_dim) in enumerate(zip(self.cell_list, self.hidden)):
            B, T, _, H, W = x.shape
            h, c = states[i] if states else (x.new_zeros(B, h_dim, H, W),) * 2
            seq = []
            for t in range(T):
                z = cell.conv(torch.cat([x[:, t], h], 1))
                i_, f_, o_, g_ = z.split(h_dim, 1)
                c = torch.sigmoid(f_) * c + torch.sigmoid(i_) * torch.tanh(g_)
                h = torch.sigmoid(o_) * torch.tanh(c)
                seq.append(h)
            x = torch.stack(seq, 1)
            outputs.append(x)
            last.append([h, c])
        return outputs, last


CASES = [  # layers' hidden dims, kernel sizes, batch_first, return_all_layers
    ([3], [(3, 3)], True, False),
    ([3, 2, 3], [(3, 3), (5, 5), (1, 3)], False, True),
    ([2], [(5, 5)], False, False),
    ([2, 3, 2], [(1, 3)] * 3, True, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hidden, kernels, batch_first, all_layers", CASES)
def test_matches_the_original_forward_and_every_gradient(backend, hidden, kernels, batch_first,
                                                         all_layers):
    device = kernel_device() if backend == "triton" else "cpu"
    torch.manual_seed(0)
    ours = ConvLSTM(2, hidden if len(hidden) > 1 else hidden[0],
                    kernels if len(kernels) > 1 else kernels[0], len(hidden),
                    batch_first=batch_first, return_all_layers=all_layers, backend=backend,
                    device=device)
    original = Original(2, hidden, kernels).to(device)
    original.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 2, 5, 4, device=device, requires_grad=True)  # (B, T, C, H, W)
    outs, states = ours(x if batch_first else x.transpose(0, 1))
    ref_outs, ref_states = original(x)
    if not all_layers:
        ref_outs, ref_states = ref_outs[-1:], ref_states[-1:]
    assert len(outs) == len(states) == len(ref_outs)
    for a, b in zip(outs, ref_outs):
        assert a.shape == b.shape and torch.allclose(a, b, **TOL)
    for (h, c), (rh, rc) in zip(states, ref_states):
        assert torch.allclose(h, rh, **TOL) and torch.allclose(c, rc, **TOL)
    weights = [torch.randn_like(t) for t in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights)) + states[-1][1].square().sum()
    ref_loss = (sum((o * w).sum() for o, w in zip(ref_outs, weights))
                + ref_states[-1][1].square().sum())
    params = [p for cell in ours.cell_list for p in (cell.kernel, cell.recurrent_kernel,
                                                      cell.bias)]
    grads = torch.autograd.grad(loss, [x] + params)
    ref_params = [p for cell in original.cell_list for p in (cell.conv.weight, cell.conv.bias)]
    ref_grads = torch.autograd.grad(ref_loss, [x] + ref_params)
    assert torch.allclose(grads[0], ref_grads[0], **TOL)
    for i in range(len(hidden)):
        weight, bias = keras_to_concat(*grads[1 + 3 * i:4 + 3 * i])
        assert torch.allclose(weight, ref_grads[1 + 2 * i], **TOL)
        assert torch.allclose(bias, ref_grads[2 + 2 * i], **TOL)


def test_state_dict_both_ways_and_the_same_initialization():
    torch.manual_seed(3)
    ours = ConvLSTM(3, [4, 2], [(3, 3), (1, 3)], 2)
    torch.manual_seed(3)
    original = Original(3, [4, 2], [(3, 3), (1, 3)])
    theirs = original.state_dict()
    mine = ours.state_dict()
    assert list(mine) == list(theirs) == ["cell_list.0.conv.weight", "cell_list.0.conv.bias",
                                          "cell_list.1.conv.weight", "cell_list.1.conv.bias"]
    for key in theirs:  # the same draws as nn.Conv2d's, in the same order
        assert mine[key].shape == theirs[key].shape and torch.equal(mine[key], theirs[key])
    other = Original(3, [4, 2], [(3, 3), (1, 3)])
    for p in other.parameters():
        nn.init.normal_(p)
    ours.load_state_dict(other.state_dict())
    original.load_state_dict(ours.state_dict())
    for key, value in other.state_dict().items():
        assert torch.equal(original.state_dict()[key], value)
    with pytest.raises(RuntimeError, match="size mismatch for cell_list.0.conv.weight"):
        ConvLSTM(3, [5, 2], [(3, 3), (1, 3)], 2).load_state_dict(other.state_dict())


def test_initial_states_cell_and_refusals():
    torch.manual_seed(1)
    ours = ConvLSTM(2, 3, (3, 3), 2, batch_first=True, return_all_layers=True)
    original = Original(2, [3, 3], [(3, 3)] * 2)
    original.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 2, 5, 5)
    states = [[torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)] for _ in range(2)]
    for s in states:
        for t in s:
            t.requires_grad_()
    outs, last = ours(x, states)  # the original raises here ("todo implement stateful")
    ref_outs, ref_last = original(x, states)
    assert torch.allclose(outs[1], ref_outs[1], **TOL)
    assert torch.allclose(last[0][1], ref_last[0][1], **TOL)
    flat = [t for s in states for t in s]
    grads = torch.autograd.grad(outs[1].square().sum() + last[1][1].sum(), flat)
    ref_grads = torch.autograd.grad(ref_outs[1].square().sum() + ref_last[1][1].sum(), flat)
    for g, r in zip(grads, ref_grads):  # the initial states' gradients too
        assert torch.allclose(g, r, **TOL)
    cell = ours.cell_list[0]
    h, c = cell.init_hidden(2, (5, 5))
    assert h.shape == (2, 3, 5, 5) and not h.any()
    h1, c1 = cell(x[:, 0], [h, c])  # one step of the first layer from zero states
    assert torch.allclose(h1, original(x[:, :1])[0][0][:, 0], **TOL)
    with pytest.raises(ValueError, match="even kernel sizes"):
        ConvLSTM(2, 3, (4, 3), 1)
    with pytest.raises(ValueError, match="one \\(h, c\\) per layer"):
        ours(x, states[:1])
    with pytest.raises(ValueError, match="5-D"):
        ours(x[0])
    with pytest.raises(ValueError, match="backend must be"):
        ConvLSTMCell(2, 3, (3, 3), True, backend="cuda")


@pytest.mark.parametrize("gate_order", ["ifog", "ifgo", "icfo", "ifco"])
def test_from_concat_conv_any_gate_order(gate_order):
    torch.manual_seed(2)
    hidden, conv = 3, nn.Conv2d(2 + 3, 12, (3, 5), padding=(1, 2))
    x = torch.randn(2, 3, 2, 4, 6)
    layer = from_concat_conv(conv, hidden, gate_order=gate_order, backend="reference")
    h = c = torch.zeros(2, hidden, 4, 6)
    position = {g: gate_order.replace("g", "c").index(g) for g in "ifco"}
    seq = []
    for t in range(3):
        z = conv(torch.cat([x[:, t], h], 1)).split(hidden, 1)
        i, f, g, o = (z[position[name]] for name in "ifco")
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        seq.append(h)
    assert torch.allclose(layer(x), torch.stack(seq, 1), **TOL)
    with pytest.raises(ValueError, match="stride 1"):
        from_concat_conv(nn.Conv2d(5, 12, 3, stride=2, padding=1), hidden)
    with pytest.raises(ValueError, match="gate_order"):
        from_concat_conv(conv, hidden, gate_order="iffo")
