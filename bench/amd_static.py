"""The project's static report for AMD GPUs: every kernel launch of the Triton path (forward,
training), compiled for gfx942 (MI300X, CDNA3) and gfx90a (MI200, CDNA2) without a GPU, each
config the launchers' pruners keep, read from the AMDGCN assembly. No time: nothing here is a
measurement or a forecast (no AMD model is calibrated; an uncalibrated MI300X forecast would
be a guess).

    python bench/amd_static.py                                     # everything (long)
    python bench/amd_static.py --archs gfx942 --shapes mnist_l2 --dtypes bf16 --modes fwd
    python bench/amd_static.py --json out.json --markdown out.md

How it reads the code: as ``bench/static_perf.py`` does (``bench/recording.py``: the real
``conv_lstm(..., backend="triton", padding="same")`` on CPU tensors of the benchmark's sizes,
``JITFunction.run`` replaced by an ahead-of-time compile, ``tuning.pick_config`` by a trial of
every kept config), with the compile for ``GPUTarget("hip", arch, 64)`` (Triton's HIP
backend, ``perfmodel.compiling``) and the launch path seeing the AMD GPU's ``Platform``
(``convlstm_triton.platform.amd_platform``: 64 KiB of LDS a workgroup for the pruners, no TMA,
fp32 dots in xf32 (TF32) on gfx942 and IEEE on gfx90a, which has none). A config the GPU would
refuse at launch (LDS over 64 KiB, a workgroup over 1024 lanes) fails there, as Triton's
launcher would fail it. The real launches use the first config that compiled, the launcher's
default (``tuning.pick_config`` where nothing is timed); every kept config is reported. Grids
sized by the CU count are sized for an MI300X (304 CUs) on gfx942 and an MI250X GCD (110) on
gfx90a: only the weight gradient's split depends on it.

Per launch (``perfmodel.amdgcn``: where each number comes from, the occupancy formula): VGPRs,
AGPRs, SGPRs, scratch bytes per lane (spills), LDS bytes, waves per SIMD (and what limits
them), and the MFMA instructions of the main loop. ``num_warps`` counts 64-lane waves on AMD:
the configs' 4 and 8 warps (written for NVIDIA) are workgroups of 256 and 512 lanes; their 16
warps (1024 lanes, a workgroup's limit, which Triton's HIP backend compiles) are all 4-stage
128 x 256 tiles that no 64 KiB LDS holds: the pruners drop them on gfx90a/gfx942.

Must run without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import datetime
import hashlib
import os
import sys
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import triton  # noqa: E402
from bench_convlstm import DTYPES, SHAPES, problem_parser  # noqa: E402
from perfmodel import amdgcn  # noqa: E402
from perfmodel.compiling import (  # noqa: E402
    INTERPRETER_MESSAGE,
    hip_target,
    hip_unavailable,
    interpreter_enabled,
)
from recording import (  # noqa: E402
    Recorder,
    config_text,
    patched,
    run_problem,
    synthetic_shape,
    write_report,
)

ARCHS = ("gfx942", "gfx90a")
CU_COUNT = {"gfx942": 304, "gfx90a": 110, "gfx950": 256}  # MI300X, MI250X (one GCD), MI355X
VARIANTS = ("hoisted", "fused_input")  # what forward_variant="auto" chooses between
# A launch is gated as a GEMM where its compiled specialization has a tl.dot (the GEMM kernels:
# step_forward, input_projection, step_backward, weight_grad, input_grad; the last backward
# step's step_backward has none, no recurrent gradient to propagate; the cell kernels and
# input_grad_reduce, C_in < 16, have none); its main loop must then run on MFMA.
LABEL = "COMPILED, NOT MEASURED"


class OutOfResources(RuntimeError):
    """A config the AMD GPU would refuse at launch (LDS or lanes per workgroup)."""


@dataclass
class AmdLaunch:
    """One recorded kernel launch and its compiled code's stats."""

    kernel: str
    tuned_as: str | None  # pick_config's kernel_name, None for an untuned launch
    config: dict | None
    grid: tuple
    key: tuple  # the compile key
    stats: amdgcn.AmdKernelStats


def amd_platform(arch):
    from convlstm_triton.platform import amd_platform

    return amd_platform(arch)


class AmdRecorder(Recorder):
    """Compiles for ``arch``, refuses what the GPU would, keeps the launcher's default."""

    def __init__(self, arch):
        super().__init__()
        self.arch = arch
        self.target = hip_target(arch)
        self.lds_limit = amd_platform(arch).shared_memory
        self.stats = {}  # compile key -> AmdKernelStats

    def compile(self, fn, args, kwargs):
        from perfmodel import compiling

        return compiling.compile_launch(fn, args, kwargs, target=self.target)

    def check(self, key, kernel):
        lanes = kernel.metadata.num_warps * kernel.metadata.warp_size
        if kernel.metadata.shared > self.lds_limit:  # as Triton's launcher would refuse it
            raise OutOfResources(f"LDS {kernel.metadata.shared} B > {self.lds_limit} B per "
                                 "workgroup")
        limit = amdgcn.ARCHS[self.arch].max_workgroup_lanes
        if lanes > limit:
            raise OutOfResources(f"{lanes} lanes > {limit} per workgroup")

    def make_launch(self, fn, key, kernel, grid, named, tag):
        if key not in self.stats:
            self.stats[key] = amdgcn.kernel_stats(kernel)
        tuned_as, config, _ = tag if tag else (None, None, None)
        return AmdLaunch(fn.fn.__name__, tuned_as, config, grid, key, self.stats[key])


_problems = {}


def analyze(shape, dtype="bf16", variant="hoisted", mode="fwd", arch="gfx942"):
    """One problem's launches for ``arch`` (cached per process): {"tunings": [...], "launches":
    [the real launches], ...}."""
    if interpreter_enabled():
        raise RuntimeError(INTERPRETER_MESSAGE)
    if isinstance(shape, str):
        shape = SHAPES[shape]
    cache_key = (shape, dtype, variant, mode, arch)
    if cache_key not in _problems:
        recorder = AmdRecorder(arch)
        with patched(recorder, CU_COUNT[arch], platform=amd_platform(arch)):
            run_problem(shape, DTYPES[dtype], variant, mode)
        _problems[cache_key] = {"shape": shape, "dtype": dtype, "variant": variant,
                                "mode": mode, "arch": arch, "tunings": recorder.tunings,
                                "launches": recorder.frames[0]}
    return _problems[cache_key]


def launch_record(launch):
    """A JSON-ready dict of one launch's compiled code."""
    s = launch.stats
    record = {"kernel": launch.kernel, "grid": list(launch.grid),
              "compile_key": hashlib.sha1(repr(launch.key).encode()).hexdigest()[:12]}
    record.update({k: v for k, v in asdict(s).items() if k not in ("name", "loop")})
    record["main_loop"] = s.loop
    record["mfma_in_main_loop"] = s.mfma_in_main_loop
    record["mfma_without_loop"] = s.mfma_without_loop
    record["gemm"] = s.dots > 0
    return record


def records(shape, dtype="bf16", variant="hoisted", mode="fwd", arch="gfx942"):
    """One record per (tuned kernel, key, candidate config) of the problem, every config the
    pruners kept (``chosen``: the one the real launches use; ``error``: why a config failed),
    plus one per distinct untuned kernel variant (the cell kernels)."""
    result = analyze(shape, dtype, variant, mode, arch)
    out = []
    for tuning in result["tunings"]:
        if tuning["kernel"] == "forward_variant":
            continue
        for i, trial in enumerate(tuning["trials"]):
            base = {"tuned_as": tuning["kernel"], "key": tuning["key"],
                    "config": trial["config"], "chosen": i == tuning["chosen"],
                    "error": trial["error"]}
            seen = set()
            for launch in trial["launches"] or [None]:
                if launch is not None and launch.key in seen:
                    continue
                if launch is not None:
                    seen.add(launch.key)
                out.append(base | (launch_record(launch) if launch else {}))
    untuned = {}
    for launch in result["launches"]:
        if launch.tuned_as is None:
            untuned.setdefault(launch.key, []).append(launch)
    for launches in untuned.values():
        out.append({"tuned_as": None, "key": None, "config": None, "chosen": True,
                    "error": None, "launches": len(launches)} | launch_record(launches[0]))
    return out


def mfma_ok(record):
    """A GEMM kernel's MFMA gate: MFMAs in its main loop, or, in a kernel without any loop (K
    in one step: the input projection at C_in = 1), MFMAs in its straight-line code."""
    return record["mfma_in_main_loop"] or record["mfma_without_loop"]


# ---------------------------------------------------------------------------------------------
# output

TABLE_COLUMNS = ("kernel", "config", "VGPRs", "AGPRs", "SGPRs", "scratch B", "LDS KiB",
                 "waves/SIMD", "main-loop MFMA (per iteration)")


def markdown_table(recs):
    """One row per record (✓: the config the real launches use)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in recs:
        mark = " ✓" if r["chosen"] and r.get("tuned_as") else ""
        count = f" ({r['launches']} launches)" if r.get("launches", 1) > 1 else ""
        if "vgprs" not in r:
            lines.append(f"| {r['tuned_as']} | {config_text(r['config'])} | failed: "
                         f"{r['error']} |" + " |" * (len(TABLE_COLUMNS) - 3))
            continue
        lines.append(
            f"| {r['kernel']} | {config_text(r['config'])}{mark}{count} | {r['vgprs']} | "
            f"{r['agprs']} | {r['sgprs']} | {r['scratch_bytes']} | {r['lds_bytes'] / 1024:.0f} | "
            f"{r['waves_per_simd']} ({r['occupancy_limit']}) | "
            f"{amdgcn.mfma_text(r['main_loop']) if r['dots'] else '- (no tl.dot)'} |")
    return "\n".join(lines)


def summarize(recs):
    """Counts of one problem's records (one per kernel x config): kernel variants (distinct
    compiles), configs failed, with scratch, GEMM kernels without MFMA in the main loop; the
    fewest waves per SIMD of the chosen configs, the most LDS and registers."""
    ok = [r for r in recs if "vgprs" in r]
    chosen = [r for r in ok if r["chosen"]]
    return {
        "records": len(recs),
        "variants": len({r["compile_key"] for r in ok}),
        "failed": sum(1 for r in recs if "vgprs" not in r),
        "scratch": sum(1 for r in ok if r["scratch_bytes"]),
        "gemm": sum(1 for r in ok if r["gemm"]),
        "gemm_without_mfma": sum(1 for r in ok if r["gemm"] and not mfma_ok(r)),
        "no_wave": sum(1 for r in ok if r["waves_per_simd"] == 0),
        "min_waves_chosen": min((r["waves_per_simd"] for r in chosen), default=None),
        "max_lds_kib": max((r["lds_bytes"] for r in ok), default=0) / 1024,
        "max_vgprs": max((r["total_vgprs"] for r in ok), default=0),
    }


SUMMARY_COLUMNS = ("arch", "shape", "dtype", "variant", "mode", "kernel x config compiled",
                   "failed", "scratch > 0", "GEMM without MFMA loop", "max VGPRs (+AGPRs)",
                   "max LDS KiB", "min waves/SIMD (chosen)")


def summary_row(p, s):
    return (f"| {p['arch']} | {p['shape']} | {p['dtype']} | {p['variant']} | {p['mode']} | "
            f"{s['records'] - s['failed']} | {s['failed']} | {s['scratch']} | "
            f"{s['gemm_without_mfma']} of {s['gemm']} | {s['max_vgprs']} | "
            f"{s['max_lds_kib']:.0f} | {s['min_waves_chosen']} |")


def header_line():
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{LABEL}: AMDGCN compiled with Triton {triton.__version__} (HIP backend) on "
            f"{date}, no AMD GPU, no timing")


def parse_args(argv=None):
    p = problem_parser(__doc__)
    p.set_defaults(dtypes=["bf16", "fp32"])
    p.add_argument("--archs", default=",".join(ARCHS),
                   help=f"comma-separated AMD archs (default {','.join(ARCHS)})")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated forward_variant values (default {','.join(VARIANTS)})")
    p.add_argument("--filters", type=int, help="override F of every shape (a synthetic shape)")
    p.add_argument("--in-channels", type=int, help="override C_in (a synthetic shape)")
    p.add_argument("--kernel", type=int, help="override k (a synthetic shape)")
    p.add_argument("--json", metavar="PATH", help="write every record as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also write the markdown here")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in CU_COUNT]
    if unknown:
        p.error(f"unknown archs {', '.join(unknown)}; choose from {', '.join(CU_COUNT)}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    if interpreter_enabled():
        sys.exit(INTERPRETER_MESSAGE)
    reason = hip_unavailable(args.archs[0])
    if reason:
        sys.exit(f"this Triton cannot compile for AMD GPUs: {reason}")
    overrides = {k: v for k, v in (("filters", args.filters), ("in_channels", args.in_channels),
                                   ("kernel", args.kernel)) if v is not None}
    out = [f"**{header_line()}**", "",
           "Per problem, every config the launchers' pruners kept (✓: the one the real launches "
           "use, the launcher's default); VGPRs = architectural VGPRs, AGPRs = accumulation "
           "registers (one 512-register file per SIMD lane on gfx90a/gfx942); scratch = bytes "
           "per lane (spills); waves/SIMD (what limits them): bench/perfmodel/amdgcn.py.", ""]
    problems, summary = [], []
    for arch in args.archs:
        for name in args.shapes:
            shape = synthetic_shape(SHAPES[name], **overrides)
            for dtype in args.dtypes:
                for variant in args.variants:
                    for mode in args.modes:
                        problem = {"arch": arch, "shape": shape.name, "dtype": dtype,
                                   "variant": variant, "mode": mode}
                        precision = ("" if dtype != "fp32" else
                                     " (xf32 dots)" if amd_platform(arch).tf32 else
                                     " (IEEE fp32 dots)")
                        title = (f"### {arch} {shape.name} ({shape.describe()}) {dtype}"
                                 f"{precision} {variant} {mode}")
                        print(f"{title} ...", file=sys.stderr, flush=True)
                        try:
                            recs = records(shape, dtype, variant, mode, arch)
                        except Exception as exc:  # one failing problem does not end the report
                            error = f"{type(exc).__name__}: {exc}"[:500]
                            out += [title, "", f"failed: {error}", ""]
                            problems.append(problem | {"error": error})
                            summary.append((problem, None))
                            continue
                        s = summarize(recs)
                        out += [title, "", markdown_table(recs), ""]
                        problems.append(problem | {"summary": s, "records": recs})
                        summary.append((problem, s))
    out += ["### Summary (compiled code, no timing)", "",
            "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    bad = 0
    for p, s in summary:
        if s is None:
            bad += 1
            out.append(f"| {p['arch']} | {p['shape']} | {p['dtype']} | {p['variant']} | "
                       f"{p['mode']} | failed |" + " |" * (len(SUMMARY_COLUMNS) - 6))
            continue
        bad += bool(s["failed"] or s["scratch"] or s["gemm_without_mfma"] or s["no_wave"])
        out.append(summary_row(p, s))
    out += ["", f"{len(summary) - bad} of {len(summary)} problems: every kept config compiles, "
                "0 scratch, MFMA in every GEMM main loop."]
    write_report("\n".join(out), args.markdown, args.json,
                 {"header": header_line(), "triton": triton.__version__,
                  "torch": torch.__version__, "problems": problems})
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
