"""The launch path on an AMD GPU (a ROCm build of torch), without one: launch plans and direct
launches call the compiled kernel's ``run`` as ``JITFunction.run`` does, and on the HIP backend
that is Triton's ``HIPLauncher`` (same call as the CUDA launcher's: grid, stream, function,
packed metadata, launch metadata, hooks, the arguments). Checked with the kernels really
compiled for gfx942 and launched through the real ``HIPLauncher`` down to the HIP runtime's
launch, which ``bench/host_overhead.py``'s ``fake_hip_gpu`` stands in for (it also makes the
library see the AMD platform: 64 KiB LDS, no TMA). Where compiled kernels lack that interface
(another Triton), every launch takes Triton's JIT, said once per process.

The compiles run in a subprocess without TRITON_INTERPRET (this process runs the interpreter, see
conftest.py); skipped where this Triton has no HIP backend.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from convlstm_triton import launch_plans
from convlstm_triton.launch_plans import Record, StepLaunch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
from perfmodel.compiling import hip_unavailable  # noqa: E402

needs_hip_backend = pytest.mark.skipif(hip_unavailable("gfx942") is not None,
                                       reason=f"no HIP backend: {hip_unavailable('gfx942')}")


def run_python(*args, code=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, *(["-c", code] if code else args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=900)


@needs_hip_backend
def test_every_replay_is_the_jit_launch_through_the_hip_launcher():
    """Forward and training, bf16 and fp32, slices at every alignment: every plan replay and
    direct launch reaches HIPLauncher with what Triton's JIT gives it for the same launch, and
    nothing falls back (no warning)."""
    done = run_python(str(BENCH / "host_overhead.py"), "--check", "--hip", "gfx942",
                      "--shapes", "odd", "--dtypes", "bf16,fp32", "--modes", "fwd,train")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ": 0 differences" in done.stdout
    words = done.stdout.strip().splitlines()[-1].split()
    replays, direct = int(words[0]), int(words[4])
    assert replays > 30 and direct > 30, done.stdout
    assert "launch interface" not in done.stderr


FALLBACK = f"""
import sys, warnings
sys.path.insert(0, {str(BENCH)!r})
import host_overhead
from convlstm_triton import launch_plans

runs = []
real_run = launch_plans._run
launch_plans._run = lambda *args: (runs.append(1), real_run(*args))
# a Triton whose compiled kernels lack a part of the interface plans replay through
launch_plans.LAUNCH_INTERFACE += ("renamed_by_a_later_triton",)
with host_overhead.fake_hip_gpu("gfx942"), warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    log = host_overhead.FakeCompiledKernel.log = []
    for mode in ("fwd", "train"):
        call, restore = host_overhead.problem(host_overhead.SHAPES["odd"], "bf16", mode,
                                              pixels=(5, 3), chunk=2)
        try:
            call()
            call()
        finally:
            restore()
said = [str(w.message) for w in caught if "launch interface" in str(w.message)]
print("RESULT", len(runs), len(log), len(said))
print(said[0] if said else "")
"""


@needs_hip_backend
def test_without_the_launch_interface_every_launch_takes_the_jit_said_once():
    """Compiled kernels without the interface: no replay and no direct launch (launch_plans'
    ``_run`` never called), every launch through Triton's JIT and still HIPLauncher, and one
    RuntimeWarning in the process however many kernels and calls."""
    done = run_python(code=FALLBACK)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    runs, launched, said = map(int, line.split()[1:])
    assert runs == 0 and launched > 50 and said == 1, done.stdout
    assert "renamed_by_a_later_triton" in done.stdout


# ---------------------------------------------------------------------------------------------
# the fallback on a fake compiled kernel (no compile)


class NoInterface:
    """What a Triton whose compiled kernels lack ``packed_metadata`` would return."""

    function = 0

    def run(self, *args):
        raise AssertionError("a kernel without the interface must not be replayed")

    def launch_metadata(self, *args):
        return None


class OneArgKernel:
    arg_names = ["src"]


def test_a_plan_without_the_interface_launches_through_the_jit_and_warns_once(monkeypatch):
    monkeypatch.setattr(launch_plans, "_warned_no_launcher", [])
    src = torch.zeros(2, 4, 8)
    jit_calls = []

    def jit_launch(src_view):
        jit_calls.append(src_view.data_ptr())
        return Record(OneArgKernel, (1,), {"src": src_view}, {}, NoInterface())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plans = [StepLaunch(jit_launch(src[:, 0]), ("src",), jit_launch) for _ in range(3)]
        frames = launch_plans.Frames(src)
        for plan in plans:
            assert not plan.fast and plan.skeleton is None
            plan((frames, 1))
    said = [w for w in caught if "launch interface" in str(w.message)]
    assert len(said) == 1 and said[0].category is RuntimeWarning
    assert "packed_metadata" in str(said[0].message)
    assert jit_calls[-1] == src[:, 1].data_ptr() and len(jit_calls) == 6


def test_the_interpreter_falls_back_silently(monkeypatch):
    """The interpreter's launches return nothing compiled: no plan replays, no warning."""
    monkeypatch.setattr(launch_plans, "_warned_no_launcher", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert launch_plans._launcher_of(None) is None
    assert not launch_plans._warned_no_launcher
