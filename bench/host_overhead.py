"""Host cost of the Triton path, measured on a CPU: Python per kernel launch and per call.

    python bench/host_overhead.py --shapes small,mnist_l2 --modes fwd,train
    python bench/host_overhead.py --check          # launch plans == Triton's JIT, every launch

The time loop launches a kernel per step (and more in backward); on a GPU each launch's Python
runs while the GPU works, and a problem whose kernels take less than that is host-bound. This
script measures that Python exactly, without a GPU: Triton's driver is replaced by a fake active
driver (device 0, stream 0, target sm_90) and compiling by a no-op compiled kernel, so every
launch runs the library's launcher and Triton's own launch path (``JITFunction.run``: binding,
specialization, cache lookup) or a launch plan's replay (``convlstm_triton.launch_plans``), up to
the call into the compiled kernel's launcher, which does nothing. Not counted: that launcher's
C code and ``cuLaunchKernel`` (a few µs per launch on a real GPU), and the CUDA launches of the
torch ops around the kernels (copies, fills, sums).

Per shape and mode (forward without autograd; training = forward + backward), over repeated
calls after a warm-up, the best of 15 repeats (the garbage collector off, as timeit does): the
wall time of one ``conv_lstm`` call; the time in launch paths (launcher functions and launch
plans, everything down to the compiled kernel's launcher) per launch; Triton's share
(``JITFunction.run`` or the compiled kernel's ``run``); the time outside launches; the plan
replays; and the torch ops per call, in and outside the launch paths (top-level aten ops counted
by torch's profiler in a pass of its own: each is a kernel launch or an allocation of some µs of
host time on a GPU). Then the same problem at 2T steps: µs per call = fixed + T x per step gives
the host time per time step (per step launch: divided by the launches a step adds) and the fixed
cost per call. On this CPU the torch ops also do their work, on real-sized weights and partial
sums, which a GPU does asynchronously: the time outside launches and the fixed cost overstate
what a GPU's host pays by that work.

The tensors are CPU tensors with the shape's batch, steps, channels, kernel size and time chunk
(so the launches are exactly the shape's) but 2x2 pixels: torch's CPU work on real-sized data
(copies, zero fills) would otherwise be timed, which a GPU does asynchronously.

``--check``: every launch that bypasses Triton's JIT (a plan replay, or a first launch whose
signature the JIT compiled before, ``launch_plans.launch``) is also launched through the JIT
(a replay through the launcher too), and the two must call the same compiled kernel (the same
specialization: Triton compiles one per alignment pattern) with the same grid and the same
arguments (tensors as their data pointers). Time chunks of two steps (and a shorter last one),
so that the chunk kernels' plans replay too; the ``odd`` shape's per-step slices are not
16-byte aligned, so alignment changes between steps. Exit status 1 on any difference.
Run without TRITON_INTERPRET (the kernels must be Triton's JIT functions).
"""

import argparse
import collections
import contextlib
import dataclasses
import gc
import os
import sys
import time
import types
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the host path of compiled kernels is what is timed")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.compiler  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convlstm import DTYPES, SHAPES, Shape  # noqa: E402

# a tiny shape with odd sizes: per-step slices at every alignment (--check, the CI smoke test)
SHAPES = dict(SHAPES, odd=Shape("odd", 3, 5, (5, 3), 3, 5, 3))


class FakeCompiledKernel:
    """What Triton's compile returns, minus the GPU: ``run`` records its arguments when asked."""

    function = 0
    packed_metadata = ()
    log = None  # a list: every run appends (kernel, grid, args)

    def __init__(self, name):
        self.name = name

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, grid0, grid1, grid2, stream, function, packed_metadata, launch_metadata,
            enter_hook, exit_hook, *args):
        if FakeCompiledKernel.log is not None:
            FakeCompiledKernel.log.append((self, (grid0, grid1, grid2), args))


class FakeDriver:
    """Triton's active driver as the JIT launch path uses it."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def fake_gpu():
    """Triton launches run their whole Python path on CPU tensors and launch nothing."""
    from convlstm_triton import functional

    def compile(src, target=None, options=None, **kwargs):
        return FakeCompiledKernel(src.fn.__name__)

    from convlstm_triton import launch_plans

    saved = [(triton.compiler, "compile", triton.compiler.compile),
             (functional, "triton_interpreter_enabled", functional.triton_interpreter_enabled),
             (driver, "_active", driver._active),
             (launch_plans, "DIRECT_DEVICE_TYPES", launch_plans.DIRECT_DEVICE_TYPES)]
    driver.set_active(FakeDriver())
    launch_plans.DIRECT_DEVICE_TYPES = ("cuda", "cpu")
    triton.compiler.compile = compile
    functional.triton_interpreter_enabled = lambda: True  # CPU tensors take the Triton path
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class FakeFunction:
    """The kernel handle a fake HIP ``load_binary`` returns: one per loaded kernel."""

    def __init__(self, name):
        self.name = name


class FakeHIPUtils:
    """Triton's HIP driver utilities (its C module, built against the HIP runtime) as the
    compiled kernels and the HIP launcher use them: loading gives a FakeFunction, launching
    logs (function, grid, kernel arguments) into ``FakeCompiledKernel.log`` where one is open."""

    def __init__(self, arch):
        self.arch = arch

    def load_binary(self, name, kernel, shared, device):
        return 0, FakeFunction(name), 0, 0, 1024  # module, function, regs, spills, max threads

    def unload_module(self, module):
        pass

    def get_device_properties(self, device):
        from convlstm_triton.platform import amd_platform

        return {"max_shared_mem": amd_platform(self.arch).shared_memory, "arch": self.arch,
                "warpSize": 64, "multiprocessor_count": 304, "cooperativeLaunch": True}

    def build_signature_metadata(self, signature):
        return tuple(signature)

    def launch(self, *args):
        # Triton 3.9: (cooperative, gridX, gridY, gridZ, stream, function, global scratch,
        # profile scratch, metadata, launch metadata, enter hook, exit hook, warp size,
        # annotations, signature, the kernel's arguments as one tuple); Triton 3.6's compiled
        # launcher module: (cooperative, gridX, gridY, gridZ, stream, function, profile
        # scratch, metadata, launch metadata, enter hook, exit hook, *the kernel's arguments)
        kernel_args = args[15] if len(args) == 16 and isinstance(args[15], tuple) else args[11:]
        if FakeCompiledKernel.log is not None:
            FakeCompiledKernel.log.append((args[5], tuple(args[1:4]), tuple(kernel_args)))


@contextlib.contextmanager
def fake_hip_gpu(arch="gfx942"):
    """As ``fake_gpu``, on an AMD GPU of ``arch``: the kernels really compile for
    ``GPUTarget("hip", arch, 64)`` (Triton's HIP backend runs on the CPU), the compiled kernels
    launch through the HIP backend's own launcher class (``HIPLauncher``) down to the HIP
    runtime's launch, which ``FakeHIPUtils`` stands in for, and the library sees the AMD
    platform (``platform.amd_platform``: its LDS, no TMA, its fp32 precision)."""
    from recording import simulated_platform
    from triton.backends.amd import driver as amd_driver

    from convlstm_triton import functional, launch_plans
    from convlstm_triton.platform import amd_platform

    class FakeHIPDriver(amd_driver.HIPDriver):
        def __init__(self):  # not HIPDriver's: it builds its C utilities against the runtime
            self.utils = utils
            self.launcher_cls = amd_driver.HIPLauncher

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("hip", arch, 64)

    saved = [(functional, "triton_interpreter_enabled", functional.triton_interpreter_enabled),
             (driver, "_active", driver._active),
             (launch_plans, "DIRECT_DEVICE_TYPES", launch_plans.DIRECT_DEVICE_TYPES)]
    utils = FakeHIPUtils(arch)
    # What the HIP launcher takes from the C module that HIPUtils builds (Triton 3.9: the
    # argument annotations; its launch is utils.launch), or, Triton 3.6, the C launcher it
    # compiles per kernel (whose launch is the fake's)
    stand_ins = {"PyKernelArg": collections.namedtuple("PyKernelArg", "nested_tuple type"),
                 "ARG_CONSTEXPR": "constexpr", "ARG_KERNEL": "kernel", "ARG_TUPLE": "tuple",
                 "compile_module_from_src":
                     lambda *args, **kwargs: types.SimpleNamespace(launch=utils.launch),
                 # (3.6 writes the runtime's path into the launcher's C source, never built here)
                 "_get_path_to_hip_runtime_dylib": lambda: "libamdhip64.so"}
    for name, value in stand_ins.items():
        if hasattr(amd_driver, name):
            saved.append((amd_driver, name, getattr(amd_driver, name)))
            setattr(amd_driver, name, value)
    driver.set_active(FakeHIPDriver())
    launch_plans.DIRECT_DEVICE_TYPES = ("cuda", "cpu")
    functional.triton_interpreter_enabled = lambda: True  # CPU tensors take the Triton path
    try:
        with simulated_platform(amd_platform(arch)):
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class Timers:
    """Wall time of the launch paths: per entry point (a launcher function, or the step plans'
    ``Planned.__call__``), the outermost one only; within them, Triton's share; and the plan
    replays on their own."""

    def __init__(self):
        self.library, self.launches = {}, {}
        self.triton = 0.0
        self.replay, self.replays = 0.0, 0
        self.depth = 0


def _wrap(wrapped, owner, name, timed_call_of):
    original = getattr(owner, name)
    wrapped.append((owner, name, original))
    setattr(owner, name, timed_call_of(original))


@contextlib.contextmanager
def timed(timers):
    from convlstm_triton import launch_plans, launchers

    wrapped = []

    def entry(label):
        def timed_call_of(original):
            def timed_call(*args, **kwargs):
                if timers.depth:
                    return original(*args, **kwargs)
                timers.depth += 1
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    timers.depth -= 1
                    timers.library[label] = (timers.library.get(label, 0.0)
                                             + time.perf_counter() - start)
                    timers.launches[label] = timers.launches.get(label, 0) + 1
            return timed_call
        return timed_call_of

    def inner(add):
        def timed_call_of(original):
            def timed_call(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    add(time.perf_counter() - start)
            return timed_call
        return timed_call_of

    def add_triton(seconds):
        timers.triton += seconds

    def add_replay(seconds):
        timers.replay += seconds
        timers.replays += 1

    for name in ENTRY_POINTS:
        _wrap(wrapped, launchers, name, entry(name))
    _wrap(wrapped, launch_plans.Planned, "__call__", entry("planned (step and chunk kernels)"))
    _wrap(wrapped, launch_plans.StepLaunch, "__call__", inner(add_replay))
    _wrap(wrapped, JITFunction, "run", inner(add_triton))
    _wrap(wrapped, FakeCompiledKernel, "run", inner(add_triton))
    try:
        yield
    finally:
        for owner, name, original in reversed(wrapped):
            setattr(owner, name, original)


def problem(shape, dtype_name, mode, pixels=(2, 2), chunk=None):
    """(call, restore): one conv_lstm call of the shape at ``pixels`` with its own time chunk
    (or ``chunk`` steps per time chunk)."""
    from convlstm_triton import functional, launchers

    dtype = DTYPES[dtype_name]
    B, T, C, F = shape.batch, shape.steps, shape.in_channels, shape.filters
    k = shape.kernel_size
    real_p = shape.spatial[0] * shape.spatial[1]
    chunk = chunk or launchers.time_chunk(B, T, real_p)
    small_p = pixels[0] * pixels[1]
    saved_rows = launchers.TIME_CHUNK_MIN_ROWS
    launchers.TIME_CHUNK_MIN_ROWS = B * small_p * (chunk - 1) + 1  # the real shape's chunk
    # the real shape's choice of saving or recomputing the pre-activations
    from convlstm_triton.autograd import recompute_by_default
    recompute = recompute_by_default(B, T, real_p, F, dtype.itemsize)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, *pixels, C, generator=gen).to(dtype)
    weights = [torch.randn(*k, C, 4 * F, generator=gen).to(dtype) * 0.1,
               torch.randn(*k, F, 4 * F, generator=gen).to(dtype) * 0.1,
               torch.zeros(4 * F, dtype=dtype)]
    options = dict(backend="triton", padding="same", recompute_gates=recompute)

    def call():
        if mode == "fwd":
            with torch.no_grad():
                functional.conv_lstm(x, *weights, **options)
            return
        leaves = [t.detach().requires_grad_() for t in (x, *weights)]
        seq = functional.conv_lstm(*leaves, **options)[0]
        seq.backward(torch.ones_like(seq))

    def restore():
        launchers.TIME_CHUNK_MIN_ROWS = saved_rows

    return call, restore


def torch_ops(call, calls):
    """(torch ops per call in the launch paths, outside them), from torch's profiler in a pass
    of its own (outside the timed calls): every top-level aten op (one not called by another:
    on a GPU, each is a kernel launch or an allocation of some µs of host time), inside the
    launch paths where one of them (marked by a record_function range) called it."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from convlstm_triton import launch_plans, launchers

    wrapped = []

    def marked(original):
        def call_marked(*args, **kwargs):
            with record_function(LAUNCH_MARK):
                return original(*args, **kwargs)
        return call_marked

    for name in ENTRY_POINTS:
        _wrap(wrapped, launchers, name, marked)
    _wrap(wrapped, launch_plans.Planned, "__call__", marked)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                call()
    finally:
        for owner, name, original in reversed(wrapped):
            setattr(owner, name, original)
    counts = [0, 0]  # outside, inside
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        inside, parent = False, event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                break
            inside = inside or parent.name == LAUNCH_MARK
            parent = parent.cpu_parent
        if parent is not None:  # called by another aten op: counted with it
            continue
        counts[inside] += 1
    return counts[1] / calls, counts[0] / calls


LAUNCH_MARK = "convlstm_triton.launch_path"
# the launchers' entry points (the step and chunk kernels' plans: Planned.__call__)
ENTRY_POINTS = ("input_projection", "step_forward", "step_backward", "weight_grad",
                "input_grad", "cell_forward", "cell_backward")


def measure(shape, dtype_name, mode, calls=20, repeats=15):
    """{"call_us", "launches": {kernel: (count per call, library µs, triton µs per launch)}}."""
    call, restore = problem(shape, dtype_name, mode)
    try:
        call()
        call()  # compiled (faked) and planned
        best = None
        for _ in range(repeats):
            timers = Timers()
            # as timeit: the garbage collector off while timing (a collection of another
            # repeat's garbage is not this call's host cost)
            gc.collect()
            gc.disable()
            try:
                with timed(timers):
                    start = time.perf_counter()
                    for _ in range(calls):
                        call()
                    total = time.perf_counter() - start
            finally:
                gc.enable()
            if best is None or total < best[0]:
                best = (total, timers)
        ops_inside, ops_outside = torch_ops(call, 2)
    finally:
        restore()
    total, timers = best
    launches = {label: (count / calls, timers.library[label] / count * 1e6)
                for label, count in timers.launches.items()}
    return {"call_us": total / calls * 1e6,
            "launch_us": sum(timers.library.values()) / calls * 1e6,
            "triton_us": timers.triton / calls * 1e6,
            "replay_us": timers.replay / timers.replays * 1e6 if timers.replays else None,
            "replays": timers.replays / calls,
            "ops_inside": ops_inside, "ops_outside": ops_outside,
            "launches": launches}


def check(shapes, dtypes, modes):
    """Every launch that does not go through Triton's JIT (a plan replay, or a first launch
    whose signature the JIT compiled before) against the JIT's launch of the same arguments:
    (launches checked, the differences)."""
    from convlstm_triton import launch_plans

    problems = []
    log = FakeCompiledKernel.log = []  # every compiled kernel run, in order
    replay_call, launch, run = (launch_plans.StepLaunch.__call__, launch_plans.launch,
                                launch_plans._run)
    counts = {"replays": 0, "direct": 0, "runs": 0}

    def normalized(entry, record, owned):
        # the buffers a launcher allocates at every launch (a replay writes the plan's own)
        # compare by name, as do dummy pointers to them
        tokens = {record.args[name].data_ptr(): name for name in owned}
        kernel, grid, args = entry
        pointers = (a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
        return kernel, grid, tuple(tokens.get(a, a) if isinstance(a, int) else a
                                   for a in pointers)

    def compare(ours, ours_record, jit, jit_record, owned):
        a, b = normalized(ours, ours_record, owned), normalized(jit, jit_record, owned)
        if a != b:
            diff = [i for i, (u, v) in enumerate(zip(a[2], b[2])) if u != v]
            problems.append(f"{jit[0].name}: kernel {'same' if a[0] is b[0] else 'DIFFERENT'},"
                            f" grid {a[1]} vs {b[1]}, arguments differ at {diff}")

    def counted_run(*args):
        counts["runs"] += 1
        return run(*args)

    def checked_launch(kernel, grid, args, **kwargs):
        runs = counts["runs"]
        record = launch(kernel, grid, args, **kwargs)
        if counts["runs"] == runs:  # it went through Triton's JIT
            return record
        counts["direct"] += 1
        ours = log[-1]
        kernel[grid](*args, **kwargs)  # Triton's own launch of the same arguments
        compare(ours, record, log[-1], record, ())
        return record

    def checked_replay(self, *frames):
        replays = self.replays
        record = replay_call(self, *frames)
        if self.replays == replays:  # the plan took the launcher's path (a new alignment)
            return record
        counts["replays"] += 1
        replayed = log[-1]
        jit_record = self.jit_launch(*launch_plans.views(frames))
        compare(replayed, record, log[-1], jit_record, self.owned)
        return record

    launch_plans.StepLaunch.__call__ = checked_replay
    launch_plans.launch, launch_plans._run = checked_launch, counted_run
    try:
        for name in shapes:
            for dtype in dtypes:
                for mode in modes:
                    # two-step time chunks and a shorter last one: the chunk kernels'
                    # plans replay too
                    call, restore = problem(SHAPES[name], dtype, mode, pixels=(5, 3), chunk=2)
                    try:
                        call()
                        call()
                    finally:
                        restore()
    finally:
        launch_plans.StepLaunch.__call__ = replay_call
        launch_plans.launch, launch_plans._run = launch, run
        FakeCompiledKernel.log = None
    return counts["replays"], counts["direct"], problems


def report(shapes, dtypes, modes, calls):
    lines = [f"Host cost per call (bench/host_overhead.py; Triton {triton.__version__}, torch "
             f"{torch.__version__}, this CPU; fake driver, no GPU)",
             "",
             "| shape | dtype | mode | launches | plan replays | µs per call | launch paths, "
             "µs per launch | in Triton, µs per call | outside launches, µs per call |"
             " torch ops per call (in launch paths / outside) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fit = ["", "Per time step and fixed per call: the same problem at T and 2T steps, "
           "µs per call = fixed + T x per step (all of the call's host time: launches, the "
           "loops, torch ops)", "",
           "| shape | dtype | mode | µs per call, T | µs per call, 2T | launches per step |"
           " **µs per step** | **µs per step launch** | **fixed µs per call** |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name in shapes:
        for dtype in dtypes:
            for mode in modes:
                shape = SHAPES[name]
                r = measure(shape, dtype, mode, calls)
                count = sum(n for n, _ in r["launches"].values())
                lines.append(
                    f"| {name} | {dtype} | {mode} | {count:.0f} | {r['replays']:.0f} |"
                    f" {r['call_us']:.0f} | {r['launch_us'] / count:.1f} |"
                    f" {r['triton_us']:.0f} | {r['call_us'] - r['launch_us']:.0f} |"
                    f" {r['ops_inside']:.0f} / {r['ops_outside']:.0f} |")
                T = shape.steps
                r2 = measure(dataclasses.replace(shape, steps=2 * T), dtype, mode, calls)
                count2 = sum(n for n, _ in r2["launches"].values())
                per_step = (r2["call_us"] - r["call_us"]) / T
                launches_per_step = (count2 - count) / T
                fit.append(f"| {name} | {dtype} | {mode} | {r['call_us']:.0f} |"
                           f" {r2['call_us']:.0f} | {launches_per_step:.2f} |"
                           f" **{per_step:.1f}** | **{per_step / launches_per_step:.1f}** |"
                           f" **{r['call_us'] - T * per_step:.0f}** |")
    return "\n".join(lines + fit)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,mnist_l2")
    p.add_argument("--dtypes", default="bf16")
    p.add_argument("--modes", default="fwd,train")
    p.add_argument("--calls", type=int, default=20, help="calls per timed repeat")
    p.add_argument("--check", action="store_true",
                   help="check every plan replay against Triton's JIT path instead of timing")
    p.add_argument("--hip", metavar="ARCH",
                   help="fake an AMD GPU of this arch (gfx942, gfx90a) instead of an sm_90: the "
                        "kernels compile for it and launch through Triton's HIP launcher")
    args = p.parse_args(argv)
    shapes, dtypes, modes = (args.shapes.split(","), args.dtypes.split(","),
                             args.modes.split(","))
    with fake_hip_gpu(args.hip) if args.hip else fake_gpu():
        if args.check:
            replays, direct, problems = check(shapes, dtypes, modes)
            for line in problems:
                print("MISMATCH", line)
            print(f"{replays} plan replays and {direct} direct launches checked against "
                  f"Triton's JIT: {len(problems)} differences")
            return 1 if problems or not replays or not direct else 0
        print(report(shapes, dtypes, modes, args.calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
