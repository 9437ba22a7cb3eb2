"""Reading compiled sm_90 code: SASS parsing, the main loop and what one iteration issues,
registers and spills of a cubin, runtime-division calls. Triton's bundled ``nvdisasm`` and
``cuobjdump`` do the disassembly; nothing here needs a GPU."""

import os
import re
import struct
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, replace

import triton


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
        stats.update(nonloop_instructions=len(code), instructions=0, flop_per_iter=0,
                     traffic=traffic([], num_warps),
                     nonloop_traffic=traffic([instrs[i] for i in code], num_warps))
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
    smem_operand_bytes = smem_a_bytes = smem_b_bytes = 0
    for ins in body:
        m = parse_mma(ins)
        if m is not None and m.per_warpgroup:
            a_operand = (ins.operands.split(",") + ["", ""])[1].strip()
            es = _ELEMENT_BYTES.get(m.dtype, 2)
            a_bytes = 0 if re.match(r"R\d+", a_operand) else m.m * m.k * es
            smem_operand_bytes += (a_bytes + m.n * m.k * es) * warpgroups
            smem_a_bytes += a_bytes  # one warpgroup's A rows (each warpgroup has its own)
            smem_b_bytes += m.n * m.k * es  # B, shared by the warpgroups
    inside = set(range(*((0, end) if straight else (loop[0], loop[1] + 1))))
    per_iter = traffic(body, num_warps)
    outside = traffic([instrs[i] for i in code if i not in inside], num_warps)
    stats.update(
        traffic=per_iter, nonloop_traffic=outside,
        # what a TMA loop loads per iteration: every warpgroup's A tile and B once
        tma_tile_bytes=warpgroups * smem_a_bytes + smem_b_bytes,
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


def nvidia_tool(name):
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
        usage = subprocess.run([nvidia_tool("cuobjdump"), "-res-usage", path],
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
            out = subprocess.run([nvidia_tool("nvdisasm"), "-b", "SM90a", path],
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
                [nvidia_tool("cuobjdump"), "-sass", path], capture_output=True, text=True,
                check=True).stdout))
    return result


def access_bytes(ins):
    """Bytes one thread moves with a memory instruction (its width modifier; 4 without one)."""
    if re.search(r"\.(U8|S8)\b", ins.opcode):
        return 1
    if re.search(r"\.(U16|S16)\b", ins.opcode):
        return 2
    width = re.search(r"\.(8|16|32|64|128)\b", ins.opcode)
    return (int(width.group(1)) if width else 32) // 8


def spill_bytes(instrs):
    """Static bytes of the local-memory stores and loads (STL/LDL), as ``ptxas -v`` counts its
    spill stores + loads (Triton kernels have no local arrays, so local memory is spills)."""
    return sum(access_bytes(ins) for ins in instrs if ins.base in ("STL", "LDL"))


_GLOBAL_LOADS = ("LDG", "LDGSTS", "LD")
_GLOBAL_STORES = ("STG", "ST", "RED", "REDG", "ATOMG")


def traffic(instrs, num_warps):
    """What the instructions move, per CTA (every warp runs each one, all 32 lanes counted):
    {"load_bytes", "store_bytes", "local_bytes", "tma_loads", "tma_stores", "mufu"} (the last
    three are instruction counts per warp; a TMA copy's size is in its descriptor, not the
    SASS)."""
    lanes = 32 * num_warps
    out = {"load_bytes": 0, "store_bytes": 0, "local_bytes": 0, "tma_loads": 0,
           "tma_stores": 0, "mufu": 0}
    for ins in instrs:
        if ins.base in _GLOBAL_LOADS:
            out["load_bytes"] += access_bytes(ins) * lanes
        elif ins.base in _GLOBAL_STORES:
            out["store_bytes"] += access_bytes(ins) * lanes
        elif ins.base in ("LDL", "STL"):
            out["local_bytes"] += access_bytes(ins) * lanes
        elif ins.base == "UTMALDG":
            out["tma_loads"] += 1
        elif ins.base in ("UTMASTG", "UBLKCP"):
            out["tma_stores"] += 1
        elif ins.base == "MUFU":
            out["mufu"] += 1
    return out


# 64-bit integer division and remainder: ptxas has no instruction for them and calls a
# routine (``__cuda_sm20_div_s64``, ``__cuda_sm20_rem_u64``, ...; 32-bit ones are inlined)
PTX_RUNTIME_DIVISION = re.compile(r"\b(?:div|rem)\.[su]64\b")
PTX_DIVISION_CALL = re.compile(r"\bcall(?:\.uni)?\b[^;]*?\b(\w*(?:div|rem)\w*)")


def runtime_division(ptx, instrs):
    """What in a compiled kernel calls a runtime routine, as sorted strings ("PTX div.s64 x2",
    "SASS CALL x2"); empty when nothing does. The PTX's 64-bit divisions and remainders and its
    calls of a routine named *div* or *rem*, and every CALL of the SASS: a Triton kernel's code
    is inlined, so the CALLs it keeps are ptxas's routines (integer division, the slow paths of
    IEEE float division)."""
    found = Counter(PTX_RUNTIME_DIVISION.findall(ptx))
    found.update(f"call {name}" for name in PTX_DIVISION_CALL.findall(ptx))
    text = [f"PTX {op} x{n}" for op, n in found.items()]
    calls = sum(ins.base == "CALL" for ins in instrs)
    if calls:
        text.append(f"SASS CALL x{calls}")
    return tuple(sorted(text))
