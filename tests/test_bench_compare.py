"""bench/compare.py on a CPU: the hoisted eager peer against the reference, the dry run end to end
(in a subprocess, as a user runs it), and the report pieces (CSV rows, markdown, plot, failures).
bench/ is not a package: import from there."""

import csv
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import assert_close

from convlstm_triton.reference import conv_lstm_reference

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402
from eager_convlstm import EagerHoistedConvLSTM, eager_hoisted_conv_lstm  # noqa: E402

CSV_HEADER = "gpu,torch,triton,date,shape,B,T,H,W,C_in,F,k,dtype,mode,variant,ms,tflops,peak_mb"


def _problem(spatial, c_in, filters, kernel_size, batch=2, steps=3):
    scale = 1 / math.sqrt(c_in + filters)
    f64 = dict(dtype=torch.float64)
    return dict(
        x=torch.randn(batch, steps, *spatial, c_in, **f64),
        kernel=torch.randn(*kernel_size, c_in, 4 * filters, **f64) * scale,
        recurrent_kernel=torch.randn(*kernel_size, filters, 4 * filters, **f64) * scale,
        bias=torch.randn(4 * filters, **f64),
        initial_state=(torch.randn(batch, *spatial, filters, **f64),
                       torch.randn(batch, *spatial, filters, **f64)),
    )


# ---------------------------------------------------------------------------------------------
# the eager_hoisted peer


@pytest.mark.parametrize("spatial,c_in,filters,kernel_size", [
    pytest.param((13,), 3, 5, (3,), id="1d_L13_C3_F5_k3"),
    pytest.param((7, 6), 3, 5, (3, 5), id="2d_7x6_C3_F5_k3x5"),
    pytest.param((4, 5, 3), 2, 3, (3, 3, 1), id="3d_4x5x3_C2_F3_k3x3x1"),
])
def test_eager_hoisted_matches_reference(spatial, c_in, filters, kernel_size):
    p = _problem(spatial, c_in, filters, kernel_size)
    leaves = list(p.values())[:4] + list(p["initial_state"])
    for t in leaves:
        t.requires_grad_()
    ref = conv_lstm_reference(**p, padding="same")
    out = eager_hoisted_conv_lstm(**p)
    upstream = [torch.randn_like(r) for r in ref]
    ref_grads = torch.autograd.grad(ref, leaves, upstream)
    grads = torch.autograd.grad(out, leaves, upstream)
    for name, o, r in zip(("seq", "h", "c"), out, ref):
        assert_close(o, r, torch.float64, name)
    for name, g, r in zip(("x", "kernel", "recurrent_kernel", "bias", "h0", "c0"), grads,
                          ref_grads):
        assert_close(g, r, torch.float64, f"d{name}")


def test_eager_hoisted_module_gradients_in_keras_layout():
    """The benchmark's path: module from Keras weights, channels-first x, grads back to Keras."""
    p = _problem((7, 6), 3, 5, (3, 3))
    p["initial_state"] = None
    module = EagerHoistedConvLSTM.from_keras_weights(p["kernel"], p["recurrent_kernel"],
                                                     p["bias"])
    x = p["x"].movedim(-1, 2).contiguous()
    seq = module(x)[0]
    for t in (p["kernel"], p["recurrent_kernel"], p["bias"]):
        t.requires_grad_()
    ref_seq = conv_lstm_reference(**p, padding="same")[0]
    assert_close(seq.movedim(2, -1), ref_seq, torch.float64, "seq")
    upstream = torch.randn_like(ref_seq)
    ref_seq.backward(upstream)
    seq.backward(upstream.movedim(-1, 2))
    for name, g, r in zip(("kernel", "recurrent_kernel", "bias"), module.keras_grads(),
                          (p["kernel"].grad, p["recurrent_kernel"].grad, p["bias"].grad)):
        assert_close(g, r, torch.float64, f"d{name}")


def test_eager_hoisted_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd kernel sizes"):
        EagerHoistedConvLSTM.from_keras_weights(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 2, 8))


# ---------------------------------------------------------------------------------------------
# the script on a machine without a GPU


def test_dry_run_end_to_end(tmp_path):
    """As a user runs it: the script sets TRITON_INTERPRET itself when there is no GPU, checks
    every variant it can run, writes the CSV with the exact header and the markdown with the
    machine line. On a GPU machine the same tiny run uses the GPU (compile variants left out:
    compiling takes minutes), CUDA graph included."""
    cuda = torch.cuda.is_available()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    csv_path, md_path = tmp_path / "tmp" / "compare.csv", tmp_path / "tmp" / "compare.md"
    command = [sys.executable, str(BENCH / "compare.py"), "--dry-run", "--csv", str(csv_path),
               "--markdown", str(md_path)]
    if cuda:
        command += ["--variants", ",".join(v for v in compare.VARIANTS if "compile" not in v)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = csv_path.read_text().splitlines()
    assert lines[0] == CSV_HEADER
    rows = list(csv.DictReader(lines))
    timed = {(r["variant"], r["mode"]) for r in rows if r["ms"] not in ("", "n/a")}
    for variant in ("eager_cat", "eager_hoisted", "triton_unfused", "triton_fused",
                    "triton_fused_input"):
        for mode in ("fwd", "train"):
            assert (variant, mode) in timed, f"no time for {variant} {mode}"
    assert all(float(r["ms"]) > 0 for r in rows if r["ms"] != "n/a")
    assert not {r["variant"] for r in rows} & {"compile", "compile_graphs"}
    markdown = md_path.read_text()
    first = markdown.splitlines()[0]
    assert f"torch {torch.__version__}" in first and "triton" in first
    if cuda:
        assert "dry run (tiny shape)" in first and ("triton_graphs", "fwd") in timed
        assert any(r["variant"] == "triton_graphs" and r["ms"] == "n/a" for r in rows)
    else:
        assert first.startswith("**CPU dry run**") and "not a benchmark" in first
        assert "CUDA graphs need CUDA" in markdown
        assert "triton_graphs" not in {r["variant"] for r in rows}
    assert "Failures" not in markdown and markdown in proc.stdout
    assert "check dry_run fp32 triton_fused: rel. error vs float64" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_gpu_and_dry_run_exits_2(capsys):
    assert compare.main(["--shapes", "small"]) == 2
    assert "CUDA GPU is needed" in capsys.readouterr().err


def test_parse_args_orders_variants_and_defaults_paths():
    args = compare.parse_args(["--variants", "triton_fused,eager_cat", "--csv", "a/b.csv"])
    assert args.variants == ["eager_cat", "triton_fused"]
    assert args.plot == os.path.join("a", "b.png") and args.shapes == list(compare.SHAPES)
    dry = compare.parse_args(["--dry-run"])
    assert dry.shapes == ["dry_run"] and dry.dtypes == ["fp32"]
    assert dry.csv.endswith("compare-dry-run.csv")


# ---------------------------------------------------------------------------------------------
# failures, n/a, report pieces


def _broken_peer(name, problem):
    """eager_cat with outputs off by 10 %: must fail the check and not be timed."""
    peer = compare.eager_cat_peer(name, problem)
    forward = peer.forward
    peer.forward = lambda: tuple(1.1 * t for t in forward())
    return peer


def _raising_peer(name, problem):
    raise RuntimeError("no kernel for you")


def test_failing_and_raising_variants_are_reported_and_others_run(monkeypatch):
    monkeypatch.setitem(compare.BUILDERS, "eager_hoisted", _broken_peer)
    monkeypatch.setitem(compare.BUILDERS, "triton_unfused", _raising_peer)
    args = compare.parse_args(["--dry-run", "--variants",
                               "eager_cat,eager_hoisted,triton_unfused"])
    group = compare.run_group(compare.DRY_RUN_SHAPE, "fp32", args, cuda=False)
    for mode in ("fwd", "train"):
        results = group.timings[mode]
        assert isinstance(results["eager_cat"], compare.Timing)
        assert "check failed: outputs" in results["eager_hoisted"].error
        assert results["triton_unfused"].error == "RuntimeError: no kernel for you"
    assert group.checks["eager_hoisted"].out_vs_fp64 == pytest.approx(0.1, rel=1e-3)
    assert len(compare.failures([group])) == 4
    assert "**Failures:**" in compare.render_markdown(compare.cpu_machine_info(), {}, [group],
                                                      args.variants, True)


def test_reference_failure_fails_every_variant(monkeypatch):
    def out_of_memory(problem, grad_seq):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(compare, "reference_run", out_of_memory)
    args = compare.parse_args(["--dry-run", "--variants", "eager_cat,triton_fused"])
    group = compare.run_group(compare.DRY_RUN_SHAPE, "fp32", args, cuda=False)
    errors = compare.failures([group])
    assert len(errors) == 4 and all("float64 reference: RuntimeError" in e for e in errors)


def _group():
    shape = compare.Shape("vol", 2, 3, (4, 5, 6), 2, 4, 3)
    timing = compare.Timing(2.0, 1.9, 2.1, 0.5, 10.0)
    fwd = {"eager_cat": compare.Timing(4.0, 3.9, 4.1, 0.5, 20.0), "triton_fused": timing,
           "triton_graphs": compare.Timing(1.0, 0.9, 1.1, 0.5, 5.0),
           "compile": compare.NotRun("skipped", "no compile here"),
           "triton_unfused": compare.PeerFailure("triton_unfused", "check failed: x")}
    train = dict(fwd, triton_graphs=compare.NotRun("n/a", "forward only"))
    checks = {"eager_cat": compare.CheckResult(1e-3, 2e-3),
              "triton_graphs": compare.CheckResult(1e-3, math.nan)}
    return compare.Group(shape, "bf16", {"fwd": fwd, "train": train}, checks)


def test_csv_rows_mark_na_and_errors_and_skip_skipped(tmp_path):
    info = dict(gpu="g", torch="t", triton="tr", date="d")
    path = tmp_path / "sub" / "c.csv"
    for _ in range(2):
        compare.write_csv(str(path), info, _group())
    lines = path.read_text().splitlines()
    assert lines[0] == CSV_HEADER and len(lines) == 1 + 2 * 8
    rows = {(r["mode"], r["variant"]): r for r in csv.DictReader(lines[:9])}
    assert ("fwd", "compile") not in rows
    assert rows[("train", "triton_graphs")]["ms"] == "n/a"
    assert rows[("fwd", "triton_unfused")]["ms"] == rows[("fwd", "triton_unfused")]["tflops"] == ""
    fused = rows[("fwd", "triton_fused")]
    assert (fused["H"], fused["W"]) == ("4x5", "6")  # 3D: D and H share the H column
    assert float(fused["peak_mb"]) == pytest.approx(10 * 2**20 / 1e6)
    assert float(fused["tflops"]) == pytest.approx(
        compare.flop_of(_group().shape, "fwd") / 2e-3 / 1e12)


def test_markdown_speedups_peaks_and_notes():
    info = compare.cpu_machine_info() | {"cuda": "12.8", "capability": "9.0", "cudnn": 91000,
                                         "gpu": "NVIDIA H100", "tf32": True}
    peaks = {"bf16": ("bf16", 800.0)}
    md = compare.render_markdown(info, peaks, [_group()], list(compare.VARIANTS), False)
    first = md.splitlines()[0]
    assert first.startswith("**NVIDIA H100** (sm_90) · CUDA 12.8") and "torch" in first
    assert "bf16 800 TFLOP/s" in md
    row = next(line for line in md.splitlines() if line.startswith("| vol") and "| fwd |" in line)
    # best baseline = eager_cat 4 ms: triton_fused 2 ms is 2x, triton_graphs 1 ms 4x
    assert "| 4 |" in row and "2 (2×)" in row and "1 (4×)" in row
    assert row.endswith("triton_graphs (4×) |") and "| skipped |" in row and "| error |" in row
    train = next(line for line in md.splitlines() if line.startswith("| vol") and "train" in line)
    assert "| n/a |" in train
    tflops = compare.tflops_of(_group().shape, "fwd", 2.0)
    assert f"{tflops:.3g} ({100 * tflops / 800:.0f} %)" in md
    assert "1.0e-03 / –" in md  # the forward-only variant has no gradient error
    assert "triton_graphs n/a: forward only" in md and "compile skipped: no compile here" in md
    assert "triton_unfused: check failed: x" in md


def test_check_failure_bounds_and_nan():
    checks = {"eager_cat": compare.CheckResult(0.04, 0.001)}
    bounds = compare.check_bounds(torch.bfloat16, checks)
    assert bounds == (0.08, compare.CHECK_TOLERANCE[torch.bfloat16])
    assert compare.check_failure(compare.CheckResult(0.07, math.nan), "fwd", bounds) is None
    assert "gradients" in compare.check_failure(compare.CheckResult(0.07, math.nan), "train",
                                                bounds)
    assert "outputs" in compare.check_failure(compare.CheckResult(math.nan, 0.0), "fwd", bounds)


def test_plot_without_matplotlib_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert not compare.write_plot(str(tmp_path / "p.png"), [_group()], ["eager_cat"], "t")
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_plot_draws_a_panel_per_shape_dtype_mode(monkeypatch, tmp_path):
    """With a stand-in matplotlib (it need not be installed here): a panel per mode, each a bar
    per variant, saved to the path."""
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getattr__(self, attr):
            def record(*args, **kwargs):
                calls.append((self.name, attr, args, kwargs))
            return record

    axes = [[Recorder("ax_fwd"), Recorder("ax_train")]]
    pyplot = types.SimpleNamespace(subplots=lambda *a, **k: (Recorder("fig"), axes),
                                   close=lambda fig: None)
    matplotlib = types.SimpleNamespace(use=lambda backend: None, pyplot=pyplot)
    monkeypatch.setitem(sys.modules, "matplotlib", matplotlib)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    names = list(compare.VARIANTS)
    path = tmp_path / "p.png"
    assert compare.write_plot(str(path), [_group()], names, "machine")
    bars = {who: args for who, what, args, _ in calls if what == "barh"}
    assert list(bars["ax_fwd"][0]) == names and bars["ax_fwd"][1][names.index("eager_cat")] == 4
    assert ("fig", "savefig", (str(path),), {"dpi": 110}) in calls


# ---------------------------------------------------------------------------------------------
# run order and results written as they come (bench/gpu_check.sh cuts runs short)


def test_compile_variants_run_last_and_the_table_keeps_its_order():
    args = compare.parse_args(["--variants", "triton_fused,compile,eager_cat,compile_graphs"])
    assert args.variants == ["eager_cat", "compile", "compile_graphs", "triton_fused"]
    assert compare.run_order(args.variants) == ["eager_cat", "triton_fused", "compile",
                                                "compile_graphs"]


def test_run_cut_short_keeps_every_variant_measured(monkeypatch, tmp_path):
    """A timeout during a variant (here: an exit from the second one) leaves the earlier
    variants' CSV rows and markdown on disk."""
    run_variant = compare.run_variant

    def cut_short(name, *args, **kwargs):
        if name == "eager_hoisted":
            raise SystemExit("killed by the time limit")
        return run_variant(name, *args, **kwargs)

    monkeypatch.setattr(compare, "run_variant", cut_short)
    csv_path, md_path = tmp_path / "c.csv", tmp_path / "c.md"
    with pytest.raises(SystemExit):
        compare.main(["--dry-run", "--variants", "eager_cat,eager_hoisted", "--csv",
                      str(csv_path), "--markdown", str(md_path)])
    rows = list(csv.DictReader(csv_path.read_text().splitlines()))
    assert {(r["variant"], r["mode"]) for r in rows} == {("eager_cat", "fwd"),
                                                        ("eager_cat", "train")}
    table = md_path.read_text()
    fwd = next(line for line in table.splitlines() if line.startswith("| dry_run")
               and "| fwd |" in line)
    assert fwd.split("|")[4].strip() not in ("", "–")  # eager_cat's time
    assert fwd.split("|")[5].strip() == "–"  # eager_hoisted: not run


# ---------------------------------------------------------------------------------------------
# an AMD GPU (a ROCm build of torch): the machine line and the variants that need NVIDIA


def test_machine_info_and_line_on_rocm(monkeypatch):
    """A ROCm torch: the arch from gcnArchName, HIP's and MIOpen's versions (not "CUDA None",
    "sm_94")."""
    import bench_convlstm

    props = types.SimpleNamespace(major=9, minor=4, gcnArchName="gfx942:sramecc+:xnack-")
    monkeypatch.setattr(torch.version, "hip", "6.4.43482", raising=False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "AMD Instinct MI300X")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 3004000)
    info = bench_convlstm.machine_info()
    assert (info["arch"], info["hip"]) == ("gfx942", "6.4.43482")
    line = bench_convlstm.machine_line(info)
    assert line.startswith("**AMD Instinct MI300X** (gfx942) · HIP 6.4.43482 · MIOpen 3004000")
    assert "CUDA" not in line and "sm_" not in line


@pytest.mark.parametrize("tma, skipped", [(False, True), (True, False)])
def test_tma_variant_is_skipped_on_a_gpu_without_tma(monkeypatch, tma, skipped):
    """On a GPU whose platform has no tensor descriptors (AMD, NVIDIA before sm_90) the launcher
    takes the gather path: triton_tma would time triton_fused's kernels under another name."""
    from convlstm_triton.platform import HOPPER, amd_platform

    monkeypatch.setattr(compare, "platform", lambda device: HOPPER if tma else
                        amd_platform("gfx942"))
    assert (compare.skip_reason("triton_tma", cuda=True) is not None) == skipped
    assert compare.skip_reason("triton_fused", cuda=True) is None
