"""The project's static performance report: every kernel launch of the Triton path (forward,
backward), compiled for sm_90a without a GPU, each config the launchers keep, and a FORECAST of
its time on an H100 or H200 (``--device``). Nothing here is a measurement.

    python bench/static_perf.py --shapes mnist_l1,mnist_l2 --dtypes bf16 --markdown out.md
    python bench/static_perf.py --variants hoisted,fused_input --modes fwd,train --json out.json
    python bench/static_perf.py --shapes mnist_l2 --measured bench/results/compare.csv
    python bench/static_perf.py --calibrate      # the model against published anchor times

How it reads the code. The real ``conv_lstm(..., backend="triton", padding="same")`` runs on CPU
tensors of the benchmark's real sizes (``torch.empty``: nothing is computed) with
``JITFunction.run`` replaced by the ahead-of-time sm_90 compile of ``perfmodel.compiling``
(Triton's own JIT specialization); each launch is recorded with its grid and arguments; grids
that depend on the SM count are sized for 132 SMs. ``convlstm_triton.tuning.pick_config`` is
replaced by "tuning by forecast": for every (kernel, key) it runs every candidate config the
launcher kept (one compile each), forecasts each, and returns the one with the smallest
forecast; the real launches then use it. A config the GPU would refuse at launch (over 227 KiB
of shared memory, or registers for no CTA) fails there. ``forward_variant="auto"`` is tuned the
same way (the variant whose launches sum to the least).

The instrument is the package ``bench/perfmodel`` (one responsibility per module, no import
circle): ``device`` (the GPUs' constants), ``compiling`` (sm_90 compile with a mocked driver),
``sass`` (reading SASS: main loop, instruction kinds, traffic, spills), ``forecast`` (the model:
its docstring states every term; ``forecast_kernel`` forecasts any Triton launch),
``calibration`` (the published anchors and the fit). This file adds what is ConvLSTM-specific:
the K-step models of the project's GEMMs (how many main-loop iterations a CTA runs) and the
recorder of the sm_90 report (``bench/recording.py`` drives the library's launch path and
records it; ``bench/amd_static.py`` uses the same machinery for AMD targets).

Per launch: executed FLOP = CTAs x K steps per CTA x FLOP of one K step (tile padding in M, N
and K included) where the kernel has a K-step model (``K_STEP_MODELS``), else the useful FLOP
the launcher states (``flop=`` of pick_config); HBM bytes = every distinct tensor argument once
(a state the previous step left in L2 still counts: an upper bound for the step kernels). Per
sequence = the sum over the real launches (best config per kernel); per step = the sequence /
T. fp32 means TF32 dots (``allow_tf32=True``).

Must run without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import contextlib
import csv
import datetime
import math
import os
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import triton  # noqa: E402
from bench_convlstm import DTYPES, SHAPES, Shape, problem_parser  # noqa: E402
from perfmodel import calibration  # noqa: E402
from perfmodel.compiling import (  # noqa: E402
    INTERPRETER_MESSAGE,
    interpreter_enabled,
    sm90_unavailable,  # noqa: F401  (the tests ask it here)
)
from perfmodel.device import DEVICES, device  # noqa: E402
from perfmodel.forecast import (  # noqa: E402, F401  (the tests read these from here too)
    KernelStats,
    forecast_launch,
    issue_bound_and_bytes_per_flop,
    kernel_stats,
    kernel_usage,
    occupancy,
    tensor_bytes,
)
from perfmodel.sass import (  # noqa: E402, F401
    Instr,
    find_loops,
    instr_kind,
    main_loop,
    parse_mma,
    parse_sass,
    sass_loop_stats,
    spill_bytes,
)
from recording import (  # noqa: E402, F401  (the tests read these from here too)
    Recorder,
    config_text,
    forward_variants,
    patched,
    run_problem,
    synthetic_shape,
    write_report,
)

SMS = DEVICES["h100"].sms  # grids sized by the SM count are sized for this
FORECAST_LABEL = "FORECAST"
VARIANT_DEFAULT = "hoisted"  # what forward_variant="auto" resolves to where nothing is measured
DEVICE = "h100"  # the device forecasts are for (--device); the peers were measured on an H100

# ---------------------------------------------------------------------------------------------
# per-kernel problem models: K steps per CTA


def _k_steps(c, kd, kh, kw, tap_major, block_k):
    taps = kd * kh * kw
    return taps * -(-c // block_k) if tap_major else -(-(taps * c) // block_k)


def _step_forward_k_steps(a):
    taps = (a["KD"], a["KH"], a["KW"])
    steps = _k_steps(a["F"], *taps, a["REC_TAP_MAJOR"], a["BLOCK_K"])
    if a["FUSED_INPUT"]:
        steps += _k_steps(a["C_IN"], *taps, a["IN_TAP_MAJOR"], a["BLOCK_K"])
    return steps


# kernel name -> K steps of one CTA from the launch's named arguments (constexprs included);
# a KeyError (a renamed argument) falls back to the useful FLOP of the launch.
K_STEP_MODELS = {
    "step_forward_kernel": _step_forward_k_steps,
    "input_projection_kernel": lambda a: _k_steps(a["C"], a["KD"], a["KH"], a["KW"],
                                                  a.get("TAP_MAJOR", False), a["BLOCK_K"]),
}


# ---------------------------------------------------------------------------------------------
# launches and their forecast


@dataclass
class Launch:
    """One recorded kernel launch; ``complete`` adds the compiled kernel's stats and the
    forecast (seconds)."""

    kernel: str  # the Triton function's name
    tuned_as: str | None  # pick_config's kernel_name, None for an untuned launch
    config: dict | None
    grid: tuple
    key: tuple  # the compile key
    compiled: object  # the CompiledKernel
    scalars: dict  # the non-tensor arguments by name (constexprs included)
    hbm_bytes: int
    useful_flop: float | None
    args: dict = field(default_factory=dict)  # tensor arguments: name -> [shape, dtype]
    stats: KernelStats | None = None
    executed_flop: float | None = None
    flop_source: str | None = None  # "k-step model", "launcher" (its useful FLOP) or None
    forecast: object = None  # perfmodel.forecast.Forecast
    forecast_s: float | None = None


def executed_flop(stats, grid, scalars, useful_flop):
    """(MMA FLOP the launch executes, where it comes from): the kernel's K-step model (tile
    padding included) where it has one and it covers the useful FLOP, else the launcher's."""
    loop = stats.loop
    model = K_STEP_MODELS.get(stats.name)
    if loop["found"] and loop["flop_per_iter"] and model is not None:
        with contextlib.suppress(KeyError, TypeError):
            per_step = loop["flop_per_iter"] / loop["k_steps_per_iter"]
            modelled = math.prod(int(g) for g in grid) * model(scalars) * per_step
            # a model below the useful FLOP no longer matches the kernel: trust the launcher
            if not useful_flop or modelled >= 0.999 * useful_flop:
                return modelled, "k-step model"
    return useful_flop, "launcher" if useful_flop else None


def complete(launches):
    """Fill in the stats and forecasts of launches (their kernels disassembled in one batch)."""
    todo = [x for x in launches if x.stats is None]
    stats = kernel_stats([(x.key, x.compiled, x.scalars.get("BLOCK_M"),
                           x.scalars.get("BLOCK_K")) for x in todo], DEVICE)
    for x in todo:
        x.stats = stats[x.key]
        x.executed_flop, x.flop_source = executed_flop(x.stats, x.grid, x.scalars,
                                                       x.useful_flop)
        x.forecast = forecast_launch(x.stats, x.grid, x.hbm_bytes, x.executed_flop, DEVICE)
        x.forecast_s = x.forecast.time_s
    return launches


def _compiler():
    """perfmodel.compiling (the compile hook), imported only where the kernels compile."""
    if interpreter_enabled():
        raise RuntimeError(INTERPRETER_MESSAGE)
    from perfmodel import compiling

    return compiling


class OutOfResourcesForecast(RuntimeError):
    """A config that the GPU would refuse at launch (shared memory or registers per CTA)."""


class _Recorder(Recorder):
    """The recorder of the sm_90 report: compiles for sm_90, refuses what an H100 would (shared
    memory or registers per CTA), and picks by forecast."""

    def compile(self, fn, args, kwargs):
        return _compiler().compile_launch(fn, args, kwargs)

    def check(self, key, kernel):
        regs, ctas_per_sm = kernel_usage(key, kernel, DEVICE)
        limit = device(DEVICE).smem_per_cta_max
        if kernel.metadata.shared > limit:  # as the GPU would refuse the launch
            raise OutOfResourcesForecast(f"shared memory {kernel.metadata.shared} B > "
                                         f"{limit} B per CTA")
        if ctas_per_sm == 0:
            raise OutOfResourcesForecast(f"{regs} registers x {dict(key[3])['num_warps']} warps")

    def make_launch(self, fn, key, kernel, grid, named, tag):
        tuned_as, config, flop = tag if tag else (None, None, None)
        return Launch(
            fn.fn.__name__, tuned_as, config, grid, key, kernel,
            {k: v for k, v in named.items() if not isinstance(v, torch.Tensor)},
            tensor_bytes(named.values()), flop,
            {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
             for k, v in named.items() if isinstance(v, torch.Tensor)})

    def choose(self, trials):
        """Tuning by forecast: the trial whose launches sum to the least."""
        complete([x for t in trials for x in t["launches"]])
        for t in trials:
            ok = t["error"] is None and t["launches"]
            t["forecast_s"] = sum(x.forecast_s for x in t["launches"]) if ok else None
        done = [(t["forecast_s"], i) for i, t in enumerate(trials)
                if t["forecast_s"] is not None]
        return min(done)[1] if done else 0


def _patched(recorder):
    return patched(recorder, SMS)


# ---------------------------------------------------------------------------------------------
# problems


def _run_problem(shape, dtype_name, variant, mode):
    run_problem(shape, DTYPES[dtype_name], variant, mode)


_problems = {}


def analyze(shape, dtype="bf16", variant=VARIANT_DEFAULT, mode="fwd"):
    """Run one problem's launches through the compile hook and tuning by forecast (cached per
    process): {"tunings": [...], "launches": [the real launches, best configs], "shape", ...}."""
    if interpreter_enabled():  # the kernels would be interpreted on real-size tensors
        raise RuntimeError(INTERPRETER_MESSAGE)
    if isinstance(shape, str):
        shape = SHAPES[shape]
    cache_key = (shape, dtype, variant, mode)
    if cache_key not in _problems:
        recorder = _Recorder()
        with _patched(recorder):
            _run_problem(shape, dtype, variant, mode)
        launches = complete(recorder.frames[0])
        _problems[cache_key] = {"shape": shape, "dtype": dtype, "variant": variant,
                                "mode": mode, "tunings": recorder.tunings,
                                "launches": launches}
    return _problems[cache_key]


def analyze_kernel_launches(shape, dtype="bf16", variant=VARIANT_DEFAULT, mode="fwd"):
    """One flat record per (tuned kernel, candidate config) of the problem, every config the
    pruner kept, plus the untuned launches: see ``launch_record``; ``chosen`` marks the configs
    that tuning by forecast picked."""
    result = analyze(shape, dtype, variant, mode)
    records = []
    for tuning in result["tunings"]:
        for i, trial in enumerate(tuning["trials"]):
            base = {"tuned_as": tuning["kernel"], "key": tuning["key"], "config": trial["config"],
                    "chosen": i == tuning["chosen"], "error": trial["error"]}
            if tuning["kernel"] == "forward_variant":
                records.append(base | {"kernel": "forward_variant",
                                       "forecast_ms": _ms(trial["forecast_s"])})
                continue
            for launch in trial["launches"] or [None]:
                records.append(base | (launch_record(launch) if launch else {}))
    untuned = {}
    for launch in result["launches"]:
        if launch.tuned_as is None:  # e.g. the unfused cell kernel: one record per kind
            same = (launch.kernel, launch.grid, id(launch.stats), launch.hbm_bytes)
            untuned.setdefault(same, []).append(launch)
    for launches in untuned.values():
        records.append({"tuned_as": None, "key": None, "chosen": True, "error": None,
                        "launches": len(launches)} | launch_record(launches[0]))
    return records


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def launch_record(launch):
    """A JSON-ready dict of one launch: the compiled kernel's stats and the forecast."""
    s, loop, fc = launch.stats, launch.stats.loop, launch.forecast
    per_step = {}
    if loop["found"]:
        per_step = {k: v / loop["k_steps_per_iter"] for k, v in loop["kinds"].items()}
    return {
        "kernel": launch.kernel, "config": launch.config, "grid": list(launch.grid),
        "num_warps": s.num_warps, "num_stages": s.num_stages, "regs": s.regs,
        "spill_bytes": s.spill_bytes, "stack_bytes": s.stack, "smem_bytes": s.shared,
        "runtime_division": list(s.runtime_division),
        "ctas_per_sm": s.ctas_per_sm, "occupancy_limit": s.occupancy_limit,
        "main_loop": {k: v for k, v in loop.items()},
        "instr_per_k_step": per_step,
        "instr_per_k_step_total": (loop["instructions"] / loop["k_steps_per_iter"]
                                   if loop["found"] else None),
        "issue_bound": s.issue_bound, "bytes_per_flop": s.bytes_per_flop,
        "hbm_bytes": launch.hbm_bytes, "useful_flop": launch.useful_flop,
        "executed_flop": launch.executed_flop, "flop_source": launch.flop_source,
        "ctas": fc.ctas, "waves": fc.waves, "iterations": fc.iterations,
        "cycles_per_iteration": fc.cycles, "l2_bytes": fc.l2_bytes, "limiter": fc.limiter,
        "bounds_ms": {k: _ms(v) for k, v in fc.bounds.items()},
        "forecast_ms": _ms(launch.forecast_s), "args": launch.args,
    }


def forecast(shape, dtype="bf16", variant=VARIANT_DEFAULT, mode="fwd"):
    """FORECAST of one problem with the best config per kernel: {"sequence_ms", "step_ms"
    (sequence / T), "kernels": {name: {"launches", "ms"}}, "launches"}."""
    result = analyze(shape, dtype, variant, mode)
    shape = result["shape"]
    kernels = {}
    for launch in result["launches"]:
        entry = kernels.setdefault(launch.kernel, {"launches": 0, "ms": 0.0})
        entry["launches"] += 1
        entry["ms"] += launch.forecast_s * 1e3
    total = sum(entry["ms"] for entry in kernels.values())
    return {"shape": shape.name, "dtype": dtype, "variant": variant, "mode": mode,
            "sequence_ms": total, "step_ms": total / shape.steps, "kernels": kernels,
            "launches": len(result["launches"]), "label": FORECAST_LABEL}


# ---------------------------------------------------------------------------------------------
# output


def header_line():
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{FORECAST_LABEL} for {device(DEVICE).name} — compiled for sm_90a with Triton "
            f"{triton.__version__} on {date}, no GPU measurement")


def _kinds_text(per_step):
    if not per_step:
        return "-"
    total = sum(per_step.values())
    parts = " ".join(f"{k} {v:g}" for k, v in per_step.items() if v)
    return f"{total:g}: {parts}"


def _mma_text(loop):
    if not loop.get("found"):
        return "no MMA"
    text = ", ".join(f"{n}× {shape.split('.', 1)[1]}" for shape, n in loop["mma_shapes"].items())
    return text + (" (no loop)" if loop.get("straight_line") else "")


def _fmt(value, spec, none="-"):
    return none if value is None else format(value, spec)


TABLE_COLUMNS = ("kernel", "variant", "config", "regs", "spill B", "smem KiB", "CTAs/SM",
                 "main-loop MMA", "instr/k-step (by kind)", "issue bound %", "B/FLOP", "waves",
                 "forecast ms")


def markdown_table(shape, dtype, variant, mode="fwd"):
    """Every (kernel, config) of the problem, the chosen configs marked with ✓."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in analyze_kernel_launches(shape, dtype, variant, mode):
        mark = " ✓" if r["chosen"] and r.get("tuned_as") else ""
        if r["kernel"] == "forward_variant":
            lines.append(f"| forward_variant | {r['config'].get('variant')}{mark} | | | | | | | "
                         f"| | | | {_fmt(r['forecast_ms'], '.4f')} |")
            continue
        if "regs" not in r:
            lines.append(f"| {r.get('tuned_as')} | {variant} | {config_text(r['config'])} | "
                         f"failed: {r['error']} |" + " |" * (len(TABLE_COLUMNS) - 4))
            continue
        bound = r["issue_bound"]
        smem = r["main_loop"].get("smem_bound", 1.0)
        count = f" ({r['launches']} launches)" if r.get("launches", 1) > 1 else ""
        lines.append(
            f"| {r['kernel']} | {variant} | {config_text(r['config'])}{mark}{count} | "
            f"{r['regs']} | {r['spill_bytes']} | {r['smem_bytes'] / 1024:.0f} | "
            f"{r['ctas_per_sm']} | "
            f"{_mma_text(r['main_loop'])} | {_kinds_text(r['instr_per_k_step'])} | "
            f"{_fmt(bound and 100 * bound, '.0f')}"
            f"{f' (smem {100 * smem:.0f})' if smem < 1 else ''} | "
            f"{_fmt(r['bytes_per_flop'], '.4f')} | "
            f"{r['waves']:.2f} | {_fmt(r['forecast_ms'], '.4f')} |")
    return "\n".join(lines)


def summary_line(fc, measured=None):
    kernels = ", ".join(f"{name} {e['launches']}× = {e['ms']:.3f} ms"
                        for name, e in fc["kernels"].items())
    text = (f"{FORECAST_LABEL} {fc['shape']} {fc['dtype']} {fc['variant']} {fc['mode']}: "
            f"{fc['step_ms']:.4f} ms per step, {fc['sequence_ms']:.3f} ms per sequence "
            f"({kernels})")
    if measured is not None:
        text += f"; measured {measured:.3f} ms"
    return text


# CSV variant names of bench/compare.py -> forward_variant
_COMPARE_VARIANTS = {"triton_fused": "hoisted", "triton_fused_input": "fused_input",
                     "triton_unfused": "unfused", "triton_four_dots": "hoisted_four_dots"}


def read_measured(path):
    """{(shape, dtype, mode, forward_variant): ms} from a CSV of bench/compare.py (variant
    triton_*) or bench/bench_convlstm.py (peer "ours": conv_lstm's default, "auto", also shown
    beside "hoisted" where no row of that variant exists); the last row of a key wins."""
    exact, ours = {}, {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                ms = float(row.get("ms") or "")
            except ValueError:
                continue
            key = (row.get("shape"), row.get("dtype"), row.get("mode"))
            if row.get("peer") == "ours":
                ours[key] = ms
            elif (row.get("variant") or "").startswith("triton_"):
                name = row["variant"]
                exact[(*key, _COMPARE_VARIANTS.get(name, name.removeprefix("triton_")))] = ms
    for key, ms in ours.items():
        exact.setdefault((*key, "auto"), ms)
        exact.setdefault((*key, VARIANT_DEFAULT), ms)
    return exact


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Shape):
        return {"name": value.name, "batch": value.batch, "steps": value.steps,
                "spatial": list(value.spatial), "in_channels": value.in_channels,
                "filters": value.filters, "kernel": value.kernel}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(shape, dtype, variant, mode):
    """JSON-ready report of one problem."""
    return _jsonable({"label": FORECAST_LABEL, "shape": analyze(shape, dtype, variant,
                                                                 mode)["shape"],
                      "dtype": dtype, "variant": variant, "mode": mode,
                      "forecast": forecast(shape, dtype, variant, mode),
                      "records": analyze_kernel_launches(shape, dtype, variant, mode)})


def parse_args(argv=None):
    p = problem_parser(__doc__, modes=("fwd",))
    p.set_defaults(dtypes=["bf16", "fp32"])
    p.add_argument("--variants", default=None,
                   help="comma-separated forward_variant values (default: every one the library "
                        f"accepts except auto; auto = tuned by forecast; now: "
                        f"{', '.join(forward_variants())})")
    p.add_argument("--filters", type=int, help="override F of every shape (a synthetic shape)")
    p.add_argument("--in-channels", type=int, help="override C_in (a synthetic shape)")
    p.add_argument("--json", metavar="PATH", help="write everything as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown here")
    p.add_argument("--measured", metavar="CSV",
                   help="a CSV of bench_convlstm.py or compare.py: measured ms beside forecasts")
    p.add_argument("--device", default=DEVICE, choices=sorted(DEVICES),
                   help=f"the GPU to forecast for (default {DEVICE}: the peers were measured "
                        "there)")
    p.add_argument("--calibrate", action="store_true",
                   help="forecast the anchor kernels against their published times and exit "
                        "(status 1 when one is off by more than 25 %%)")
    p.add_argument("--fit", action="store_true",
                   help="with --calibrate: search the calibrated constants again (minutes)")
    args = p.parse_args(argv)
    accepted = forward_variants()
    if args.variants is None:
        args.variants = [v for v in accepted if v != "auto"]
    else:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in args.variants if v not in accepted]
        if unknown:
            p.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(accepted)}")
    return args


def calibrate(fit=False):
    """Print the anchors' table (and, with ``fit``, the constants searched again); 0 when every
    anchor is within the tolerance."""
    constants = None
    if fit:
        constants, worst = calibration.fit()
        print(f"fitted on {len(calibration.FITTED)} anchors: {constants} "
              f"(worst |log(forecast / published)| {worst:.3f})")
    rows = calibration.table(constants)
    print(f"**{header_line()}**\n")
    print(calibration.markdown(rows))
    off = [r for r in rows if abs(r["ratio"] - 1) > calibration.ANCHOR_TOLERANCE]
    print(f"\n{len(rows) - len(off)} of {len(rows)} anchors within "
          f"±{100 * calibration.ANCHOR_TOLERANCE:.0f} %")
    return 1 if off else 0


def main(argv=None):
    global DEVICE
    args = parse_args(argv)
    if interpreter_enabled():
        sys.exit(INTERPRETER_MESSAGE)
    DEVICE = args.device
    if args.calibrate:
        return calibrate(args.fit)
    measured = read_measured(args.measured) if args.measured else {}
    overrides = {k: v for k, v in (("filters", args.filters),
                                   ("in_channels", args.in_channels)) if v is not None}
    out = [f"**{header_line()}**", "",
           "Per problem, every config the launcher's pruner kept (✓: the one tuning by forecast "
           "picks); forecast ms = one launch (a step kernel: one time step); instr/k-step = "
           "main-loop instructions per K step by kind; model and assumptions: the docstring of "
           "bench/static_perf.py.", ""]
    reports, summaries = [], []
    for name in args.shapes:
        shape = synthetic_shape(SHAPES[name], **overrides)
        for dtype in args.dtypes:
            for variant in args.variants:
                for mode in args.modes:
                    title = (f"### {shape.name} ({shape.describe()}) {dtype}"
                             f"{' (TF32 dots)' if dtype == 'fp32' else ''} {variant} {mode}")
                    print(f"{title} ...", file=sys.stderr, flush=True)
                    try:
                        fc = forecast(shape, dtype, variant, mode)
                    except Exception as exc:  # one failing problem does not end the report
                        out += [title, "", f"failed: {type(exc).__name__}: {exc}"[:500], ""]
                        reports.append(_jsonable({"shape": shape, "dtype": dtype,
                                                  "variant": variant, "mode": mode,
                                                  "error": f"{type(exc).__name__}: {exc}"}))
                        continue
                    seen = measured.get((shape.name, dtype, mode, variant))
                    out += [title, "", markdown_table(shape, dtype, variant, mode), "",
                            summary_line(fc, seen), ""]
                    summaries.append((fc, seen))
                    rep = report(shape, dtype, variant, mode)
                    rep["measured_ms"] = seen
                    reports.append(rep)
    out += ["### Summary (FORECAST, best config per kernel)", "",
            "| shape | dtype | variant | mode | step ms | sequence ms | measured ms |",
            "|---|---|---|---|---|---|---|"]
    for fc, seen in summaries:
        out.append(f"| {fc['shape']} | {fc['dtype']} | {fc['variant']} | {fc['mode']} | "
                   f"{fc['step_ms']:.4f} | {fc['sequence_ms']:.3f} | {_fmt(seen, '.3f')} |")
    write_report("\n".join(out), args.markdown, args.json,
                 {"header": header_line(), "triton": triton.__version__,
                  "torch": torch.__version__, "model": _model_constants(),
                  "problems": reports})
    return 0


def _model_constants():
    from dataclasses import asdict

    return {"device": DEVICE, **asdict(device(DEVICE)), "clock_hz": device(DEVICE).clock_hz}


if __name__ == "__main__":
    sys.exit(main())
