"""CI gates on the compiled sm_90a forward kernels, read without a GPU (bench/static_perf.py).

The kernels compile in a subprocess without TRITON_INTERPRET (this test process runs them in
the interpreter, see conftest.py); it prints the analyses as JSON. Gates:

* every config the pruner keeps for step_forward and input_projection compiles for sm_90 with
  0 spill bytes, at F in {32, 64, 128}, C_in in {1, 64}, bf16 and fp32 (TF32 dots), k = 3 (and
  k = 5 for C_in = 1), in the forward variants hoisted (the default) and fused_input;
* the step kernel's main loop issues wgmma (HGMMA) of N >= 128 whenever F >= 32;
* at F = 64 (mnist_l1: C_in = 1, k = 5; mnist_l2: C_in = 64, k = 3; bf16) the configs that
  tuning by forecast picks reach an issue bound >= 70 % (step kernel, both shapes) and >= 60 %
  (input projection at C_in = 64). At C_in = 1 the projection is one K step (K = 25 in one
  BLOCK_K = 32) with no loop at all: its instructions are the gather and the store of the
  (B·T·P, 4F) xg tensor, and its time is that HBM write (the forecast is bytes-bound there), so
  an issue bound of its MMAs says nothing; the fused_input variant, which has no xg, is the
  design for small C_in;
* the calibrated FORECAST (bench/perfmodel, an H100) per sequence of the default forward (bf16,
  best config per kernel) does not regress by more than 10 % from today's, and the targets
  mnist_l1 2.15 ms, mnist_l2 1.43 ms, nowcast 3.3 ms are strict xfails while they are missed.

Backward (mode "train", issue 10): every config the pruners keep for the backward kernels
compiles with 0 spill bytes (same F, dtypes; C_in 1 with k 5 and 64 with k 3); the weight- and
input-gradient GEMMs that tuning by forecast picks at F = 64 (mnist_l1, mnist_l2) run their main
loop on wgmma with no calls (runtime division routines) and, where the launch is compute-bound,
an issue bound >= 50 %; the FORECAST of a training step (forward + backward, bf16): no
regression beyond 10 %, and the targets mnist_l1 10 ms, mnist_l2 5.7 ms, nowcast 13.2 ms as
strict xfails while missed.

Runtime division (issue 19): no launch of a GEMM kernel (forward, backward, weight- and
input-gradient, input projection) in any problem above, any config the pruners keep, calls a
runtime routine: no 64-bit integer division or remainder in its PTX (ptxas calls
``__cuda_sm20_div_s64`` and the like for them) and no CALL in its SASS, anywhere in the kernel.

Registers, spills and SASS depend on F, C_in, k, dtype and config, not on B·T·pixels, so the
compile gates use a small synthetic shape; the forecasts use the benchmark's real sizes. Plus a
unit test of the SASS parser on a canned snippet (in this process: no compile).
"""

import functools
import json
import sys
from pathlib import Path

import pytest
from helpers import run_compile_worker

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import static_perf as sp  # noqa: E402

FORWARD_KERNELS = ("step_forward_kernel", "input_projection_kernel")
DEFAULT_VARIANT = sp.VARIANT_DEFAULT  # what forward_variant="auto" runs where nothing is timed
# (forward variant, C_in, k) of the compile gates: the default forward (hoisted: step_forward,
# independent of C_in, and input_projection) and fused_input (the other variant "auto" may
# pick: the input conv inside step_forward).
GATE_CASES = tuple((variant, c_in, k, mode) for variant in ("hoisted", "fused_input")
                   for c_in, k in ((1, 3), (1, 5), (64, 3))
                   for mode in ("fwd", "train_fwd")) + (("hoisted_tma", 64, 3, "train_fwd"),)
# B, T > 1 (Triton's JIT makes an argument equal to 1 a constexpr, other code than the
# benchmark's) and H, W multiples of 16 as the benchmark's: the same specializations.
SYNTHETIC = dict(batch=2, steps=3, spatial=[16, 16])
# The issue's targets (bf16 forward per sequence, the calibrated FORECAST for an H100) and, as a
# regression gate, today's calibrated forecasts (Triton 3.6 / 3.9, 2026-12-03) with 10 % room:
# the targets are missed (bench/RESULTS.md says by how much and what limits each kernel), so
# their tests are strict xfails that turn into failures, to be unmarked, once they are met.
SEQUENCE_LIMIT_MS = {"mnist_l1": 2.15, "mnist_l2": 1.43, "nowcast": 3.3}
SEQUENCE_NOW_MS = {"mnist_l1": 2.79, "mnist_l2": 2.19, "nowcast": 4.96}
# training (forward + backward of the default configuration, bf16): the issue's targets, 2x
# ahead of torch.compile's measured 20.1 / 11.35 / 26.4 ms
TRAIN_LIMIT_MS = {"mnist_l1": 10.0, "mnist_l2": 5.7, "nowcast": 13.2}
TRAIN_NOW_MS = {"mnist_l1": 12.59, "mnist_l2": 9.70, "nowcast": 21.66}
REGRESSION_ROOM = 1.10


def _target(limits, now, what):
    """The shapes as parameters, each target missed today a strict xfail saying by how much."""
    return [pytest.param(shape, marks=pytest.mark.xfail(
        strict=True, reason=f"{what} {shape}: calibrated FORECAST {now[shape]} ms > target "
                            f"{limit} ms (issue 19, part 2: the kernels)"))
            if now[shape] > limit else shape for shape, limit in limits.items()]
# (C_in, k) of the backward compile gates (train mode, the synthetic shape)
TRAIN_GATE_CASES = ((1, 5), (64, 3))
FORWARD_TUNED = ("step_forward", "input_projection", "forward_variant")
# backward GEMMs whose main loop must be wgmma without runtime-division calls, issue bound >=
# 50 % at F = 64 (the configs tuning by forecast picks, bf16, benchmark shapes)
BACKWARD_GEMMS = ("weight_grad_kernel", "input_grad_kernel")
BACKWARD_ISSUE_BOUND_MIN = 0.50
# the GEMM kernels, none of which may call a runtime division routine
GEMM_KERNELS = ("step_forward_kernel", "input_projection_kernel", "step_backward_kernel",
                "weight_grad_kernel", "input_grad_kernel")
ISSUE_BOUND_MIN = {"step_forward_kernel": 0.70, "input_projection_kernel": 0.60}
ISSUE_BOUND_GATED = {"mnist_l1": ("step_forward_kernel",),  # see the module docstring
                     "mnist_l2": ("step_forward_kernel", "input_projection_kernel")}

WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import static_perf as sp
reason = sp.sm90_unavailable()
if reason:
    print("SKIP: " + reason)
    sys.exit(0)
out = []
for p in json.loads(sys.argv[2]):
    shape = sp.SHAPES[p["shape"]]
    if p.get("overrides"):
        over = dict(p["overrides"])
        if "spatial" in over:
            over["spatial"] = tuple(over["spatial"])
        shape = sp.synthetic_shape(shape, **over)
    args = (shape, p["dtype"], p["variant"], p.get("mode", "fwd"))
    out.append({"problem": p, "records": sp.analyze_kernel_launches(*args),
                "forecast": sp.forecast(*args)})
print("JSON:" + json.dumps(sp._jsonable(out)))
"""


@functools.cache
def analyze_group(filters, dtype):
    """The analyses of one (F, dtype): the compile-gate problems on the synthetic shape and,
    in bf16, the benchmark shapes of that F. One subprocess (kernels compile once per process,
    and the gates of a group share them); cached per test process, and Triton's disk cache
    makes a repeat in another test process cheap."""
    problems = [dict(shape="mnist_l2", dtype=dtype, variant=variant, mode=mode,
                     overrides=dict(SYNTHETIC, filters=filters, in_channels=c_in, kernel=k))
                for variant, c_in, k, mode in GATE_CASES]
    problems += [dict(shape="mnist_l2", dtype=dtype, variant="hoisted", mode="train",
                      overrides=dict(SYNTHETIC, filters=filters, in_channels=c_in, kernel=k))
                 for c_in, k in TRAIN_GATE_CASES]
    if dtype == "bf16":
        problems += [dict(shape=name, dtype=dtype, variant=DEFAULT_VARIANT, mode=mode)
                     for name, shape in sp.SHAPES.items()
                     if name in SEQUENCE_LIMIT_MS and shape.filters == filters
                     for mode in ("fwd", "train")]
    return run_compile_worker(WORKER, [str(BENCH), json.dumps(problems)], "sm_90")


def _label(problem, record):
    shape = problem["shape"] + "".join(f" {k}={v}" for k, v in
                                       (problem.get("overrides") or {}).items()
                                       if k in ("filters", "in_channels", "kernel"))
    return (f"{record['kernel']} {problem['variant']} {problem['dtype']} {shape} "
            f"[{sp.config_text(record.get('config'))}]")


# ---------------------------------------------------------------------------------------------
# compile gates (synthetic shape)


@pytest.mark.parametrize("filters, dtype", [
    pytest.param(f, d, id=f"F{f}-{d}") for f in (32, 64, 128) for d in ("bf16", "fp32")])
def test_forward_configs_have_no_spills_and_wide_wgmma(filters, dtype):
    failed, spills, narrow, seen = [], [], [], 0
    for result in analyze_group(filters, dtype):
        problem = result["problem"]
        if not problem.get("overrides"):
            continue  # a benchmark shape: the same kernels, other grids
        for r in result["records"]:
            if r.get("tuned_as") not in ("step_forward", "input_projection"):
                continue
            label = _label(problem, r)
            if r.get("error") or "spill_bytes" not in r:
                failed.append(f"{label}: {r.get('error')}")
                continue
            seen += 1
            if r["spill_bytes"]:
                spills.append(f"{label}: {r['spill_bytes']} B spilled, {r['regs']} registers")
            loop = r["main_loop"]
            if r["kernel"] == "step_forward_kernel" and filters >= 32 and (
                    not loop.get("found") or not loop.get("wgmma")
                    or min(loop["mma_n"]) < 128):
                narrow.append(f"{label}: main-loop MMAs {loop.get('mma_shapes', 'none')}")
    assert seen, "no forward kernel config was analyzed"
    assert not failed, "configs that did not compile for sm_90:\n" + "\n".join(failed)
    assert not spills and not narrow, (
        "spilling configs:\n" + "\n".join(spills)
        + "\nstep-kernel main loops without wgmma of N >= 128:\n" + "\n".join(narrow))


# ---------------------------------------------------------------------------------------------
# forecast gates (real sizes, bf16, default forward)


def _real(shape):
    filters = sp.SHAPES[shape].filters
    return next(r for r in analyze_group(filters, "bf16")
                if r["problem"]["shape"] == shape and not r["problem"].get("overrides")
                and r["problem"].get("mode", "fwd") == "fwd")


@pytest.mark.parametrize("shape", ["mnist_l1", "mnist_l2"])
def test_issue_bound_at_f64(shape):
    result = _real(shape)
    chosen = {r["kernel"]: r for r in result["records"]
              if r.get("chosen") and r["kernel"] in FORWARD_KERNELS}
    assert set(chosen) == set(FORWARD_KERNELS), sorted(chosen)
    low = [f"{_label(result['problem'], r)}: issue bound {100 * (r['issue_bound'] or 0):.0f} % "
           f"< {100 * ISSUE_BOUND_MIN[name]:.0f} % (FORECAST; main loop "
           f"{r['main_loop'].get('mma_shapes')}, {r['instr_per_k_step_total']} instructions "
           f"per k-step"
           + (", no loop: a K loop of one trip" if r["main_loop"].get("straight_line") else "")
           + ")"
           for name, r in chosen.items()
           if name in ISSUE_BOUND_GATED[shape] and (r["issue_bound"] or 0) < ISSUE_BOUND_MIN[name]]
    assert not low, "\n".join(low)


@pytest.mark.parametrize("shape", list(SEQUENCE_NOW_MS))
def test_forecast_per_sequence_does_not_regress(shape):
    fc = _real(shape)["forecast"]
    assert fc["label"] == sp.FORECAST_LABEL
    assert fc["sequence_ms"] <= SEQUENCE_NOW_MS[shape] * REGRESSION_ROOM, (
        f"FORECAST {shape} bf16 {DEFAULT_VARIANT}: {fc['sequence_ms']:.3f} ms per sequence, "
        f"was {SEQUENCE_NOW_MS[shape]} ms ({fc['kernels']})")


@pytest.mark.parametrize("shape", _target(SEQUENCE_LIMIT_MS, SEQUENCE_NOW_MS, "forward"))
def test_forecast_per_sequence(shape):
    fc = _real(shape)["forecast"]
    assert fc["label"] == sp.FORECAST_LABEL
    assert fc["sequence_ms"] <= SEQUENCE_LIMIT_MS[shape], (
        f"FORECAST {shape} bf16 {DEFAULT_VARIANT}: {fc['sequence_ms']:.3f} ms per sequence > "
        f"{SEQUENCE_LIMIT_MS[shape]} ms ({fc['kernels']})")


# ---------------------------------------------------------------------------------------------
# backward gates


@pytest.mark.parametrize("filters, dtype", [
    pytest.param(f, d, id=f"F{f}-{d}") for f in (32, 64, 128) for d in ("bf16", "fp32")])
def test_backward_configs_have_no_spills(filters, dtype):
    """Every config the pruners keep for every backward kernel, C_in 1 (k 5) and 64 (k 3)."""
    failed, spills, seen = [], [], 0
    for result in analyze_group(filters, dtype):
        problem = result["problem"]
        if problem.get("mode") != "train" or not problem.get("overrides"):
            continue
        for r in result["records"]:
            if r.get("tuned_as") in FORWARD_TUNED or r.get("tuned_as") is None:
                continue
            label = _label(problem, r)
            if r.get("error") or "spill_bytes" not in r:
                failed.append(f"{label}: {r.get('error')}")
                continue
            seen += 1
            if r["spill_bytes"]:
                spills.append(f"{label}: {r['spill_bytes']} B spilled, {r['regs']} registers")
    assert seen, "no backward kernel config was analyzed"
    assert not failed, "configs that did not compile for sm_90:\n" + "\n".join(failed)
    assert not spills, "spilling configs:\n" + "\n".join(spills)


@pytest.mark.parametrize("filters, dtype", [
    pytest.param(f, d, id=f"F{f}-{d}") for f in (32, 64, 128) for d in ("bf16", "fp32")])
def test_gemm_kernels_call_no_runtime_division(filters, dtype):
    """Every launch of a GEMM kernel the analyses compiled (every problem of the group: the
    forward variants, training, and in bf16 the benchmark shapes; every config the pruners
    keep), anywhere in the kernel, not only the main loop."""
    dividing, seen = {}, set()
    for result in analyze_group(filters, dtype):
        for r in result["records"]:
            if r.get("kernel") not in GEMM_KERNELS or "runtime_division" not in r:
                continue
            seen.add(r["kernel"])
            if r["runtime_division"]:
                dividing.setdefault(_label(result["problem"], r),
                                    ", ".join(r["runtime_division"]))
    assert seen >= set(GEMM_KERNELS), f"GEMM kernels not analyzed: {set(GEMM_KERNELS) - seen}"
    assert not dividing, "GEMM kernel variants calling a runtime division routine:\n" + "\n".join(
        f"{label}: {what}" for label, what in sorted(dividing.items()))


def _real_train(shape):
    filters = sp.SHAPES[shape].filters
    return next(r for r in analyze_group(filters, "bf16")
                if r["problem"]["shape"] == shape and not r["problem"].get("overrides")
                and r["problem"].get("mode") == "train")


@pytest.mark.parametrize("shape", ["mnist_l1", "mnist_l2"])
def test_backward_gemms_on_wgmma_at_f64(shape):
    result = _real_train(shape)
    chosen = [r for r in result["records"] if r.get("chosen") and r["kernel"] in BACKWARD_GEMMS]
    assert {r["kernel"] for r in chosen} >= {"weight_grad_kernel"}, sorted(
        {r["kernel"] for r in chosen})
    bad, gated = [], 0
    for r in chosen:
        loop = r["main_loop"]
        if not loop.get("found") or not loop.get("wgmma") or loop.get("calls"):
            bad.append(f"{_label(result['problem'], r)}: main loop {loop.get('mma_shapes')}, "
                       f"{loop.get('calls')} calls")
            continue
        # The issue bound caps a compute-bound loop; a launch whose HBM bytes take longer than
        # its SM throughput (mnist_l1's input weight: C_in = 1, K = 25 in one tile, reading all
        # of dgates for 16 GFLOP) is not limited by it, as the forward's C_in = 1 projection.
        if r["bounds_ms"]["hbm"] >= r["bounds_ms"]["sm_throughput"]:
            continue
        gated += 1
        if (r["issue_bound"] or 0) < BACKWARD_ISSUE_BOUND_MIN:
            bad.append(f"{_label(result['problem'], r)}: issue bound "
                       f"{100 * (r['issue_bound'] or 0):.0f} % < "
                       f"{100 * BACKWARD_ISSUE_BOUND_MIN:.0f} % (FORECAST; "
                       f"{r['instr_per_k_step_total']} instructions per k-step)")
    assert not bad, "\n".join(bad)
    assert gated, "no compute-bound backward GEMM launch to gate"


@pytest.mark.parametrize("shape", list(TRAIN_NOW_MS))
def test_training_forecast_does_not_regress(shape):
    fc = _real_train(shape)["forecast"]
    assert fc["sequence_ms"] <= TRAIN_NOW_MS[shape] * REGRESSION_ROOM, (
        f"FORECAST {shape} bf16 {DEFAULT_VARIANT} train: {fc['sequence_ms']:.3f} ms, was "
        f"{TRAIN_NOW_MS[shape]} ms ({fc['kernels']})")


@pytest.mark.parametrize("shape", _target(TRAIN_LIMIT_MS, TRAIN_NOW_MS, "training"))
def test_training_forecast(shape):
    fc = _real_train(shape)["forecast"]
    assert fc["label"] == sp.FORECAST_LABEL
    assert fc["sequence_ms"] <= TRAIN_LIMIT_MS[shape], (
        f"FORECAST {shape} bf16 {DEFAULT_VARIANT} train: {fc['sequence_ms']:.3f} ms > "
        f"{TRAIN_LIMIT_MS[shape]} ms ({fc['kernels']})")


# ---------------------------------------------------------------------------------------------
# the SASS parser


CANNED_SASS = """
        code for sm_90a
                Function : toy_kernel
        /*0000*/                   LDC R1, c[0x0][0x28] ;                /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                    /* 0x0000000000007919 */
        /*0020*/                   IMAD R2, R0, 0x4, RZ ;                /* 0x0000000400027824 */
        /*0030*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R4.64] ;
        /*0040*/                   WARPGROUP.ARRIVE ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspB, R24 ;
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12].tnspB, R24, gsb0 ;
        /*0070*/                   CALL.REL.NOINC 0x100 ;
        /*0080*/                   UIADD3 UR5, UR5, 0x1, URZ ;
        /*0090*/                   ISETP.GE.AND P0, PT, R5, R6, PT ;
        /*00a0*/              @!P0 BRA 0x30 ;
        /*00b0*/                   F2FP.BF16.F32.PACK_AB R8, R25, R24 ;
        /*00c0*/                   STG.E [R2.64], R8 ;
        /*00d0*/                   STL.64 [R1], R10 ;
        /*00e0*/                   LDL.128 R12, [R1+0x10] ;
        /*00f0*/                   EXIT ;
        /*0100*/                   I2F.U32.RP R7, R6 ;
        /*0110*/                   MUFU.RCP R7, R7 ;
        /*0120*/                   RET.REL.NODEC R10 0x0 ;
        /*0130*/                   BRA 0x130;
        /*0140*/                   NOP;
"""


def test_sass_parser_finds_the_main_loop_and_counts_it():
    instrs = sp.parse_sass(CANNED_SASS)
    assert [i.addr for i in instrs][:3] == [0x0, 0x10, 0x20] and len(instrs) == 21
    branch = next(i for i in instrs if i.base == "BRA")
    assert (branch.predicate, branch.target) == ("@!P0", 0x30)
    assert sp.find_loops(instrs) == [(3, 10)]  # the end-of-program trap "BRA 0x130" is none
    assert sp.main_loop(instrs) == (3, 10)

    stats = sp.sass_loop_stats(instrs, num_warps=4, block_k=32)
    assert stats["instructions"] == 8
    assert stats["kinds"] == {"mma": 3, "async": 1, "global": 0, "shared": 0, "local": 0,
                              "int": 2, "fp": 0, "cvt": 0, "call": 1, "other": 1}
    assert stats["mma_shapes"] == {"HGMMA.64x128x16.BF16": 2}
    assert stats["calls"] == 1 and stats["callee_instructions"] == 3  # I2F, MUFU, RET
    assert stats["wgmma"] and stats["mma_n"] == [128, 128]
    assert stats["flop_per_iter"] == 2 * 2 * 64 * 128 * 16  # one warpgroup
    assert (stats["k_per_iter"], stats["k_steps_per_iter"], stats["n_per_unit"]) == (32, 1, 128)
    # 16 instructions of code up to EXIT (the routine, the trap and the padding are not), 8 of
    # them in the loop
    assert (stats["total_instructions"], stats["nonloop_instructions"]) == (16, 8)
    assert sp.spill_bytes(instrs) == 8 + 16
    # 8 warps = 2 warpgroups: twice the MMA work per iteration
    assert sp.sass_loop_stats(instrs, num_warps=8)["flop_per_iter"] == 2 * stats["flop_per_iter"]


def test_sass_parser_details():
    assert sp.instr_kind("UIADD3") == "int" and sp.instr_kind("UMOV") == "other"
    assert sp.instr_kind("WARPGROUP.DEPBAR.LE") == "mma"
    assert sp.instr_kind("SYNCS.ARRIVE.TRANS64") == "async"
    assert sp.instr_kind("LDSM.16.M88.4") == "shared" and sp.instr_kind("F2FP.BF16") == "cvt"
    tf32 = sp.parse_mma(sp.Instr(0, "HGMMA.64x256x8.F32.TF32", "R24, gdesc[UR4], R24"))
    assert (tf32.shape, tf32.dtype, tf32.rate_class, tf32.per_warpgroup) == (
        "64x256x8", "TF32", "tf32", True)
    hmma = sp.parse_mma(sp.Instr(0, "HMMA.16816.F32.BF16", "R4, R8, R12, R4"))
    assert (hmma.shape, hmma.flop, hmma.per_warpgroup) == ("16x8x16", 4096, False)
    assert sp.parse_mma(sp.Instr(0, "WARPGROUP.ARRIVE", "")) is None
    # nvdisasm style: labels instead of addresses; nested loops: the inner one with the MMAs
    nested = sp.parse_sass("""
        /*0000*/                   MOV R0, RZ ;
.L_x_1:
        /*0010*/                   IADD3 R0, R0, 0x1, RZ ;
.L_x_0:
        /*0020*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0030*/              @P0 BRA `(.L_x_0) ;
        /*0040*/              @P1 BRA `(.L_x_1) ;
        /*0050*/                   EXIT ;
""")
    assert sp.find_loops(nested) == [(2, 3), (1, 4)] and sp.main_loop(nested) == (2, 3)
    assert sp.sass_loop_stats(nested, num_warps=4)["flop_per_iter"] == 4 * 4096
    # a kernel without a loop but with MMAs (a one-trip K loop unrolled away)
    straight = sp.sass_loop_stats(sp.parse_sass(CANNED_SASS.replace("@!P0 BRA 0x30", "NOP")), 4)
    assert straight["straight_line"] and straight["nonloop_instructions"] == 0


def test_shared_memory_operand_bound():
    """Narrow wgmma is capped by shared memory: it re-reads the A tile for few columns."""
    def bound(opcode, operands, num_warps=4):
        text = CANNED_SASS.replace("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8].tnspB, R24",
                                   f"{opcode} {operands}")
        text = text.replace("HGMMA.64x128x16.F32.BF16 R24, gdesc[UR12].tnspB, R24, gsb0",
                            f"{opcode} {operands}")
        loop = sp.sass_loop_stats(sp.parse_sass(text), num_warps=num_warps, block_k=32)
        sp.issue_bound_and_bytes_per_flop(loop, num_warps)
        return loop["smem_operand_bytes"], loop["smem_bound"]

    # 64x128x16 from shared memory: (2 + 4) KiB per wgmma, 48 smem cycles for 64 tensor cycles
    assert bound("HGMMA.64x128x16.F32.BF16", "R24, gdesc[UR8].tnspB, R24") == (2 * 6144, 1.0)
    # 64x32x16: 3 KiB for 16 tensor cycles -> 16 / 24
    assert bound("HGMMA.64x32x16.F32.BF16", "R24, gdesc[UR8].tnspB, R24") == (2 * 3072, 2 / 3)
    # A from registers: only B is read (1 KiB), no cap
    assert bound("HGMMA.64x32x16.F32.BF16", "R24, R60, gdesc[UR8].tnspB, R24")[1] == 1.0
    # two warpgroups each read their operands
    assert bound("HGMMA.64x32x16.F32.BF16", "R24, gdesc[UR8], R24", 8)[0] == 4 * 3072


def test_occupancy_model():
    # 157 registers -> 160 per thread, 5120 per warp, 20480 per 4-warp CTA: 3 CTAs
    assert sp.occupancy(157, 36 * 1024, 4) == (3, "regs")
    assert sp.occupancy(64, 100 * 1024, 4) == (2, "smem")  # 228 KiB / (100 + 1) KiB
    assert sp.occupancy(24, 0, 4) == (16, "warps")  # registers would allow 21
    assert sp.occupancy(32, 228 * 1024, 4)[0] == 0  # over 227 KiB per CTA: does not launch


def test_issue_bound_and_forecast_of_the_canned_kernel():
    loop = sp.sass_loop_stats(sp.parse_sass(CANNED_SASS), num_warps=4, block_k=32)
    bound, bytes_per_flop = sp.issue_bound_and_bytes_per_flop(loop, 4, block_m=64)
    # 2 HGMMA 64x128x16 = 524288 FLOP = 128 tensor-core cycles; 8 instructions x 4/4 warps
    assert bound == 1.0 and (loop["block_m"], loop["n_tile"]) == (64, 128)
    assert bytes_per_flop == 2 / 2 * (1 / 64 + 1 / 128)
    # the same loop with 200 instructions: 128 / 200
    assert sp.issue_bound_and_bytes_per_flop(dict(loop, instructions=200), 4)[0] == 0.64
    stats = sp.KernelStats("toy_kernel", 4, 3, 157, 0, 0, 36 * 1024, 3, "regs", loop, 0.64,
                           bytes_per_flop)
    # 132 SMs x 3 CTAs: 400 CTAs are 1.01 waves; 10 iterations per CTA
    useful = 400 * 10 * 524288
    fc = sp.forecast_launch(stats, (400, 1, 1), 4e9, useful, "h100")
    assert fc.waves == 400 / 396 and fc.iterations == 10 and fc.executed_flop == useful
    assert fc.bounds["hbm"] == 4e9 / sp.device("h100").hbm_bytes_per_s
    assert fc.time_s == max(fc.bounds["sm_throughput"], fc.bounds["sm_latency"],
                            fc.bounds["hbm"]) + fc.bounds["launch"]
    assert fc.limiter == "hbm"  # 4 GB against 2 GFLOP


def test_measured_csv(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("shape,dtype,mode,peer,variant,ms\n"
                    "mnist_l2,bf16,fwd,ours,,2.0\n"           # bench_convlstm.py: the default
                    "mnist_l2,bf16,fwd,,triton_fused,1.5\n"   # compare.py: hoisted
                    "mnist_l2,bf16,fwd,,triton_fused_input,1.7\n"
                    "mnist_l2,bf16,fwd,,eager_cat,9.0\n"
                    "mnist_l2,bf16,train,,triton_fused,\n")   # no time: skipped
    assert sp.read_measured(path) == {("mnist_l2", "bf16", "fwd", "hoisted"): 1.5,
                                      ("mnist_l2", "bf16", "fwd", "fused_input"): 1.7,
                                      ("mnist_l2", "bf16", "fwd", "auto"): 2.0}
