"""Autotune every kernel for benchmark shapes and report each config tried.

    python bench/autotune.py                                  # the four benchmark shapes
    python bench/autotune.py --shapes small --dtypes bf16 --modes train
    python bench/autotune.py --shape 16,19,64,64,1,64,5 --shape 8,10,128,3,16,3   # 2D, 1D
    python bench/autotune.py --shapes small --variants hoisted,fused_input
    python bench/autotune.py --dry-run                        # CPU: tiny shape, interpreter

For each (shape, dtype, mode, forward variant) it runs ``conv_lstm(..., backend="triton")`` once
(forward under ``no_grad`` for ``fwd``; forward + backward of a mean-square loss for ``train``)
through ``convlstm_triton.tune``: every kernel launch on the way picks its config,
benchmarking the candidates the first time a (kernel, key) is met and storing the winner on disk.
Then it prints, per kernel, a table of the configs tried: do_bench median ms, TFLOP/s where the
launcher passed a FLOP count, % of the dense matmul peak measured in this run (torch.matmul
8192^3 in bf16 for bf16/fp16 keys, in TF32 for fp32), and the chosen config. A second run finds
the entries on disk and reports them as cache hits (with the timings stored when they were tuned).

Shapes: ``--shape B,T,W,C_in,F,k`` (1D), ``B,T,H,W,C_in,F,k`` (2D), ``B,T,D,H,W,C_in,F,k`` (3D),
repeatable; or ``--shapes`` names from bench_convlstm.py's table (default: all four).
Writes ``autotune.json`` and ``autotune.csv`` (``autotune-dry-run.*`` for a dry run) to ``--out``.

``--dry-run``: without a GPU, the kernels run through Triton's interpreter (TRITON_INTERPRET=1 is
set before anything imports Triton kernels), tuning returns each kernel's first config, and the
report and files are still written (marked dry-run): an end-to-end check that runs on a CPU.
"""

import argparse
import csv
import datetime
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
MODES = ("fwd", "train")
# A dry run through the interpreter must stay small: one tiny 2D problem.
DRY_RUN_SHAPE = (1, 2, 5, 4, 2, 4, 3)
PEAK_N = 8192
CSV_FIELDS = (
    "timestamp", "gpu", "torch", "triton", "dry_run", "shape", "dtype", "mode", "variant",
    "kernel", "key", "source", "config", "ms", "tflops", "pct_peak", "peak", "chosen", "error",
)


# ---------------------------------------------------------------------------------------------
# command line


def parse_shape(text):
    """"B,T,[D,][H,]W,C_in,F,k" -> a tuple of ints (1 to 3 spatial dims)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: comma-separated integers") from None
    if not 6 <= len(values) <= 8 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: expected B,T,W,C_in,F,k (1D), B,T,H,W,C_in,F,k (2D) or "
            "B,T,D,H,W,C_in,F,k (3D), all >= 1")
    return values


def _choices(allowed, what):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or '(none given)'}; choose from "
                f"{', '.join(allowed)}")
        return names

    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=parse_shape, action="append", default=[],
                   metavar="B,T,...,C_in,F,k", help="a problem shape (repeatable)")
    p.add_argument("--shapes", default=None,
                   help="comma-separated names from bench_convlstm.py's table (default: all, "
                        "unless --shape or --dry-run is given)")
    p.add_argument("--dtypes", type=_choices(DTYPE_NAMES, "dtype"), default=["fp32", "bf16"],
                   help="comma-separated, from fp32,bf16,fp16 (default: fp32,bf16)")
    p.add_argument("--modes", type=_choices(MODES, "mode"), default=list(MODES),
                   help="comma-separated, from fwd,train (default: both)")
    p.add_argument("--variants", default="auto",
                   help="comma-separated forward variants of conv_lstm to run, e.g. "
                        "hoisted,fused_input (default: auto)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="directory for the JSON and CSV (default: bench/results)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU needed: interpreter, first configs, tiny default shape")
    p.add_argument("--retune", action="store_true",
                   help="delete this device's tuning cache first (everything is retuned)")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# shapes


def named_shapes():
    """bench_convlstm.py's shape table (name -> Shape), or {} if it cannot be imported."""
    sys.path.insert(0, HERE)
    try:
        import bench_convlstm
    except Exception as exc:  # the named table is a convenience; --shape still works
        log(f"autotune: bench_convlstm.py not importable ({type(exc).__name__}: {exc}); "
            "use --shape")
        return {}
    return dict(bench_convlstm.SHAPES)


def shape_dict(shape, name=None):
    """A tuple (B, T, *spatial, C_in, F, k) or a bench_convlstm.Shape -> tune()'s dict form."""
    if isinstance(shape, tuple):
        b, t, *spatial, c_in, f, k = shape
        size = "x".join(map(str, spatial))
        return dict(name=name or f"B{b}_T{t}_{size}_C{c_in}_F{f}_k{k}", batch=b, steps=t,
                    spatial=tuple(spatial), in_channels=c_in, filters=f, kernel=k)
    return dict(name=shape.name, batch=shape.batch, steps=shape.steps,
                spatial=tuple(shape.spatial), in_channels=shape.in_channels,
                filters=shape.filters, kernel=shape.kernel)


def fwd_flop(s):
    """2·M·N·K of the input and recurrent convs over the sequence (as bench_convlstm.py)."""
    m = s["batch"] * s["steps"] * math.prod(s["spatial"])
    k = s["kernel"]
    taps = math.prod(k) if isinstance(k, tuple) else k ** len(s["spatial"])
    return 2 * m * 4 * s["filters"] * taps * (s["in_channels"] + s["filters"])


def select_shapes(args):
    shapes = [shape_dict(s) for s in args.shape]
    names = args.shapes
    if names is None and not shapes:
        if args.dry_run:
            return [shape_dict(DRY_RUN_SHAPE, name="tiny")]
        names = "all"
    if names is not None:
        table = named_shapes()
        wanted = list(table) if names == "all" else [n.strip() for n in names.split(",")]
        unknown = [n for n in wanted if n not in table]
        if unknown:
            raise SystemExit(f"autotune: unknown shape {', '.join(unknown)}; choose from "
                             f"{', '.join(table) or '(table not importable)'} or use --shape")
        shapes += [shape_dict(table[n]) for n in wanted]
    return shapes


# ---------------------------------------------------------------------------------------------
# machine and peak


def machine_info(torch, triton, dry_run):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = {"torch": torch.__version__, "triton": triton.__version__, "date": now,
            "dry_run": dry_run, "tf32": torch.backends.cudnn.allow_tf32}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda)
    else:
        info.update(gpu="cpu (Triton interpreter)", capability=None, cuda=None)
    return info


def machine_line(info):
    cap = f" (sm_{info['capability'].replace('.', '')})" if info.get("capability") else ""
    dry = " · DRY RUN (interpreter, nothing benchmarked)" if info["dry_run"] else ""
    return (f"**{info['gpu']}**{cap} · CUDA {info['cuda']} · torch {info['torch']} · "
            f"triton {info['triton']} · {info['date']}{dry}")


def measure_peaks(torch, triton_testing):
    """Dense matmul TFLOP/s of this GPU now: bf16, and fp32 as TF32."""
    peaks = {}
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("tf32", torch.float32)):
            torch.backends.cuda.matmul.allow_tf32 = True
            a = torch.randn(PEAK_N, PEAK_N, device="cuda", dtype=dtype)
            b = torch.randn(PEAK_N, PEAK_N, device="cuda", dtype=dtype)
            ms = triton_testing.do_bench(lambda a=a, b=b: torch.matmul(a, b), warmup=25, rep=100,
                                         return_mode="median")
            peaks[name] = 2 * PEAK_N ** 3 / (ms * 1e-3) / 1e12
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
        torch.cuda.empty_cache()
    return peaks


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """tqdm when installed, else one plain line per step on stderr."""

    def __init__(self, total):
        self.total, self.done = total, 0
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, file=sys.stderr, unit="run")

    def start(self, label):
        if self.bar is not None:
            self.bar.set_description(label)
        else:
            log(f"[{self.done + 1}/{self.total}] {label} ...")

    def step(self, note=""):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif note:
            log(f"[{self.done}/{self.total}] {note}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------
# report


def peak_for(dtype_name):
    return "bf16" if dtype_name in ("bf16", "fp16") else "tf32"


def trial_rows(event, peaks):
    """One row per config tried (one row for an event that tried nothing)."""
    trials = event["trials"] or [{"config": event["chosen"], "ms": None, "error": None}]
    peak_name = peak_for(event["dtype"])
    peak = peaks.get(peak_name)
    for t in trials:
        ms, flop = t["ms"], event.get("flop")
        tflops = flop / (ms * 1e-3) / 1e12 if ms and flop else None
        yield {
            "config": t["config"], "ms": ms, "error": t["error"], "tflops": tflops,
            "pct_peak": 100 * tflops / peak if tflops and peak else None, "peak": peak_name,
            "chosen": t["config"] == event["chosen"],
        }


def _fmt(value, spec):
    return "–" if value is None else format(value, spec)


def config_text(cfg):
    return " ".join(f"{k}={v}" for k, v in cfg.items())


def kernel_tables(events, peaks):
    """Markdown: per kernel, every (run, key) with the configs tried and the chosen one."""
    lines = []
    kernels = sorted({e["kernel"] for e in events})
    for kernel in kernels:
        lines += ["", f"### {kernel}", "",
                  "| run | key | source | config | ms | TFLOP/s | % peak | chosen |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in (e for e in events if e["kernel"] == kernel):
            run = f"{e['shape']} {e['dtype']} {e['mode']}"
            if e.get("variant", "auto") != "auto":
                run += f" {e['variant']}"
            for r in trial_rows(e, peaks):
                ms = f"error: {r['error'][:60]}" if r["error"] else _fmt(r["ms"], ".4g")
                pct = f"{r['pct_peak']:.1f} ({r['peak']})" if r["pct_peak"] is not None else "–"
                mark = {"default": "default", "failed": "all failed"}.get(e["source"], "**✓**")
                lines.append(f"| {run} | `{e['key']}` | {e['source']} | {config_text(r['config'])}"
                             f" | {ms} | {_fmt(r['tflops'], '.1f')} | {pct} | "
                             f"{mark if r['chosen'] else ''} |")
    return "\n".join(lines)


def csv_rows(info, events, peaks):
    for e in events:
        for r in trial_rows(e, peaks):
            yield {
                "timestamp": info["date"], "gpu": info["gpu"], "torch": info["torch"],
                "triton": info["triton"], "dry_run": info["dry_run"], "shape": e["shape"],
                "dtype": e["dtype"], "mode": e["mode"], "variant": e.get("variant", "auto"),
                "kernel": e["kernel"], "key": e["key"],
                "source": e["source"], "config": json.dumps(r["config"], sort_keys=True),
                "ms": _blank(r["ms"]), "tflops": _blank(r["tflops"]),
                "pct_peak": _blank(r["pct_peak"]), "peak": r["peak"], "chosen": r["chosen"],
                "error": r["error"] or "",
            }


def _blank(v):
    return "" if v is None else v


def cache_summary(events, before, after, path):
    count = {s: sum(e["source"] == s for e in events)
             for s in ("tuned", "disk", "default", "failed")}
    return {"path": path, "entries_before": before, "entries_after": after,
            "disk_hits": count["disk"], "tuned": count["tuned"], "defaulted": count["default"],
            "failed": count["failed"]}


def cache_line(c):
    return (f"tuning cache {c['path']}: {c['entries_before']} entries on disk before this run, "
            f"{c['entries_after']} after; this run: {c['disk_hits']} found on disk (cache hits), "
            f"{c['tuned']} newly tuned, {c['defaulted']} defaulted (tuning off), "
            f"{c['failed']} with every config failing")


def write_outputs(out_dir, dry_run, report, rows):
    os.makedirs(out_dir, exist_ok=True)
    stem = "autotune-dry-run" if dry_run else "autotune"
    json_path = os.path.join(out_dir, stem + ".json")
    csv_path = os.path.join(out_dir, stem + ".csv")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


# ---------------------------------------------------------------------------------------------
# main


def log(message):
    print(message, file=sys.stderr, flush=True)


def emit(line=""):
    print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    if not gpu:
        if not args.dry_run:
            log("autotune: a CUDA GPU is needed to tune (torch.cuda.is_available() is False); "
                "--dry-run runs the same path on the CPU through Triton's interpreter")
            return 2
        # Read when @triton.jit decorates the kernels: before convlstm_triton is imported.
        os.environ["TRITON_INTERPRET"] = "1"
    import triton
    import triton.testing

    import convlstm_triton
    from convlstm_triton import tuning

    shapes = select_shapes(args)
    device = "cuda" if gpu else "cpu"
    if args.retune:
        tuning.clear_cache(device)
    info = machine_info(torch, triton, args.dry_run)
    peaks = {}
    if gpu and not args.no_peak:
        log("autotune: measuring the matmul peak ...")
        peaks = measure_peaks(torch, triton.testing)
    path = tuning.cache_path(device)
    before = len(tuning.cached_entries(device))

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] or ["auto"]
    combos = [(s, d, m, v) for s in shapes for d in args.dtypes for m in args.modes
              for v in variants]
    runs, events = [], []
    progress = Progress(len(combos))
    for shape, dtype_name, mode, variant in combos:
        label = f"{shape['name']} {dtype_name} {mode}"
        if variant != "auto":
            label += f" {variant}"
        progress.start(label)
        first_event = len(tuning.tuning_log())
        start = time.perf_counter()
        error = None
        try:
            convlstm_triton.tune([shape], [dtype_name], [mode], forward_variants=[variant],
                        device=device)
        except Exception as exc:  # recorded; the other runs still go
            error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:300]
        new = tuning.tuning_log()[first_event:]
        seconds = time.perf_counter() - start
        for e in new:
            e.update(shape=shape["name"], dtype=dtype_name, mode=mode, variant=variant)
        events += new
        runs.append({"shape": shape["name"], "dtype": dtype_name, "mode": mode,
                     "variant": variant, "seconds": seconds, "events": len(new),
                     "error": error, "fwd_flop": fwd_flop(shape)})
        progress.step(f"{label}: {seconds:.1f} s, {len(new)} tuning events"
                      + (f", ERROR {error}" if error else ""))
    progress.close()

    after = len(tuning.cached_entries(device))
    cache = cache_summary(events, before, after, path)
    emit(machine_line(info))
    emit()
    if peaks:
        emit("matmul peak measured now (torch.matmul 8192^3, do_bench median): "
             + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in peaks.items()))
    emit(cache_line(cache))
    emit()
    emit("| shape | dtype | mode | variant | fwd TFLOP | seconds (incl. compile + tuning) | "
         "events | error |")
    emit("|---|---|---|---|---|---|---|---|")
    for r in runs:
        emit(f"| {r['shape']} | {r['dtype']} | {r['mode']} | {r['variant']} | "
             f"{r['fwd_flop'] / 1e12:.3g} | {r['seconds']:.1f} | {r['events']} | "
             f"{r['error'] or ''} |")
    if events:
        emit(kernel_tables(events, peaks))
    else:
        emit()
        emit("No tuning events: no launch asked convlstm_triton.tuning.pick_config (are the "
             "launchers wired to it?).")

    report = {"dry_run": args.dry_run, "machine": info, "peaks_tflops": peaks, "cache": cache,
              "shapes": shapes, "dtypes": args.dtypes, "modes": args.modes, "runs": runs,
              "events": events}
    json_path, csv_path = write_outputs(args.out, args.dry_run, report,
                                        list(csv_rows(info, events, peaks)))
    emit()
    emit(f"wrote {json_path} and {csv_path}")
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
