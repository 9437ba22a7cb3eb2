"""bench/gpu_check.sh on a CPU: its syntax (bash -n, shellcheck where installed), and its
DRY_RUN mode end to end in a subprocess (the step order, the summary written as steps end,
per-step timeouts that dump Python stacks, the archive packed by the EXIT trap even when the
script is interrupted), and its NVIDIA / AMD detection (fake SMI tools on PATH, a torch that
says it is a ROCm build)."""

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


# ---------------------------------------------------------------------------------------------
# NVIDIA or AMD: the machine step alone (a zero budget skips every later step)

SMI_TOOLS = ("nvidia-smi", "rocm-smi", "amd-smi")


def path_with_fake_smi(tmp_path, fakes):
    """PATH: a directory of fake SMI tools (each prints "FAKE <name>"), then this PATH without
    the directories that hold a real one (skips where bash or its tools would go with them)."""
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir()
    for name in fakes:
        tool = fake_bin / name
        tool.write_text(f"#!/bin/sh\necho FAKE {name} \"$@\"\n")
        tool.chmod(0o755)
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any((Path(d) / name).exists() for name in SMI_TOOLS)]
    path = os.pathsep.join([str(fake_bin), *kept])
    missing = [t for t in ("bash", "timeout", "tail", "mktemp")
               if shutil.which(t, path=path) is None]
    if missing:
        pytest.skip(f"{missing} share a directory with a real SMI tool")
    return path


# a torch that reports a ROCm build (as torch.version.hip does there), in every Python process
# of the script: a sitecustomize behind the script's own, which runs it
ROCM_TORCH = "import torch\ntorch.version.hip = '6.4.43482'\n"


@pytest.mark.parametrize("fakes, rocm_torch, vendor", [
    pytest.param(("rocm-smi",), False, "amd", id="cpu_torch_rocm_smi"),
    pytest.param(("amd-smi",), False, "amd", id="cpu_torch_amd_smi"),
    pytest.param(("nvidia-smi",), False, "nvidia", id="cpu_torch_nvidia_smi"),
    # torch's build wins over the tools on PATH
    pytest.param(("nvidia-smi", "rocm-smi"), True, "amd", id="rocm_torch"),
])
def test_vendor_detection_and_machine_report(tmp_path, fakes, rocm_torch, vendor):
    """The vendor (torch's build, else the SMI tool on PATH) picks the SMI tool of
    machine.txt, and a ROCm torch is reported with its HIP and MIOpen versions, not CUDA's."""
    out = tmp_path / "out"
    knobs = dict(BUDGET_S=0, PACK=0, PATH=path_with_fake_smi(tmp_path, fakes))
    if rocm_torch:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(ROCM_TORCH)
        knobs["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run(["bash", str(SCRIPT)], env=env_for(out, **knobs), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    machine = (out / "machine.txt").read_text()
    assert f"GPU_VENDOR={vendor}\n" in machine, machine
    if vendor == "amd":
        tool = "rocm-smi" if "rocm-smi" in fakes else "amd-smi"
        assert f"FAKE {tool}" in machine and "FAKE nvidia-smi" not in machine, machine
    else:
        assert "FAKE nvidia-smi" in machine and "FAKE rocm-smi" not in machine, machine
    versions = next(line for line in machine.splitlines() if line.startswith("torch "))
    if rocm_torch:
        assert "| HIP 6.4.43482 | MIOpen" in versions and "CUDA" not in versions, versions
    else:
        assert "| CUDA " in versions and "HIP" not in versions, versions
    lines = summary_lines(out)
    assert any(line.startswith("install: ok") for line in lines), lines
    assert any(line.startswith("smoke: SKIPPED") for line in lines), lines  # budget 0
