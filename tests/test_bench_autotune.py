"""bench/autotune.py on the CPU: the --dry-run end to end in a subprocess, and its report on
tuning events made by a stand-in launcher (tuning forced on with fake timings)."""

import csv
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from convlstm_triton import tuning

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import autotune  # noqa: E402


def test_dry_run_subprocess_writes_json_and_csv(tmp_path):
    env = dict(os.environ, CONVLSTM_TRITON_CACHE_DIR=str(tmp_path / "cache"))
    if not torch.cuda.is_available():
        env.pop("TRITON_INTERPRET", None)  # the script must set it itself
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "autotune.py"), "--dry-run", "--shape", "1,2,5,4,2,3,3",
         "--shape", "1,2,6,2,3,3", "--dtypes", "fp32", "--modes", "fwd,train",
         "--variants", "hoisted,fused_input", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "autotune-dry-run.json").read_text())
    assert report["dry_run"] is True and report["machine"]["dry_run"] is True
    assert [(r["shape"], r["mode"], r["variant"]) for r in report["runs"]] == [
        (shape, mode, variant) for shape in ("B1_T2_5x4_C2_F3_k3", "B1_T2_6_C2_F3_k3")
        for mode in ("fwd", "train") for variant in ("hoisted", "fused_input")]
    assert all(r["error"] is None for r in report["runs"])
    assert all(e["source"] == "default" for e in report["events"])
    assert report["cache"]["tuned"] == 0 and report["cache"]["disk_hits"] == 0
    with open(out / "autotune-dry-run.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["dry_run"] == "True" for r in rows)
    assert "DRY RUN" in proc.stdout and "tuning cache" in proc.stdout
    assert not (tmp_path / "cache").exists()  # nothing tuned, nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_gpu_needs_dry_run(capsys):
    assert autotune.main(["--shape", "1,2,5,4,2,3,3"]) == 2
    assert "CUDA GPU is needed" in capsys.readouterr().err


def test_parse_shapes():
    assert autotune.parse_shape("1,2,3,4,5,6") == (1, 2, 3, 4, 5, 6)
    for bad in ("1,2,3", "1,2,3,4,5,6,7,8,9", "1,2,x,4,5,6", "1,0,3,4,5,6"):
        with pytest.raises(Exception, match="--shape"):
            autotune.parse_shape(bad)
    args = autotune.parse_args(["--shapes", "small,mnist_l1", "--dtypes", "bf16"])
    shapes = autotune.select_shapes(args)
    assert [s["name"] for s in shapes] == ["small", "mnist_l1"]
    assert shapes[0]["batch"] == 32 and autotune.fwd_flop(shapes[1]) / 1e12 == pytest.approx(
        1.04, rel=0.01)
    assert [s["name"] for s in autotune.select_shapes(autotune.parse_args([]))] == [
        "mnist_l1", "mnist_l2", "nowcast", "small"]
    assert [s["name"] for s in autotune.select_shapes(autotune.parse_args(["--dry-run"]))] == [
        "tiny"]
    with pytest.raises(SystemExit, match="unknown shape"):
        autotune.select_shapes(autotune.parse_args(["--shapes", "nope"]))


CONFIG = {"BLOCK_M": 64, "num_warps": 4}


def fake_ms(cfg):
    """A deterministic fake timing per config."""
    return 1e-3 * (1 + zlib.crc32(json.dumps(cfg, sort_keys=True).encode()) % 997)


@pytest.fixture
def tuning_on(monkeypatch, tmp_path):
    """The real launchers tune as on a GPU: fake timings, and every config with BLOCK_M=128
    'fails to compile' so failures are reported too."""
    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(tmp_path / "cache"))
    tuning._reset_state()

    def fake_bench(run, cfg):
        run(cfg)
        if cfg.get("BLOCK_M") == 128:
            raise RuntimeError("OutOfResources: shared memory")
        return fake_ms(cfg)

    monkeypatch.setattr(tuning, "_tuning_enabled", lambda device: True)
    monkeypatch.setattr(tuning, "_benchmark", fake_bench)
    yield
    tuning._reset_state()


def test_report_of_tuned_kernels_and_cache_hits_on_second_run(tuning_on, tmp_path, capsys):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels on the CPU through the interpreter (TRITON_INTERPRET=1)")
    out = tmp_path / "out"
    # F=16 and 12x12 pixels leave several step_forward configs after pruning
    argv = ["--dry-run", "--shape", "1,2,12,12,2,16,3", "--dtypes", "fp32", "--modes", "fwd",
            "--out", str(out)]
    assert autotune.main(argv) == 0
    first = json.loads((out / "autotune-dry-run.json").read_text())
    text = capsys.readouterr().out
    tuned = first["cache"]["tuned"]
    assert tuned >= 3 and first["cache"]["disk_hits"] == 0
    assert first["cache"]["entries_before"] == 0 and first["cache"]["entries_after"] == tuned
    # the first step launch tuned (later steps of the same shape hit the in-memory choice)
    event = next(e for e in first["events"] if e["kernel"] == "step_forward")
    assert event["source"] == "tuned"
    timed = [t for t in event["trials"] if t["ms"] is not None]
    assert event["chosen"] == min(timed, key=lambda t: t["ms"])["config"]
    assert event["shape"] == "B1_T2_12x12_C2_F16_k3" and event["mode"] == "fwd"
    assert "### step_forward" in text and "**✓**" in text and "OutOfResources" in text
    with open(out / "autotune-dry-run.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if r["kernel"] == "step_forward" and r["key"] == event["key"]]
    assert len(rows) == len(event["trials"]) and [r["chosen"] for r in rows].count("True") == 1
    assert len(rows) >= 2
    failed = [r for r in rows if json.loads(r["config"]).get("BLOCK_M") == 128]
    assert failed and all(r["ms"] == "" and r["error"].startswith("RuntimeError")
                          for r in failed)
    chosen = next(r for r in rows if r["chosen"] == "True")
    assert float(chosen["tflops"]) == pytest.approx(
        event["flop"] / (float(chosen["ms"]) * 1e-3) / 1e12)

    tuning._reset_state()  # a second process
    assert autotune.main(argv) == 0
    second = json.loads((out / "autotune-dry-run.json").read_text())
    # nothing retuned; fewer lookups than entries: the forward variant chosen on disk skips the
    # other variant's kernels
    hits = second["cache"]["disk_hits"]
    assert second["cache"]["tuned"] == 0 and 1 <= hits <= tuned
    assert second["cache"]["entries_before"] == second["cache"]["entries_after"] == tuned
    assert f"{hits} found on disk (cache hits), 0 newly tuned" in capsys.readouterr().out


def test_percent_of_peak_uses_the_dtype_peak():
    event = {"kernel": "k", "key": "(1,)", "source": "tuned", "chosen": CONFIG,
             "trials": [{"config": CONFIG, "ms": 1.0, "error": None}], "flop": 2e12,
             "shape": "s", "dtype": "bf16", "mode": "fwd"}
    peaks = {"bf16": 800.0, "tf32": 400.0}
    (row,) = autotune.trial_rows(event, peaks)
    assert row["tflops"] == pytest.approx(2000.0) and row["pct_peak"] == pytest.approx(250.0)
    (row,) = autotune.trial_rows(dict(event, dtype="fp32"), peaks)
    assert row["peak"] == "tf32" and row["pct_peak"] == pytest.approx(500.0)
    (row,) = autotune.trial_rows(dict(event, flop=None), peaks)
    assert row["tflops"] is None and row["pct_peak"] is None
