#!/usr/bin/env bash
# One-shot check on a CUDA machine: GPU tests, then a short benchmark, in about 8 minutes.
#
# For a machine that already has torch, Triton and Python and no package registry: installs
# nothing but this repository (editable, no dependencies, no network). Run from anywhere:
#
#     bash bench/gpu_check.sh            # results in bench/out/
#     OUT=/some/dir bash bench/gpu_check.sh
#
# Writes to $OUT: machine.txt (nvidia-smi, versions), install.log, gpu_tests.log, bench.md
# (markdown table), bench.csv, bench.log (progress, tracebacks), compare.md/.csv/.png/.log
# (bench/compare.py on mnist_l1 bf16), tuning-cache/ and summary.txt (each step's exit
# status); then packs them all into all-results.tar.gz, keeping summary.txt, bench.md,
# compare.md and gpu_tests.log beside it (PACK=0: leave every file as it is). Exit status: 0 when every step passed, 1 otherwise. A failing or hanging test
# step is recorded and the benchmark still runs. Environment knobs (seconds): BUDGET_S (whole
# script, default 470), BENCH_RESERVE_S (kept for the benchmarks, default 240),
# COMPARE_RESERVE_S (of that, kept for bench/compare.py, default 90); PYTHON.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
PYTHON="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-470}"
BENCH_RESERVE_S="${BENCH_RESERVE_S:-240}"
COMPARE_RESERVE_S="${COMPARE_RESERVE_S:-90}"  # of BENCH_RESERVE_S, kept for bench/compare.py
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1  # no network: never let pip wait on it

deadline=$((SECONDS + BUDGET_S))
status=0
: >"$OUT/summary.txt"

banner() { printf '\n=== %s ===\n' "$*"; }
loud() { printf '\n!!!!!!!!!! %s !!!!!!!!!!\n\n' "$*" >&2; }
# seconds left for a step: what remains of the budget minus what later steps keep, at least 30
left() { local n=$((deadline - SECONDS - ${1:-0})); ((n < 30)) && n=30; echo "$n"; }
record() {  # record <step> <exit status>
    local what="ok"
    (($2 == 124 || $2 == 137)) && what="TIMED OUT"
    (($2 != 0 && $2 != 124 && $2 != 137)) && what="FAILED"
    echo "$1: $what (exit $2)" | tee -a "$OUT/summary.txt"
    if (($2 != 0)); then status=1; fi
}
has_module() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }

banner "machine -> $OUT/machine.txt"
{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    timeout -k 5 30 nvidia-smi || echo "nvidia-smi failed or is missing"
    timeout -k 5 60 "$PYTHON" - <<'EOF' || echo "python could not report versions"
import platform, sys
import torch, triton
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuDNN",
      torch.backends.cudnn.version(), "| triton", triton.__version__)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.0f} GiB")
for name in ("numpy", "pytest", "xdist"):
    try:
        module = __import__(name)
        print(name, getattr(module, "__version__", "?"))
    except ImportError:
        print(name, "NOT INSTALLED")
EOF
} 2>&1 | tee "$OUT/machine.txt"

banner "install (editable, no deps, no network) -> $OUT/install.log"
rc=0
timeout -k 5 120 "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -q -e . \
    >"$OUT/install.log" 2>&1 || rc=$?
if ((rc == 0)); then
    "$PYTHON" -c "import convlstm_triton.functional, convlstm_triton.kernels" \
        >>"$OUT/install.log" 2>&1 || rc=$?
fi
if ((rc != 0)); then
    tail -n 20 "$OUT/install.log" || true
    loud "pip install -e . failed (exit $rc): using a source tree on PYTHONPATH instead"
    # The installed layout maps kernels/ to convlstm_triton.kernels; rebuild that with symlinks.
    src="$(mktemp -d "${TMPDIR:-/tmp}/convlstm_triton_src.XXXXXX")"
    mkdir "$src/convlstm_triton"
    ln -s "$PWD"/convlstm_triton/* "$src/convlstm_triton/"
    ln -s "$PWD/kernels" "$src/convlstm_triton/kernels"
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    if "$PYTHON" -c "import convlstm_triton.functional, convlstm_triton.kernels" \
        >>"$OUT/install.log" 2>&1; then
        echo "install: pip failed (exit $rc); importing from $src instead" >>"$OUT/summary.txt"
        rc=0
    else
        loud "convlstm_triton does not import: the tests and the benchmark will fail"
    fi
fi
record install "$rc"

banner "GPU tests -> $OUT/gpu_tests.log"
rc=0
if has_module pytest; then
    workers=()
    # Parallel workers share the GPU; they mainly overlap Triton's CPU-bound compiles.
    has_module xdist && workers=(-n 4)
    # Correctness only: the default config per kernel (autotuning would compile every candidate
    # of every test shape); the tuning path itself is tested on the CPU and run by the benchmark.
    CONVLSTM_TRITON_AUTOTUNE=0 timeout -k 10 "$(left "$BENCH_RESERVE_S")" \
        "$PYTHON" -m pytest -q -m "gpu or kernels" -rs \
        --durations=10 -p no:cacheprovider ${workers[@]+"${workers[@]}"} tests 2>&1 |
        tee "$OUT/gpu_tests.log" || rc=$?
else
    rc=3
    loud "pytest is NOT installed: the GPU tests did NOT run (only bench --check runs)" 2>&1 |
        tee "$OUT/gpu_tests.log"
fi
record gpu_tests "$rc"

banner "benchmark -> $OUT/bench.md, $OUT/bench.csv"
rc=0
# Tuned configs land in $OUT's cache dir, so the tuning cost is paid once, by the first peer call.
export CONVLSTM_TRITON_CACHE_DIR="$OUT/tuning-cache"
timeout -k 10 "$(left "$COMPARE_RESERVE_S")" "$PYTHON" bench/bench_convlstm.py \
    --shapes mnist_l1,small --dtypes fp32,bf16 --check --csv "$OUT/bench.csv" \
    2> >(tee "$OUT/bench.log" >&2) | tee "$OUT/bench.md" || rc=$?
record bench "$rc"

banner "kernel comparison (mnist_l1 bf16) -> $OUT/compare.md, $OUT/compare.csv"
rc=0
timeout -k 10 "$(left 5)" "$PYTHON" bench/compare.py --shapes mnist_l1 --dtypes bf16 \
    --variants eager_cat,eager_hoisted,triton_unfused,triton_fused,triton_fused_input,triton_graphs \
    --csv "$OUT/compare.csv" --markdown "$OUT/compare.md" --plot "$OUT/compare.png" \
    2> >(tee "$OUT/compare.log" >&2) || rc=$?
record compare "$rc"

banner "summary (elapsed ${SECONDS}s)"
cat "$OUT/summary.txt"
if [[ "${PACK:-1}" == 1 ]]; then
    # A lent GPU machine hands back only a few files: everything goes into one archive, and
    # only the summary, the two tables and the test log stay beside it (PACK=0 keeps all).
    keep=(summary.txt bench.md compare.md gpu_tests.log)
    tar czf "${TMPDIR:-/tmp}/all-results.tar.gz" -C "$OUT" . && mv "${TMPDIR:-/tmp}/all-results.tar.gz" "$OUT/"
    find "$OUT" -mindepth 1 -maxdepth 1 $(printf '! -name %s ' all-results.tar.gz "${keep[@]}") \
        -exec rm -rf {} +
    echo "all outputs packed into $OUT/all-results.tar.gz"
fi
exit "$status"
