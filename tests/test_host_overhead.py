"""Launch plans (convlstm_triton/launch_plans.py) and bench/host_overhead.py.

A plan replays a recorded launch through the compiled kernel's launcher with the moving pointers
replaced: what it replays must be exactly what Triton's JIT would launch. That is checked
end to end by ``host_overhead.py --check`` in a process without the interpreter (Triton's driver
faked: every replay is launched through the JIT path too and compared), and unit by unit here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlstm_triton import launch_plans
from convlstm_triton.launch_plans import Frames, Planned, Record, StepLaunch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "host_overhead.py"


def run_script(*args, code=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, str(SCRIPT), *args] if code is None else [
        sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def test_every_replay_is_the_jit_launch():
    """Forward and training, bf16 and fp32, the odd shape (slices at every alignment) and
    small, two-step time chunks: every plan replay calls the kernel Triton's JIT compiled for
    that launch, with the same grid and arguments."""
    done = run_script("--check", "--shapes", "odd,small", "--dtypes", "bf16,fp32")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": 0 differences" in done.stdout
    words = done.stdout.strip().splitlines()[-1].split()
    replays, direct = int(words[0]), int(words[4])
    # step kernels and chunk kernels replayed, and first launches of the second call direct
    assert replays > 100 and direct > 20


def test_the_check_sees_a_wrong_pointer():
    """A replay whose pointers are off (frames 16 bytes too far: same alignment, so the same
    compiled kernel) is reported."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'bench')!r})
import host_overhead
from convlstm_triton import launch_plans
init = launch_plans.Frames.__init__
def shifted(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.ptr0 += 16
launch_plans.Frames.__init__ = shifted
with host_overhead.fake_gpu():
    replays, direct, problems = host_overhead.check(["odd"], ["fp32"], ["fwd"])
print(replays, len(problems))
"""
    done = run_script(code=code)
    assert done.returncode == 0, done.stdout + done.stderr
    replays, problems = map(int, done.stdout.split()[-2:])
    assert replays > 0 and problems == replays


def test_timing_report_runs():
    done = run_script("--shapes", "odd", "--modes", "fwd,train", "--calls", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| odd | bf16 |")]
    assert len(rows) == 4, done.stdout  # forward and training, in both tables
    assert "fixed µs per call" in done.stdout


# ---------------------------------------------------------------------------------------------
# StepLaunch on a fake kernel: what takes the JIT path instead of a replay


class FakeDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


class FakeCompiled:
    function = 0
    packed_metadata = ()

    def __init__(self):
        self.runs = []

    def launch_metadata(self, *args):
        return None

    def run(self, g0, g1, g2, stream, function, metadata, launch_metadata, enter, leave, *args):
        self.runs.append(((g0, g1, g2), args))


class FakeKernel:
    arg_names = ["src_ptr", "stride_src", "out_ptr", "BLOCK"]


@pytest.fixture
def fake_driver(monkeypatch):
    monkeypatch.setattr(launch_plans, "driver", type("D", (), {"active": FakeDriver()})())


def make_plan(src, out):
    compiled = FakeCompiled()
    jit = []

    def jit_launch(src_view, out_view):
        jit.append((src_view, out_view))
        return Record(FakeKernel, (4, 2), {"src_ptr": src_view, "stride_src":
                                           src_view.stride(0), "out_ptr": out_view,
                                           "BLOCK": 16}, {"num_warps": 4}, compiled)

    record = jit_launch(src[:, 0], out[:, 0])
    jit.clear()
    return StepLaunch(record, ("src_ptr", "out_ptr"), jit_launch), compiled, jit


def test_replay_moves_only_the_slots(fake_driver):
    src, out = torch.zeros(3, 5, 8), torch.zeros(3, 5, 8)  # 32-byte steps: always aligned
    plan, compiled, jit = make_plan(src, out)
    for s in range(1, 5):
        record = plan((Frames(src), s), (Frames(out), s))
        assert record is plan.record
    assert jit == [] and plan.replays == 4
    for s, (grid, args) in zip(range(1, 5), compiled.runs):
        assert grid == (4, 2, 1)
        assert args == (src[:, s].data_ptr(), src.stride(0), out[:, s].data_ptr(), 16)


def test_a_new_alignment_or_sample_stride_takes_the_jit_path(fake_driver):
    src = torch.zeros(3, 5, 3)  # 12-byte steps: slices at 0, 12, 24, 36... bytes
    out = torch.zeros(3, 5, 8)
    plan, compiled, jit = make_plan(src, out)
    plan((Frames(src), 1), (Frames(out), 1))  # misaligned: JIT (compiles that variant)
    assert len(jit) == 1 and plan.replays == 0
    plan((Frames(src), 4), (Frames(out), 4))  # 48 bytes: aligned again, replayed
    assert len(jit) == 1 and plan.replays == 1
    other = torch.zeros(3, 6, 8)  # another sample stride: its integer argument differs
    plan((Frames(src), 4), (Frames(other), 2))
    assert len(jit) == 2 and plan.replays == 1


def test_planned_records_the_first_launch_per_key(fake_driver):
    src, out = torch.zeros(2, 4, 8), torch.zeros(2, 4, 8)
    launches = []

    def jit_launch(src_view, out_view):
        launches.append(src_view.data_ptr())
        return Record(FakeKernel, (1,), {"src_ptr": src_view, "stride_src": src_view.stride(0),
                                         "out_ptr": out_view, "BLOCK": 16}, {}, FakeCompiled())

    planned = Planned(jit_launch, ("src_ptr", "out_ptr"))
    for key in ("a", "a", "b", "a"):
        planned(key, (Frames(src), 1), (Frames(out), 1))
    assert len(launches) == 2  # one JIT launch per key, the rest replayed


def test_without_fast_launch_every_launch_is_a_jit_launch(fake_driver, monkeypatch):
    monkeypatch.setenv("CONVLSTM_TRITON_FAST_LAUNCH", "0")
    src, out = torch.zeros(3, 5, 8), torch.zeros(3, 5, 8)
    plan, compiled, jit = make_plan(src, out)
    plan((Frames(src), 2), (Frames(out), 2))
    assert len(jit) == 1 and compiled.runs == []


# ---------------------------------------------------------------------------------------------
# Plans across calls: a later call binds the skeleton an earlier call recorded


def planned_call(src, out, weight, shared, launches, binder=None):
    """One "call": a Planned of this call's jit_launch and binder over ``shared``."""

    def jit_launch(src_view, out_view):
        launches.append(src_view.data_ptr())
        return Record(FakeKernel2, (1,), {"src_ptr": src_view, "stride_src": src_view.stride(0),
                                          "w_ptr": weight, "out_ptr": out_view, "BLOCK": 16},
                      {}, COMPILED)

    bind = binder or (lambda skeleton: {"w_ptr": weight})
    return Planned(jit_launch, ("src_ptr", "out_ptr"), bind=bind, shared=shared)


class FakeKernel2:
    arg_names = ["src_ptr", "stride_src", "w_ptr", "out_ptr", "BLOCK"]


COMPILED = FakeCompiled()


def test_a_later_call_replays_with_its_own_tensors(fake_driver):
    shared, launches = {}, []
    COMPILED.runs.clear()
    src, out, weight = torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.zeros(8)
    planned_call(src, out, weight, shared, launches)("k", (Frames(src), 1), (Frames(out), 1))
    assert len(launches) == 1 and "k" in shared
    src2, out2, weight2 = torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.zeros(8)
    planned = planned_call(src2, out2, weight2, shared, launches)
    for s in range(4):
        record = planned("k", (Frames(src2), s), (Frames(out2), s))
    assert len(launches) == 1, "the later call's first launch was not a replay"
    assert record.args["w_ptr"] is weight2  # the call's Record holds the call's tensors
    for s, (_, args) in zip(range(4), COMPILED.runs[-4:]):
        assert args == (src2[:, s].data_ptr(), src2.stride(0), weight2.data_ptr(),
                        out2[:, s].data_ptr(), 16)


def test_a_later_call_takes_the_jit_path_where_the_skeleton_does_not_fit(fake_driver):
    shared, launches = {}, []
    src, out, weight = torch.zeros(2, 4, 8), torch.zeros(2, 4, 8), torch.zeros(8)
    planned_call(src, out, weight, shared, launches)("k", (Frames(src), 1), (Frames(out), 1))
    # a fixed tensor aligned otherwise: another compiled kernel
    unaligned = torch.zeros(9)[1:]
    planned_call(src, out, unaligned, shared, launches)("k", (Frames(src), 1), (Frames(out), 1))
    assert len(launches) == 2
    # a binder that misses a fixed argument is not trusted
    planned_call(src, out, weight, shared, launches, binder=lambda skeleton: {})(
        "k", (Frames(src), 1), (Frames(out), 1))
    assert len(launches) == 3


def test_problem_plans_are_kept_per_key_and_bounded(monkeypatch):
    launch_plans.clear_plans()
    monkeypatch.setattr(launch_plans, "PROBLEMS_KEPT", 3)
    first = launch_plans.problem_plans("a")
    assert launch_plans.problem_plans("a") is first
    for key in "bcd":
        launch_plans.problem_plans(key)
    assert launch_plans.problem_plans("a") is not first  # the oldest was dropped


@pytest.mark.parametrize("F,block_f", [(32, 32), (64, 32), (48, 32), (16, 64)])
def test_gate_interleave_layout(F, block_f):
    """Column tile j holds gates i, f, c, o of channels [j * block_f, (j + 1) * block_f), zero
    past F: the copy-free layout where F divides (one tile: the weight itself) is that too."""
    from convlstm_triton.launchers import gate_interleaved

    w = torch.randn(7, 4 * F)
    out = gate_interleaved(w, block_f)
    tiles = -(-F // block_f)
    assert out.shape == (7, 4 * tiles * block_f)
    for j in range(tiles):
        for g in range(4):
            for f in range(block_f):
                col = j * 4 * block_f + g * block_f + f
                channel = j * block_f + f
                want = w[:, g * F + channel] if channel < F else torch.zeros(7)
                assert torch.equal(out[:, col], want), (j, g, f)


def test_caches_keyed_by_problem_size_are_capped(monkeypatch):
    """Distinct sizes must not grow the launchers' caches without bound (a long-running
    service sees many): the pruned-config cache and the direct-launch table keep at most
    their caps, dropping the oldest first."""
    from convlstm_triton.kernels import step_forward

    from convlstm_triton import launchers

    monkeypatch.setattr(launchers, "PRUNED_KEPT", 50)
    monkeypatch.setattr(launchers, "_pruned", {})
    for m in range(1, 300):
        launchers._prune(step_forward.CONFIGS, BLOCK_M=m, BLOCK_F=m, BLOCK_K=m)
        assert len(launchers._pruned) <= 50
    newest = launchers._prune(step_forward.CONFIGS, BLOCK_M=299, BLOCK_F=299, BLOCK_K=299)
    assert newest == launchers._prune(step_forward.CONFIGS, BLOCK_M=299, BLOCK_F=299,
                                      BLOCK_K=299)  # still cached, and the same answer
    cache = {i: str(i) for i in range(10)}
    launch_plans.drop_oldest(cache, 4)
    assert list(cache) == [6, 7, 8, 9]
    assert launch_plans.LAUNCHED_KEPT > 0
