"""The forecast of one kernel launch on a named GPU, from its compiled code. A FORECAST, never a
measurement: calibrated on published times of public kernels (``perfmodel.calibration``).

    from perfmodel import forecast_kernel
    fc = forecast_kernel(kernel, args, kwargs, grid, useful_flop, device="h100")
    fc.time_s, fc.bounds    # the forecast and each term it is made of

The model, per launch of C CTAs (programs) on S SMs at o CTAs per SM (registers, shared memory,
warps: ``occupancy``):

* One main-loop iteration of one CTA, in SM cycles (read off the SASS, ``sass.sass_loop_stats``):
  tensor cores = its MMA FLOP / 4096 (bf16/fp16, 2048 TF32); issue = its instructions x warps /
  4 schedulers; MUFU = its ``MUFU`` instructions x warps x 32 lanes / 16 per clock; shared
  memory = the wgmma operands it reads / 128 B per clock; L2 = the bytes it loads (global loads
  by their widths, TMA tiles by the wgmma operands they feed, spills both ways) / the SM's share
  of the L2 bandwidth. MMAs and the rest overlap only partly: iteration = max(MMA side, issue
  side, L2) + (1 - mma_overlap) x min(MMA side, issue side) / o (other CTAs on the SM fill in).
* Latency: a CTA cannot run its loop faster than its loads arrive, memory_latency per
  (num_stages - 1) iterations; and it pays a fixed cost per CTA that its own loop does not hide:
  the pipeline fill (one memory latency), the code outside the loop (issue cycles), and the
  epilogue's stores drained to L2.
* SM time = max(throughput: ceil(C / S) CTAs x iterations x iteration cycles, latency:
  ceil(C / (S o)) rounds x (iterations x latency-bound iteration + fixed cost)): with o >= 2 one
  CTA's fixed cost overlaps another's loop.
* HBM: every distinct tensor argument once (re-reads are modelled as L2 hits).
* forecast = max(SM time, HBM time) + the launch cost.
Iterations per CTA = the FLOP the launch executes / (C x FLOP of one iteration), at least 1; a
kernel without an MMA loop is its fixed cost and its HBM bytes. Not modelled: L2 misses of
re-reads beyond the L2's size, bank conflicts, clock changes, tail effects within a wave.
"""

import math
from dataclasses import dataclass, field

from .device import device as _device
from .sass import (
    disassemble,
    resource_usage,
    runtime_division,
    sass_loop_stats,
    spill_bytes,
)


def occupancy(regs, shared_bytes, num_warps, dev="h100"):
    """(CTAs per SM, the limiting resource); 0 CTAs where one CTA does not fit."""
    d = _device(dev)
    # registers per thread rounded up to a multiple of 8: a multiple of 256 per warp
    regs_per_warp = math.ceil(max(regs, 1) / 8) * 8 * 32
    limits = {
        "regs": d.regs_per_sm // (regs_per_warp * num_warps),
        "smem": (d.smem_per_sm // (shared_bytes + d.smem_reserved_per_cta)
                 if shared_bytes <= d.smem_per_cta_max else 0),
        "warps": d.max_warps_per_sm // num_warps,
        "ctas": d.max_ctas_per_sm,
    }
    limiter = min(limits, key=lambda k: limits[k])
    return limits[limiter], limiter


@dataclass
class KernelStats:
    """One compiled kernel (fixed constexprs, config and specialization)."""

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
    runtime_division: tuple = ()  # see sass.runtime_division()


_usage_cache = {}  # compile key -> resource_usage()
_stats_cache = {}  # compile key -> KernelStats


def kernel_usage(key, kernel, dev="h100"):
    """(registers per thread, CTAs per SM) of a compiled kernel, cheaply (no disassembly)."""
    if key not in _usage_cache:
        _usage_cache[key] = resource_usage(kernel.asm["cubin"])
    regs = _usage_cache[key]["regs"] or 0
    return regs, occupancy(regs, int(kernel.metadata.shared), dict(key[3])["num_warps"], dev)[0]


def issue_bound_and_bytes_per_flop(loop, num_warps, block_m=None, dev="h100"):
    """(issue bound, L2 bytes per FLOP of a GEMM tile) of a main loop (``sass_loop_stats``), or
    (None, None) without one; records the tile (block_m, n_tile) and the shared-memory operand
    bound in ``loop``. BLOCK_M defaults to 64 rows per warpgroup."""
    if not (loop["found"] and loop["flop_per_iter"]):
        return None, None
    d = _device(dev)
    tc_cycles = loop["flop_per_iter"] / d.tc_flop_per_clk[loop["rate_class"]]
    issue_cycles = loop["instructions"] * num_warps / d.schedulers
    smem_cycles = loop.get("smem_operand_bytes", 0) / d.smem_bytes_per_clk
    loop["smem_bound"] = min(1.0, tc_cycles / smem_cycles) if smem_cycles else 1.0
    bm = block_m or 64 * max(1, num_warps // 4)
    n_tile = loop["flop_per_iter"] / (2 * bm * loop["k_per_iter"])
    loop["block_m"], loop["n_tile"] = bm, n_tile
    return min(1.0, tc_cycles / issue_cycles), loop["element_bytes"] / 2 * (1 / bm + 1 / n_tile)


def kernel_stats(items, dev="h100"):
    """{key: KernelStats} of compiled kernels, items: (key, kernel, block_m, block_k); the ones
    not cached yet are disassembled in one batch."""
    todo = {key: (kernel, bm, bk) for key, kernel, bm, bk in items if key not in _stats_cache}
    sass = disassemble([kernel.asm["cubin"] for kernel, _, _ in todo.values()])
    for (key, (kernel, block_m, block_k)), instrs in zip(todo.items(), sass):
        options = dict(key[3])
        num_warps = options.get("num_warps", 4)
        kernel_usage(key, kernel, dev)
        usage = _usage_cache[key]
        loop = sass_loop_stats(instrs, num_warps, block_k)
        shared = int(kernel.metadata.shared)
        ctas, limiter = occupancy(usage["regs"] or 0, shared, num_warps, dev)
        _stats_cache[key] = KernelStats(
            key[0], num_warps, options.get("num_stages", 3), usage["regs"],
            spill_bytes(instrs), usage["stack"] or 0, shared, ctas, limiter, loop,
            *issue_bound_and_bytes_per_flop(loop, num_warps, block_m, dev),
            runtime_division(kernel.asm["ptx"], instrs))
    return {key: _stats_cache[key] for key, _, _, _ in items}


@dataclass
class Forecast:
    """One launch's forecast: ``time_s`` and what it is made of (``bounds``: seconds of each
    term it took the max of; ``cycles``: one main-loop iteration of one CTA, per resource)."""

    time_s: float
    bounds: dict
    cycles: dict = field(default_factory=dict)
    ctas: int = 0
    ctas_per_sm: int = 0
    waves: float = 0.0
    iterations: float = 0.0
    executed_flop: float | None = None
    hbm_bytes: int = 0
    l2_bytes: float = 0.0
    limiter: str = ""

    @property
    def tflops(self):
        return None if not self.executed_flop else self.executed_flop / self.time_s / 1e12


def forecast_launch(stats, grid, hbm_bytes, executed_flop, dev="h100", calibrated=None):
    """The ``Forecast`` of one launch of a compiled kernel (``KernelStats``) over ``grid``;
    ``executed_flop``: the MMA FLOP the launch runs (None: from its one-iteration FLOP, one
    iteration per CTA); ``calibrated``: other fitted constants than the device's (calibration
    searches with it)."""
    d = _device(dev)
    c = calibrated or d.calibrated
    f = d.clock_hz
    ctas = math.prod(int(g) for g in grid)
    loop = stats.loop
    o = max(stats.ctas_per_sm, 1)
    per_sm = math.ceil(ctas / d.sms)
    rounds = math.ceil(per_sm / o)
    port = d.l2_port_bytes_per_clk  # what one SM can move to and from L2 per cycle
    latency = c.memory_latency_s * f
    warps = stats.num_warps
    outside = loop.get("nonloop_traffic", {})
    cycles, iterations = {}, 0.0
    it_sm = it_alone = 0.0
    flop_it = loop.get("flop_per_iter") or 0
    l2_bytes = 0.0
    if loop.get("found") and flop_it:
        iterations = max(1.0, (executed_flop or ctas * flop_it) / (ctas * flop_it))
        t = loop.get("traffic", {})
        loaded = t.get("load_bytes", 0) + t.get("local_bytes", 0)
        if t.get("tma_loads"):
            loaded += loop.get("tma_tile_bytes", 0)
        cycles = {
            "tensor": flop_it / d.tc_flop_per_clk[loop["rate_class"]],
            "smem": loop.get("smem_operand_bytes", 0) / d.smem_bytes_per_clk,
            "issue": loop["instructions"] * warps / d.schedulers,
            "mufu": t.get("mufu", 0) * warps * 32 / d.mufu_per_clk,
            "l2_port": loaded / port,
        }
        mma_side = max(cycles["tensor"], cycles["smem"])
        other = max(cycles["issue"], cycles["mufu"])
        # the MMAs wait on their operands and the rest waits on the MMAs' results: a part of
        # the shorter side runs alone, whatever else the SM holds
        it_sm = max(mma_side, other) + (1 - c.mma_overlap) * min(mma_side, other)
        # one CTA alone: its bytes through the SM's port; loads arrive memory_latency after
        # issue, num_stages - 1 iterations ahead
        it_alone = max(it_sm, cycles["l2_port"], latency / max(stats.num_stages - 1, 1))
        l2_bytes = loaded * iterations * ctas
    store = outside.get("store_bytes", 0) + outside.get("local_bytes", 0)
    if outside.get("tma_stores") and not outside.get("store_bytes"):
        store += hbm_bytes / max(ctas, 1)  # a TMA epilogue: its share of the outputs, roughly
    moved = store + outside.get("load_bytes", 0)
    # the code outside the main loop, once per CTA: its issue and MUFU cycles
    outside_sm = (loop.get("nonloop_instructions", 0) * warps / d.schedulers
                  + outside.get("mufu", 0) * warps * 32 / d.mufu_per_clk)
    l2_bytes += moved * ctas
    throughput = per_sm * (iterations * it_sm + outside_sm)
    # a CTA's own path: its loop, its prologue and epilogue, and the fixed cost of a CTA
    # (pipeline fill, the epilogue's drain, retiring and starting a CTA) that only other CTAs
    # on the SM can hide
    # (an epilogue's stores leave at the SM's share of the DRAM bandwidth: what is written
    # goes to DRAM in the end, and a CTA's stores are in flight together)
    drain = (outside.get("load_bytes", 0) / port
             + store / min(port, d.hbm_bytes_per_s / d.sms / f))
    latency_bound = rounds * (iterations * it_alone + max(outside_sm, drain)
                              + c.cta_fixed_s * f)
    bounds = {"sm_throughput": throughput / f, "sm_latency": latency_bound / f,
              "l2": l2_bytes / c.l2_bytes_per_s, "hbm": hbm_bytes / d.hbm_bytes_per_s,
              "launch": c.launch_s}
    limiter = max(("sm_throughput", "sm_latency", "l2", "hbm"), key=lambda k: bounds[k])
    time_s = bounds[limiter] + c.launch_s
    if limiter == "sm_throughput" and cycles:
        limiter = max(cycles, key=lambda k: cycles[k])
    return Forecast(time_s, bounds, cycles, ctas, stats.ctas_per_sm, ctas / (d.sms * o),
                    iterations, executed_flop if executed_flop else ctas * flop_it * iterations,
                    hbm_bytes, l2_bytes, limiter)


def tensor_bytes(named):
    """Bytes of the distinct tensors among ``named``'s values (views of one buffer with the same
    pointer and size count once)."""
    import torch

    seen = {}
    for value in named:
        if isinstance(value, torch.Tensor):
            seen[(value.data_ptr(), value.numel(), value.element_size())] = (
                value.numel() * value.element_size())
    return sum(seen.values())


def compile_and_stats(kernel, args, kwargs, dev="h100"):
    """(compile key, KernelStats) of one launch of ``kernel`` with these arguments."""
    from .compiling import compile_launch

    key, compiled = compile_launch(kernel, args, kwargs)
    named = dict(zip(kernel.arg_names, args)) | kwargs
    stats = kernel_stats([(key, compiled, named.get("BLOCK_M"), named.get("BLOCK_K"))], dev)
    return key, stats[key]


def forecast_kernel(kernel, args, kwargs, grid, useful_flop=None, device="h100",
                    hbm_bytes=None, calibrated=None):
    """FORECAST of ``kernel[grid](*args, **kwargs)`` on ``device`` ("h100", "h200"): compiled
    for sm_90 here (CPU tensors of the real sizes stand in for the GPU's: ``torch.empty``).
    ``useful_flop``: the MMA FLOP the launch does (sets the iterations of its main loop);
    ``hbm_bytes``: its DRAM traffic (default: every distinct tensor argument once). Returns a
    ``Forecast``; a config the GPU would refuse (shared memory, registers) raises ValueError."""
    dev = _device(device)
    key, stats = compile_and_stats(kernel, args, kwargs, dev)
    if stats.shared > dev.smem_per_cta_max or stats.ctas_per_sm == 0:
        raise ValueError(f"{stats.name}: {stats.regs} registers x {stats.num_warps} warps, "
                         f"{stats.shared} B shared memory: no CTA fits on an SM of {dev.name}")
    if callable(grid):
        grid = grid(dict(zip(kernel.arg_names, args)) | kwargs)
    grid = tuple(int(g) for g in grid)
    if hbm_bytes is None:
        hbm_bytes = tensor_bytes(list(args) + list(kwargs.values()))
    fc = forecast_launch(stats, grid, hbm_bytes, useful_flop, dev, calibrated)
    fc.stats = stats
    return fc
