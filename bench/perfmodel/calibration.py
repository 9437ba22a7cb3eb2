"""The model against published times of public Triton kernels (the anchors), and the fit of its
five calibrated constants (``device.Calibrated``).

An anchor is a kernel of ``bench/anchors`` (the published kernel's algorithm and autotune set),
one problem size, the card it was timed on and the published time with its source. Its forecast
is the best forecast over the autotune set (what an autotuner picks, by the model's lights),
configs that do not fit on the SM left out. The gate: every anchor within +-25 % of its published
time, with one set of constants for every kernel (``ANCHOR_TOLERANCE``).

    python bench/static_perf.py --calibrate          # anchor, published, forecast, ratio
    python bench/static_perf.py --calibrate --fit    # search the constants again (minutes)
"""

import itertools
import math
import os
import sys
from dataclasses import dataclass, replace

from .device import Calibrated
from .device import device as _device
from .forecast import compile_and_stats, forecast_launch, tensor_bytes

ANCHOR_TOLERANCE = 0.25


@dataclass(frozen=True)
class Anchor:
    name: str
    module: str  # of bench/anchors
    sizes: tuple  # the positional sizes of the module's launch() before dtype and config
    dtype: str  # torch dtype name
    device: str  # "h100", "h200"
    published_s: float
    source: str  # where the number is printed, and how it was read
    config: tuple = ()  # the config the published run used, where it was fixed (items)

    def launches(self):
        """[(config, kernel, args, kwargs, grid, useful FLOP)]: the published run's config, or
        every config of the autotune set."""
        import importlib

        import torch

        bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if bench not in sys.path:
            sys.path.insert(0, bench)
        module = importlib.import_module(f"anchors.{self.module}")
        dtype = getattr(torch, self.dtype)
        configs = [dict(self.config)] if self.config else module.CONFIGS
        return [(cfg, *module.launch(*self.sizes, dtype, cfg)) for cfg in configs]


_PR5726 = ("triton-lang/triton PR #5726 (Feb 2025), proton output of tutorial "
           "09-persistent-matmul.py (µs per call)")
_PR5461 = ("triton-lang/triton PR #5461 (2024-12-19), proton output of tutorial "
           "09-persistent-matmul.py, fp8 (µs per call)")
_FA3 = ("FlashAttention-3 paper (arXiv 2407.08608, Jul 2024), H100 SXM5 forward figure, "
        "non-causal, 16k tokens, hidden 2048: the 'Triton' bar label, {} TFLOP/s")
_LIGER = ("Liger-Kernel benchmark/data/all_benchmark_data.csv ({}), H100 80GB HBM3, "
          "do_bench median")


def _rowwise(kind, n, dtype, published_s):
    name = {"relu_squared": "ReLU²", "layer_norm": "LayerNorm"}[kind]
    when = {"relu_squared": "2026-03-27, v0.7.0", "layer_norm": "2025-07-17, v0.6.0"}[kind]
    return Anchor(f"Liger {name} fwd, {dtype.replace('float', 'fp').replace('bfp', 'bf')}, "
                  f"4096x{n}", "rowwise", (kind, 4096, n), dtype, "h100", published_s,
                  _LIGER.format(when))


def _attention(seq, head_dim, tflops):
    heads = 2048 // head_dim
    batch = 16384 // seq
    return Anchor(f"fused attention fwd, bf16, d={head_dim}, S={seq}, B={batch}", "attention",
                  (batch, heads, seq, head_dim), "bfloat16", "h100",
                  4 * batch * heads * seq * seq * head_dim / (tflops * 1e12),
                  _FA3.format(tflops))


# tutorial 09's matmul() of that time launched fixed configs, not its autotune set
_TUTORIAL_FP16 = (("BLOCK_M", 128), ("BLOCK_N", 256), ("BLOCK_K", 64), ("GROUP_M", 8),
                  ("num_stages", 3), ("num_warps", 8))
_TUTORIAL_FP8 = (("BLOCK_M", 128), ("BLOCK_N", 256), ("BLOCK_K", 128), ("GROUP_M", 8),
                 ("num_stages", 4), ("num_warps", 8))
ANCHORS = (
    Anchor("tutorial matmul, fp16, 8192x8192x512", "gemm", (8192, 8192, 512), "float16", "h100",
           315.881e-6, _PR5726 + ": matmul_kernel 217.5 TFLOP/s (cuBLAS 285.4 in the same run)",
           _TUTORIAL_FP16),
    Anchor("tutorial matmul, fp8 e4m3, 8192x8192x4096", "gemm", (8192, 8192, 4096),
           "float8_e4m3fn", "h100", 454.8e-6, _PR5461 + ": matmul_kernel 1208.9 TFLOP/s",
           _TUTORIAL_FP8),
    _attention(512, 128, 323),
    _attention(1024, 128, 372),
    _attention(2048, 128, 389),
    _attention(4096, 128, 389),
    _attention(8192, 128, 392),
    _attention(16384, 128, 395),
    _attention(512, 64, 340),
    _attention(2048, 64, 396),
    _attention(16384, 64, 403),
    _rowwise("relu_squared", 1024, "bfloat16", 11.264e-6),
    _rowwise("relu_squared", 4096, "bfloat16", 27.936e-6),
    _rowwise("relu_squared", 16384, "bfloat16", 94.400e-6),
    _rowwise("layer_norm", 1024, "float32", 18.848e-6),
    _rowwise("layer_norm", 4096, "float32", 51.040e-6),
    _rowwise("layer_norm", 16384, "float32", 184.768e-6),
)
# The anchors the constants are fitted on; the others only check the fit (held out).
FITTED = tuple(a for a in ANCHORS if not any(
    tag in a.name for tag in ("S=1024", "S=4096", "S=8192", "d=64, S=2048", "4096x4096")))


class _Prepared:
    """An anchor's compiled configs (stats, grid, HBM bytes, FLOP), compiled once."""

    def __init__(self, anchor):
        self.anchor = anchor
        dev = _device(anchor.device)
        self.items = []
        for cfg, kernel, args, kwargs, grid, flop in anchor.launches():
            _, stats = compile_and_stats(kernel, args, kwargs, dev)
            if stats.shared > dev.smem_per_cta_max or stats.ctas_per_sm == 0:
                continue  # the GPU would refuse it; an autotuner skips it
            self.items.append((cfg, stats, grid,
                               tensor_bytes(list(args) + list(kwargs.values())), flop))

    def forecast(self, calibrated=None):
        """(best Forecast, its config) over the configs that fit."""
        best = None
        for cfg, stats, grid, hbm, flop in self.items:
            fc = forecast_launch(stats, grid, hbm, flop, self.anchor.device, calibrated)
            if best is None or fc.time_s < best[0].time_s:
                best = (fc, cfg)
        return best


_prepared = {}


def prepared(anchors=ANCHORS):
    for anchor in anchors:
        if anchor not in _prepared:
            _prepared[anchor] = _Prepared(anchor)
    return [_prepared[a] for a in anchors]


def table(calibrated=None, anchors=ANCHORS):
    """One row per anchor: {"anchor", "device", "published_us", "forecast_us", "ratio"
    (forecast / published), "config", "limiter", "source"}."""
    rows = []
    for p in prepared(anchors):
        fc, cfg = p.forecast(calibrated)
        rows.append({"anchor": p.anchor.name, "device": p.anchor.device,
                     "published_us": p.anchor.published_s * 1e6, "forecast_us": fc.time_s * 1e6,
                     "ratio": fc.time_s / p.anchor.published_s, "config": cfg,
                     "limiter": fc.limiter, "source": p.anchor.source})
    return rows


def worst_error(calibrated=None, anchors=ANCHORS):
    """max |log(forecast / published)| over the anchors."""
    return max(abs(math.log(r["ratio"])) for r in table(calibrated, anchors))


# the search grid of ``fit``: physically plausible ranges (H100 microbenchmarks: L2 -> SM
# 4-7 TB/s, loaded memory latency 0.5-2 us)
FIT_GRID = {
    "l2_bytes_per_s": [5.5e12, 6.0e12, 6.25e12, 6.5e12, 6.75e12, 7.0e12, 7.5e12],
    "memory_latency_s": [1.5e-6, 2.0e-6, 2.5e-6, 2.75e-6, 3.0e-6, 3.25e-6, 3.5e-6],
    "cta_fixed_s": [0.0, 0.5e-6, 1e-6, 2e-6, 3e-6],
    "mma_overlap": [0.0, 0.125, 0.25],
    "launch_s": [3e-6, 4e-6, 5e-6, 6e-6],
}


def fit(anchors=FITTED, grid=FIT_GRID):
    """The Calibrated constants on ``grid`` that minimize the worst anchor error."""
    prepared(anchors)
    best = None
    base = Calibrated()
    for values in itertools.product(*grid.values()):
        c = replace(base, **dict(zip(grid, values)))
        err = worst_error(c, anchors)
        if best is None or err < best[0]:
            best = (err, c)
    return best[1], best[0]


def markdown(rows):
    fitted = {a.name for a in FITTED}
    lines = ["| anchor | device | published µs | forecast µs | forecast ÷ published | "
             "fitted on | config picked | limiter | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = " ".join(f"{k}={v}" for k, v in r["config"].items()) or "(Liger's settings)"
        lines.append(f"| {r['anchor']} | {r['device']} | {r['published_us']:.1f} | "
                     f"{r['forecast_us']:.1f} | {r['ratio']:.2f} | "
                     f"{'yes' if r['anchor'] in fitted else 'held out'} | {cfg} | "
                     f"{r['limiter']} | {r['source']} |")
    return "\n".join(lines)
