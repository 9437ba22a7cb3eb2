"""bench/gpu_check.sh on a CPU: its syntax (bash -n, shellcheck where installed), and its
DRY_RUN mode end to end in a subprocess (the step order, the summary written as steps end,
per-step timeouts that dump Python stacks, the archive packed by the EXIT trap even when the
script is interrupted)."""

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
KEPT = {"all-results.tar.gz", "summary.txt", "smoke.log", "anchors.md", "compare.md",
        "tests-bf16.log", "tests-fp32.log", "tests-fp16.log"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and GNU timeout")


def env_for(out, **knobs):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(DRY_RUN="1", OUT=str(out), PYTHON=sys.executable, TEST_WORKERS="1")
    env.update({k: str(v) for k, v in knobs.items()})
    return env


def summary_lines(out):
    return (out / "summary.txt").read_text().splitlines()


def archive_members(out):
    with tarfile.open(out / "all-results.tar.gz") as tar:
        return {Path(n).name for n in tar.getnames() if n not in (".", "./")}


def archived_text(out, name):
    with tarfile.open(out / "all-results.tar.gz") as tar:
        return tar.extractfile(f"./{name}").read().decode()


def test_bash_syntax():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_end_to_end(tmp_path):
    """Every step in value order, each recorded; the archive holds every output and only the
    summary, smoke and test logs and the tables stay beside it."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT)], env=env_for(out, COMPARE_DTYPES="bf16"),
                          capture_output=True, text=True, timeout=400)
    lines = summary_lines(out)
    assert proc.returncode == 0, "\n".join(lines) + proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [line.split(":")[0] for line in lines if not line.startswith(" ")]
    assert steps == ["install", "smoke bf16", "smoke fp16", "smoke fp32", "smoke", "anchors",
                     "tests bf16", "tests fp32", "compare bf16 mnist_l2", "tests fp16"]
    status = {line.split(":")[0]: line for line in lines if not line.startswith(" ")}
    assert "skipped" in status["smoke bf16"]  # the interpreter's bf16 dots are wrong
    assert all(": ok" in line for step, line in status.items() if step != "smoke bf16"), lines
    assert any(line.startswith("  tests bf16: ") and "tests collected" in line for line in lines)
    assert {p.name for p in out.iterdir()} == KEPT
    members = archive_members(out)
    assert {"machine.txt", "install.log", "smoke.py", "compare.csv", "compare-bf16-mnist_l2.md",
            "compare-bf16-mnist_l2.log"} | (KEPT - {"all-results.tar.gz"}) <= members
    markdown = (out / "compare.md").read_text()
    assert markdown.startswith("## bf16 mnist_l2") and "| eager_cat | triton_fused |" in markdown
    assert "tests collected" in (out / "tests-fp32.log").read_text()
    assert "| Liger ReLU² fwd" in (out / "anchors.md").read_text()  # forecast, no timing


def test_step_timeout_dumps_stacks_and_budget_skips(tmp_path):
    """A step past its limit gets SIGUSR1: its Python stacks are in its log, it is recorded as
    TIMED OUT, and the steps that no longer fit the budget are SKIPPED."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT)],
                          env=env_for(out, SMOKE_S=3, MIN_STEP_S=2, BUDGET_S=14, PACK=0,
                                      BUDGET_FROM="smoke"),  # however long the install took
                          capture_output=True, text=True, timeout=200)
    lines = summary_lines(out)
    assert proc.returncode == 1
    assert any(line.startswith("smoke: TIMED OUT (exit 1") for line in lines), lines  # 124, 137
    assert "(most recent call first)" in (out / "smoke.log").read_text()
    assert [line for line in lines if "SKIPPED" in line][-1].startswith("tests fp16: SKIPPED")
    assert not (out / "all-results.tar.gz").exists()  # PACK=0


def test_interrupted_script_still_packs(tmp_path):
    """SIGTERM to the script: the running step is stopped with its stacks dumped, the summary
    says so, and the EXIT trap packs what was written."""
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT)], env=env_for(out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        smoke_log = out / "smoke.log"
        while time.time() < deadline and not (smoke_log.exists() and smoke_log.stat().st_size):
            assert proc.poll() is None, "the script ended before its smoke step"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = summary_lines(out)
    assert any(line.startswith("interrupted by SIGTERM") for line in lines), lines
    assert {p.name for p in out.iterdir()} <= KEPT
    members = archive_members(out)
    assert {"summary.txt", "smoke.log", "machine.txt"} <= members
    logs = [archived_text(out, m) for m in members if m.endswith(".log")]
    assert any("(most recent call first)" in text for text in logs)
