"""Static performance report: the compiled sm_90a code of every forward launch, read without a
GPU, and a FORECAST of its time on an H100/H200-class GPU. Nothing here is a measurement.

    python bench/static_perf.py --shapes mnist_l1,mnist_l2 --dtypes bf16 --markdown out.md
    python bench/static_perf.py --variants hoisted,fused_input --modes fwd,train --json out.json
    python bench/static_perf.py --shapes mnist_l2 --measured bench/results/compare.csv

How it reads the code. The real ``conv_lstm(..., backend="triton", padding="same")`` runs on CPU
tensors of the benchmark's real sizes (``torch.empty``: nothing is computed) with
``JITFunction.run`` replaced by the ahead-of-time sm_90 compile of ``bench/sm90_compile.py``
(Triton's own JIT specialization, ``GPUTarget("cuda", 90, 32)``); each launch is recorded with its
grid and arguments; grids that depend on the SM count are sized for 132 SMs.
``convlstm_triton.tuning.pick_config`` is replaced by "tuning by forecast": for every (kernel,
key) it runs every candidate config the launcher kept (one compile each), forecasts each, and
returns the one with the smallest forecast; the real launches then use it. A config the GPU
would refuse at launch (over 227 KiB of shared memory, or registers for no CTA) fails there.
``forward_variant="auto"`` is tuned the same way (the variant whose launches sum to the least).
Per compiled kernel: registers and stack (``cuobjdump -res-usage`` of the cubin), spill bytes
(the widths of the STL/LDL instructions, what ``ptxas -v`` counts as spill stores + loads:
Triton kernels have no local arrays), dynamic shared memory (``metadata.shared``), and the SASS
(``nvdisasm`` of the kernels' machine code in one batch, else ``cuobjdump -sass``; Triton's
bundled binaries).

The model (H100/H200 class, an "issue bound" read off the SASS):
    * 132 SMs; tensor cores 4096 FLOP/clk/SM for bf16/fp16, 2048 for TF32; 4 warp schedulers per
      SM, each issuing at most one instruction per clock; every warp issues every instruction of
      the loop (every warp of a warpgroup issues each HGMMA).
    * issue bound = min(1, tensor-core cycles / issue cycles) of one main-loop iteration of one
      CTA: tc cycles = FLOP of the iteration / (4096 or 2048); issue cycles of one scheduler =
      loop instructions x num_warps / 4. It caps the fraction of the peak the loop can reach.
    * shared-memory operand bound = min(1, tc cycles / smem cycles): each wgmma reads B, and A
      unless A comes from registers, from shared memory at an assumed 128 B/clk/SM, once per
      warpgroup. It is what makes narrow wgmma slow: HGMMA.64x32x16 reads 3 KiB for 16
      tensor-core cycles (67 %), 64x128x16 6 KiB for 64 (100 %). The loop runs at the lower of
      the two bounds (the table shows "issue % (smem %)" where the second is lower than 100).
    * occupancy (CTAs per SM): 65536 registers per SM, allocated per warp in units of 256
      (registers per thread rounded up to a multiple of 8); 228 KiB shared memory per SM with
      1 KiB reserved per CTA, at most 227 KiB per CTA (a config over it fails, as at launch);
      at most 64 warps and 32 CTAs per SM.
    * waves = CTAs / (132 x CTAs per SM); wave efficiency = CTAs / (ceil(waves) x 132 x CTAs per
      SM): the idle CTA slots of the last wave.
    * executed FLOP = CTAs x K steps per CTA x FLOP of one K step (tile padding in M, N and K
      included: a C_in = 1 conv with K = 25 padded to BLOCK_K = 32 does 32). K steps per CTA
      come from a per-kernel model of the K loop (``K_STEP_MODELS``: taps x ceil(C / BLOCK_K)
      tap-major, ceil(taps x C / BLOCK_K) flattened); a kernel without one, or whose model
      gives less than the useful FLOP the launcher states (``flop=`` of pick_config), uses
      that useful FLOP (``flop_source`` says which).
    * HBM bytes of a launch: every distinct tensor argument once (numel x element size of the
      view passed; the dummy pointers of absent optional tensors alias real arguments and count
      once): what a kernel reads and writes, e.g. step_forward reads h_prev (B·P·F), c_prev
      (fp32), xg_t (B·P·4F) when hoisted or x_t and W when fused, the recurrent weights, and
      writes h, c (fp32) and, when saved, preact (B·P·4F); input_projection reads x of all frames
      and W, writes xg. Re-reads of halos and weights by many CTAs are assumed to hit L2. A
      state that the previous step left in the 50 MB L2 is still counted as HBM traffic (an
      upper bound for the step kernels).
    * L2: 1/2 x element size x (1/BLOCK_M + 1/N_tile) bytes per FLOP (the A and B tiles of a K
      step over its FLOP) is reported with an L2 time at an assumed 8 TB/s L2 -> SM bandwidth
      (published microbenchmarks of H100 give 5.5-10 TB/s); it is not in the forecast.
    * forecast of one launch = max(executed FLOP / (peak x issue bound x wave efficiency),
      HBM bytes / 4 TB/s) + non-loop term + launch gap. Peaks (dense, the achievable
      ceilings the project uses): 788 TFLOP/s bf16/fp16, 390 TFLOP/s TF32. Non-loop term: the
      static instruction count outside the main loop x num_warps/4 issue cycles per CTA, times
      ceil(waves), at 1.755 GHz (the epilogue and prologue are not overlapped with MMAs in a
      non-persistent kernel; instructions in outer loops count once). Launch gap: 2 us per
      launch on the GPU timeline (host overhead, which a CUDA graph removes, is another issue).
      A kernel without an MMA loop (the unfused cell kernel) is HBM bytes + its instructions.
    * per sequence = the sum over the real launches (best config per kernel); per step = the
      sequence / T. fp32 means TF32 dots (``allow_tf32=True``).
    * not modelled: latencies (a loop with few warps may not hide the wgmma and load latency the
      issue bound ignores), spill traffic (only its instructions), L2 misses of gathers, bank
      conflicts, mma.sync (HMMA) running below the wgmma rate on sm_90, clocks below 1.755 GHz.

Must run without TRITON_INTERPRET (the kernels are plain JITFunctions then).
"""

import contextlib
import csv
import datetime
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import triton  # noqa: E402
from bench_convlstm import DTYPES, SHAPES, Shape, problem_parser  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the machine model (see the module docstring)

SMS = 132
CLOCK_HZ = 1.755e9
SCHEDULERS = 4
TC_FLOP_PER_CLK = {"16bit": 4096, "tf32": 2048, "8bit": 8192}
# shared-memory bandwidth per SM that wgmma operands read from shared memory compete for
SMEM_BYTES_PER_CLK = 128
PEAK_FLOPS = {"16bit": 788e12, "tf32": 390e12, "8bit": 1576e12}
HBM_BYTES_PER_S = 4e12
L2_BYTES_PER_S = 8e12
LAUNCH_GAP_S = 2e-6
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_PER_CTA_MAX = 227 * 1024
SMEM_RESERVED_PER_CTA = 1024
MAX_WARPS_PER_SM = 64
MAX_CTAS_PER_SM = 32

FORECAST_LABEL = "FORECAST"
INTERPRETER_MESSAGE = ("run without TRITON_INTERPRET: the kernels must be compiled, not "
                       "interpreted")
VARIANT_DEFAULT = "hoisted"  # what forward_variant="auto" resolves to where nothing is measured

# ---------------------------------------------------------------------------------------------
# SASS


@dataclass
class Instr:
    addr: int
    opcode: str  # with modifiers, e.g. "HGMMA.64x128x16.F32.BF16"
    operands: str
    predicate: str = ""
    target: int | None = None  # branch / call target address

    @property
    def base(self):
        return self.opcode.split(".")[0]


_LINE = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_\w+):")
_TARGET = re.compile(r"(?:0x([0-9a-fA-F]+)|`?\((\.L_\w+)\)`?)\s*$")


def parse_sass(text):
    """Instructions of the (first) function in ``cuobjdump -sass`` / ``nvdisasm`` output, in
    address order; branch and call targets resolved to addresses (hex or ``.L_x`` labels)."""
    instrs, labels, pending_labels, unresolved = [], {}, [], []
    functions = 0
    for line in text.splitlines():
        if "Function :" in line:
            functions += 1
            if functions > 1:
                break
        label = _LABEL.match(line)
        if label:
            pending_labels.append(label.group(1))
            continue
        m = _LINE.match(line)
        if not m:
            continue
        addr, text_ = int(m.group(1), 16), m.group(2).strip()
        predicate = ""
        if text_.startswith("@"):
            predicate, _, text_ = text_.partition(" ")
        opcode, _, operands = text_.strip().partition(" ")
        ins = Instr(addr, opcode, operands.strip(), predicate)
        for name in pending_labels:
            labels[name] = addr
        pending_labels = []
        if ins.base in ("BRA", "BRX", "JMP", "CALL", "JMX", "BSSY", "BREAK", "SSY", "PBK"):
            t = _TARGET.search(ins.operands)
            if t and t.group(1):
                ins.target = int(t.group(1), 16)
            elif t:
                unresolved.append((ins, t.group(2)))
        instrs.append(ins)
    for ins, name in unresolved:
        ins.target = labels.get(name)
    return instrs


_KINDS = {
    "mma": {"HGMMA", "HMMA", "IMMA", "IGMMA", "QGMMA", "BGMMA", "DMMA", "WARPGROUP"},
    "async": {"LDGSTS", "LDGDEPBAR", "DEPBAR", "UTMALDG", "UTMASTG", "UTMAPF", "UTMACCTL",
              "UTMACMDFLUSH", "UBLKCP", "UBLKRED", "UBLKPF", "SYNCS", "ARRIVES", "UCGABAR_ARV",
              "UCGABAR_WAIT"},
    "global": {"LDG", "STG", "LD", "ST", "ATOMG", "ATOM", "RED", "REDG", "LDGMC"},
    "shared": {"LDS", "STS", "LDSM", "STSM", "ATOMS"},
    "local": {"LDL", "STL"},
    "int": {"IMAD", "IADD3", "LOP3", "ISETP", "SHF", "LEA", "IMNMX", "SEL", "IABS", "IMUL", "SHL",
            "SHR", "POPC", "FLO", "BFE", "BFI", "PRMT", "IADD", "ISCADD", "LOP", "VIADD",
            "VIMNMX", "VIADDMNMX", "IDP", "PLOP3", "P2R", "R2P", "BMSK", "BREV", "SGXT", "ICMP",
            "IADD32I", "LOP32I", "IMUL32I"},
    "fp": {"FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "MUFU", "FCHK", "HADD2", "HMUL2",
           "HFMA2", "HMNMX2", "HSETP2", "DADD", "DMUL", "DFMA", "FSWZADD", "FSET", "FMUL32I",
           "FADD32I", "FFMA32I"},
    "cvt": {"F2F", "F2I", "I2F", "F2FP", "I2FP", "F2IP", "I2I", "FRND"},
    "call": {"CALL"},
}
KINDS = ("mma", "async", "global", "shared", "local", "int", "fp", "cvt", "call", "other")


def instr_kind(opcode):
    """One of ``KINDS`` for a SASS opcode (uniform-datapath integer ops count as integer)."""
    base = opcode.split(".")[0]
    for kind, names in _KINDS.items():
        if base in names:
            return kind
    if base.startswith("U") and base[1:] in _KINDS["int"]:
        return "int"
    return "other"


_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32),
                "884": (8, 8, 4), "1684": (16, 8, 4)}
_ELEMENT_BYTES = {"BF16": 2, "F16": 2, "TF32": 4, "E4M3": 1, "E5M2": 1, "S8": 1, "U8": 1,
                  "F64": 8}


@dataclass(frozen=True)
class Mma:
    """One MMA instruction: shape per issuing unit (a warpgroup for *GMMA, a warp for HMMA)."""

    opcode: str
    m: int
    n: int
    k: int
    per_warpgroup: bool
    dtype: str  # operand type: BF16, F16, TF32, E4M3, ...
    accumulator: str

    @property
    def shape(self):
        return f"{self.m}x{self.n}x{self.k}"

    @property
    def flop(self):
        return 2 * self.m * self.n * self.k

    @property
    def rate_class(self):
        if self.dtype == "TF32":
            return "tf32"
        return "8bit" if _ELEMENT_BYTES.get(self.dtype, 2) == 1 else "16bit"


def parse_mma(ins):
    """The Mma of an instruction, or None (``WARPGROUP.*`` and non-MMA instructions)."""
    mods = ins.opcode.split(".")
    base = mods[0]
    dtype = next((m for m in reversed(mods) if m in _ELEMENT_BYTES), "BF16")
    accumulator = ins.operands.split(",")[0].strip()
    if base.endswith("GMMA") and len(mods) > 1:
        dims = re.fullmatch(r"(\d+)x(\d+)x(\d+)", mods[1])
        if dims:
            return Mma(ins.opcode, *map(int, dims.groups()), True, dtype, accumulator)
    if base in ("HMMA", "IMMA") and len(mods) > 1 and mods[1] in _HMMA_SHAPES:
        return Mma(ins.opcode, *_HMMA_SHAPES[mods[1]], False, dtype, accumulator)
    return None


def find_loops(instrs):
    """(start index, end index) of every backward branch: the loop body is [start, end].
    A range holding an unpredicated EXIT is no loop (a jump back from out-of-line code)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    loops = []
    for i, ins in enumerate(instrs):
        if ins.base in ("BRA", "JMP") and ins.target is not None and ins.target < ins.addr:
            start = index.get(ins.target)
            if start is not None and not any(x.base == "EXIT" and not x.predicate
                                              for x in instrs[start:i]):
                loops.append((start, i))
    return loops


def _callees(instrs, start, end):
    """Static instruction count of the routines called from instrs[start:end + 1] (per call)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    total = 0
    for ins in instrs[start:end + 1]:
        if ins.base == "CALL" and ins.target in index:
            j = index[ins.target]
            while j < len(instrs) and instrs[j].base != "RET":
                j += 1
            total += j - index[ins.target] + 1
    return total


def main_loop(instrs):
    """(start, end) of the main loop: among the innermost loops holding MMAs, the one with the
    most MMAs (the first of equals); None without one."""
    with_mma = [(s, e) for s, e in find_loops(instrs)
                if any(parse_mma(ins) is not None for ins in instrs[s:e + 1])]
    innermost = [(s, e) for s, e in with_mma
                 if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in with_mma)]
    if not innermost:
        return None

    def mmas(loop):
        return sum(parse_mma(ins) is not None for ins in instrs[loop[0]:loop[1] + 1])

    return max(innermost, key=lambda loop: (mmas(loop), -loop[0]))


def _body_end(instrs):
    """Index past the last real instruction: trailing NOPs and the final ``BRA`` to itself
    (the end-of-program trap) are padding, not code."""
    end = len(instrs)
    while end and (instrs[end - 1].base == "NOP" or (
            instrs[end - 1].base == "BRA" and instrs[end - 1].target == instrs[end - 1].addr)):
        end -= 1
    return end


def _subroutine_indices(instrs):
    """Indices of the called routines' bodies (after the kernel's code, up to their RET)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    inside = set()
    for ins in instrs:
        if ins.base == "CALL" and ins.target in index:
            j = index[ins.target]
            while j < len(instrs) and instrs[j].base != "RET":
                inside.add(j)
                j += 1
            inside.add(j)
    return inside


def sass_loop_stats(instrs, num_warps, block_k=None):
    """What the SASS says about the main loop (see the module docstring), as a dict: found,
    straight_line (MMAs but no loop: a one-trip K loop unrolled away, the whole kernel is then
    its one iteration), instructions (per iteration), kinds (per kind), mma_shapes, mma_n,
    wgmma, calls, callee_instructions, flop_per_iter (one CTA), k_per_iter, k_steps_per_iter,
    n_per_unit (N summed over the accumulator chains of one warpgroup or warp), rate_class,
    element_bytes, nonloop_instructions, total_instructions (the kernel's code: the called
    routines, the end-of-program trap and the padding excluded)."""
    end = _body_end(instrs)
    subroutines = _subroutine_indices(instrs)
    code = [i for i in range(end) if i not in subroutines]
    loop = main_loop(instrs)
    straight = loop is None and any(parse_mma(instrs[i]) for i in code)
    stats = {"found": loop is not None or straight, "straight_line": straight,
             "total_instructions": len(code)}
    if loop is None and not straight:
        stats.update(nonloop_instructions=len(code), instructions=0, flop_per_iter=0)
        return stats
    body = [instrs[i] for i in code] if straight else instrs[loop[0]:loop[1] + 1]
    kinds = Counter(instr_kind(ins.opcode) for ins in body)
    mmas = [m for m in (parse_mma(ins) for ins in body) if m is not None]
    warpgroups = max(1, num_warps // 4)
    flop = sum(m.flop * (warpgroups if m.per_warpgroup else num_warps) for m in mmas)
    chains = {}
    for m in mmas:
        chains.setdefault(m.accumulator, []).append(m)
    k_per_iter = max((sum(m.k for m in chain) for chain in chains.values()), default=0)
    k_steps = 1
    if block_k and k_per_iter and k_per_iter % block_k == 0:
        k_steps = max(1, k_per_iter // block_k)
    span = (0, end - 1) if straight else loop
    # bytes the wgmmas of one iteration read from shared memory (one CTA): B always, A unless
    # it comes from registers (the operand after the accumulator is a register, not a gdesc)
    smem_operand_bytes = 0
    for ins in body:
        m = parse_mma(ins)
        if m is not None and m.per_warpgroup:
            a_operand = (ins.operands.split(",") + ["", ""])[1].strip()
            es = _ELEMENT_BYTES.get(m.dtype, 2)
            a_bytes = 0 if re.match(r"R\d+", a_operand) else m.m * m.k * es
            smem_operand_bytes += (a_bytes + m.n * m.k * es) * warpgroups
    stats.update(
        smem_operand_bytes=smem_operand_bytes,
        start=body[0].addr, end=body[-1].addr, instructions=len(body),
        kinds={k: kinds.get(k, 0) for k in KINDS},
        mma_shapes=dict(Counter(f"{m.opcode.split('.')[0]}.{m.shape}.{m.dtype}" for m in mmas)),
        mma_n=[m.n for m in mmas], wgmma=any(m.per_warpgroup for m in mmas),
        calls=kinds.get("call", 0),
        callee_instructions=_callees(instrs, *span),
        flop_per_iter=flop, k_per_iter=k_per_iter, k_steps_per_iter=k_steps,
        n_per_unit=sum(chain[0].n for chain in chains.values()),
        rate_class=mmas[0].rate_class if mmas else "16bit",
        element_bytes=_ELEMENT_BYTES.get(mmas[0].dtype, 2) if mmas else 2,
        nonloop_instructions=len(code) - len(body))
    return stats


# ---------------------------------------------------------------------------------------------
# compiled kernels: resources, SASS, occupancy


def _nvidia_tool(name):
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Triton's bundled {name} is missing ({path})")
    return path


def resource_usage(cubin):
    """{"regs", "stack", "local"} of a cubin's kernel (``cuobjdump -res-usage``; bytes for the
    last two)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([_nvidia_tool("cuobjdump"), "-res-usage", path],
                               capture_output=True, text=True, check=True).stdout
    found = [re.search(rf"\b{k}:(\d+)", usage) for k in ("REG", "STACK", "LOCAL")]
    return {name: int(m.group(1)) if m else None
            for name, m in zip(("regs", "stack", "local"), found)}


def _elf_text(cubin):
    """The machine code of a cubin's kernel: its ``.text.<name>`` section (ELF64)."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    for name, _, _, _, offset, size in headers:
        if cubin[names + name:cubin.index(b"\0", names + name)].startswith(b".text."):
            return cubin[offset:offset + size]
    raise ValueError("no .text section in the cubin")


def disassemble(cubins):
    """The SASS instructions of each cubin. One ``nvdisasm -b SM90a`` run over the kernels'
    machine code laid end to end (its start-up, ~0.3 s, dominates a disassembly), split and
    rebased; ``cuobjdump -sass`` per cubin where that fails."""
    if not cubins:
        return []
    try:
        texts = [_elf_text(c) for c in cubins]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernels.bin")
            with open(path, "wb") as f:
                f.write(b"".join(texts))
            out = subprocess.run([_nvidia_tool("nvdisasm"), "-b", "SM90a", path],
                                 capture_output=True, text=True, check=True).stdout
        instrs, result, base = parse_sass(out), [], 0
        for text in texts:
            part = [replace(i, addr=i.addr - base,
                            target=None if i.target is None else i.target - base)
                    for i in instrs if base <= i.addr < base + len(text)]
            if len(part) != len(text) // 16:  # sm_90 instructions are 16 bytes
                raise ValueError("raw disassembly does not split into the kernels")
            result.append(part)
            base += len(text)
        return result
    except (ValueError, struct.error, subprocess.CalledProcessError, FileNotFoundError):
        pass
    result = []
    for cubin in cubins:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            result.append(parse_sass(subprocess.run(
                [_nvidia_tool("cuobjdump"), "-sass", path], capture_output=True, text=True,
                check=True).stdout))
    return result


def spill_bytes(instrs):
    """Static bytes of the local-memory stores and loads (STL/LDL), as ``ptxas -v`` counts its
    spill stores + loads (Triton kernels have no local arrays, so local memory is spills)."""
    total = 0
    for ins in instrs:
        if ins.base in ("STL", "LDL"):
            width = re.search(r"\.(8|16|32|64|128)\b", ins.opcode)
            bits = int(width.group(1)) if width else 32
            if re.search(r"\.(U8|S8)\b", ins.opcode):
                bits = 8
            elif re.search(r"\.(U16|S16)\b", ins.opcode):
                bits = 16
            total += bits // 8
    return total


def occupancy(regs, shared_bytes, num_warps):
    """(CTAs per SM, the limiting resource); 0 CTAs where one CTA does not fit."""
    # registers per thread rounded up to a multiple of 8: a multiple of 256 per warp
    regs_per_warp = math.ceil(max(regs, 1) / 8) * 8 * 32
    limits = {
        "regs": REGS_PER_SM // (regs_per_warp * num_warps),
        "smem": (SMEM_PER_SM // (shared_bytes + SMEM_RESERVED_PER_CTA)
                 if shared_bytes <= SMEM_PER_CTA_MAX else 0),
        "warps": MAX_WARPS_PER_SM // num_warps,
        "ctas": MAX_CTAS_PER_SM,
    }
    limiter = min(limits, key=lambda k: limits[k])
    return limits[limiter], limiter


@dataclass
class KernelStats:
    """One compiled kernel (a kernel with fixed constexprs, config and specialization)."""

    name: str
    num_warps: int
    num_stages: int
    regs: int
    spill_bytes: int
    stack: int
    shared: int
    ctas_per_sm: int
    occupancy_limit: str
    loop: dict
    issue_bound: float | None
    bytes_per_flop: float | None


_usage_cache = {}  # compile key -> resource_usage()
_stats_cache = {}  # compile key -> KernelStats


def kernel_usage(key, kernel):
    """(registers per thread, CTAs per SM) of a compiled kernel, cheaply (no disassembly)."""
    if key not in _usage_cache:
        _usage_cache[key] = resource_usage(kernel.asm["cubin"])
    regs = _usage_cache[key]["regs"] or 0
    return regs, occupancy(regs, int(kernel.metadata.shared), dict(key[3])["num_warps"])[0]


def issue_bound_and_bytes_per_flop(loop, num_warps, block_m=None):
    """(issue bound, L2 bytes per FLOP) of a main loop (``sass_loop_stats``), or (None, None)
    without one; records the tile (block_m, n_tile) in ``loop``. BLOCK_M defaults to 64 rows
    per warpgroup."""
    if not (loop["found"] and loop["flop_per_iter"]):
        return None, None
    tc_cycles = loop["flop_per_iter"] / TC_FLOP_PER_CLK[loop["rate_class"]]
    issue_cycles = loop["instructions"] * num_warps / SCHEDULERS
    smem_cycles = loop.get("smem_operand_bytes", 0) / SMEM_BYTES_PER_CLK
    loop["smem_bound"] = min(1.0, tc_cycles / smem_cycles) if smem_cycles else 1.0
    bm = block_m or 64 * max(1, num_warps // 4)
    n_tile = loop["flop_per_iter"] / (2 * bm * loop["k_per_iter"])
    loop["block_m"], loop["n_tile"] = bm, n_tile
    return min(1.0, tc_cycles / issue_cycles), loop["element_bytes"] / 2 * (1 / bm + 1 / n_tile)


def kernel_stats(items):
    """{key: KernelStats} of compiled kernels, items: (key, kernel, block_m, block_k); the ones
    not cached yet are disassembled in one batch."""
    todo = {key: (kernel, bm, bk) for key, kernel, bm, bk in items if key not in _stats_cache}
    sass = disassemble([kernel.asm["cubin"] for kernel, _, _ in todo.values()])
    for (key, (kernel, block_m, block_k)), instrs in zip(todo.items(), sass):
        options = dict(key[3])
        num_warps = options.get("num_warps", 4)
        kernel_usage(key, kernel)
        usage = _usage_cache[key]
        loop = sass_loop_stats(instrs, num_warps, block_k)
        shared = int(kernel.metadata.shared)
        ctas, limiter = occupancy(usage["regs"] or 0, shared, num_warps)
        _stats_cache[key] = KernelStats(
            key[0], num_warps, options.get("num_stages", 3), usage["regs"],
            spill_bytes(instrs), usage["stack"] or 0, shared, ctas, limiter, loop,
            *issue_bound_and_bytes_per_flop(loop, num_warps, block_m))
    return {key: _stats_cache[key] for key, _, _, _ in items}


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
    ctas: int = 0
    waves: float = 0.0
    wave_efficiency: float = 1.0
    compute_s: float = 0.0
    hbm_s: float = 0.0
    nonloop_s: float = 0.0
    l2_s: float = 0.0
    forecast_s: float | None = None


def _tensor_bytes(named):
    seen = {}
    for value in named.values():
        if isinstance(value, torch.Tensor):
            seen[(value.data_ptr(), value.numel(), value.element_size())] = (
                value.numel() * value.element_size())
    return sum(seen.values())


def forecast_launch(stats, grid, scalars, hbm_bytes, useful_flop):
    """The forecast fields of ``Launch`` for one launch of a compiled kernel."""
    ctas = math.prod(int(g) for g in grid)
    loop = stats.loop
    slots = SMS * max(stats.ctas_per_sm, 1)
    waves = ctas / slots
    wave_eff = ctas / (math.ceil(waves) * slots) if ctas else 1.0
    executed, source = useful_flop, "launcher" if useful_flop else None
    model = K_STEP_MODELS.get(stats.name)
    if loop["found"] and loop["flop_per_iter"] and model is not None:
        with contextlib.suppress(KeyError, TypeError):
            per_step = loop["flop_per_iter"] / loop["k_steps_per_iter"]
            modelled = ctas * model(scalars) * per_step
            # a model below the useful FLOP no longer matches the kernel: trust the launcher
            if not useful_flop or modelled >= 0.999 * useful_flop:
                executed, source = modelled, "k-step model"
    compute_s = l2_s = 0.0
    if executed and stats.issue_bound:
        peak = PEAK_FLOPS[loop["rate_class"]]
        # the loop runs at the lower of its instruction-issue and shared-memory operand caps
        bound = min(stats.issue_bound, loop.get("smem_bound", 1.0))
        compute_s = executed / (peak * bound * wave_eff)
        l2_s = executed * stats.bytes_per_flop / L2_BYTES_PER_S
    hbm_s = hbm_bytes / HBM_BYTES_PER_S
    nonloop_s = (loop["nonloop_instructions"] * stats.num_warps / SCHEDULERS
                 * math.ceil(waves) / CLOCK_HZ)
    forecast = max(compute_s, hbm_s) + nonloop_s + LAUNCH_GAP_S
    return dict(executed_flop=executed, flop_source=source, ctas=ctas, waves=waves,
                wave_efficiency=wave_eff,
                compute_s=compute_s, hbm_s=hbm_s, nonloop_s=nonloop_s, l2_s=l2_s,
                forecast_s=forecast)


def complete(launches):
    """Fill in the stats and forecasts of launches (their kernels disassembled in one batch)."""
    todo = [x for x in launches if x.stats is None]
    stats = kernel_stats([(x.key, x.compiled, x.scalars.get("BLOCK_M"),
                           x.scalars.get("BLOCK_K")) for x in todo])
    for x in todo:
        x.stats = stats[x.key]
        for name, value in forecast_launch(x.stats, x.grid, x.scalars, x.hbm_bytes,
                                           x.useful_flop).items():
            setattr(x, name, value)
    return launches


def interpreter_enabled():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _compiler():
    """bench/sm90_compile.py (its compile hook), imported only where the kernels compile."""
    if interpreter_enabled():
        raise RuntimeError(INTERPRETER_MESSAGE)
    import sm90_compile

    return sm90_compile


def sm90_unavailable():
    """Why this Triton cannot compile and disassemble for sm_90 ahead of time, or None."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend

        make_backend(GPUTarget("cuda", 90, 32))
        for tool in ("cuobjdump", "nvdisasm"):
            _nvidia_tool(tool)
    except Exception as exc:  # an ImportError, a backend without NVIDIA, a missing binary
        return f"{type(exc).__name__}: {exc}"
    return None


class OutOfResourcesForecast(RuntimeError):
    """A config that the GPU would refuse at launch (shared memory or registers per CTA)."""


class _Recorder:
    """JITFunction.run and tuning.pick_config stand-ins for one analyzed problem."""

    def __init__(self):
        self.frames = [[]]  # launch lists: [0] the real launches, then open trials
        self.tunings = []  # one dict per pick_config call that tuned
        self.choices = {}  # (kernel_name, key) -> chosen config
        self.tag = None  # (kernel_name, config, flop) of the next launch

    def launch(self, fn, args, kwargs, grid):
        key, kernel = _compiler().compile_launch(fn, args, kwargs)
        named = dict(zip(fn.signature.parameters, args)) | kwargs
        if callable(grid):
            grid = grid(named)
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        regs, ctas_per_sm = kernel_usage(key, kernel)
        if kernel.metadata.shared > SMEM_PER_CTA_MAX:  # as the GPU would refuse the launch
            raise OutOfResourcesForecast(f"shared memory {kernel.metadata.shared} B > "
                                         f"{SMEM_PER_CTA_MAX} B per CTA")
        if ctas_per_sm == 0:
            raise OutOfResourcesForecast(f"{regs} registers x {dict(key[3])['num_warps']} warps")
        tag, self.tag = self.tag, None
        tuned_as, config, flop = tag if tag else (None, None, None)
        self.frames[-1].append(Launch(
            fn.fn.__name__, tuned_as, config, grid, key, kernel,
            {k: v for k, v in named.items() if not isinstance(v, torch.Tensor)},
            _tensor_bytes(named), flop,
            {k: [list(v.shape), str(v.dtype).removeprefix("torch.")]
             for k, v in named.items() if isinstance(v, torch.Tensor)}))

    def pick_config(self, kernel_name, key, configs, run, device, *, flop=None, **_):
        if (kernel_name, key) in self.choices:
            chosen = self.choices[(kernel_name, key)]
        else:
            trials = []
            for cfg in configs:
                self.frames.append([])
                self.tag = (kernel_name, dict(cfg), flop)
                error = None
                try:
                    run(cfg)
                except Exception as exc:  # a config that cannot compile or launch is skipped
                    error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                self.tag = None
                trials.append({"config": dict(cfg), "error": error[:300] if error else None,
                               "launches": self.frames.pop()})
            complete([x for t in trials for x in t["launches"]])
            for t in trials:
                ok = t["error"] is None and t["launches"]
                t["forecast_s"] = sum(x.forecast_s for x in t["launches"]) if ok else None
            done = [(t["forecast_s"], i) for i, t in enumerate(trials)
                    if t["forecast_s"] is not None]
            best = min(done)[1] if done else 0
            chosen = configs[best]
            self.choices[(kernel_name, key)] = chosen
            self.tunings.append({"kernel": kernel_name, "key": repr(key), "trials": trials,
                                 "chosen": best})
        self.tag = (kernel_name, dict(chosen), flop)
        return chosen


@contextlib.contextmanager
def _patched(recorder):
    from convlstm_triton import functional, launchers, tuning

    saved = [(JITFunction, "run"), (tuning, "pick_config"),
             (functional, "triton_interpreter_enabled"), (launchers, "_scratch_like"),
             (launchers, "_sm_count")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in saved if hasattr(owner, name)]

    def run(self, *args, grid, warmup, **kwargs):
        recorder.launch(self, args, kwargs, grid)

    replacements = {
        "run": run, "pick_config": recorder.pick_config,
        "triton_interpreter_enabled": lambda: True,  # CPU tensors may take the Triton path
        # trials write scratch outputs: empty ones (nothing runs), not copies of real-size ones
        "_scratch_like": lambda t: None if t is None else torch.empty_like(t),
        "_sm_count": lambda device: SMS,  # grids sized for the modelled GPU, not the CPU
    }
    for owner, name, _ in saved:
        setattr(owner, name, replacements[name])
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


# ---------------------------------------------------------------------------------------------
# problems


def forward_variants():
    """Every ``forward_variant`` the library accepts, "auto" first."""
    from convlstm_triton.validation import FORWARD_VARIANTS

    return list(FORWARD_VARIANTS)


def synthetic_shape(base, **overrides):
    """``base`` (a Shape) with other sizes (batch, steps, spatial, in_channels, filters,
    kernel), named after what changed."""
    shape = replace(base, **overrides)
    tag = ",".join(f"{k}={v}" for k, v in overrides.items())
    return replace(shape, name=f"{base.name}[{tag}]") if overrides else shape


def _run_problem(shape, dtype_name, variant, mode):
    from convlstm_triton import functional

    dtype = DTYPES[dtype_name]
    ks = shape.kernel_size
    x = torch.empty(shape.batch, shape.steps, *shape.spatial, shape.in_channels, dtype=dtype)
    kernel = torch.empty(*ks, shape.in_channels, 4 * shape.filters, dtype=dtype)
    recurrent = torch.empty(*ks, shape.filters, 4 * shape.filters, dtype=dtype)
    bias = torch.zeros(4 * shape.filters, dtype=dtype)
    options = dict(backend="triton", padding="same", forward_variant=variant, allow_tf32=True)
    if mode == "fwd":
        with torch.no_grad():
            functional.conv_lstm(x, kernel, recurrent, bias, **options)
    else:
        # "train_fwd": the forward of a training step only; "train": forward + backward with
        # the library's default recompute_gates; "train_saved" / "train_recompute": with the
        # pre-activations saved by forward / recomputed in backward
        if mode in ("train_saved", "train_recompute"):
            options["recompute_gates"] = mode == "train_recompute"
        leaves = [t.requires_grad_() for t in (x, kernel, recurrent, bias)]
        seq = functional.conv_lstm(*leaves, **options)[0]
        if mode != "train_fwd":
            seq.sum().backward()


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
    s, loop = launch.stats, launch.stats.loop
    per_step = {}
    if loop["found"]:
        per_step = {k: v / loop["k_steps_per_iter"] for k, v in loop["kinds"].items()}
    return {
        "kernel": launch.kernel, "config": launch.config, "grid": list(launch.grid),
        "num_warps": s.num_warps, "num_stages": s.num_stages, "regs": s.regs,
        "spill_bytes": s.spill_bytes, "stack_bytes": s.stack, "smem_bytes": s.shared,
        "ctas_per_sm": s.ctas_per_sm, "occupancy_limit": s.occupancy_limit,
        "main_loop": {k: v for k, v in loop.items()},
        "instr_per_k_step": per_step,
        "instr_per_k_step_total": (loop["instructions"] / loop["k_steps_per_iter"]
                                   if loop["found"] else None),
        "issue_bound": s.issue_bound, "bytes_per_flop": s.bytes_per_flop,
        "ctas": launch.ctas, "waves": launch.waves, "wave_efficiency": launch.wave_efficiency,
        "hbm_bytes": launch.hbm_bytes, "useful_flop": launch.useful_flop,
        "executed_flop": launch.executed_flop, "flop_source": launch.flop_source,
        "compute_ms": _ms(launch.compute_s),
        "hbm_ms": _ms(launch.hbm_s), "nonloop_ms": _ms(launch.nonloop_s),
        "l2_ms": _ms(launch.l2_s), "forecast_ms": _ms(launch.forecast_s), "args": launch.args,
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
    return (f"{FORECAST_LABEL} — compiled for sm_90a with Triton {triton.__version__} on {date}, "
            "no GPU measurement")


_CFG_ABBREV = {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_F": "F", "BLOCK_K": "K", "num_warps": "w",
               "num_stages": "s", "BLOCK_R": "R", "BLOCK_C": "C"}


def config_text(cfg):
    if not cfg:
        return "-"
    return " ".join(f"{_CFG_ABBREV.get(k, k + '=')}{v}" for k, v in cfg.items())


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
    p = problem_parser(__doc__)
    p.set_defaults(dtypes=["bf16", "fp32"], modes=["fwd"])
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


def main(argv=None):
    args = parse_args(argv)
    if interpreter_enabled():
        sys.exit(INTERPRETER_MESSAGE)
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
    text = "\n".join(out)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"header": header_line(), "triton": triton.__version__,
                       "torch": torch.__version__, "model": _model_constants(),
                       "problems": reports}, f, indent=1)
    return 0


def _model_constants():
    return {"sms": SMS, "clock_hz": CLOCK_HZ, "peak_flops": PEAK_FLOPS,
            "tc_flop_per_clk_per_sm": TC_FLOP_PER_CLK, "hbm_bytes_per_s": HBM_BYTES_PER_S,
            "l2_bytes_per_s": L2_BYTES_PER_S, "launch_gap_s": LAUNCH_GAP_S}


if __name__ == "__main__":
    sys.exit(main())
