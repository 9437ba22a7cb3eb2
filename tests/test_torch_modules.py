"""The PyTorch-native modules ``ConvLSTMCell`` and ``ConvLSTM`` against ``conv_lstm`` (reference
backend) and ``nn.LSTM``; both backends (the Triton one through the interpreter on a CPU)."""

import math

import pytest
import torch
from helpers import TF32_TOLERANCE, TOLERANCES, assert_close, kernel_device, triton_available_here
from torch import nn

from convlstm_triton import ConvLSTM, ConvLSTMCell
from convlstm_triton.functional import conv_lstm

BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton", marks=[
        pytest.mark.kernels,
        pytest.mark.skipif(not triton_available_here(), reason="needs a GPU or TRITON_INTERPRET=1"),
    ]),
]
SPATIAL = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}


def device_for(backend):
    return kernel_device() if backend == "triton" else "cpu"


def tol(device):
    # GPU fp32 dots use TF32 (PyTorch's conv default); IEEE fp32 on the CPU.
    return TOLERANCES[torch.float32] if str(device) == "cpu" else TF32_TOLERANCE


def cl(t):
    """Channels-first (B, C, *spatial) -> channels-last (B, *spatial, C)."""
    return t.movedim(1, -1)


def cf(t):
    """Channels-last -> channels-first."""
    return t.movedim(-1, 1)


def reference_stack(m, x, hx=None):
    """``m``'s forward rebuilt from ``conv_lstm(backend="reference")`` calls, batch-first
    channels-first ``x``; ``hx`` as a list of ``(h, c)`` per (layer, direction), channels-first.
    No dropout. Returns (output, list of h, list of c)."""
    seq = x.movedim(2, -1)
    D = 2 if m.bidirectional else 1
    hs, cs = [], []
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            w = m.all_weights[k]
            state = None if hx is None else (cl(hx[k][0]), cl(hx[k][1]))
            s, h, c = conv_lstm(seq, w[0], w[1], w[2] if len(w) > 2 else None, state,
                                padding=m.padding, go_backwards=d == 1, backend="reference")
            outs.append(s.flip(1) if d == 1 else s)
            hs.append(cf(h))
            cs.append(cf(c))
        seq = torch.cat(outs, -1)
    return seq.movedim(-1, 2), hs, cs


# ------------------------------------------------------------------ ConvLSTMCell


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank,kernel_size", [(1, 3), (2, (3, 2)), (3, 3)],
                         ids=["1d_k3", "2d_k3x2", "3d_k3"])
def test_cell_is_one_conv_lstm_step(backend, rank, kernel_size):
    device = device_for(backend)
    B, C, H = 2, 3, 5
    cell = ConvLSTMCell(C, H, kernel_size, rank=rank, backend=backend, device=device)
    assert cell.kernel.shape == cell.kernel_size + (C, 4 * H)
    x = torch.randn(B, C, *SPATIAL[rank], device=device)
    h0 = torch.randn(B, H, *SPATIAL[rank], device=device)
    c0 = torch.randn(B, H, *SPATIAL[rank], device=device)
    h, c = cell(x, (h0, c0))
    seq, rh, rc = conv_lstm(cl(x)[:, None], cell.kernel, cell.recurrent_kernel, cell.bias,
                            (cl(h0), cl(c0)), padding="same", backend="reference")
    assert h.shape == c.shape == h0.shape
    assert_close(h, cf(rh), torch.float32, "h", tol(device))
    assert_close(c, cf(rc), torch.float32, "c", tol(device))
    # hx=None is the zero state
    h, c = cell(x)
    _, rh, rc = conv_lstm(cl(x)[:, None], cell.kernel, cell.recurrent_kernel, cell.bias,
                          padding="same", backend="reference")
    assert_close(h, cf(rh), torch.float32, "h (zero state)", tol(device))
    assert_close(c, cf(rc), torch.float32, "c (zero state)", tol(device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_loop_equals_conv_lstm_sequence(backend):
    device = device_for(backend)
    B, T, C, H = 2, 3, 3, 4
    cell = ConvLSTMCell(C, H, 3, bias=False, activation="relu",
                        recurrent_activation="hard_sigmoid", backend=backend, device=device)
    x = torch.randn(B, T, C, 5, 6, device=device)
    state = None
    outs = []
    for t in range(T):
        state = cell(x[:, t], state)
        outs.append(state[0])
    seq, h, c = conv_lstm(x.movedim(2, -1), cell.kernel, cell.recurrent_kernel, None,
                          padding="same", activation="relu",
                          recurrent_activation="hard_sigmoid", backend="reference")
    assert_close(torch.stack(outs, 1), seq.movedim(-1, 2), torch.float32, "seq", tol(device))
    assert_close(state[0], cf(h), torch.float32, "h", tol(device))
    assert_close(state[1], cf(c), torch.float32, "c", tol(device))


@pytest.mark.parametrize("peephole", [False, True], ids=["plain", "peephole"])
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_cell_gradients_match_reference(backend, peephole):
    device = device_for(backend)
    cell = ConvLSTMCell(3, 5, (3, 3), peephole=peephole, backend=backend, device=device)
    x = torch.randn(2, 3, 5, 6, device=device)
    hx = (torch.randn(2, 5, 5, 6, device=device), torch.randn(2, 5, 5, 6, device=device))
    dh, dc = torch.randn_like(hx[0]), torch.randn_like(hx[1])

    def grads(backend):
        cell.backend = backend
        leaves = [t.detach().clone().requires_grad_() for t in (x, *hx)]
        h, c = cell(leaves[0], tuple(leaves[1:]))
        params = list(cell.parameters())
        return torch.autograd.grad((h * dh).sum() + (c * dc).sum(), leaves + params)

    names = ["x", "h0", "c0"] + [name for name, _ in cell.named_parameters()]
    assert ("peephole_weights" in names) == peephole
    for name, g, r in zip(names, grads("triton"), grads("reference"), strict=True):
        assert_close(g, r, torch.float32, f"d{name}", tol(device))


# ------------------------------------------------------------------ ConvLSTM: semantics


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_layer_equals_manual_stack(backend):
    """Equal hidden sizes: stacked states; hx given stacked."""
    device = device_for(backend)
    B, T, C, H = 2, 3, 3, 4
    m = ConvLSTM(C, H, 3, num_layers=2, backend=backend, device=device)
    x = torch.randn(B, T, C, 5, 6, device=device)
    h0 = torch.randn(2, B, H, 5, 6, device=device)
    c0 = torch.randn(2, B, H, 5, 6, device=device)
    out, (h_n, c_n) = m(x, (h0, c0))
    ref, hs, cs = reference_stack(m, x, list(zip(h0, c0)))
    assert out.shape == (B, T, H, 5, 6) and h_n.shape == c_n.shape == (2, B, H, 5, 6)
    assert_close(out, ref, torch.float32, "output", tol(device))
    assert_close(h_n, torch.stack(hs), torch.float32, "h_n", tol(device))
    assert_close(c_n, torch.stack(cs), torch.float32, "c_n", tol(device))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_layer_sizes_return_tuples(backend):
    """Different hidden sizes per layer cannot be stacked: h_n, c_n are tuples (and hx may be)."""
    device = device_for(backend)
    B, T, C = 2, 2, 3
    m = ConvLSTM(C, [3, 5], [3, (1, 3)], num_layers=2, backend=backend, device=device)
    assert m.kernel_l0.shape == (3, 3, C, 12) and m.kernel_l1.shape == (1, 3, 3, 20)
    x = torch.randn(B, T, C, 4, 5, device=device)
    hx = [(torch.randn(B, h, 4, 5, device=device), torch.randn(B, h, 4, 5, device=device))
          for h in (3, 5)]
    out, (h_n, c_n) = m(x, ([h for h, _ in hx], tuple(c for _, c in hx)))
    assert isinstance(h_n, tuple) and isinstance(c_n, tuple)
    assert [t.shape for t in h_n] == [t.shape for t in c_n] == [(B, 3, 4, 5), (B, 5, 4, 5)]
    ref, hs, cs = reference_stack(m, x, hx)
    assert_close(out, ref, torch.float32, "output", tol(device))
    for k in range(2):
        assert_close(h_n[k], hs[k], torch.float32, f"h_n[{k}]", tol(device))
        assert_close(c_n[k], cs[k], torch.float32, f"c_n[{k}]", tol(device))
    with pytest.raises(ValueError, match="h_0 must be a sequence of 2 tensors"):
        m(x, (torch.zeros(2, B, 3, 4, 5), torch.zeros(2, B, 3, 4, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bidirectional_is_time_aligned(backend):
    device = device_for(backend)
    B, T, C, H = 2, 3, 3, 4
    m = ConvLSTM(C, H, 3, num_layers=2, bidirectional=True, backend=backend, device=device)
    assert m.kernel_l1.shape == (3, 3, 2 * H, 4 * H)  # layer 1 takes both directions
    x = torch.randn(B, T, C, 5, 6, device=device)
    out, (h_n, c_n) = m(x)
    assert out.shape == (B, T, 2 * H, 5, 6) and h_n.shape == c_n.shape == (4, B, H, 5, 6)
    ref, hs, cs = reference_stack(m, x)
    assert_close(out, ref, torch.float32, "output", tol(device))
    assert_close(h_n, torch.stack(hs), torch.float32, "h_n", tol(device))
    assert_close(c_n, torch.stack(cs), torch.float32, "c_n", tol(device))
    # Time alignment, independently of reference_stack: the reverse direction has seen only the
    # last frame at t = T-1 and the whole sequence at t = 0 (its final state), as in nn.LSTM.
    fwd, rev = out[:, :, :H], out[:, :, H:]
    assert_close(fwd[:, -1], h_n[2], torch.float32, "forward output at T-1 vs h_n", tol(device))
    assert_close(rev[:, 0], h_n[3], torch.float32, "reverse output at 0 vs h_n", tol(device))
    # Layer 0 alone: its reverse output at T-1 is one step on the last frame from zeros, its
    # forward output at 0 one step on the first frame.
    m0 = ConvLSTM(C, H, 3, bidirectional=True, backend=backend, device=device)
    m0.load_state_dict({k: v for k, v in m.state_dict().items() if k.endswith(("_l0",
                                                                               "_l0_reverse"))})
    out0, _ = m0(x)
    _, rev_last, _ = conv_lstm(x[:, -1:].movedim(2, -1), *m.all_weights[1], padding="same",
                               backend="reference")
    _, fwd_first, _ = conv_lstm(x[:, :1].movedim(2, -1), *m.all_weights[0], padding="same",
                                backend="reference")
    assert_close(out0[:, -1, H:], cf(rev_last), torch.float32, "reverse output at T-1",
                 tol(device))
    assert_close(out0[:, 0, :H], cf(fwd_first), torch.float32, "forward output at 0", tol(device))


def nn_lstm_copy(lstm, m):
    """Copy nn.LSTM weights into a kernel_size=1, rank-1 ConvLSTM (gate order i, f, g|c, o)."""
    with torch.no_grad():
        for k, (kernel, rkernel, bias) in enumerate(m.all_weights):
            suffix = f"_l{k // m.num_directions}" + ("_reverse" if k % m.num_directions else "")
            kernel.copy_(getattr(lstm, "weight_ih" + suffix).T[None])
            rkernel.copy_(getattr(lstm, "weight_hh" + suffix).T[None])
            bias.copy_(getattr(lstm, "bias_ih" + suffix) + getattr(lstm, "bias_hh" + suffix))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
def test_kernel_size_1_on_one_pixel_is_nn_lstm(backend, batch_first):
    """Shapes, h_n layout, bidirectional alignment and batch_first exactly as nn.LSTM."""
    device = device_for(backend)
    B, T, C, H, L = 2, 3, 5, 4, 2
    lstm = nn.LSTM(C, H, num_layers=L, bidirectional=True, batch_first=batch_first)
    m = ConvLSTM(C, H, 1, num_layers=L, bidirectional=True, batch_first=batch_first, rank=1,
                 backend=backend)
    nn_lstm_copy(lstm, m)
    lstm.to(device)
    m.to(device)
    x = torch.randn(B, T, C, device=device) if batch_first else torch.randn(T, B, C,
                                                                            device=device)
    h0 = torch.randn(2 * L, B, H, device=device)
    c0 = torch.randn(2 * L, B, H, device=device)
    out, (h_n, c_n) = m(x[..., None], (h0[..., None], c0[..., None]))
    ref, (rh, rc) = lstm(x, (h0, c0))
    assert out.shape == ref.shape + (1,)
    assert h_n.shape == c_n.shape == (2 * L, B, H, 1)
    assert_close(out[..., 0], ref, torch.float32, "output", tol(device))
    assert_close(h_n[..., 0], rh, torch.float32, "h_n", tol(device))
    assert_close(c_n[..., 0], rc, torch.float32, "c_n", tol(device))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_first"])
def test_nn_lstm_shapes(rank, batch_first):
    B, T, C, H = 2, 3, 3, 4
    sp = SPATIAL[rank]
    m = ConvLSTM(C, H, (3,) * rank, num_layers=2, bidirectional=True, batch_first=batch_first)
    assert m.rank == rank
    x = torch.randn(B, T, C, *sp)
    out, (h_n, c_n) = m(x if batch_first else x.transpose(0, 1))
    assert out.shape == ((B, T) if batch_first else (T, B)) + (2 * H, *sp)
    assert h_n.shape == c_n.shape == (4, B, H, *sp)
    # time-first gives the same numbers as batch-first
    m.batch_first = not batch_first
    out2, (h2, c2) = m(x.transpose(0, 1) if batch_first else x)
    assert torch.allclose(out2.transpose(0, 1), out, atol=1e-6)
    assert torch.allclose(h2, h_n, atol=1e-6) and torch.allclose(c2, c_n, atol=1e-6)


def test_valid_padding_shrinks_each_layer():
    B, T, C, H = 2, 2, 3, 4
    m = ConvLSTM(C, H, 3, num_layers=2, padding="valid")
    x = torch.randn(B, T, C, 5, 6)
    out, (h_n, c_n) = m(x)
    assert out.shape == (B, T, H, 1, 2)
    assert [t.shape for t in h_n] == [(B, H, 3, 4), (B, H, 1, 2)]  # not stackable: a tuple
    ref, hs, cs = reference_stack(m, x)
    assert_close(out, ref, torch.float32, "output")
    for k in range(2):
        assert_close(h_n[k], hs[k], torch.float32, f"h_n[{k}]")
        assert_close(c_n[k], cs[k], torch.float32, f"c_n[{k}]")
    one = ConvLSTM(C, H, 3, bidirectional=True, padding="VALID")
    out, (h_n, _) = one(x)
    assert out.shape == (B, T, 2 * H, 3, 4) and h_n.shape == (2, B, H, 3, 4)
    with pytest.raises(ValueError, match="layer 1.*too small"):
        m(torch.randn(B, T, C, 4, 4))


@pytest.mark.parametrize("stacked", [True, False], ids=["equal_sizes", "per_layer_sizes"])
def test_final_state_continues_the_sequence(stacked):
    """(h_n, c_n) fed back as hx continues the sequence: hx and h_n share one layout."""
    hidden = 4 if stacked else [4, 3]
    m = ConvLSTM(3, hidden, 3, num_layers=2)
    x = torch.randn(2, 3, 3, 4, 5)
    full, (h_full, c_full) = m(x)
    first, state = m(x[:, :2])
    second, (h_n, c_n) = m(x[:, 2:], state)
    assert_close(torch.cat([first, second], 1), full, torch.float32, "output")
    for k in range(2):
        assert_close(h_n[k], h_full[k], torch.float32, f"h_n[{k}]")
        assert_close(c_n[k], c_full[k], torch.float32, f"c_n[{k}]")


def test_dropout_between_layers_only_in_training():
    B, T, C, H = 2, 3, 3, 4
    x = torch.randn(B, T, C, 4, 5)
    m = ConvLSTM(C, H, 3, num_layers=3, dropout=1.0)
    m.eval()
    out_eval, (h_eval, _) = m(x)
    ref, hs, _ = reference_stack(m, x)
    assert_close(out_eval, ref, torch.float32, "eval output (no dropout)")
    assert_close(h_eval, torch.stack(hs), torch.float32, "eval h_n")
    # p = 1 zeroes what it applies to: layers 1 and 2 see zeros, the last output is not dropped.
    m.train()
    out_train, (h_train, c_train) = m(x)
    seq = x.movedim(2, -1)
    for layer, (kernel, rkernel, bias) in enumerate(m.all_weights):
        seq, h, c = conv_lstm(seq if layer == 0 else torch.zeros_like(seq), kernel, rkernel, bias,
                              padding="same", backend="reference")
        assert_close(h_train[layer], cf(h), torch.float32, f"train h_n[{layer}]")
        assert_close(c_train[layer], cf(c), torch.float32, f"train c_n[{layer}]")
    assert_close(out_train, seq.movedim(-1, 2), torch.float32, "train output")
    assert out_train.abs().min() > 0
    # p = 0.5: random in training (fresh masks per call), off in eval.
    m.dropout = 0.5
    torch.manual_seed(3)
    first, _ = m(x)
    second, _ = m(x)
    assert not torch.allclose(first, out_eval) and not torch.allclose(first, second)
    torch.manual_seed(3)
    assert torch.equal(m(x)[0], first)
    m.eval()
    assert torch.equal(m(x)[0], out_eval)
    with pytest.warns(UserWarning, match="dropout=0.3 has no effect with num_layers=1"):
        ConvLSTM(C, H, 3, dropout=0.3)


# ------------------------------------------------------------------ gradients


def test_gradients_flow_to_input_hx_and_every_parameter():
    m = ConvLSTM(3, [4, 3], [3, 1], num_layers=2, bidirectional=True)
    x = torch.randn(2, 3, 3, 4, 5, requires_grad=True)
    hx = [tuple(torch.randn(2, h, 4, 5, requires_grad=True) for _ in range(2))
          for h in (4, 4, 3, 3)]
    out, (h_n, c_n) = m(x, ([h for h, _ in hx], [c for _, c in hx]))
    loss = out.square().sum() + sum(t.square().sum() for t in h_n + c_n)
    loss.backward()
    named = [("x", x)] + [(f"hx[{k}][{i}]", t) for k, s in enumerate(hx) for i, t in enumerate(s)]
    named += list(m.named_parameters())
    assert len(list(m.parameters())) == 12
    for name, t in named:
        assert t.grad is not None, name
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_gradients_match_reference(backend):
    device = device_for(backend)
    B, T, C, H = 2, 3, 3, 4
    m = ConvLSTM(C, H, (3, 2), num_layers=2, bidirectional=True, peephole=True, backend=backend,
                 device=device)
    x = torch.randn(B, T, C, 4, 5, device=device)
    h0 = torch.randn(4, B, H, 4, 5, device=device)
    c0 = torch.randn(4, B, H, 4, 5, device=device)
    d_out = torch.randn(B, T, 2 * H, 4, 5, device=device)
    d_h, d_c = torch.randn_like(h0), torch.randn_like(c0)
    names = ["x", "h_0", "c_0"] + [name for name, _ in m.named_parameters()]

    def run(backend):
        m.backend = backend
        leaves = [t.detach().clone().requires_grad_() for t in (x, h0, c0)]
        out, (h_n, c_n) = m(leaves[0], tuple(leaves[1:]))
        loss = (out * d_out).sum() + (h_n * d_h).sum() + (c_n * d_c).sum()
        return (out, h_n, c_n), torch.autograd.grad(loss, leaves + list(m.parameters()))

    outs, grads = run("triton")
    ref_outs, ref_grads = run("reference")
    for name, a, r in zip(("output", "h_n", "c_n"), outs, ref_outs):
        assert_close(a, r, torch.float32, name, tol(device))
    assert len(grads) == len(names) == 3 + 16  # kernel, recurrent, bias, peephole x 4
    for name, g, r in zip(names, grads, ref_grads):
        assert r.abs().sum() > 0, name
        assert_close(g, r, torch.float32, f"d{name}", tol(device))


# ------------------------------------------------------------------ construction


def test_init_is_nn_lstm_style():
    m = ConvLSTM(3, [8, 4], [1, (3, 3)], num_layers=2)
    for (kernel, rkernel, bias), h, k in zip(m.all_weights, (8, 4), (1, 9)):
        bound = 1 / math.sqrt(h * k)
        for p in (kernel, rkernel, bias):
            assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound
    cell = ConvLSTMCell(3, 4, 3, rank=1, dtype=torch.float64)
    assert cell.kernel.dtype == torch.float64 and cell.kernel.shape == (3, 3, 16)
    assert all(p.abs().max() <= 1 / math.sqrt(12) for p in cell.parameters())
    assert ConvLSTMCell(3, 4, 3, bias=False).bias is None
    assert ConvLSTM(3, 4, 3, bias=False).all_weights[0][-1].shape == (3, 3, 4, 16)


def test_rank_from_kernel_size_or_rank():
    assert ConvLSTM(3, 4, 3).rank == 2
    assert ConvLSTM(3, 4, (3,)).rank == 1
    assert ConvLSTM(3, 4, 3, rank=3).kernel_l0.shape == (3, 3, 3, 3, 16)
    assert ConvLSTM(3, 4, [3, (1, 3, 3)], num_layers=2).rank == 3
    assert ConvLSTMCell(3, 4, (3, 3, 1)).rank == 3
    assert "ConvLSTM(3, [4, 5], kernel_size=[(3, 3), (1, 1)], num_layers=2" in repr(
        ConvLSTM(3, [4, 5], [3, 1], num_layers=2))


CONVLSTM_ARGS = dict(in_channels=3, hidden_channels=4, kernel_size=3)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(in_channels=2.0), TypeError, "in_channels"),
    (dict(hidden_channels=[4, 4]), ValueError, "hidden_channels"),
    (dict(hidden_channels=[4, 0], num_layers=2), ValueError, r"hidden_channels\[1\]"),
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(kernel_size=[3, 3]), ValueError, "kernel_size is a list"),
    (dict(kernel_size=[3, (3, 3, 3)], num_layers=2, rank=2), ValueError, r"kernel_size\[1\]"),
    (dict(kernel_size=[(3,), (3, 3)], num_layers=2), ValueError, "kernel_size"),
    (dict(kernel_size=(3, 3, 3, 3)), ValueError, "kernel_size"),
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size="3"), TypeError, "kernel_size"),
    (dict(rank=4), ValueError, "rank"),
    (dict(bias=1), TypeError, "bias"),
    (dict(batch_first="no"), TypeError, "batch_first"),
    (dict(bidirectional=None), TypeError, "bidirectional"),
    (dict(dropout=1.5), ValueError, "dropout"),
    (dict(dropout=float("nan")), ValueError, "dropout"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(activation="nope"), ValueError, "activation"),
    (dict(recurrent_activation=3), TypeError, "recurrent_activation"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_convlstm_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConvLSTM(**{**CONVLSTM_ARGS, **kwargs})


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_channels=-1), ValueError, "in_channels"),
    (dict(hidden_channels=None), TypeError, "hidden_channels"),
    (dict(kernel_size=(3, 3), rank=1), ValueError, "kernel_size"),
    (dict(rank=0), ValueError, "rank"),
    (dict(bias="yes"), TypeError, "bias"),
    (dict(activation="nope"), ValueError, "activation"),
    (dict(backend=None), ValueError, "backend"),
])
def test_cell_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConvLSTMCell(**{**CONVLSTM_ARGS, **kwargs})


def test_bad_forward_arguments():
    m = ConvLSTM(3, 4, 3, num_layers=2, bidirectional=True)
    x = torch.randn(2, 3, 3, 4, 5)
    h = torch.zeros(4, 2, 4, 4, 5)
    for value, error, match in [
        (x.numpy(), TypeError, "input must be a torch.Tensor"),
        (x[:, :, :, 0], ValueError, r"input must have shape \(B, T, C, H, W\) with C=3"),
        (x[:, :, :2], ValueError, "input must have shape"),
    ]:
        with pytest.raises(error, match=match):
            m(value)
    for hx, error, match in [
        (h, TypeError, "hx must be None or a pair"),
        ((h, h, h), TypeError, "hx must be None or a pair"),
        ((h[:2], h), ValueError, r"h_0 must have shape \(4, 2, 4, 4, 5\)"),
        ((h, h[..., :4]), ValueError, "c_0 must have shape"),
        ((list(h)[:3], h), TypeError, "h_0 must be a tensor"),
        ((list(h[:, :, :3]), h), ValueError, r"h_0\[0\] must have shape"),
    ]:
        with pytest.raises(error, match=match):
            m(x, hx)
    cell = ConvLSTMCell(3, 4, 3)
    with pytest.raises(ValueError, match=r"input must have shape \(B, C, H, W\) with C=3"):
        cell(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c\) must have shape \(2, 4, 4, 5\)"):
        cell(x[:, 0], (torch.zeros(2, 4, 4, 5), torch.zeros(2, 4, 4, 4)))
    with pytest.raises(TypeError, match="hx must be None or a pair"):
        cell(x[:, 0], torch.zeros(2, 4, 4, 5))


def test_peephole_equals_functional_peephole():
    """The module's peephole weights reach conv_lstm as (3, H) = (w_ci, w_cf, w_co)."""
    m = ConvLSTM(2, 3, 3, num_layers=1, peephole=True, backend="reference")
    x = torch.randn(2, 3, 2, 4, 5)
    out, (h_n, c_n) = m(x)
    seq, h, c = conv_lstm(x.movedim(2, -1),
                          m.kernel_l0, m.recurrent_kernel_l0, m.bias_l0, padding="same",
                          peephole=m.peephole_weights_l0, backend="reference")
    assert torch.equal(out, seq.movedim(-1, 2))
    assert torch.equal(h_n[0], h.movedim(-1, 1))
    no_peephole = conv_lstm(x.movedim(2, -1), m.kernel_l0, m.recurrent_kernel_l0, m.bias_l0,
                            padding="same", backend="reference")[0]
    assert not torch.allclose(seq, no_peephole)
