"""Reading compiled AMD code: a HIP kernel's AMDGCN assembly (``kernel.asm["amdgcn"]`` of Triton's
HIP backend) and metadata, as ``sass`` reads SASS. Registers (VGPRs, AGPRs, SGPRs), scratch
(spills), LDS, occupancy in waves per SIMD, and the MFMA instructions of the main loop. Nothing
here needs a GPU, and nothing here is a time: no AMD forecast is calibrated.

Where each number comes from (Triton 3.6 and 3.9, whose HIP backend compiles with its bundled
LLVM AMDGPU code generator and keeps the assembly text LLVM prints):

* the kernel's resource summary LLVM writes as comments after the code: ``; NumVgprs:``
  (architectural VGPRs), ``; NumAgprs:`` (accumulation registers, where MFMA results may
  live), ``; TotalNumVgprs:`` (what one wave allocates: on gfx90a/gfx942 the AGPRs follow the
  VGPRs, aligned to 4, in one unified file), ``; TotalNumSgprs:``, ``; ScratchSize:`` (bytes of
  private memory per lane: spills and stack, 0 when nothing spills) and ``; Occupancy:`` (LLVM's
  own waves per SIMD, from registers only); the ``.vgpr_spill_count`` / ``.sgpr_spill_count``
  of the code object's metadata (SGPR spills go to VGPR lanes, not to scratch);
* LDS: ``metadata.shared`` (Triton allocates the kernel's LDS dynamically: LLVM's own
  ``LDSByteSize`` is 0), what the launch asks for and what the driver refuses above 64 KiB on
  gfx90a/gfx942;
* occupancy (``waves_per_simd``): LLVM's formula (``AMDGPU::IsaInfo::getNumWavesPerEUWith
  NumVGPRs``; ``llvm-calc-occupancy`` prints the same limits): waves per SIMD from registers =
  min(8, floor(512 / roundup(TotalNumVgprs, 8))), 512 VGPRs per SIMD lane shared by VGPRs and
  AGPRs, an allocation granule of 8 and at most 8 waves per SIMD on gfx90a and gfx942 (LLVM's
  ``getMaxWavesPerEU``; the ROCm MI300X tuning guide tabulates the same steps: <= 64 VGPRs 8
  waves, <= 128 4, <= 168 3, <= 256 2, <= 512 1). A workgroup of W waves is resident on one
  CU, ceil(W / 4) waves on each of its 4 SIMDs, and the CU's 64 KiB of LDS is shared by its
  workgroups, so: workgroups per CU = min(floor(register waves / ceil(W / 4)),
  floor(65536 / LDS bytes)) and waves per SIMD = that x ceil(W / 4). The result is checked
  against LLVM's own ``; Occupancy:`` where LDS does not limit;
* GEMMs: the ``tt.dot`` operations of the kernel's Triton IR (``kernel.asm["ttir"]``), what
  this specialization computes on matrix units where the backend can (a kernel's constexprs
  may compile its GEMM away, e.g. the last backward step has no recurrent gradient);
* the main loop: the code between a label and a branch back to it (``s_cbranch_*`` or
  ``s_branch`` to an earlier label) is a loop; among the innermost loops holding MFMAs
  (``v_mfma_*``, ``v_smfmac_*``) the one with the most is the main loop. A kernel whose MFMAs sit
  in no loop (its K loop fully unrolled or one step long) is "straight line".
"""

import math
import re
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Arch:
    name: str
    vgprs_per_lane: int = 512  # per SIMD lane, VGPRs and AGPRs together (unified on CDNA2/3)
    vgpr_granule: int = 8  # registers are allocated in blocks of this many
    max_waves_per_simd: int = 8
    simds_per_cu: int = 4
    lds_per_cu: int = 64 * 1024
    wave_size: int = 64
    max_workgroup_lanes: int = 1024


ARCHS = {"gfx90a": Arch("gfx90a"), "gfx942": Arch("gfx942"),
         "gfx950": Arch("gfx950", lds_per_cu=160 * 1024)}

_SUMMARY = {  # LLVM's resource comments -> field
    "NumVgprs": "vgprs", "NumAgprs": "agprs", "TotalNumVgprs": "total_vgprs",
    "TotalNumSgprs": "sgprs", "ScratchSize": "scratch_bytes", "Occupancy": "llvm_occupancy",
}
_SUMMARY_LINE = re.compile(r"^\s*;\s*(\w+):\s*(\d+)")
_SPILLS = re.compile(r"^\s*\.(vgpr|sgpr)_spill_count:\s*(\d+)")
_LABEL = re.compile(r"^([.\w$]+):")
_INSTR = re.compile(r"^\s+([a-z][a-z0-9_]*)\b\s*(.*?)\s*(?:;.*)?$")
_MFMA = re.compile(r"^v_(?:mfma|smfmac)_")
_MFMA_SHAPE = re.compile(r"_(\d+)x(\d+)x(\d+)")
_TT_DOT = re.compile(r"\btt\.dot\b")


@dataclass
class Instr:
    index: int  # position among the kernel's instructions
    opcode: str
    operands: str
    target: str | None = None  # a branch's label


def parse_amdgcn(text):
    """(instructions, labels) of the first kernel in AMDGCN assembly: the instructions in
    order (directives and comments dropped), labels -> index of the instruction they head."""
    instrs, labels = [], {}
    started = False
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            name = label.group(1)
            if started and (not name.startswith(".") or name.startswith(".Lfunc_end")):
                break  # the function's end, or a second function
            started = True
            labels[name] = len(instrs)
            continue
        m = _INSTR.match(line)
        if not m or not started:
            continue
        opcode, operands = m.group(1), m.group(2)
        if opcode == "s_endpgm" or not opcode.startswith(("s_", "v_", "ds_", "buffer_",
                                                           "global_", "flat_", "scratch_")):
            if opcode == "s_endpgm":
                instrs.append(Instr(len(instrs), opcode, operands))
            continue
        target = None
        if opcode == "s_branch" or opcode.startswith("s_cbranch_"):
            target = operands.split(",")[0].strip() or None
        instrs.append(Instr(len(instrs), opcode, operands, target))
    return instrs, labels


def is_mfma(opcode):
    return bool(_MFMA.match(opcode))


def mfma_flop(opcode):
    """FLOP of one MFMA instruction of one wave (2·M·N·K of its shape), None when the mnemonic
    has no MxNxK."""
    m = _MFMA_SHAPE.search(opcode)
    return None if m is None else 2 * math.prod(int(g) for g in m.groups())


def find_loops(instrs, labels):
    """(start, end) of every backward branch: a branch at ``end`` to a label heading
    ``start`` <= end."""
    loops = []
    for ins in instrs:
        if ins.target is not None and ins.target in labels and labels[ins.target] <= ins.index:
            loops.append((labels[ins.target], ins.index))
    return loops


def main_loop(instrs, labels):
    """(start, end) of the innermost loop with the most MFMAs (the first of equals), None where
    no loop holds one."""
    with_mfma = [(s, e) for s, e in find_loops(instrs, labels)
                 if any(is_mfma(x.opcode) for x in instrs[s:e + 1])]
    innermost = [(s, e) for s, e in with_mfma
                 if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in with_mfma)]
    if not innermost:
        return None
    return max(innermost, key=lambda loop: (sum(is_mfma(x.opcode)
                                                for x in instrs[loop[0]:loop[1] + 1]), -loop[0]))


def instr_kind(opcode):
    """A coarse class of an AMDGCN instruction."""
    if is_mfma(opcode):
        return "mfma"
    if opcode.startswith("ds_"):
        return "lds"
    if opcode.startswith(("buffer_", "global_", "flat_")):
        return "global"
    if opcode.startswith("scratch_"):
        return "scratch"
    if opcode.startswith(("s_waitcnt", "s_barrier", "s_nop", "s_sleep", "s_setprio",
                          "s_sched_barrier", "s_memtime")):
        return "sync"
    if opcode.startswith("s_"):
        return "salu"
    return "valu"


def loop_stats(instrs, labels):
    """What the assembly says about the main loop: found, straight_line (MFMAs, none in a
    loop), loops (backward branches in the kernel), the loop's instructions, by kind, and its
    MFMAs by mnemonic (``mfma``) with the FLOP one wave issues per iteration."""
    loop = main_loop(instrs, labels)
    everywhere = Counter(x.opcode for x in instrs if is_mfma(x.opcode))
    loops = len(find_loops(instrs, labels))
    if loop is None:
        return {"found": False, "straight_line": bool(everywhere), "loops": loops, "mfma": {},
                "instructions": 0, "kinds": {}, "flop_per_wave_iter": 0,
                "mfma_outside_loops": dict(everywhere)}
    body = instrs[loop[0]:loop[1] + 1]
    mfma = Counter(x.opcode for x in body if is_mfma(x.opcode))
    return {"found": True, "straight_line": False, "loops": loops, "start": loop[0],
            "end": loop[1],
            "mfma": dict(mfma), "instructions": len(body),
            "kinds": dict(Counter(instr_kind(x.opcode) for x in body)),
            "flop_per_wave_iter": sum(n * (mfma_flop(op) or 0) for op, n in mfma.items()),
            "mfma_outside_loops": {}}


def resource_summary(text):
    """LLVM's resource comments and the code object's spill counts of the first kernel:
    vgprs, agprs, total_vgprs, sgprs, scratch_bytes, llvm_occupancy, vgpr_spills, sgpr_spills
    (a missing entry is None)."""
    found = dict.fromkeys([*_SUMMARY.values(), "vgpr_spills", "sgpr_spills"])
    for line in text.splitlines():
        m = _SUMMARY_LINE.match(line)
        if m and m.group(1) in _SUMMARY and found[_SUMMARY[m.group(1)]] is None:
            found[_SUMMARY[m.group(1)]] = int(m.group(2))
            continue
        m = _SPILLS.match(line)
        if m and found[f"{m.group(1)}_spills"] is None:
            found[f"{m.group(1)}_spills"] = int(m.group(2))
    return found


def register_waves(total_vgprs, arch):
    """Waves per SIMD that the registers allow (LLVM's getNumWavesPerEUWithNumVGPRs)."""
    a = ARCHS[arch]
    if total_vgprs <= 0:
        return a.max_waves_per_simd
    rounded = -(-total_vgprs // a.vgpr_granule) * a.vgpr_granule
    return max(0, min(a.max_waves_per_simd, a.vgprs_per_lane // rounded))


def occupancy(total_vgprs, lds_bytes, num_warps, arch):
    """(waves per SIMD, what limits it: "vgprs", "lds", "waves" (the SIMD's 8) or
    "workgroup" (a workgroup wider than one of its limits allows: 0 waves)); see the module
    docstring."""
    a = ARCHS[arch]
    per_simd = -(-num_warps // a.simds_per_cu)  # a workgroup's waves on each SIMD
    if num_warps * a.wave_size > a.max_workgroup_lanes:
        return 0, "workgroup"
    limits = {"vgprs": register_waves(total_vgprs, arch) // per_simd,
              "waves": a.max_waves_per_simd // per_simd}
    if lds_bytes:
        limits["lds"] = a.lds_per_cu // lds_bytes
    limiter = min(limits, key=lambda k: (limits[k], k != "waves"))
    workgroups = limits[limiter]
    return workgroups * per_simd, limiter if workgroups else "workgroup"


@dataclass
class AmdKernelStats:
    """What one compiled HIP kernel uses and issues."""

    name: str
    arch: str
    num_warps: int  # 64-lane waves
    num_stages: int
    vgprs: int
    agprs: int
    total_vgprs: int
    sgprs: int
    scratch_bytes: int
    vgpr_spills: int
    sgpr_spills: int
    lds_bytes: int
    llvm_occupancy: int | None
    waves_per_simd: int
    occupancy_limit: str
    dots: int = 0  # tl.dot operations in the kernel's Triton IR (this specialization's GEMMs)
    loop: dict = field(default_factory=dict)

    @property
    def mfma_in_main_loop(self):
        return bool(self.loop.get("found") and self.loop.get("mfma"))

    @property
    def mfma_without_loop(self):
        """MFMAs in a kernel with no loop at all: a GEMM whose K is one step (C_in = 1's input
        projection: k^2 taps in one BLOCK_K), no loop to run them in."""
        return bool(self.loop.get("straight_line") and not self.loop.get("loops"))


def kernel_stats(compiled):
    """AmdKernelStats of a Triton CompiledKernel built for a HIP target."""
    text = compiled.asm["amdgcn"]
    meta = compiled.metadata
    arch = meta.target.arch if hasattr(meta, "target") else meta.arch
    summary = resource_summary(text)
    missing = [k for k in ("vgprs", "total_vgprs", "scratch_bytes") if summary[k] is None]
    if missing:
        raise ValueError(f"{meta.name}: no {', '.join(missing)} in the AMDGCN text")
    total = summary["total_vgprs"]
    lds = int(meta.shared or 0)
    waves, limiter = occupancy(total, lds, meta.num_warps, arch)
    instrs, labels = parse_amdgcn(text)
    return AmdKernelStats(
        name=meta.name, arch=arch, num_warps=meta.num_warps, num_stages=meta.num_stages,
        vgprs=summary["vgprs"], agprs=summary["agprs"] or 0, total_vgprs=total,
        sgprs=summary["sgprs"] or 0, scratch_bytes=summary["scratch_bytes"],
        vgpr_spills=summary["vgpr_spills"] or 0, sgpr_spills=summary["sgpr_spills"] or 0,
        lds_bytes=lds, llvm_occupancy=summary["llvm_occupancy"], waves_per_simd=waves,
        occupancy_limit=limiter, dots=len(_TT_DOT.findall(compiled.asm.get("ttir", ""))),
        loop=loop_stats(instrs, labels))


def mfma_text(loop):
    """The main loop's MFMAs, e.g. "8× v_mfma_f32_32x32x8_bf16"; "straight line: ..." where they
    sit in no loop; "no MFMA"."""
    if loop.get("found"):
        return ", ".join(f"{n}× {op}" for op, n in loop["mfma"].items())
    if loop.get("straight_line"):
        where = "no loop" if not loop.get("loops") else "none in a loop"
        return f"{where}: " + ", ".join(f"{n}× {op}"
                                              for op, n in loop["mfma_outside_loops"].items())
    return "no MFMA"
