"""The reference path leaves PyTorch: ``torch.export`` with a dynamic number of time steps, ONNX
(the dynamo exporter, dynamic T; the legacy TorchScript exporter, fixed T, for every module
class) run in ONNX Runtime, and the shape of its autograd graph (what made it slower than the
eager loop on a CPU).

Ported from the ``ref`` branch (issue 20, "dynamic time on the reference path").
"""

import pytest
import torch
from helpers import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from convlstm_triton import ConvLSTM, ConvLSTM2D, ConvLSTMCell, compat, set_backend
from convlstm_triton.reference import conv_lstm_reference

# a dynamic-T export must not meet an earlier export's compiled scan (conftest.py)
pytestmark = pytest.mark.usefixtures("fresh_dynamo_caches")

TOL = 1e-5


def _weights(rank, c_in, filters, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    ks = (k,) * rank
    kernel = torch.randn(*ks, c_in, 4 * filters, generator=g) * 0.3
    recurrent_kernel = torch.randn(*ks, filters, 4 * filters, generator=g) * 0.3
    bias = torch.randn(4 * filters, generator=g) * 0.3
    return kernel, recurrent_kernel, bias


class _Ref(torch.nn.Module):
    """conv_lstm_reference with its weights and a fixed set of options as a module."""

    def __init__(self, rank, c_in, filters, k, peephole=False, **options):
        super().__init__()
        kernel, recurrent_kernel, bias = _weights(rank, c_in, filters, k)
        self.kernel = torch.nn.Parameter(kernel)
        self.recurrent_kernel = torch.nn.Parameter(recurrent_kernel)
        self.bias = torch.nn.Parameter(bias)
        self.peephole = torch.nn.Parameter(torch.randn(3, filters) * 0.3) if peephole else None
        self.options = options

    def forward(self, x, h0, c0, mask, in_drop, rec_drop):
        return conv_lstm_reference(
            x, self.kernel, self.recurrent_kernel, self.bias, initial_state=(h0, c0),
            mask=mask, input_dropout_mask=in_drop, recurrent_dropout_mask=rec_drop,
            peephole=self.peephole, **self.options,
        )


def _inputs(steps, spatial, out_spatial, c_in, filters, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed + steps)
    x = torch.randn(batch, steps, *spatial, c_in, generator=g)
    h0 = torch.randn(batch, *out_spatial, filters, generator=g) * 0.5
    c0 = torch.randn(batch, *out_spatial, filters, generator=g) * 0.5
    mask = torch.rand(batch, steps, generator=g) > 0.3
    mask[0, 0] = False  # a sample starting masked: its outputs are zeros until it is not
    in_drop = (torch.rand(4, batch, *spatial, c_in, generator=g) > 0.2).float() / 0.8
    rec_drop = (torch.rand(4, batch, *out_spatial, filters, generator=g) > 0.2).float() / 0.8
    return x, h0, c0, mask, in_drop, rec_drop


EXPORT_CASES = [
    pytest.param(2, (7, 6), (7, 6), 3, {"padding": "same"}, id="2d_same_k3"),
    pytest.param(2, (9, 8), (4, 4), 2, {"padding": "valid", "strides": 2, "go_backwards": True,
                                        "activation": "relu"}, id="2d_valid_s2_k2_backwards"),
    pytest.param(1, (11,), (11,), 4, {"padding": "same", "dilation_rate": 2,
                                      "recurrent_activation": "hard_sigmoid"},
                 id="1d_same_even_k4_dilated"),
    pytest.param(3, (4, 5, 3), (4, 5, 3), 3, {"padding": "same", "go_backwards": True},
                 id="3d_same_backwards"),
    # peepholes with everything else: the closed-over peephole weights and per-gate recurrent
    # kernels must not share memory (scan refuses aliasing closures)
    pytest.param(2, (5, 4), (5, 4), 3, {"padding": "same", "peephole": True,
                                        "go_backwards": True}, id="2d_same_peephole_backwards"),
]


@pytest.mark.parametrize("rank, spatial, out_spatial, k, options", EXPORT_CASES)
def test_export_keeps_time_dynamic(rank, spatial, out_spatial, k, options):
    """One exported program serves every T (a scan, not T unrolled steps), with masks, initial
    state, both dropout masks, go_backwards, strides, padding and dilation, and gives the eager
    reference's outputs."""
    c_in, filters = 3, 4
    model = _Ref(rank, c_in, filters, k, **options)
    time = torch.export.Dim("time", min=2, max=64)
    dyn = ({1: time}, None, None, {1: time}, None, None)
    ep = torch.export.export(model, _inputs(3, spatial, out_spatial, c_in, filters),
                             dynamic_shapes=dyn)
    assert any("scan" in str(n.target) for n in ep.graph.nodes)
    for steps in (2, 5, 9):
        args = _inputs(steps, spatial, out_spatial, c_in, filters)
        got = ep.module()(*args)
        want = model(*args)
        for name, a, b in zip(("seq", "h", "c"), got, want):
            assert a.shape == b.shape
            assert_close(a, b.detach(), torch.float32, f"{name} T={steps}", tol=TOL)


def test_export_of_the_layer_with_a_dynamic_time_dim():
    torch.manual_seed(0)
    layer = ConvLSTM2D(6, 3, padding="same", return_sequences=True, backend="reference",
                       in_channels=2)
    time = torch.export.Dim("time", min=2)
    ep = torch.export.export(layer, (torch.randn(2, 4, 10, 10, 2),), dynamic_shapes=({1: time},))
    for steps in (2, 7):
        x = torch.randn(2, steps, 10, 10, 2)
        assert_close(ep.module()(x), layer(x).detach(), torch.float32, f"T={steps}", tol=TOL)


def test_peephole_exports_with_dynamic_time():
    rank, c_in, filters, k = 2, 3, 4, 3
    kernel, recurrent_kernel, bias = _weights(rank, c_in, filters, k)
    peephole = torch.randn(3, filters) * 0.3

    def f(x):
        return conv_lstm_reference(x, kernel, recurrent_kernel, bias, padding="same",
                                   peephole=peephole)

    class M(torch.nn.Module):
        def forward(self, x):
            return f(x)

    time = torch.export.Dim("time", min=2)
    ep = torch.export.export(M(), (torch.randn(2, 3, 6, 6, c_in),), dynamic_shapes=({1: time},))
    x = torch.randn(2, 6, 6, 6, c_in)
    for a, b in zip(ep.module()(x), f(x)):
        assert_close(a, b, torch.float32, "peephole", tol=TOL)


def _ort_run(path, feeds):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, (t.numpy() for t in feeds))))


def _layer_for_onnx():
    torch.manual_seed(0)
    return ConvLSTM2D(8, 3, padding="same", return_sequences=True, backend="reference",
                      in_channels=3).eval()


def test_onnx_dynamo_export_runs_in_onnxruntime_for_any_time(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    layer = _layer_for_onnx()
    time = torch.export.Dim("time", min=2)
    program = torch.onnx.export(layer, (torch.randn(2, 5, 12, 12, 3),),
                                dynamic_shapes=({1: time},), dynamo=True)
    program.save(str(tmp_path / "convlstm.onnx"))
    for steps in (2, 5, 9):
        x = torch.randn(2, steps, 12, 12, 3)
        (got,) = _ort_run(tmp_path / "convlstm.onnx", [x])
        assert_close(torch.from_numpy(got), layer(x).detach(), torch.float32, f"T={steps}",
                     tol=TOL)


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _state(batch, hidden, *spatial):
    return torch.randn(batch, hidden, *spatial), torch.randn(batch, hidden, *spatial)


LEGACY_MODULES = [
    pytest.param(lambda: ConvLSTM2D(4, 3, padding="same", return_sequences=True, in_channels=3),
                 lambda: (torch.randn(2, 3, 6, 5, 3),), id="ConvLSTM2D"),
    # channels-first: x, h0/c0 and the outputs move their channels (movedim(-1, 1) used to
    # reach the exporter as a Transpose ONNX Runtime refuses)
    pytest.param(lambda: ConvLSTM2D(4, 3, padding="same", return_sequences=True,
                                    return_state=True, data_format="channels_first",
                                    in_channels=3),
                 lambda: (torch.randn(2, 3, 3, 6, 5), _state(2, 4, 6, 5)),
                 id="ConvLSTM2D_channels_first_state"),
    pytest.param(lambda: ConvLSTMCell(3, 4, 3), lambda: (torch.randn(2, 3, 6, 5),
                                                         _state(2, 4, 6, 5)), id="ConvLSTMCell"),
    pytest.param(lambda: ConvLSTM(3, 4, 3, num_layers=2, bidirectional=True),
                 lambda: (torch.randn(3, 2, 3, 6, 5),), id="ConvLSTM_2_layers_bidirectional"),
    # compat's modules: their state_dict hook (the original's conv.weight layout) used to hide
    # the parameters from the legacy exporter ("Cannot insert a Tensor that requires grad")
    pytest.param(lambda: compat.ConvLSTMCell(3, 4, (3, 3), True),
                 lambda: (torch.randn(2, 3, 6, 5), _state(2, 4, 6, 5)), id="compat.ConvLSTMCell"),
    pytest.param(lambda: compat.ConvLSTM(3, [4, 2], (3, 3), 2, batch_first=True,
                                         return_all_layers=True),
                 lambda: (torch.randn(2, 3, 3, 6, 5),), id="compat.ConvLSTM"),
]


@pytest.mark.parametrize("make, make_args", LEGACY_MODULES)
def test_onnx_legacy_export_of_every_module_runs_in_onnxruntime(make, make_args, tmp_path):
    """The TorchScript exporter (T fixed: it unrolls the loop) on the reference backend, each
    module class with its states: every Transpose has a non-negative perm, and ONNX Runtime gives
    the module's outputs, all of them."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import warnings

    import onnx

    torch.manual_seed(0)
    module = set_backend(torch.nn.Sequential(make()), "reference")[0].eval()
    args = make_args()
    path = tmp_path / "convlstm_legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        torch.onnx.export(module, args, str(path), dynamo=False)
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Transpose":
            perm = next(a.ints for a in node.attribute if a.name == "perm")
            assert min(perm) >= 0, perm
    got = _ort_run(path, _flat(args))
    with torch.no_grad():
        want = _flat(module(*args))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(torch.from_numpy(a), b, torch.float32, f"output {i}", tol=TOL)


def test_compat_state_dict_keeps_the_original_layout_outside_export():
    """The exporter's exception in compat's state_dict hook is only for the export."""
    cell = compat.ConvLSTMCell(3, 4, (3, 3), True)
    assert sorted(cell.state_dict()) == ["conv.bias", "conv.weight"]
    assert sorted(cell.state_dict(keep_vars=True)) == ["conv.bias", "conv.weight"]


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_training_step_has_no_per_step_copies_of_whole_tensors():
    """What made the reference 0.81x the eager loop on a CPU: per step, a padded copy of h for
    the recurrent conv (forward and backward) and, in backward, a zero-filled gradient of the
    whole input projection (B, T, 4F, ...) for xg[:, t]. Odd kernels now pad inside the conv and
    the frames are unbound once; eagerly each step runs its input conv and its recurrent conv
    (the hoisted projection is the export path's)."""
    steps = 6
    kernel, recurrent_kernel, bias = (w.requires_grad_() for w in _weights(2, 3, 4, 3))
    x = torch.randn(2, steps, 8, 8, 3, requires_grad=True)
    with _OpCounter() as counter:
        seq, h, c = conv_lstm_reference(x, kernel, recurrent_kernel, bias, padding="same")
        seq.sum().backward()
    assert counter.ops.get("constant_pad_nd", 0) == 0, counter.ops
    assert counter.ops.get("select_backward", 0) == 0, counter.ops
    assert counter.ops.get("convolution", 0) == 2 * steps, counter.ops  # input + recurrent
