"""Benchmark convlstm-triton against the eager cuDNN ConvLSTM (and torch.compile of it).

    python bench/bench_convlstm.py --shapes mnist_l1,small --dtypes fp32,bf16 --check --csv out.csv

Peers, side by side in one run, on the same weights and inputs:
  ours     ``conv_lstm(..., backend="triton")`` on channels-last (Keras layout) tensors
  eager    one cuDNN conv on ``cat(x_t, h)`` per step + PyTorch pointwise (bench/eager_convlstm.py),
           on channels-first tensors, ``torch.backends.cudnn.benchmark`` on (its best algorithms)
  compile  ``torch.compile`` of the eager module (``--compile``; off by default, compiling is slow)

Modes: ``fwd`` (forward under ``torch.no_grad``) and ``train`` (forward + backward of a mean-square
loss over the output sequence, gradients for x and every weight, a fresh graph per call). Times are
``triton.testing.do_bench`` medians (L2 flushed before every call). The markdown table goes to
stdout as rows finish, progress to stderr; ``--csv`` appends one row per peer measurement.
"""

import argparse
import csv
import datetime
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eager_convlstm import (  # noqa: E402
    EagerConvLSTM,
    combined_to_keras,
    to_keras_outputs,
)


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: x (B, T, *spatial, C_in), F filters, a k^rank "same" kernel."""

    name: str
    batch: int
    steps: int
    spatial: tuple
    in_channels: int
    filters: int
    kernel: int

    @property
    def kernel_size(self):
        return (self.kernel,) * len(self.spatial)

    def fwd_flop(self):
        """2·M·N·K of the input and recurrent convs over the sequence (M = B·T·pixels, N = 4F)."""
        m = self.batch * self.steps * math.prod(self.spatial)
        k = math.prod(self.kernel_size) * (self.in_channels + self.filters)
        return 2 * m * (4 * self.filters) * k

    def describe(self):
        size = "x".join(map(str, self.spatial))
        return (f"B={self.batch} T={self.steps} {size} C_in={self.in_channels} "
                f"F={self.filters} k={self.kernel}")


# The benchmark shapes: Moving-MNIST layers 1 and 2 (Keras' next-frame example), a
# precipitation-nowcasting layer, and a small launch-bound one.
SHAPES = {
    s.name: s
    for s in (
        Shape("mnist_l1", 16, 19, (64, 64), 1, 64, 5),
        Shape("mnist_l2", 16, 19, (64, 64), 64, 64, 3),
        Shape("nowcast", 4, 16, (128, 128), 64, 128, 3),
        Shape("small", 32, 10, (16, 16), 32, 32, 3),
    )
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "train")
# Backward = an input-gradient and a weight-gradient GEMM per forward GEMM, each as large.
TRAIN_FLOP_FACTOR = 3
# --check: relative error vs a float64 run that ours must stay within. fp32 convs run as TF32
# (PyTorch's cuDNN default, which ours follows), hence 1e-2 rather than fp32 precision.
CHECK_TOLERANCE = {torch.float32: 1e-2, torch.bfloat16: 5e-2, torch.float16: 1e-2}
CSV_FIELDS = (
    "timestamp", "gpu", "cuda", "torch", "triton", "tf32", "shape", "batch", "steps", "spatial",
    "in_channels", "filters", "kernel", "dtype", "mode", "peer", "ms", "ms_p20", "ms_p80",
    "first_call_s", "fwd_tflop", "tflops", "peak_mib", "vs_ours", "err_vs_fp64", "err_vs_eager",
    "error",
)


# ---------------------------------------------------------------------------------------------
# command line


def _names(table, what):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in table]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(table)}"
            )
        return names

    return parse


def problem_parser(doc, modes=tuple(MODES)):
    """An argument parser with the options every benchmark shares: --shapes, --dtypes, --modes
    (``modes``: its default)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=_names(SHAPES, "shape"), default=list(SHAPES),
                   help=f"comma-separated, from {', '.join(SHAPES)} (default: all)")
    p.add_argument("--dtypes", type=_names(DTYPES, "dtype"), default=["fp32", "bf16"],
                   help=f"comma-separated, from {', '.join(DTYPES)} (default: fp32,bf16)")
    p.add_argument("--modes", type=_names(dict.fromkeys(MODES), "mode"), default=list(modes),
                   help=f"comma-separated, from fwd,train (default: {','.join(modes)})")
    return p


def parse_args(argv=None):
    p = problem_parser(__doc__)
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile of the eager loop (slow to compile)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for --compile (default, reduce-overhead, "
                        "max-autotune-no-cudagraphs, ...)")
    p.add_argument("--check", action="store_true",
                   help="before timing, compare outputs (and gradients for train) of every peer "
                        "with a float64 run and with each other")
    p.add_argument("--csv", metavar="PATH", help="append one row per measurement to this CSV")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms (default 25)")
    p.add_argument("--rep", type=int, default=200,
                   help="do_bench repetition time, ms (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tf32", action="store_true",
                   help="IEEE fp32 convs for both peers (torch.backends.cudnn.allow_tf32 = False)")
    p.add_argument("--list", action="store_true", help="list the shapes with their FLOPs and exit")
    return p.parse_args(argv)


def shape_listing():
    lines = ["| shape | B, T, spatial, C_in, F, k | fwd TFLOP |", "|---|---|---|"]
    for s in SHAPES.values():
        lines.append(f"| {s.name} | {s.describe()} | {s.fwd_flop() / 1e12:.3g} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# machine


def machine_info():
    props = torch.cuda.get_device_properties(0)
    # a ROCm build: torch.version.hip, the arch is gcnArchName's ("gfx942:sramecc+:xnack-"),
    # cudnn.version() is MIOpen's
    hip = getattr(torch.version, "hip", None)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": f"{props.major}.{props.minor}",
        "arch": ((getattr(props, "gcnArchName", "") or "?").split(":")[0] if hip
                 else f"sm_{props.major}{props.minor}"),
        "cuda": torch.version.cuda,
        "hip": hip,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "tf32": torch.backends.cudnn.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info):
    fp32 = "TF32" if info["tf32"] else "IEEE"
    if info.get("hip"):
        return (f"**{info['gpu']}** ({info['arch']}) · HIP {info['hip']} · "
                f"MIOpen {info['cudnn']} · torch {info['torch']} · triton {info['triton']} · "
                f"allow_tf32 {info['tf32']} · {info['date']}")
    return (f"**{info['gpu']}** (sm_{info['capability'].replace('.', '')}) · CUDA {info['cuda']} · "
            f"cuDNN {info['cudnn']} · torch {info['torch']} · triton {info['triton']} · "
            f"fp32 convs {fp32} · {info['date']}")


# ---------------------------------------------------------------------------------------------
# problems and peers


@dataclass
class Problem:
    """Keras-layout inputs in the compute dtype: x (B, T, *spatial, C_in), kernel (*k, C_in, 4F),
    recurrent_kernel (*k, F, 4F), bias (4F,). Every peer copies from these."""

    shape: Shape
    x: torch.Tensor
    kernel: torch.Tensor
    recurrent_kernel: torch.Tensor
    bias: torch.Tensor

    def to(self, dtype):
        return Problem(self.shape, *(t.to(dtype) for t in
                                     (self.x, self.kernel, self.recurrent_kernel, self.bias)))


def make_problem(shape, dtype, seed, device="cuda"):
    """Inputs with O(1) pre-activations: Glorot-uniform kernels, forget bias 1 (Keras defaults)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    ks, c_in, f = shape.kernel_size, shape.in_channels, shape.filters
    taps = math.prod(ks)

    def uniform(*size, fan_in, fan_out):
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(*size, generator=g) * 2 - 1) * limit

    x = torch.randn(shape.batch, shape.steps, *shape.spatial, c_in, generator=g)
    kernel = uniform(*ks, c_in, 4 * f, fan_in=taps * c_in, fan_out=taps * 4 * f)
    recurrent = uniform(*ks, f, 4 * f, fan_in=taps * f, fan_out=taps * 4 * f)
    bias = torch.zeros(4 * f)
    bias[f:2 * f] = 1.0
    tensors = (t.to(device=device, dtype=dtype) for t in (x, kernel, recurrent, bias))
    return Problem(shape, *tensors)


@dataclass
class Peer:
    """A contender with its own copies of the problem, in its own layout.

    forward() -> (seq, h, c) in the peer's layout; keras_outputs maps them to the Keras layout;
    keras_grads() gives (dx, dkernel, drecurrent_kernel, dbias) from the leaves' .grad.
    """

    name: str
    forward: Callable[[], tuple]
    leaves: list
    keras_outputs: Callable[[tuple], tuple]
    keras_grads: Callable[[], tuple]


def _leaf(t):
    return t.detach().clone().requires_grad_()


def keras_peer(name, problem, fn, **kwargs):
    """A peer taking the Keras layout, as ``conv_lstm`` does: ``fn(x, kernel, recurrent_kernel,
    bias, padding="same", **kwargs)`` on its own leaf copies of the problem's tensors."""
    leaves = [_leaf(t) for t in (problem.x, problem.kernel, problem.recurrent_kernel,
                                 problem.bias)]
    return Peer(
        name=name,
        forward=lambda: fn(*leaves, padding="same", **kwargs),
        leaves=leaves,
        keras_outputs=lambda out: out,
        keras_grads=lambda: tuple(t.grad for t in leaves),
    )


def ours_peer(problem):
    # Imported here so that a Triton path that fails to import is recorded as this peer's error
    # while the eager peers still run.
    from convlstm_triton.functional import conv_lstm

    return keras_peer("ours", problem, conv_lstm, backend="triton")


def eager_peer(problem, compile_mode=None):
    """The eager module; with ``compile_mode``, torch.compile of it (name "compile")."""
    x = _leaf(problem.x.movedim(-1, 2).contiguous())  # (B, T, C_in, *spatial), as people feed it
    module = EagerConvLSTM.from_keras_weights(problem.kernel, problem.recurrent_kernel,
                                              problem.bias)
    run = module if compile_mode is None else torch.compile(module, mode=compile_mode)

    def keras_grads():
        dx, dweight = x.grad, module.weight.grad
        dkernel = drecurrent = None
        if dweight is not None:
            dkernel, drecurrent = combined_to_keras(dweight, problem.shape.in_channels)
        return None if dx is None else dx.movedim(2, -1), dkernel, drecurrent, module.bias.grad

    return Peer(
        name="eager" if compile_mode is None else "compile",
        forward=lambda: run(x),
        leaves=[x, module.weight, module.bias],
        keras_outputs=to_keras_outputs,
        keras_grads=keras_grads,
    )


def make_peers(problem, args):
    """name -> Peer, or a PeerFailure for a peer that could not be built."""
    builders = {"ours": lambda: ours_peer(problem), "eager": lambda: eager_peer(problem)}
    if args.compile:
        builders["compile"] = lambda: eager_peer(problem, compile_mode=args.compile_mode)
    peers = {}
    for name, build in builders.items():
        try:
            peers[name] = build()
        except Exception as exc:  # recorded in the table and CSV; the other peers still run
            peers[name] = _failure(name, exc)
    return peers


def peer_names(args):
    return ["ours", "eager"] + (["compile"] if args.compile else [])


# ---------------------------------------------------------------------------------------------
# one call, correctness check, timing


def training_loss(seq):
    return seq.float().square().mean()


def make_call(peer, mode):
    """The zero-argument function do_bench times: a forward, or a forward + backward."""
    if mode == "fwd":
        def call():
            with torch.no_grad():
                peer.forward()
    else:
        def call():
            training_loss(peer.forward()[0]).backward()
    return call


def clear_grads(peer):
    for t in peer.leaves:
        t.grad = None


def check_run(peer, grad_seq):
    """One forward + backward; Keras-layout (outputs, grads). The upstream gradient is a fixed
    random tensor, not the mean-square loss's, whose ~1/N entries would underflow in fp16."""
    clear_grads(peer)
    outputs = peer.keras_outputs(peer.forward())
    outputs[0].backward(grad_seq.to(outputs[0].dtype))
    grads = peer.keras_grads()
    missing = [n for n, g in zip(("x", "kernel", "recurrent_kernel", "bias"), grads) if g is None]
    if missing:
        raise RuntimeError(f"{peer.name}: no gradient for {', '.join(missing)}")
    clear_grads(peer)
    return [t.detach() for t in outputs], [g.detach() for g in grads]


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_rel_err(outs, refs):
    return max(rel_err(o, r) for o, r in zip(outs, refs))


@dataclass
class CheckResult:
    """Max relative errors of one peer: outputs (seq, h, c) and gradients (x, weights, bias)."""

    out_vs_fp64: float
    grad_vs_fp64: float
    out_vs_eager: float = math.nan
    grad_vs_eager: float = math.nan


def upstream_gradient(problem, seed):
    """The fixed random gradient of the output sequence (B, T, *spatial, F) that checks feed to
    backward, in the problem's dtype and device ("same" padding: out spatial = in spatial)."""
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    grad_seq = torch.randn(*problem.x.shape[:-1], problem.shape.filters, generator=g)
    return grad_seq.to(device=problem.x.device, dtype=problem.x.dtype)


def check_peers(problem, peers, seed):
    """Compare every peer with a float64 eager run on the same (upcast) inputs, and ours with
    eager. Returns name -> CheckResult; a peer that raises gets its error recorded instead."""
    grad_seq = upstream_gradient(problem, seed)
    reference = eager_peer(problem.to(torch.float64))
    ref_out, ref_grads = check_run(reference, grad_seq.double())
    del reference
    runs, results = {}, {}
    for name, peer in peers.items():
        if isinstance(peer, PeerFailure):
            continue
        try:
            runs[name] = check_run(peer, grad_seq)
        except Exception as exc:
            peers[name] = _failure(name, exc)
            continue
        out, grads = runs[name]
        results[name] = CheckResult(max_rel_err(out, ref_out), max_rel_err(grads, ref_grads))
    if "ours" in runs and "eager" in runs:
        (out, grads), (e_out, e_grads) = runs["ours"], runs["eager"]
        results["ours"].out_vs_eager = max_rel_err(out, e_out)
        results["ours"].grad_vs_eager = max_rel_err(grads, e_grads)
    return results


def check_passed(results, dtype):
    """Ours is within CHECK_TOLERANCE of float64, or no worse than twice the eager peer's error
    (long bf16 sequences can drift past a fixed bound in both; the peer's error is the bar)."""
    ours, eager = results.get("ours"), results.get("eager")
    if ours is None:
        return False
    for field in ("out_vs_fp64", "grad_vs_fp64"):
        bound = CHECK_TOLERANCE[dtype]
        if eager is not None:
            bound = max(bound, 2 * getattr(eager, field))
        if not getattr(ours, field) <= bound:  # NaN fails
            return False
    return True


def format_check(shape, dtype_name, results, passed):
    parts = []
    for name, r in results.items():
        parts.append(f"{name} vs fp64: out {r.out_vs_fp64:.1e} grad {r.grad_vs_fp64:.1e}")
    ours = results.get("ours")
    if ours is not None and not math.isnan(ours.out_vs_eager):
        parts.append(f"ours vs eager: out {ours.out_vs_eager:.1e} grad {ours.grad_vs_eager:.1e}")
    verdict = "ok" if passed else "FAILED"
    return f"check {shape.name} {dtype_name}: " + "; ".join(parts) + f" -> {verdict}"


@dataclass
class Timing:
    ms: float
    ms_p20: float
    ms_p80: float
    first_call_s: float  # first call: includes compiling / autotuning
    peak_mib: float  # peak allocation of one call above what was allocated before it


def peak_memory_mib(call, peer):
    clear_grads(peer)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    clear_grads(peer)
    return peak / 2**20


def time_peer(peer, mode, args):
    call = make_call(peer, mode)
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    first_call_s = time.perf_counter() - start
    peak = peak_memory_mib(call, peer)
    grad_to_none = peer.leaves if mode == "train" else None
    ms, p20, p80 = triton.testing.do_bench(call, warmup=args.warmup, rep=args.rep,
                                           grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    clear_grads(peer)
    return Timing(ms, p20, p80, first_call_s, peak)


@dataclass
class PeerFailure:
    name: str
    error: str


def _failure(name, exc):
    traceback.print_exc(file=sys.stderr)
    first_line = (str(exc).splitlines() or [""])[0]
    return PeerFailure(name, f"{type(exc).__name__}: {first_line}"[:200])


# ---------------------------------------------------------------------------------------------
# report: markdown table and CSV


def flop_of(shape, mode):
    return shape.fwd_flop() * (TRAIN_FLOP_FACTOR if mode == "train" else 1)


def table_header(names):
    cols = ["shape", "dtype", "mode", "fwd TFLOP"]
    cols += [f"{n} ms" for n in names]
    cols += [f"{n}/ours" for n in names if n != "ours"]
    cols += [f"{n} TFLOP/s" for n in names]
    cols += [f"{n} MiB" for n in names]
    cols += ["check (ours vs fp64 / eager vs fp64)"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def table_notes():
    return (f"ms: do_bench median. fwd runs under no_grad; train = forward + backward of a "
            f"mean-square loss over the sequence (grads of x and all weights). TFLOP/s counts "
            f"2·M·N·K of both convs, {TRAIN_FLOP_FACTOR}× that for train. MiB: peak allocation of "
            f"one call above its inputs. peer/ours > 1: ours is faster.")


def _fmt(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def table_row(shape, dtype_name, mode, names, timings, check):
    """timings: name -> Timing | PeerFailure; check: name -> CheckResult (or empty)."""
    def ms(n):
        t = timings.get(n)
        return t.ms if isinstance(t, Timing) else None

    cells = [shape.name, dtype_name, mode, f"{shape.fwd_flop() / 1e12:.3g}"]
    for n in names:
        t = timings.get(n)
        cells.append("error" if isinstance(t, PeerFailure) else _fmt(ms(n), ".3g"))
    for n in names[1:]:
        ratio = ms(n) / ms("ours") if ms(n) and ms("ours") else None
        cells.append(_fmt(ratio, ".2f"))
    for n in names:
        cells.append(_fmt(flop_of(shape, mode) / (ms(n) * 1e-3) / 1e12 if ms(n) else None, ".1f"))
    for n in names:
        t = timings.get(n)
        cells.append(_fmt(t.peak_mib if isinstance(t, Timing) else None, ".0f"))
    cells.append(_check_cell(check, mode))
    return "| " + " | ".join(cells) + " |"


def _check_cell(check, mode):
    if not check:
        return "–"
    field = "out_vs_fp64" if mode == "fwd" else "grad_vs_fp64"
    ours, eager = check.get("ours"), check.get("eager")
    return (f"{_fmt(getattr(ours, field, None), '.1e')} / "
            f"{_fmt(getattr(eager, field, None), '.1e')}")


def csv_rows(info, shape, dtype_name, mode, timings, check):
    ours = timings.get("ours")
    ours_ms = ours.ms if isinstance(ours, Timing) else None
    for name, t in timings.items():
        ok = isinstance(t, Timing)
        r = check.get(name)
        field = "out" if mode == "fwd" else "grad"
        yield {
            "timestamp": info["date"], "gpu": info["gpu"], "cuda": info["cuda"],
            "torch": info["torch"], "triton": info["triton"], "tf32": info["tf32"],
            "shape": shape.name, "batch": shape.batch, "steps": shape.steps,
            "spatial": "x".join(map(str, shape.spatial)), "in_channels": shape.in_channels,
            "filters": shape.filters, "kernel": shape.kernel, "dtype": dtype_name, "mode": mode,
            "peer": name,
            "ms": t.ms if ok else "", "ms_p20": t.ms_p20 if ok else "",
            "ms_p80": t.ms_p80 if ok else "",
            "first_call_s": t.first_call_s if ok else "",
            "fwd_tflop": shape.fwd_flop() / 1e12,
            "tflops": flop_of(shape, mode) / (t.ms * 1e-3) / 1e12 if ok else "",
            "peak_mib": t.peak_mib if ok else "",
            "vs_ours": t.ms / ours_ms if ok and ours_ms else "",
            "err_vs_fp64": getattr(r, f"{field}_vs_fp64", ""),
            "err_vs_eager": getattr(r, f"{field}_vs_eager", "") if name == "ours" else "",
            "error": "" if ok else t.error,
        }


def append_csv(path, rows, fields=CSV_FIELDS):
    """Append rows (dicts keyed by ``fields``); write the header when the file is new or empty."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# main


def log(message):
    print(message, file=sys.stderr, flush=True)


def emit(line):
    print(line, flush=True)


def run_group(shape, dtype_name, args):
    """All modes and peers of one (shape, dtype). Returns (mode -> timings, check, passed)."""
    dtype = DTYPES[dtype_name]
    problem = make_problem(shape, dtype, args.seed)
    peers = make_peers(problem, args)
    check, passed = {}, True
    if args.check:
        log(f"checking {shape.name} {dtype_name} ...")
        check = check_peers(problem, peers, args.seed)
        passed = check_passed(check, dtype)
        log(format_check(shape, dtype_name, check, passed))
    results = {}
    for mode in args.modes:
        timings = {}
        for name, peer in peers.items():
            if isinstance(peer, PeerFailure):
                timings[name] = peer
                continue
            log(f"timing {shape.name} {dtype_name} {mode} {name} ...")
            try:
                timings[name] = time_peer(peer, mode, args)
            except Exception as exc:
                timings[name] = _failure(name, exc)
        results[mode] = timings
    del peers, problem
    torch.cuda.empty_cache()
    return results, check, passed


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        emit(shape_listing())
        return 0
    if not torch.cuda.is_available():
        log("bench_convlstm: a CUDA GPU is needed to benchmark (torch.cuda.is_available() is "
            "False). Run it on a CUDA machine, e.g. via bench/gpu_check.sh; --list works here.")
        return 2
    torch.backends.cudnn.benchmark = True  # the eager peer at its best: cuDNN picks algorithms
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
    info = machine_info()
    names = peer_names(args)
    emit(machine_line(info))
    emit("")
    emit(table_notes())
    emit("")
    emit(table_header(names))
    failed = []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        for dtype_name in args.dtypes:
            results, check, passed = run_group(shape, dtype_name, args)
            if not passed:
                failed.append(f"check {shape.name} {dtype_name}")
            for mode, timings in results.items():
                emit(table_row(shape, dtype_name, mode, names, timings, check))
                failed += [f"{shape.name} {dtype_name} {mode} {t.name}: {t.error}"
                           for t in timings.values() if isinstance(t, PeerFailure)]
                if args.csv:
                    append_csv(args.csv, csv_rows(info, shape, dtype_name, mode, timings, check))
    if failed:
        emit("")
        emit("**Failures:** " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
