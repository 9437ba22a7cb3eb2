"""The benchmark's eager peer (bench/eager_convlstm.py) against the reference, and the benchmark
CLI's CPU behaviour. Both live in bench/, which is not a package: import them from there."""

import math
import sys
from pathlib import Path

import pytest
import torch
from helpers import TOLERANCES, assert_close

from convlstm_triton.reference import conv_lstm_reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_convlstm  # noqa: E402
from eager_convlstm import (  # noqa: E402
    EagerConvLSTM,
    combined_to_keras,
    eager_conv_lstm,
    keras_to_combined,
)

# (spatial, C_in, F, kernel_size): odd kernels, prime channels, pixels not a multiple of anything
SHAPES = [
    pytest.param((13,), 3, 5, (3,), id="1d_L13_C3_F5_k3"),
    pytest.param((7, 6), 3, 5, (3, 5), id="2d_7x6_C3_F5_k3x5"),
    pytest.param((9, 11), 2, 3, (5, 5), id="2d_9x11_C2_F3_k5"),
    pytest.param((4, 5, 3), 2, 3, (3, 3, 1), id="3d_4x5x3_C2_F3_k3x3x1"),
]


def _problem(spatial, c_in, filters, kernel_size, batch=2, steps=3, dtype=torch.float64):
    k = torch.randn(*kernel_size, c_in, 4 * filters, dtype=dtype) / math.sqrt(c_in + filters)
    r = torch.randn(*kernel_size, filters, 4 * filters, dtype=dtype) / math.sqrt(c_in + filters)
    return dict(
        x=torch.randn(batch, steps, *spatial, c_in, dtype=dtype),
        kernel=k,
        recurrent_kernel=r,
        bias=torch.randn(4 * filters, dtype=dtype),
        initial_state=(torch.randn(batch, *spatial, filters, dtype=dtype),
                       torch.randn(batch, *spatial, filters, dtype=dtype)),
    )


def _reference(p, **kwargs):
    return conv_lstm_reference(p["x"], p["kernel"], p["recurrent_kernel"], p["bias"],
                               p["initial_state"], padding="same", **kwargs)


@pytest.mark.parametrize("spatial,c_in,filters,kernel_size", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_eager_forward_matches_reference(spatial, c_in, filters, kernel_size, dtype):
    p = _problem(spatial, c_in, filters, kernel_size)
    ref = _reference(p)
    out = eager_conv_lstm(**{k: _cast(v, dtype) for k, v in p.items()})
    for name, o, r in zip(("seq", "h", "c"), out, ref):
        assert o.dtype == dtype
        assert_close(o, r, dtype, name)


def _cast(value, dtype):
    if isinstance(value, tuple):
        return tuple(v.to(dtype) for v in value)
    return value.to(dtype)


@pytest.mark.parametrize("spatial,c_in,filters,kernel_size", SHAPES[:2])
def test_eager_gradients_match_reference(spatial, c_in, filters, kernel_size):
    p = _problem(spatial, c_in, filters, kernel_size)
    leaves = [p["x"], p["kernel"], p["recurrent_kernel"], p["bias"], *p["initial_state"]]
    for t in leaves:
        t.requires_grad_()
    ref = _reference(p)
    upstream = [torch.randn_like(r) for r in ref]
    ref_grads = torch.autograd.grad(ref, leaves, upstream)
    out = eager_conv_lstm(**p)
    grads = torch.autograd.grad(out, leaves, upstream)
    names = ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")
    for name, g, r in zip(names, grads, ref_grads):
        assert_close(g, r, torch.float64, f"d{name}")


def test_eager_activations_and_no_bias_match_reference():
    p = _problem((6, 5), 3, 4, (3, 3))
    p["bias"] = None
    p["initial_state"] = None
    acts = dict(activation="relu", recurrent_activation="hard_sigmoid")
    for name, o, r in zip(("seq", "h", "c"), eager_conv_lstm(**p, **acts), _reference(p, **acts)):
        assert_close(o, r, torch.float64, name)


def test_module_owns_converted_weights_and_gradients_convert_back():
    """The benchmark's path: module from Keras weights, channels-first input, grads to Keras."""
    p = _problem((7, 6), 3, 5, (3, 3))
    module = EagerConvLSTM.from_keras_weights(p["kernel"], p["recurrent_kernel"], p["bias"])
    x = p["x"].movedim(-1, 2).contiguous().requires_grad_()
    seq, h, c = module(x)
    p["initial_state"] = None
    ref = _reference(p)
    assert_close(seq.movedim(2, -1), ref[0], torch.float64, "seq")
    assert_close(c.movedim(1, -1), ref[2], torch.float64, "c")

    kernel, recurrent = (t.clone().requires_grad_() for t in (p["kernel"], p["recurrent_kernel"]))
    ref_seq = conv_lstm_reference(p["x"], kernel, recurrent, p["bias"], padding="same")[0]
    upstream = torch.randn_like(ref_seq)
    ref_seq.backward(upstream)
    seq.backward(upstream.movedim(-1, 2))
    dkernel, drecurrent = combined_to_keras(module.weight.grad, in_channels=3)
    assert_close(dkernel, kernel.grad, torch.float64, "dkernel")
    assert_close(drecurrent, recurrent.grad, torch.float64, "drecurrent_kernel")


def test_weight_conversion_round_trips():
    kernel = torch.randn(3, 5, 2, 12)
    recurrent = torch.randn(3, 5, 3, 12)
    combined = keras_to_combined(kernel, recurrent)
    assert combined.shape == (12, 5, 3, 5)
    k, r = combined_to_keras(combined, in_channels=2)
    assert torch.equal(k, kernel) and torch.equal(r, recurrent)


def test_eager_rejects_even_kernels_and_mismatched_weights():
    with pytest.raises(ValueError, match="odd kernel sizes"):
        EagerConvLSTM.from_keras_weights(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 2, 8))
    with pytest.raises(ValueError, match="not a ConvLSTM pair"):
        keras_to_combined(torch.randn(3, 3, 1, 8), torch.randn(3, 3, 3, 8))


# ---------------------------------------------------------------------------------------------
# the benchmark CLI on a machine without a GPU


def test_bench_shapes_have_design_flop_counts():
    # the benchmark shapes' forward TFLOP, as the project's plan states them (2026-11-26)
    expected = {"mnist_l1": 1.04, "mnist_l2": 0.73, "nowcast": 1.86, "small": 0.012}
    for name, tflop in expected.items():
        assert bench_convlstm.SHAPES[name].fwd_flop() / 1e12 == pytest.approx(tflop, rel=0.01)


def test_bench_parses_names_and_rejects_unknown(capsys):
    args = bench_convlstm.parse_args(["--shapes", "mnist_l1,small", "--dtypes", "bf16", "--check"])
    assert args.shapes == ["mnist_l1", "small"] and args.dtypes == ["bf16"] and args.check
    with pytest.raises(SystemExit):
        bench_convlstm.parse_args(["--shapes", "mnist_l3"])
    assert "unknown shape mnist_l3" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_without_gpu_says_so(capsys):
    assert bench_convlstm.main(["--shapes", "small"]) == 2
    assert "CUDA GPU is needed" in capsys.readouterr().err
    assert bench_convlstm.main(["--list"]) == 0
    assert "mnist_l1" in capsys.readouterr().out


def test_bench_check_and_report_pieces_on_cpu(tmp_path):
    """The device-independent parts of one benchmark group, on a tiny problem on the CPU with the
    eager peer standing in for ours: the float64 check, the table row and the CSV."""
    shape = bench_convlstm.Shape("tiny", 2, 3, (5, 4), 3, 4, 3)
    problem = bench_convlstm.make_problem(shape, torch.float32, seed=0, device="cpu")
    stand_in = bench_convlstm.eager_peer(problem)
    peers = {"ours": stand_in, "eager": bench_convlstm.eager_peer(problem)}
    check = bench_convlstm.check_peers(problem, peers, seed=0)
    assert check["ours"].out_vs_fp64 < TOLERANCES[torch.float32]
    assert check["ours"].grad_vs_fp64 < TOLERANCES[torch.float32]
    assert check["ours"].out_vs_eager == 0.0
    assert bench_convlstm.check_passed(check, torch.float32)

    timing = bench_convlstm.Timing(2.0, 1.9, 2.1, 0.5, 10.0)
    timings = {"ours": timing, "eager": bench_convlstm.PeerFailure("eager", "RuntimeError: x")}
    names = ["ours", "eager"]
    header = bench_convlstm.table_header(names)
    row = bench_convlstm.table_row(shape, "fp32", "train", names, timings, check)
    assert row.count("|") == header.splitlines()[0].count("|")
    assert "error" in row

    info = dict(date="d", gpu="g", cuda="c", torch="t", triton="tr", tf32=True)
    path = tmp_path / "bench.csv"
    for _ in range(2):
        rows = list(bench_convlstm.csv_rows(info, shape, "fp32", "train", timings, check))
        bench_convlstm.append_csv(path, rows)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 and lines[0].startswith("timestamp,")
