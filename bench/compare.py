"""Kernel comparison experiments: every ConvLSTM implementation side by side in one run.

    python bench/compare.py                                   # the four benchmark shapes, fp32+bf16
    python bench/compare.py --shapes small,mnist_l1 --dtypes bf16 --variants eager_cat,triton_fused
    python bench/compare.py --dry-run                         # any machine: one tiny shape, fp32

Variants, on the same weights and inputs (Keras layout unless said otherwise):
  eager_cat           one cuDNN conv on ``cat(x_t, h)`` per step + PyTorch pointwise, channels-first
                      (bench/eager_convlstm.py; ``torch.backends.cudnn.benchmark`` on)
  eager_hoisted       the input conv of all B·T frames as one cuDNN conv, then per step a cuDNN
                      recurrent conv + PyTorch pointwise (bench/eager_convlstm.py)
  compile             ``torch.compile(conv_lstm_reference)``, default mode
  compile_graphs      the same with ``mode="reduce-overhead"`` (CUDA graphs)
  triton_unfused      ``conv_lstm(..., backend="triton", forward_variant="unfused")``
  triton_fused        ``forward_variant="hoisted"`` (the library's default forward)
  triton_fused_input  ``forward_variant="fused_input"``
  triton_tma          ``forward_variant="hoisted_tma"`` (the recurrent conv's tiles through tensor
                      descriptors / TMA; not yet chosen by "auto": never run on a GPU so far)
  triton_four_dots    ``forward_variant="hoisted_four_dots"`` (the first step-kernel design: four
                      gate dots and a K loop per tap; shows what the wide MMA buys)
  triton_graphs       the triton_fused forward captured once in a ``torch.cuda.CUDAGraph`` with
                      static input/output buffers and replayed (forward only: train is "n/a")

Modes: ``fwd`` (forward under ``torch.no_grad``) and ``train`` (forward + backward of a mean-square
loss over the output sequence, gradients of x and every weight, inside the timed function).

Before a variant is timed, its outputs (and its gradients, for a variant that has a backward) are
compared with ``conv_lstm_reference`` run in float64 on the upcast inputs; the relative errors go
to stderr and into the markdown. A variant that fails that check, or raises, gets a row with no
time and an error note; the others go on. Times are ``triton.testing.do_bench`` medians; peak
memory is the ``torch.cuda.max_memory_allocated`` rise during one call; TFLOP/s counts 2·M·N·K of
the input and recurrent convs (3x for train), also as a percentage of the dense matmul peak
(``torch.matmul`` 8192³ in bf16, or TF32 for fp32) measured in the same run.

Outputs: rows appended to ``--csv`` (default bench/results/compare.csv), a PNG of bar plots, one
panel per shape/dtype/mode (``--plot``, default: the CSV's path with .png), and markdown tables
headed by the machine line on stdout (``--markdown PATH`` also writes them to a file). Both are
written as results come: the CSV rows and the markdown file after every variant, so that a run
cut short (a timeout) keeps what it measured. Within a shape/dtype, eager_cat runs first (its
check error sets the others' bounds) and the slow-to-compile ``compile`` variants run last; the
tables keep the order above. Progress goes to stderr.

``--dry-run``: one tiny shape in fp32, end to end, rows to bench/results/compare-dry-run.csv. On
a GPU every variant runs as above (a smoke test). Without a GPU the Triton kernels run through
Triton's interpreter (TRITON_INTERPRET=1 is set before Triton is imported), the compile and
CUDA-graph variants are skipped, and a time is the wall-clock of one call: a check of the script,
labelled "dry-run wall-clock, not a benchmark". Without ``--dry-run`` a machine without a CUDA GPU
exits with status 2.

Compiling is the slow part on a GPU (the reference's time loop is unrolled; each compile variant
compiles once for the check and train, once more for fwd): ``--variants`` leaves variants out.
"""

import datetime
import gc
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

if not torch.cuda.is_available():
    # Triton picks the interpreter when @triton.jit decorates a kernel, so this must come before
    # anything imports triton's kernels (convlstm_triton, via bench_convlstm).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.testing  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_convlstm import (  # noqa: E402
    CHECK_TOLERANCE,
    DTYPES,
    SHAPES,
    CheckResult,
    Peer,
    PeerFailure,
    Shape,
    Timing,
    _failure,
    _leaf,
    _names,
    append_csv,
    check_run,
    clear_grads,
    eager_peer,
    flop_of,
    keras_peer,
    machine_info,
    machine_line,
    make_call,
    make_problem,
    max_rel_err,
    problem_parser,
    time_peer,
    upstream_gradient,
)
from eager_convlstm import EagerHoistedConvLSTM, to_keras_outputs  # noqa: E402

from convlstm_triton.platform import platform  # noqa: E402
from convlstm_triton.reference import conv_lstm_reference  # noqa: E402

VARIANTS = ("eager_cat", "eager_hoisted", "compile", "compile_graphs", "triton_unfused",
            "triton_fused", "triton_fused_input", "triton_tma", "triton_four_dots",
            "triton_graphs")
# What "speedup" is measured against: the best a PyTorch user gets without CUDA graphs.
BASELINES = ("eager_cat", "eager_hoisted", "compile")
# Variants without a backward: their train row is "n/a".
FWD_ONLY = {"triton_graphs": "the CUDA graph holds the forward only"}
TRITON_FORWARD = {"triton_unfused": "unfused", "triton_fused": "hoisted",
                  "triton_fused_input": "fused_input", "triton_four_dots": "hoisted_four_dots",
                  "triton_tma": "hoisted_tma",
                  "triton_graphs": "hoisted"}
CSV_FIELDS = ("gpu", "torch", "triton", "date", "shape", "B", "T", "H", "W", "C_in", "F", "k",
              "dtype", "mode", "variant", "ms", "tflops", "peak_mb")
DEFAULT_CSV = os.path.join(HERE, "results", "compare.csv")
DEFAULT_DRY_RUN_CSV = os.path.join(HERE, "results", "compare-dry-run.csv")
# Small enough for Triton's interpreter (seconds per variant). The interpreter takes ~0.2-1.5 s
# a call here, so the dry run times a single call: it checks the script, not speed.
DRY_RUN_SHAPE = Shape("dry_run", 2, 3, (8, 8), 2, 4, 3)
DRY_RUN_REPS = 1
ALL_SHAPES = {**SHAPES, DRY_RUN_SHAPE.name: DRY_RUN_SHAPE}
# Dense matmul size for the peak: large enough that torch.matmul runs at the card's ceiling.
PEAK_N = 8192
PEAK_DTYPES = {"fp32": ("TF32", torch.float32), "bf16": ("bf16", torch.bfloat16),
               "fp16": ("fp16", torch.float16)}
# Forward calls on a side stream before the capture: the kernels compile (and autotune, which
# synchronizes and so cannot happen inside a capture) there.
GRAPH_WARMUP_CALLS = 3


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    """The command line; see the module docstring."""
    p = problem_parser(__doc__)
    p.add_argument("--variants", type=_names(dict.fromkeys(VARIANTS), "variant"),
                   default=list(VARIANTS),
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms (default 25)")
    p.add_argument("--rep", type=int, default=100,
                   help="do_bench repetition time, ms (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", metavar="PATH",
                   help="append one row per measurement here (default bench/results/compare.csv, "
                        "compare-dry-run.csv for --dry-run)")
    p.add_argument("--plot", metavar="PATH", help="bar plots, PNG (default: the CSV path, .png)")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown tables here")
    p.add_argument("--dry-run", action="store_true",
                   help="one tiny shape in fp32; without a GPU through Triton's interpreter with "
                        "wall-clock times (not a benchmark)")
    args = p.parse_args(argv)
    # Table order: eager_cat's check error sets the others' bounds, so it is checked first.
    args.variants = [v for v in VARIANTS if v in args.variants]
    if args.dry_run:
        args.shapes, args.dtypes = [DRY_RUN_SHAPE.name], ["fp32"]
    args.csv = args.csv or (DEFAULT_DRY_RUN_CSV if args.dry_run else DEFAULT_CSV)
    args.plot = args.plot or os.path.splitext(args.csv)[0] + ".png"
    return args


# ---------------------------------------------------------------------------------------------
# machine


def cpu_machine_info():
    """machine_info()'s keys for a machine without a GPU (a dry run)."""
    return {
        "gpu": "cpu (dry-run wall-clock, not a benchmark)", "capability": "-", "cuda": "none",
        "cudnn": "-", "torch": torch.__version__, "triton": triton.__version__, "tf32": False,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_header(info, dry_run):
    """The machine line that heads every table: GPU, CUDA, torch, triton, date."""
    if info["cuda"] == "none":
        return (f"**CPU dry run** (Triton interpreter; dry-run wall-clock, not a benchmark) · "
                f"CUDA none · torch {info['torch']} · triton {info['triton']} · {info['date']}")
    return machine_line(info) + (" · dry run (tiny shape)" if dry_run else "")


def matmul_peaks(dtype_names, args):
    """dtype name -> (label, TFLOP/s) of an 8192³ ``torch.matmul`` measured now (do_bench
    median): the dense ceiling that % of peak refers to. fp32 is measured with TF32 allowed, the
    precision cuDNN's and our fp32 convs run in."""
    peaks = {}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for name in dtype_names:
            label, dtype = PEAK_DTYPES[name]
            a, b = (torch.randn(PEAK_N, PEAK_N, device="cuda", dtype=dtype) for _ in range(2))
            ms = triton.testing.do_bench(lambda a=a, b=b: torch.matmul(a, b), warmup=args.warmup,
                                         rep=args.rep, return_mode="median")
            peaks[name] = (label, 2 * PEAK_N**3 / (ms * 1e-3) / 1e12)
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.cuda.empty_cache()
    return peaks


def peak_line(peaks):
    """One line with the measured matmul peaks, or why there are none."""
    if not peaks:
        return "Dense matmul peak: not measured (needs CUDA), so no % of peak."
    parts = [f"{label} {tflops:.0f} TFLOP/s" for label, tflops in dict(peaks.values()).items()]
    return (f"Dense matmul peak (torch.matmul {PEAK_N}³, do_bench median, this run): "
            + " · ".join(parts))


# ---------------------------------------------------------------------------------------------
# variants


@dataclass
class GraphPeer(Peer):
    """A peer replaying a CUDA graph; a replay allocates nothing, so its peak memory is that of
    the capture (what the graph's private pool keeps)."""

    capture_peak_mib: float = math.nan


@dataclass
class NotRun:
    """A variant that has no measurement in a mode: ``label`` "n/a" (the variant has no such
    mode: a CSV row says so) or "skipped" (not run on this machine: no CSV row)."""

    label: str
    reason: str


def eager_cat_peer(name, problem):
    """bench_convlstm's eager peer: one cuDNN conv on cat(x, h) per step."""
    peer = eager_peer(problem)
    peer.name = name
    return peer


def eager_hoisted_peer(name, problem):
    """EagerHoistedConvLSTM on channels-first x, as a PyTorch model would run it."""
    x = _leaf(problem.x.movedim(-1, 2).contiguous())  # (B, T, C_in, *spatial)
    module = EagerHoistedConvLSTM.from_keras_weights(problem.kernel, problem.recurrent_kernel,
                                                     problem.bias)

    def keras_grads():
        dx = None if x.grad is None else x.grad.movedim(2, -1)
        return (dx, *module.keras_grads())

    return Peer(name=name, forward=lambda: module(x), leaves=[x, *module.parameters()],
                keras_outputs=to_keras_outputs, keras_grads=keras_grads)


def compiled_reference_peer(name, problem, mode):
    """``torch.compile(conv_lstm_reference, mode=mode)`` on Keras-layout tensors.

    Static shapes, and dynamo's cache reset first: a later shape would otherwise be compiled
    dynamic (slower code), and the variants of a long run would hit the recompile limit and
    silently fall back to eager."""
    torch._dynamo.reset()
    compiled = torch.compile(conv_lstm_reference, mode=mode, dynamic=False)
    peer = keras_peer(name, problem, compiled)
    if mode == "reduce-overhead":
        forward = peer.forward

        def new_step_forward():
            # Each call is a new iteration: the previous call's outputs may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
            return forward()

        peer.forward = new_step_forward
    return peer


def triton_peer(name, problem):
    """``conv_lstm(..., backend="triton", forward_variant=...)`` for the variant."""
    from convlstm_triton.functional import conv_lstm

    return keras_peer(name, problem, conv_lstm, backend="triton",
                      forward_variant=TRITON_FORWARD[name])


def cuda_graph_peer(name, problem):
    """The triton_fused forward captured in one CUDA graph, as PyTorch's docs prescribe: static
    input buffers, warm-up on a side stream, capture, then replay() -> static outputs."""
    from convlstm_triton.functional import conv_lstm

    static = [t.detach().clone() for t in (problem.x, problem.kernel, problem.recurrent_kernel,
                                           problem.bias)]

    def forward():
        return conv_lstm(*static, padding="same", backend="triton",
                         forward_variant=TRITON_FORWARD[name])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP_CALLS):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    # Measured over the capture alone: warm-up may autotune, whose do_bench allocates scratch.
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = forward()
    torch.cuda.synchronize()
    capture_peak = (torch.cuda.max_memory_allocated() - before) / 2**20

    def replay():
        graph.replay()
        return static_out

    return GraphPeer(name=name, forward=replay, leaves=[], keras_outputs=lambda out: out,
                     keras_grads=lambda: (), capture_peak_mib=capture_peak)


BUILDERS = {
    "eager_cat": eager_cat_peer,
    "eager_hoisted": eager_hoisted_peer,
    "compile": lambda name, problem: compiled_reference_peer(name, problem, "default"),
    "compile_graphs": lambda name, problem: compiled_reference_peer(name, problem,
                                                                    "reduce-overhead"),
    "triton_unfused": triton_peer,
    "triton_fused": triton_peer,
    "triton_fused_input": triton_peer,
    "triton_four_dots": triton_peer,
    "triton_tma": triton_peer,
    "triton_graphs": cuda_graph_peer,
}


def skip_reason(name, cuda):
    """Why a variant does not run on this machine, or None."""
    if cuda:
        if name == "triton_tma" and not platform("cuda").tma:
            # AMD GPUs and NVIDIA before sm_90: the launcher takes the gather path
            return "no tensor descriptors (TMA) on this GPU: it would run triton_fused's kernels"
        return None
    if name.startswith("compile"):
        return "torch.compile on the CPU is slow and says nothing about the GPU"
    if name.endswith("graphs"):
        return "CUDA graphs need CUDA"
    return None


# ---------------------------------------------------------------------------------------------
# correctness check against the float64 reference


def reference_run(problem, grad_seq):
    """conv_lstm_reference in float64 on the upcast problem: Keras-layout (outputs, grads)."""
    reference = keras_peer("reference", problem.to(torch.float64), conv_lstm_reference)
    return check_run(reference, grad_seq.double())


def check_variant(peer, reference, grad_seq, outputs_only):
    """Max relative errors vs the float64 reference: outputs (seq, h, c), and gradients
    (x, kernel, recurrent_kernel, bias) unless ``outputs_only`` (NaN then)."""
    ref_out, ref_grads = reference
    if outputs_only:
        with torch.no_grad():
            outputs = [t.detach() for t in peer.keras_outputs(peer.forward())]
        return CheckResult(max_rel_err(outputs, ref_out), math.nan)
    outputs, grads = check_run(peer, grad_seq)
    return CheckResult(max_rel_err(outputs, ref_out), max_rel_err(grads, ref_grads))


def check_bounds(dtype, checks):
    """(output bound, gradient bound): CHECK_TOLERANCE of the dtype, or twice eager_cat's error
    when that is larger (long bf16 sequences drift in every implementation; eager is the bar)."""
    bounds = []
    for field in ("out_vs_fp64", "grad_vs_fp64"):
        bound = CHECK_TOLERANCE[dtype]
        eager = getattr(checks.get("eager_cat"), field, math.nan)
        if math.isfinite(eager):
            bound = max(bound, 2 * eager)
        bounds.append(bound)
    return tuple(bounds)


def check_failure(result, mode, bounds):
    """Why the check rules out timing ``mode``, or None: fwd needs the outputs within bound,
    train the gradients too."""
    fields = [("outputs", result.out_vs_fp64, bounds[0])]
    if mode == "train":
        fields.append(("gradients", result.grad_vs_fp64, bounds[1]))
    for what, err, bound in fields:
        if not err <= bound:  # NaN fails
            return f"check failed: {what} rel. error {err:.2e} > {bound:.1e} vs float64"
    return None


def format_check(shape, dtype_name, name, result, bounds):
    """The stderr line with one variant's errors and verdict."""
    outputs_only = math.isnan(result.grad_vs_fp64)
    failed = check_failure(result, "fwd" if outputs_only else "train", bounds)
    grads = "–" if outputs_only else f"{result.grad_vs_fp64:.2e}"
    return (f"check {shape.name} {dtype_name} {name}: rel. error vs float64 outputs "
            f"{result.out_vs_fp64:.2e} gradients {grads} (bounds {bounds[0]:.0e} / "
            f"{bounds[1]:.0e}) -> {'FAILED' if failed else 'ok'}")


# ---------------------------------------------------------------------------------------------
# timing


def wall_clock_timing(peer, mode, reps=DRY_RUN_REPS):
    """The dry-run stand-in for do_bench (which needs CUDA): median wall-clock of ``reps`` calls.
    No warm-up call: the interpreter compiles nothing (the check has run the variant already).
    Not a benchmark; no peak memory."""
    call = make_call(peer, mode)
    times = []
    for _ in range(reps):
        clear_grads(peer)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    clear_grads(peer)
    first_call_s = times[0]
    times.sort()
    return Timing(times[len(times) // 2] * 1e3, times[0] * 1e3, times[-1] * 1e3, first_call_s,
                  math.nan)


def measure(peer, mode, args, cuda):
    """do_bench timing and peak memory of one call on a GPU; wall-clock in a CPU dry run."""
    if not cuda:
        return wall_clock_timing(peer, mode)
    timing = time_peer(peer, mode, args)
    if isinstance(peer, GraphPeer):
        timing.peak_mib = peer.capture_peak_mib
    return timing


def time_variant(peer, mode, check, bounds, args, cuda):
    """Timing, or NotRun for a mode the variant lacks, or PeerFailure (check failed, raised)."""
    if mode == "train" and peer.name in FWD_ONLY:
        return NotRun("n/a", FWD_ONLY[peer.name])
    reason = check_failure(check, mode, bounds)
    if reason is not None:
        return PeerFailure(peer.name, reason)
    try:
        return measure(peer, mode, args, cuda)
    except Exception as exc:  # recorded; the other variants still run
        return _failure(peer.name, exc)


# ---------------------------------------------------------------------------------------------
# one shape and dtype


@dataclass
class Group:
    """Everything measured for one (shape, dtype): mode -> variant -> Timing | PeerFailure |
    NotRun, and variant -> CheckResult."""

    shape: Shape
    dtype_name: str
    timings: dict
    checks: dict


def free_memory(name, cuda):
    """Release a finished variant's buffers (graph pools included) before the next one."""
    if cuda and name.startswith("compile"):  # (skipped without CUDA)
        torch._dynamo.reset()  # dynamo's cache holds the compiled graphs and their CUDA graphs
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def run_variant(name, problem, reference, grad_seq, group, args, cuda):
    """Build, check, then time every mode of one variant, recording into ``group``."""
    dtype = DTYPES[group.dtype_name]
    skip = skip_reason(name, cuda)
    if skip is not None:
        log(f"skip {name}: {skip}")
        for mode in args.modes:
            group.timings[mode][name] = NotRun("skipped", skip)
        return
    log(f"{problem.shape.name} {group.dtype_name} {name}: build and check ...")
    try:
        peer = BUILDERS[name](name, problem)
        # Gradients only where train is timed (a forward-only check compiles less).
        outputs_only = name in FWD_ONLY or "train" not in args.modes
        check = check_variant(peer, reference, grad_seq, outputs_only)
    except Exception as exc:  # recorded; the other variants still run
        failure = _failure(name, exc)
        for mode in args.modes:
            group.timings[mode][name] = failure
        return
    group.checks[name] = check
    bounds = check_bounds(dtype, group.checks)
    log(format_check(problem.shape, group.dtype_name, name, check, bounds))
    for mode in args.modes:
        log(f"timing {problem.shape.name} {group.dtype_name} {mode} {name} ...")
        result = time_variant(peer, mode, check, bounds, args, cuda)
        group.timings[mode][name] = result
        if isinstance(result, Timing):
            log(f"  {result.ms:.4g} ms (first call {result.first_call_s:.1f} s)")
    del peer


def run_order(variants):
    """The order variants run in: as given (the table order), except that the compile variants,
    whose compiling takes minutes, come last, so that a run cut short has the others."""
    return ([v for v in variants if not v.startswith("compile")]
            + [v for v in variants if v.startswith("compile")])


def run_group(shape, dtype_name, args, cuda, on_variant=None):
    """All variants and modes of one (shape, dtype), one variant at a time (``run_order``);
    ``on_variant(group, name)`` is called after each."""
    problem = make_problem(shape, DTYPES[dtype_name], args.seed, device="cuda" if cuda else "cpu")
    grad_seq = upstream_gradient(problem, args.seed)
    group = Group(shape, dtype_name, {mode: {} for mode in args.modes}, {})
    log(f"{shape.name} {dtype_name}: float64 reference ...")
    try:
        reference = reference_run(problem, grad_seq)
    except Exception as exc:  # e.g. out of memory: nothing can be checked, so nothing is timed
        failure = _failure("float64 reference", exc)
        failure.error = f"float64 reference: {failure.error}"
        for mode in args.modes:
            group.timings[mode] = dict.fromkeys(args.variants, failure)
        return group
    for name in run_order(args.variants):
        run_variant(name, problem, reference, grad_seq, group, args, cuda)
        free_memory(name, cuda)
        if on_variant is not None:
            on_variant(group, name)
    return group


# ---------------------------------------------------------------------------------------------
# report: CSV, markdown, plot


def spatial_hw(spatial):
    """CSV's H and W for 1-3 spatial dims: 1D (L,) -> (1, L); 3D (D, H, W) -> ("DxH", W)."""
    if len(spatial) == 1:
        return 1, spatial[0]
    return "x".join(map(str, spatial[:-1])), spatial[-1]


def tflops_of(shape, mode, ms):
    """TFLOP/s of a call of ``ms`` milliseconds (2·M·N·K of both convs, 3x for train)."""
    return flop_of(shape, mode) / (ms * 1e-3) / 1e12


def csv_rows(info, group):
    """One row per measurement of the group (skipped variants have none)."""
    shape = group.shape
    height, width = spatial_hw(shape.spatial)
    for mode, results in group.timings.items():
        for name, result in results.items():
            if isinstance(result, NotRun) and result.label == "skipped":
                continue
            ok = isinstance(result, Timing)
            ms = result.ms if ok else ("n/a" if isinstance(result, NotRun) else "")
            peak_mb = result.peak_mib * 2**20 / 1e6 if ok and math.isfinite(result.peak_mib) else ""
            yield {
                "gpu": info["gpu"], "torch": info["torch"], "triton": info["triton"],
                "date": info["date"], "shape": shape.name, "B": shape.batch, "T": shape.steps,
                "H": height, "W": width, "C_in": shape.in_channels, "F": shape.filters,
                "k": shape.kernel, "dtype": group.dtype_name, "mode": mode, "variant": name,
                "ms": ms, "tflops": tflops_of(shape, mode, result.ms) if ok else "",
                "peak_mb": peak_mb,
            }


def write_csv(path, info, group, variants=None):
    """Append the group's rows (only those of ``variants``, if given) to ``path`` (directories
    created; header when new)."""
    if variants is not None:
        group = Group(group.shape, group.dtype_name,
                      {mode: {n: r for n, r in results.items() if n in variants}
                       for mode, results in group.timings.items()}, group.checks)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    append_csv(path, csv_rows(info, group), CSV_FIELDS)


def shape_label(shape):
    """"mnist_l1 (16,19,64x64,1,64,5)": name (B, T, spatial, C_in, F, k)."""
    size = "x".join(map(str, shape.spatial))
    return (f"{shape.name} ({shape.batch},{shape.steps},{size},{shape.in_channels},"
            f"{shape.filters},{shape.kernel})")


def fmt_ms(ms):
    """3 significant digits, without an exponent for long times."""
    return f"{ms:.0f}" if ms >= 1000 else f"{ms:.3g}"


def best_baseline_ms(results):
    """The fastest of BASELINES in one (group, mode), or None."""
    times = [results[n].ms for n in BASELINES if isinstance(results.get(n), Timing)]
    return min(times, default=None)


def not_timed_cell(result):
    """The table cell of a variant without a time."""
    if result is None:
        return "–"
    if isinstance(result, NotRun):
        return result.label
    return "error"


def ms_cell(group, mode, name, peaks):
    """ms, and for a non-baseline variant its speedup over the best baseline."""
    result = group.timings[mode].get(name)
    if not isinstance(result, Timing):
        return not_timed_cell(result)
    best = best_baseline_ms(group.timings[mode])
    if name in BASELINES or best is None:
        return fmt_ms(result.ms)
    return f"{fmt_ms(result.ms)} ({best / result.ms:.3g}×)"


def tflops_cell(group, mode, name, peaks):
    """TFLOP/s, and % of the dtype's matmul peak when measured."""
    result = group.timings[mode].get(name)
    if not isinstance(result, Timing):
        return not_timed_cell(result)
    tflops = tflops_of(group.shape, mode, result.ms)
    peak = peaks.get(group.dtype_name)
    return f"{tflops:.3g}" + (f" ({100 * tflops / peak[1]:.0f} %)" if peak else "")


def memory_cell(group, mode, name, peaks):
    """Peak MB of one call."""
    result = group.timings[mode].get(name)
    if not isinstance(result, Timing):
        return not_timed_cell(result)
    if not math.isfinite(result.peak_mib):
        return "–"
    return f"{result.peak_mib * 2**20 / 1e6:.0f}"


def fastest_cell(group, mode):
    """The fastest variant and its speedup over the best baseline."""
    timed = {n: r.ms for n, r in group.timings[mode].items() if isinstance(r, Timing)}
    if not timed:
        return "–"
    name = min(timed, key=timed.get)
    best = best_baseline_ms(group.timings[mode])
    return name + (f" ({best / timed[name]:.3g}×)" if best else "")


def variant_table(groups, names, cell, peaks, fastest=False):
    """A markdown table: a row per (shape, dtype, mode), a column per variant."""
    cols = ["shape (B,T,size,C_in,F,k)", "dtype", "mode", *names]
    cols += ["fastest (vs best baseline)"] if fastest else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for group in groups:
        for mode in group.timings:
            cells = [shape_label(group.shape), group.dtype_name, mode]
            cells += [cell(group, mode, n, peaks) for n in names]
            cells += [fastest_cell(group, mode)] if fastest else []
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_table(groups, names):
    """Relative errors vs float64 per (shape, dtype): "outputs / gradients"."""
    cols = ["shape", "dtype", *names]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for group in groups:
        cells = [group.shape.name, group.dtype_name]
        for name in names:
            r = group.checks.get(name)
            cells.append("–" if r is None else
                         f"{r.out_vs_fp64:.1e} / "
                         + ("–" if math.isnan(r.grad_vs_fp64) else f"{r.grad_vs_fp64:.1e}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(groups):
    """"shape dtype mode variant: error" for every failed measurement."""
    return [f"{g.shape.name} {g.dtype_name} {mode} {name}: {r.error}"
            for g in groups for mode, results in g.timings.items()
            for name, r in results.items() if isinstance(r, PeerFailure)]


def not_run_notes(groups):
    """One line per variant that was skipped or is n/a somewhere, with the reason."""
    notes = {}
    for g in groups:
        for results in g.timings.values():
            for name, r in results.items():
                if isinstance(r, NotRun):
                    notes.setdefault(f"{name} {r.label}: {r.reason}", None)
    return list(notes)


def render_markdown(info, peaks, groups, names, dry_run):
    """The whole report, headed by the machine line."""
    timing = ("ms, dry-run wall-clock of one call, not a benchmark"
              if info["cuda"] == "none" else "ms, triton.testing.do_bench median")
    parts = [
        machine_header(info, dry_run), "", peak_line(peaks), "",
        f"**Time** ({timing}; in parentheses the speedup over the best of "
        f"{' / '.join(BASELINES)}, > 1 is faster). fwd runs under no_grad; train = forward + "
        f"backward of a mean-square loss over the sequence.", "",
        variant_table(groups, names, ms_cell, peaks, fastest=True), "",
        "**TFLOP/s** (2·M·N·K of the input and recurrent convs, 3× for train; in parentheses % of "
        "the dtype's dense matmul peak above).", "",
        variant_table(groups, names, tflops_cell, peaks), "",
        "**Peak memory**, MB, of one call above its inputs (torch.cuda.max_memory_allocated; "
        "triton_graphs: during the capture, since a replay allocates nothing).", "",
        variant_table(groups, names, memory_cell, peaks), "",
        "**Check**: max relative error vs conv_lstm_reference in float64, outputs / gradients.",
        "", check_table(groups, names),
    ]
    notes = not_run_notes(groups)
    if notes:
        parts += ["", "**Not run:** " + "; ".join(notes)]
    errors = failures(groups)
    if errors:
        parts += ["", "**Failures:** " + "; ".join(errors)]
    return "\n".join(parts) + "\n"


def write_text(path, text):
    """Write ``text`` to ``path``, creating its directory."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


VARIANT_COLORS = {"eager": "tab:gray", "compile": "tab:blue", "triton": "tab:orange"}


def write_plot(path, groups, names, title):
    """Horizontal bar plots of ms per variant, one panel per shape/dtype (rows) and mode
    (columns), into a PNG. Skipped, with a message, when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log(f"plot skipped: matplotlib is not installed (no {path})")
        return False
    modes = list(groups[0].timings)
    fig, axes = plt.subplots(len(groups), len(modes), squeeze=False,
                             figsize=(6.5 * len(modes), 0.45 * len(names) * len(groups) + 1.2))
    for row, group in zip(axes, groups):
        for ax, mode in zip(row, modes):
            plot_panel(ax, group, mode, names)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_panel(ax, group, mode, names):
    """One shape/dtype/mode: a bar per variant, labelled with its ms (or why there is none)."""
    results = group.timings[mode]
    values = [r.ms if isinstance(r, Timing) else 0.0 for r in (results.get(n) for n in names)]
    colors = [VARIANT_COLORS[n.split("_")[0]] for n in names]
    ax.barh(names, values, color=colors)
    ax.invert_yaxis()
    for y, (name, value) in enumerate(zip(names, values)):
        label = f" {fmt_ms(value)}" if value else " " + not_timed_cell(results.get(name))
        ax.text(value, y, label, va="center", fontsize=7)
    ax.set_title(f"{shape_label(group.shape)} {group.dtype_name} {mode}", fontsize=8)
    ax.set_xlabel("ms (lower is better)", fontsize=7)
    ax.tick_params(labelsize=7)


# ---------------------------------------------------------------------------------------------
# main


def log(message):
    """Progress, to stderr."""
    print(message, file=sys.stderr, flush=True)


def report(info, peaks, groups, args):
    """Render the markdown (and write it to --markdown); returns it."""
    markdown = render_markdown(info, peaks, groups, args.variants, args.dry_run)
    if args.markdown:
        write_text(args.markdown, markdown)
    return markdown


def main(argv=None):
    """Run every selected shape x dtype x variant x mode; 0 when all passed, 1 when a variant
    failed or raised, 2 without a GPU (unless --dry-run)."""
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        log("compare: a CUDA GPU is needed to benchmark (torch.cuda.is_available() is False). "
            "Run it on a CUDA machine, or use --dry-run for an end-to-end check on this one.")
        return 2
    if cuda:
        torch.backends.cudnn.benchmark = True  # the eager peers at their best
    else:
        torch.set_num_threads(1)  # tiny tensors gain nothing; threads oversubscribe under xdist
    info = machine_info() if cuda else cpu_machine_info()
    log(machine_header(info, args.dry_run))
    peaks = matmul_peaks(args.dtypes, args) if cuda else {}
    log(peak_line(peaks))
    groups = []
    for shape_name in args.shapes:
        for dtype_name in args.dtypes:
            written = set()

            def on_variant(group, name, written=written):
                # A run cut short (a timeout) keeps every variant measured so far.
                write_csv(args.csv, info, group, {name})
                written.add(name)
                report(info, peaks, groups + [group], args)

            group = run_group(ALL_SHAPES[shape_name], dtype_name, args, cuda, on_variant)
            groups.append(group)
            rest = set(args.variants) - written  # e.g. every variant, when the reference failed
            if rest:
                write_csv(args.csv, info, group, rest)
            report(info, peaks, groups, args)
    print(report(info, peaks, groups, args), flush=True)
    log(f"rows appended to {args.csv}" + (f"; markdown in {args.markdown}" if args.markdown
                                          else ""))
    if write_plot(args.plot, groups, args.variants, machine_header(info, args.dry_run)
                  .replace("**", "")):
        log(f"plot in {args.plot}")
    return 1 if failures(groups) else 0


if __name__ == "__main__":
    sys.exit(main())
