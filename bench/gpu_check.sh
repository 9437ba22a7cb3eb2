#!/usr/bin/env bash
# One-shot check on a GPU machine, NVIDIA (CUDA) or AMD (ROCm), most valuable first, in about
# 8 minutes:
#
#   1. machine.txt      nvidia-smi (rocm-smi or amd-smi on AMD), python/torch/triton versions
#   2. install          pip install -e . (editable, no deps, no network); a PYTHONPATH fallback
#   3. smoke            import, then one tiny forward + backward per dtype (bf16, fp16, fp32) of
#                       conv_lstm(backend="triton") against backend="reference" (~30 s): a
#                       broken build shows at once, and the script goes on to the tests
#   4. anchors          bench/anchor_timing.py: the performance model's anchor kernels timed
#                       beside their forecasts and published H100 times (~60 s)
#   5. tests bf16       pytest -m "gpu or kernels" -k bf16 (includes one run with autotuning on)
#   6. tests fp32       the fp32 tests and those without a dtype in their id
#   7. compare bf16     bench/compare.py per shape: mnist_l2, nowcast, mnist_l1, small; variants
#                       eager_cat, eager_hoisted, triton_fused, triton_fused_input, triton_tma, triton_graphs
#                       and torch.compile (compile runs last within a shape)
#   8. compare fp32     the same shapes in fp32, while time is left
#   9. tests fp16       the fp16 tests, while time is left
#
# The vendor is detected (GPU_VENDOR in machine.txt): a ROCm build of torch reports
# torch.version.hip and keeps the "cuda" device type, so the same steps run there unchanged;
# where torch does not say (a CPU build), the SMI tool on PATH does (nvidia-smi, else rocm-smi
# or amd-smi).
#
# For a machine that already has torch, Triton and Python and no package registry: installs
# nothing but this repository. Run from anywhere:
#
#     bash bench/gpu_check.sh            # results in bench/out/ of the repository
#     OUT=/some/dir bash bench/gpu_check.sh  # (a relative OUT is taken from the current dir)
#     DRY_RUN=1 bash bench/gpu_check.sh  # CPU check of this script (no GPU, no install): the
#                                        # smoke on Triton's interpreter, tests collected only,
#                                        # compare.py --dry-run for the first shape
#
# Every step runs under `timeout` (its limit: the step's cap, or what is left of the budget
# minus what later steps keep; a step with under MIN_STEP_S seconds left is SKIPPED) and writes
# its own log as it goes. A step that times out gets SIGUSR1 first, on which every Python
# process of the step dumps the stacks of all its threads into the log (faulthandler, hooked in
# by a sitecustomize this script puts on PYTHONPATH), then SIGKILL 5 s later; each test also
# dumps its stacks after FAULT_S seconds (pytest -o faulthandler_timeout), and a crash (SIGSEGV,
# SIGABRT) dumps them too (PYTHONFAULTHANDLER=1). Results are written as they come: summary.txt
# gets a line per step (and per smoke dtype, and the failed tests) the moment it ends, and
# compare.py appends its CSV rows and rewrites its markdown after every variant.
#
# Writes to $OUT: machine.txt, install.log, smoke.log, anchors.{log,csv,md},
# tests-{bf16,fp32,fp16}.log,
# compare-<dtype>-<shape>.{log,md,png}, compare.csv (all rows), compare.md (the tables, in the
# order run), tuning-cache/ (the autotuning cache, with warm/cold timing per entry) and
# summary.txt. At exit, even when interrupted (an EXIT trap; INT/TERM stop the running step
# first), everything is packed into all-results.tar.gz, with summary.txt, smoke.log, compare.md
# and the test logs kept beside it (PACK=0: leave every file as it is). Exit status: 0 when no
# step failed or timed out (steps skipped for time do not count), 1 otherwise.
#
# Environment knobs: PYTHON (default python, else python3), BUDGET_S (whole script, default
# 470), BENCH_RESERVE_S (kept for the comparisons while tests run, default 200), SMOKE_S (60),
# ANCHORS_S (75), TESTS_BF16_S (90), TESTS_FP32_S (150), TESTS_FP16_S (90), COMPARE_SHAPE_S (cap per
# compare.py run, 75), MIN_STEP_S (20), FAULT_S (60), TEST_WORKERS (pytest-xdist workers, 6),
# COMPARE_SHAPES, COMPARE_DTYPES, COMPARE_VARIANTS, DRY_RUN, PACK, OUT, BUDGET_FROM (start, or
# smoke: the budget counts from the smoke step on).
set -uo pipefail  # no -e: a failing step is recorded and the next one runs

repo="$(cd "$(dirname "$0")/.." && pwd)" || exit 2
OUT="${OUT:-$repo/bench/out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
cd "$repo" || exit 2
if [[ -z "${PYTHON:-}" ]]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
DRY_RUN="${DRY_RUN:-0}"
BUDGET_S="${BUDGET_S:-470}"
BENCH_RESERVE_S="${BENCH_RESERVE_S:-200}"
SMOKE_S="${SMOKE_S:-60}"
ANCHORS_S="${ANCHORS_S:-75}"
TESTS_BF16_S="${TESTS_BF16_S:-90}"
TESTS_FP32_S="${TESTS_FP32_S:-150}"
TESTS_FP16_S="${TESTS_FP16_S:-90}"
COMPARE_SHAPE_S="${COMPARE_SHAPE_S:-75}"
MIN_STEP_S="${MIN_STEP_S:-20}"
FAULT_S="${FAULT_S:-60}"
TEST_WORKERS="${TEST_WORKERS:-6}"
COMPARE_VARIANTS="${COMPARE_VARIANTS:-eager_cat,eager_hoisted,triton_fused,triton_fused_input,triton_tma,triton_graphs,compile}"
if [[ "$DRY_RUN" == 1 ]]; then
    COMPARE_SHAPES="${COMPARE_SHAPES:-mnist_l2}"
    COMPARE_VARIANTS="eager_cat,triton_fused"
    # the CPU even where there is a GPU, the kernels through Triton's interpreter (ROCm reads
    # HIP_VISIBLE_DEVICES as well)
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES="" HIP_VISIBLE_DEVICES=""
else
    COMPARE_SHAPES="${COMPARE_SHAPES:-mnist_l2 nowcast mnist_l1 small}"
fi
COMPARE_DTYPES="${COMPARE_DTYPES:-bf16 fp32}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1  # no network: never let pip wait on it
export PYTHONFAULTHANDLER=1  # a Python process that crashes dumps its stacks
export CONVLSTM_TRITON_CACHE_DIR="$OUT/tuning-cache"  # tuned once, by the first peer that runs
ulimit -c 0  # no core files

# SIGUSR1 -> every Python process started from here dumps all its threads' stacks and goes on:
# a step past its time limit shows where it was. (Not SIGABRT: timeout sends its signal to the
# command and then to its process group, and a second SIGABRT kills faulthandler mid-dump.)
hooks="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_hooks.XXXXXX")" || exit 2
cat >"$hooks/sitecustomize.py" <<'EOF'
"""Installed by bench/gpu_check.sh: SIGUSR1 dumps the stacks of every thread to stderr."""
import faulthandler
import signal

try:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
except (AttributeError, ValueError, RuntimeError, OSError):
    pass


def _run_shadowed():
    """Run the sitecustomize this one shadows, if there is one."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


_run_shadowed()
EOF
export PYTHONPATH="$hooks${PYTHONPATH:+:$PYTHONPATH}"

deadline=$((SECONDS + BUDGET_S))
status=0
child=""
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
: >"$OUT/compare.md"
rm -f "$OUT/all-results.tar.gz"

banner() { printf '\n=== %s ===\n' "$*"; }
loud() { printf '\n!!!!!!!!!! %s !!!!!!!!!!\n\n' "$*" >&2; }
note() { echo "$*" | tee -a "$SUMMARY"; }  # a summary line, written now
record() {  # record <step> <exit status> [detail]
    local what="ok"
    (($2 == 124 || $2 == 137)) && what="TIMED OUT"
    (($2 != 0 && $2 != 124 && $2 != 137)) && what="FAILED"
    note "$1: $what (exit $2${3:+, $3})"
    if (($2 != 0)); then status=1; fi
}
# seconds a step may run: its cap, or what is left of the budget minus <reserve>
limit() {  # limit <cap> [reserve]
    local n=$((deadline - SECONDS - ${2:-0}))
    ((n > $1)) && n=$1
    ((n < 0)) && n=0
    echo "$n"
}

# run_step <name> <seconds> <log> <command...>: the command under timeout (SIGUSR1 first, so
# Python dumps its stacks; KILL 5 s later), its output into <log> and mirrored to the console;
# recorded in the summary. Run in the background so that INT/TERM reach the trap at once.
run_step() {
    local name=$1 secs=$2 log=$3 rc=0 t0=$SECONDS tailer
    shift 3
    if ((secs < MIN_STEP_S)); then
        note "$name: SKIPPED (only ${secs}s of the budget left)"
        return 0
    fi
    banner "$name (limit ${secs}s) -> $log"
    : >"$log"
    timeout -s USR1 -k 5 "$secs" "$@" >>"$log" 2>&1 </dev/null &
    child=$!
    tail -n +1 -f --pid="$child" "$log" 2>/dev/null &
    tailer=$!
    wait "$child" || rc=$?
    child=""
    wait "$tailer" 2>/dev/null
    record "$name" "$rc" "$((SECONDS - t0))s"
    return 0
}

# The running step, if any: SIGALRM to its timeout ends it as its time limit would (SIGUSR1:
# stacks into its log, KILL 5 s later); KILL what is left of its process group after 10 s.
stop_child() {
    if [[ -n "$child" ]]; then
        kill -ALRM "$child" 2>/dev/null
        local waited=0
        while ((waited < 10)) && kill -0 -- "-$child" 2>/dev/null; do
            sleep 1
            waited=$((waited + 1))
        done
        kill -KILL -- "-$child" 2>/dev/null
        child=""
    fi
}

pack() {
    [[ "${PACK:-1}" == 1 ]] || return 0
    # A lent GPU machine hands back only a few files: everything goes into one archive, and
    # only the summary, the smoke and test logs and the comparison tables stay beside it.
    local keep=(summary.txt smoke.log anchors.md compare.md tests-bf16.log tests-fp32.log
                tests-fp16.log)
    local tmp="${TMPDIR:-/tmp}/all-results.$$.tar.gz" f name k kept
    if tar czf "$tmp" -C "$OUT" --exclude=./all-results.tar.gz . && mv -f "$tmp" "$OUT/all-results.tar.gz"; then
        shopt -s nullglob dotglob
        for f in "$OUT"/*; do
            name=${f##*/}
            kept=0
            for k in all-results.tar.gz "${keep[@]}"; do [[ "$name" == "$k" ]] && kept=1; done
            ((kept)) || rm -rf -- "$f"
        done
        shopt -u nullglob dotglob
        echo "all outputs packed into $OUT/all-results.tar.gz"
    else
        rm -f "$tmp"
        loud "packing failed: the outputs stay unpacked in $OUT"
    fi
}

finish() {
    trap - EXIT INT TERM
    stop_child
    banner "summary (elapsed ${SECONDS}s)"
    cat "$SUMMARY"
    pack
    rm -rf "$hooks"
    exit "$status"
}
interrupted() {
    loud "interrupted (signal $1): packing what was written"
    stop_child
    note "interrupted by SIG$1 after ${SECONDS}s"
    status=1
    exit 1  # runs finish (the EXIT trap)
}
trap finish EXIT
trap 'interrupted INT' INT
trap 'interrupted TERM' TERM

# ---------------------------------------------------------------------------------------------
# NVIDIA or AMD: torch's build says (torch.version.hip on ROCm, whose GPUs keep the "cuda" device
# type); a CPU build of torch says neither, and then the vendor's SMI tool on PATH does.
detect_vendor() {
    local vendor
    vendor="$(timeout -k 5 60 "$PYTHON" -c 'import torch
print("amd" if getattr(torch.version, "hip", None) else "nvidia" if torch.version.cuda else "")' \
        2>/dev/null)" || vendor=""
    if [[ -z "$vendor" ]]; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            vendor=nvidia
        elif command -v rocm-smi >/dev/null 2>&1 || command -v amd-smi >/dev/null 2>&1; then
            vendor=amd
        else
            vendor=none
        fi
    fi
    echo "$vendor"
}
GPU_VENDOR="$(detect_vendor)"

smi_report() {  # the vendor's view of its GPUs (the driver, memory, clocks, temperatures)
    if [[ "$GPU_VENDOR" == amd ]]; then
        if command -v rocm-smi >/dev/null 2>&1; then
            timeout -k 5 30 rocm-smi || echo "rocm-smi failed"
            timeout -k 5 30 rocm-smi --showproductname || true
        elif command -v amd-smi >/dev/null 2>&1; then
            timeout -k 5 30 amd-smi static || echo "amd-smi failed"
        else
            echo "rocm-smi and amd-smi are missing"
        fi
    else
        timeout -k 5 30 nvidia-smi || echo "nvidia-smi failed or is missing"
    fi
}

banner "machine -> $OUT/machine.txt"
{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    [[ "$DRY_RUN" == 1 ]] && echo "DRY_RUN=1: a CPU check of bench/gpu_check.sh, nothing measured"
    echo "GPU_VENDOR=$GPU_VENDOR"
    smi_report
    timeout -k 5 60 "$PYTHON" - <<'EOF' || echo "python could not report versions"
import os, platform, sys
import torch, triton
hip = getattr(torch.version, "hip", None)
print("python", sys.version.split()[0], platform.platform(), "|", os.cpu_count(), "CPUs")
if hip:  # ROCm: cudnn.version() is MIOpen's
    print("torch", torch.__version__, "| HIP", hip, "| MIOpen", torch.backends.cudnn.version(),
          "| triton", triton.__version__)
else:
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN",
          torch.backends.cudnn.version(), "| triton", triton.__version__)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    arch = (getattr(p, "gcnArchName", "") or "?").split(":")[0] if hip else f"sm_{p.major}{p.minor}"
    print("gpu:", p.name, arch, f"{p.total_memory / 2**30:.0f} GiB")
for name in ("numpy", "pytest", "xdist", "matplotlib"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError:
        print(name, "NOT INSTALLED")
EOF
} 2>&1 | tee "$OUT/machine.txt"

# ---------------------------------------------------------------------------------------------
banner "install (editable, no deps, no network) -> $OUT/install.log"
rc=0
why="pip install -e . failed"
: >"$OUT/install.log"
if [[ "$DRY_RUN" == 1 ]]; then
    echo "dry run: nothing installed, the current environment is used" >>"$OUT/install.log"
else
    timeout -k 5 120 "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -q -e . \
        >>"$OUT/install.log" 2>&1 || rc=$?
fi
if ((rc == 0)); then
    why="convlstm_triton does not import"
    "$PYTHON" -c "import convlstm_triton.functional, convlstm_triton.kernels" \
        >>"$OUT/install.log" 2>&1 || rc=$?
fi
if ((rc != 0)); then
    tail -n 20 "$OUT/install.log"
    loud "$why (exit $rc): using a source tree on PYTHONPATH instead"
    # The installed layout maps kernels/ to convlstm_triton.kernels; rebuild that with symlinks.
    src="$(mktemp -d "${TMPDIR:-/tmp}/convlstm_triton_src.XXXXXX")"
    mkdir "$src/convlstm_triton"
    ln -s "$PWD"/convlstm_triton/* "$src/convlstm_triton/"
    ln -s "$PWD/kernels" "$src/convlstm_triton/kernels"
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    # and not the repository's own convlstm_triton/ (no kernels/ inside), which python -c and -m
    # would find first in the current directory (Python >= 3.11)
    export PYTHONSAFEPATH=1
    if "$PYTHON" -c "import convlstm_triton.functional, convlstm_triton.kernels" \
        >>"$OUT/install.log" 2>&1; then
        note "install: $why (exit $rc); importing from $src instead"
        rc=0
    else
        loud "convlstm_triton does not import: the smoke, tests and benchmarks will fail"
    fi
fi
record install "$rc"

# ---------------------------------------------------------------------------------------------
# The smoke: conv_lstm(backend="triton") against backend="reference" (float64 on the same rounded
# inputs), forward outputs and every gradient, per dtype, with tests/helpers.py's tolerances.
# Writes "smoke <dtype>: ok|FAILED ..." to the summary at once.
cat >"$OUT/smoke.py" <<'EOF'
import math, os, sys, time, traceback

summary = os.environ["SMOKE_SUMMARY"]


def report(line):
    print(line, flush=True)
    with open(summary, "a") as f:
        f.write(line + "\n")


try:
    import torch
    from convlstm_triton.functional import conv_lstm
except Exception:
    traceback.print_exc()
    report("smoke import: FAILED (see smoke.log)")
    sys.exit(1)
cuda = torch.cuda.is_available()
if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
    report("smoke: FAILED (torch.cuda.is_available() is False)")
    sys.exit(1)
device = "cuda" if cuda else "cpu"
try:  # the tests' table (tests/helpers.py imports pytest, which may be missing)
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    from helpers import TF32_TOLERANCE, TOLERANCES
except Exception:
    TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
    TF32_TOLERANCE = 5e-3
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
B, T, H, W, C, F, K = 2, 3, 9, 7, 3, 8, 3


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return (out - ref).norm().item() / max(ref.norm().item(), 1e-30)


def run(tensors, upstream, backend):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = conv_lstm(*leaves, padding="same", backend=backend)
    grads = torch.autograd.grad(out, leaves, [u.to(o.dtype) for u, o in zip(upstream, out)])
    return out, grads


g = torch.Generator().manual_seed(0)
scale = 1 / math.sqrt(K * K * (C + F))
base = [torch.randn(B, T, H, W, C, generator=g, dtype=torch.float64),
        torch.randn(K, K, C, 4 * F, generator=g, dtype=torch.float64) * scale,
        torch.randn(K, K, F, 4 * F, generator=g, dtype=torch.float64) * scale,
        torch.randn(4 * F, generator=g, dtype=torch.float64) * 0.5]
upstream64 = [torch.randn(B, T, H, W, F, generator=g, dtype=torch.float64),
              torch.randn(B, H, W, F, generator=g, dtype=torch.float64),
              torch.randn(B, H, W, F, generator=g, dtype=torch.float64)]
failed = False
for name, dtype in DTYPES.items():
    if dtype == torch.bfloat16 and not cuda:
        report(f"smoke {name}: skipped (Triton's CPU interpreter computes bf16 tl.dot wrongly)")
        continue
    start = time.perf_counter()
    try:
        tol = TOLERANCES[dtype]
        if dtype == torch.float32 and cuda and torch.backends.cudnn.allow_tf32:
            tol = TF32_TOLERANCE  # fp32 dots run as TF32 on a GPU, as cuDNN's convs do
        rounded = [t.to(device=device, dtype=dtype) for t in base]
        upstream = [u.to(device=device, dtype=dtype) for u in upstream64]
        out, grads = run(rounded, upstream, "triton")
        ref_out, ref_grads = run([t.double() for t in rounded], [u.double() for u in upstream],
                                 "reference")
        names = ["seq", "h", "c", "dx", "dkernel", "drecurrent_kernel", "dbias"]
        errs = dict(zip(names, [rel_err(a, b) for a, b in zip([*out, *grads],
                                                              [*ref_out, *ref_grads])]))
        worst = max(errs, key=errs.get)
        ok = all(e <= tol for e in errs.values()) and all(o.dtype == dtype for o in out)
        failed |= not ok
        report(f"smoke {name}: {'ok' if ok else 'FAILED'} (worst rel. error {worst} "
               f"{errs[worst]:.1e}, tolerance {tol:.0e}; {time.perf_counter() - start:.1f} s)")
        if not ok:
            print("  " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()), flush=True)
    except Exception as exc:
        traceback.print_exc()
        failed = True
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        report(f"smoke {name}: FAILED ({type(exc).__name__}: {first}; "
               f"{time.perf_counter() - start:.1f} s)")
sys.exit(1 if failed else 0)
EOF
# Default configs: the smoke is about a working build; autotuning is run by a test and the
# benchmarks.
# BUDGET_FROM=smoke: the budget counts from here (what comes before, the install, does not use
# the GPU; a test of the budget logic must not depend on how fast this machine installs)
[[ "${BUDGET_FROM:-start}" == smoke ]] && deadline=$((SECONDS + BUDGET_S))
run_step smoke "$(limit "$SMOKE_S")" "$OUT/smoke.log" \
    env CONVLSTM_TRITON_AUTOTUNE=0 SMOKE_SUMMARY="$SUMMARY" "$PYTHON" "$OUT/smoke.py"

# The performance model's anchors: public kernels' published H100 times, timed here beside their
# FORECAST (bench/anchor_timing.py): the first GPU run checks the model that steers the kernels.
anchor_args=(--csv "$OUT/anchors.csv" --markdown "$OUT/anchors.md")
[[ "$DRY_RUN" == 1 ]] && anchor_args+=(--dry-run)  # no GPU: one anchor forecast, no timing
run_step anchors "$(limit "$ANCHORS_S" "$BENCH_RESERVE_S")" "$OUT/anchors.log" \
    env -u TRITON_INTERPRET "$PYTHON" bench/anchor_timing.py "${anchor_args[@]}"

# ---------------------------------------------------------------------------------------------
# GPU tests, bf16 first. Correctness with the default config per kernel (autotuning every
# candidate of every test shape would take long); test_gpu.py's autotuning test switches it on
# for its own small bf16 shape.
pytest_args=(-m "gpu or kernels" -rfEs -q --durations=10 -p no:cacheprovider
             -o "faulthandler_timeout=$FAULT_S")
if "$PYTHON" -c "import xdist" >/dev/null 2>&1 && ((TEST_WORKERS > 1)); then
    # Parallel workers share the GPU; they mainly overlap Triton's CPU-bound compiles.
    pytest_args+=(-n "$TEST_WORKERS")
fi
[[ "$DRY_RUN" == 1 ]] && pytest_args+=(--collect-only)
have_pytest=0
"$PYTHON" -c "import pytest" >/dev/null 2>&1 && have_pytest=1

run_tests() {  # run_tests <dtype> <cap> <reserve> <-k expression>
    local log="$OUT/tests-$1.log"
    rm -f "$log"  # (a step skipped for time leaves none)
    if ((!have_pytest)); then
        loud "pytest is NOT installed: the $1 GPU tests did NOT run" 2>&1 | tee "$log"
        record "tests $1" 3 "pytest not installed"
        return 0
    fi
    run_step "tests $1" "$(limit "$2" "$3")" "$log" env CONVLSTM_TRITON_AUTOTUNE=0 \
        "$PYTHON" -m pytest "${pytest_args[@]}" -k "$4" tests
    if [[ -s "$log" ]]; then  # the counts line and the failed tests, into the summary now
        grep -E '[0-9]+ (passed|failed|errors?|skipped)|tests? collected|no tests ran' "$log" |
            tail -n 1 | sed "s/^/  tests $1: /" | tee -a "$SUMMARY"
        grep -E '^(FAILED|ERROR) ' "$log" | head -n 30 | sed 's/^/  /' | tee -a "$SUMMARY"
    fi
    return 0
}

run_tests bf16 "$TESTS_BF16_S" "$BENCH_RESERVE_S" "bf16 or bfloat16"
# fp32 and the tests without a dtype in their id (they run fp32)
run_tests fp32 "$TESTS_FP32_S" "$BENCH_RESERVE_S" "not (bf16 or bfloat16 or fp16 or float16)"

# ---------------------------------------------------------------------------------------------
# Kernel comparison, one compare.py run per (dtype, shape), so a slow shape (torch.compile of a
# long sequence) costs only its own cap. Rows go to compare.csv and the tables to
# compare-<dtype>-<shape>.md as each variant finishes; compare.md collects the tables.
for dtype in $COMPARE_DTYPES; do
    for shape in $COMPARE_SHAPES; do
        base="$OUT/compare-$dtype-$shape"
        args=(--shapes "$shape" --dtypes "$dtype" --variants "$COMPARE_VARIANTS" --warmup 10
              --rep 50 --csv "$OUT/compare.csv" --markdown "$base.md" --plot "$base.png")
        [[ "$DRY_RUN" == 1 ]] && args+=(--dry-run)  # the tiny shape, fp32, wall-clock
        rm -f "$base.md"
        run_step "compare $dtype $shape" "$(limit "$COMPARE_SHAPE_S" 5)" "$base.log" \
            "$PYTHON" bench/compare.py "${args[@]}"
        if [[ -s "$base.md" ]]; then
            { printf '## %s %s\n\n' "$dtype" "$shape"; cat "$base.md"; echo; } >>"$OUT/compare.md"
        fi
    done
done

run_tests fp16 "$TESTS_FP16_S" 5 "fp16 or float16"
# finish (the EXIT trap) prints the summary, packs, and exits with the status
