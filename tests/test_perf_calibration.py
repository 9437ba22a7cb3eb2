"""The performance model (bench/perfmodel) against published times of public Triton kernels,
without a GPU: every anchor kernel (bench/anchors) compiles for sm_90 and its FORECAST lands
within +-25 % of the published H100 time, with the one set of calibrated constants the model
ships (perfmodel.device.Calibrated). The anchors compile in a subprocess without
TRITON_INTERPRET (this process runs kernels in the interpreter, see conftest.py)."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from perfmodel import calibration
from perfmodel.compiling import sm90_unavailable
reason = sm90_unavailable()
if reason:
    print("SKIP: " + reason)
    sys.exit(0)
rows = calibration.table()
for r in rows:
    r["fitted"] = any(a.name == r["anchor"] for a in calibration.FITTED)
print("JSON:" + json.dumps(rows))
"""


@pytest.fixture(scope="module")
def anchor_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence Triton 3.9's notice; fusion is its default
    run = subprocess.run([sys.executable, "-c", WORKER, str(BENCH)], env=env,
                         capture_output=True, text=True, timeout=1800)
    if run.returncode == 0 and run.stdout.startswith("SKIP: "):
        pytest.skip(f"this Triton cannot compile for sm_90 ahead of time: {run.stdout[6:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("JSON:"))
    return json.loads(line[5:])


def test_every_anchor_within_25_percent(anchor_rows):
    from perfmodel.calibration import ANCHOR_TOLERANCE, ANCHORS

    assert len(anchor_rows) == len(ANCHORS) >= 10
    off = [f"{r['anchor']}: forecast {r['forecast_us']:.1f} µs, published "
           f"{r['published_us']:.1f} µs (x{r['ratio']:.2f})" for r in anchor_rows
           if abs(r["ratio"] - 1) > ANCHOR_TOLERANCE]
    assert not off, "\n".join(off)


def test_anchors_span_the_regimes(anchor_rows):
    """Held-out anchors exist, and the fitted set is not won by one term alone: compute-bound
    GEMMs, latency-bound tiles, MUFU-bound attention and HBM-bound rows all appear."""
    assert any(not r["fitted"] for r in anchor_rows)
    limiters = {r["limiter"] for r in anchor_rows}
    assert "hbm" in limiters and "sm_latency" in limiters, limiters
    assert limiters & {"tensor", "mufu", "issue", "l2"}, limiters


def test_perfmodel_has_no_import_circle():
    """bench/perfmodel's modules import only each other (never static_perf or sm90_compile),
    and in one direction: device <- sass <- forecast <- calibration; compiling and amdgcn (the
    AMD reader, which imports none of them) stand apart."""
    order = {"device": 0, "amdgcn": 0, "sass": 1, "compiling": 1, "forecast": 2,
             "calibration": 3}
    for path in (BENCH / "perfmodel").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in ("static_perf", "sm90_compile",
                                                        "amd_static", "recording")
                               for a in node.names), path
        assert not imported & {"static_perf", "sm90_compile", "amd_static", "recording"}
        if path.stem in order:
            later = [m for m in imported if m in order and order[m] >= order[path.stem]
                     and m != path.stem and {m, path.stem} != {"sass", "compiling"}]
            assert not later, f"{path.name} imports {later}"


def test_forecast_terms_of_a_canned_launch():
    """The model's arithmetic on a hand-made kernel: the limiter moves from HBM to the CTA's
    latency path to the tensor cores as the problem changes."""
    from dataclasses import replace

    from perfmodel.device import DEVICES
    from perfmodel.forecast import KernelStats, forecast_launch

    h100 = DEVICES["h100"]
    f = h100.clock_hz
    # one iteration: 64x128x64 bf16 on one warpgroup = 1M FLOP = 256 tensor cycles, 64
    # instructions (64 issue cycles at 4 warps), 16 KiB loaded
    loop = {"found": True, "flop_per_iter": 2 * 64 * 128 * 64, "rate_class": "16bit",
            "instructions": 64, "smem_operand_bytes": 0,
            "traffic": {"load_bytes": 16384, "mufu": 0}, "nonloop_instructions": 40,
            "nonloop_traffic": {"store_bytes": 16384, "load_bytes": 0, "mufu": 0}}
    stats = KernelStats("toy", 4, 3, 128, 0, 0, 64 * 1024, 2, "smem", loop, None, None)
    c = h100.calibrated
    # 264 CTAs (2 per SM, one round), 100 iterations each, tiny HBM traffic
    fc = forecast_launch(stats, (264,), 1 << 20, 264 * 100 * loop["flop_per_iter"], "h100")
    assert fc.iterations == 100 and fc.ctas_per_sm == 2
    it_alone = max(256 + 64, 16384 / h100.l2_port_bytes_per_clk, c.memory_latency_s * f / 2)
    assert abs(fc.bounds["sm_latency"] * f - (100 * it_alone + max(40, 16384 / min(
        64, h100.hbm_bytes_per_s / h100.sms / f)) + c.cta_fixed_s * f)) < 1e-6
    assert fc.time_s == max(fc.bounds[k] for k in ("sm_throughput", "sm_latency", "l2",
                                                   "hbm")) + c.launch_s
    # the same launch reading 40 GB from DRAM: HBM-bound
    assert forecast_launch(stats, (264,), 40e9, fc.executed_flop, "h100").limiter == "hbm"
    # 100x the CTAs (200 per SM, 2 at a time): the CTAs' own path (loads 2.75 µs away, 2
    # stages ahead) is longer than the SM's throughput; with a short memory latency the 43 GB
    # of tile loads bound it at the L2's 6.5 TB/s, and with a faster L2 the tensor cores (the
    # loop's longest term) do
    grid, flop = (26400,), 26400 * 100 * loop["flop_per_iter"]
    many = forecast_launch(stats, grid, 1 << 20, flop, "h100")
    assert many.limiter == "sm_latency"
    throughput = 200 * (100 * (256 + 64) + 40) / f
    assert abs(many.bounds["sm_throughput"] - throughput) < 1e-12
    near = replace(c, memory_latency_s=0.1e-6)
    assert forecast_launch(stats, grid, 1 << 20, flop, "h100", near).limiter == "l2"
    fast = forecast_launch(stats, grid, 1 << 20, flop, "h100",
                           replace(near, l2_bytes_per_s=20e12))
    assert fast.limiter == "tensor" and fast.time_s == throughput + c.launch_s
