"""Every config of every kernel against the reference, not only the default.

On a GPU the autotuner may pick any entry of a kernel's ``CONFIGS``; the other tests run the
default (``configs[0]``). Here each config is forced on its kernel (the other kernels keep their
default) and a whole forward + backward runs against the float64 reference, fp32 and fp16,
through the paths that config's blocks meet: the wide MMA (no dropout), the per-gate masked
dots (dropout), fused input, per-gate projection tiles. Channel counts are chosen so that every
block size leaves a partial tile (F = 20 against BLOCK_F 16/32/64, C_in = 18 against BLOCK_K).
"""

import pytest
import test_kernels_vs_reference as vs_reference  # a module: its tests are not collected here
import torch
from convlstm_triton.kernels import (
    input_grad,
    input_projection,
    step_backward,
    step_forward,
    weight_grad,
)
from helpers import triton_available_here
from triton.runtime.errors import OutOfResources

from convlstm_triton import amd_configs, tuning

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]

KERNEL_CONFIGS = {
    "step_forward": step_forward.CONFIGS,
    "input_projection": input_projection.CONFIGS,
    "step_backward": step_backward.CONFIGS,
    "weight_grad": weight_grad.CONFIGS,
    "input_grad": input_grad.CONFIGS,
    "input_grad_reduce": input_grad.REDUCE_CONFIGS,
}

# Small enough for the interpreter, with a partial tile along every blocked dim.
WIDE = dict(spatial=(4, 5), C=18, F=20, k=(3, 3), padding="same", B=1, T=2,
            initial_state=True)
MASKED = dict(spatial=(4, 3), C=3, F=20, k=(3, 2), padding="same", B=2, T=2, dropout=True,
              mask=True, peephole=True, initial_state=True)
# The input gradient's GEMM runs from 16 input channels on (below, its CUDA-core reduction):
# strided sub-pixel phases with per-gate dropout masks, C_in = 17 against BLOCK_C.
STRIDED_MASKED = dict(spatial=(5, 7), C=17, F=20, k=(3, 3), padding="same", strides=2, B=1,
                      T=2, dropout=True)
# (case, forward variant) per kernel: the paths its config reaches
PATHS = {
    "step_forward": [("wide", WIDE, "hoisted"), ("masked_fused", MASKED, "fused_input"),
                     ("wide_fused", WIDE, "fused_input")],
    "input_projection": [("all_gates", WIDE, "hoisted"), ("gate_tiles", MASKED, "hoisted")],
    "step_backward": [("wide", WIDE, "hoisted"), ("masked", MASKED, "hoisted")],
    "weight_grad": [("wide", WIDE, "hoisted"), ("masked", MASKED, "hoisted")],
    "input_grad": [("wide", WIDE, "hoisted"), ("strided_masked", STRIDED_MASKED, "hoisted")],
    "input_grad_reduce": [("all_gates", dict(WIDE, C=3), "hoisted"),
                          ("masked", MASKED, "hoisted")],
}

PARAMS = [
    pytest.param(kernel, index, case, variant, dtype,
                 id=f"{kernel}-cfg{index}-{path}-{str(dtype).removeprefix('torch.')}")
    for kernel, configs in KERNEL_CONFIGS.items()
    for index in range(len(configs))
    for path, case, variant in PATHS[kernel]
    for dtype in (torch.float32, torch.float16)
    # fp16 on the main path of each kernel only: the masked paths share its tiles
    if dtype == torch.float32 or path == PATHS[kernel][0][0]
]


@pytest.fixture
def force_config(monkeypatch):
    """force_config(kernel, cfg): every launch of ``kernel`` uses ``cfg`` (also where the
    pruner would have dropped it for these tiny sizes: a config must be right for any shape);
    other kernels get their default."""
    forced = {}
    launched = []

    def pick(kernel_name, key, configs, run, device, **options):
        if kernel_name in forced:
            launched.append(kernel_name)
            return forced[kernel_name]
        return configs[0]

    monkeypatch.setattr(tuning, "pick_config", pick)

    def force(kernel, cfg):
        forced[kernel] = cfg
        return launched

    return force


@pytest.mark.parametrize("kernel,index,case,variant,dtype", PARAMS)
def test_config_matches_reference(kernel, index, case, variant, dtype, force_config,
                                  poison_buffers):
    launched = force_config(kernel, KERNEL_CONFIGS[kernel][index])
    try:
        if variant == "hoisted":
            vs_reference.test_forward_and_gradients_match_reference(dtype, case, None)
        else:
            vs_reference.test_forward_variants_match_reference(variant, case, None)  # fp32 only
    except OutOfResources as exc:
        # a real GPU refuses a pipeline its shared memory (AMD: LDS) cannot hold, e.g. fp32
        # twins of the 16-bit 4-stage tiles, or Hopper's tiles in 64 KiB of LDS: the pruners
        # never offer such a config there (test_amd_static.py checks what they keep on AMD)
        if not torch.cuda.is_available():
            raise
        pytest.skip(f"{kernel} config {index} does not fit this GPU: {exc}")
    assert kernel in launched, f"{kernel} was never launched with the forced config"


# AMD-only candidates (convlstm_triton/amd_configs.py, offered on an AMD platform only): the
# variants of each GEMM kernel's full config list, on its main path in fp32. Triton's interpreter
# ignores their options (matrix_instr_nonkdim, waves_per_eu): here they check that configs
# carrying them go through the launchers, launch plans and tuning and give the reference's
# results; what the options change in the compiled code is checked by compiling for gfx942 and
# gfx90a (tests/test_amd_static.py: 0 scratch, MFMA). NVIDIA's backend refuses the options
# ("Keyword argument ... unrecognised"), which is why they are never offered there.
AMD_PARAMS = [
    pytest.param(kernel, cfg, id=f"{kernel}-amd{index}-" + "-".join(
        f"{k}{v}" for k, v in cfg.items() if k in amd_configs.AMD_OPTIONS))
    for kernel in amd_configs.GEMM_KERNELS
    for index, cfg in enumerate(amd_configs.variants(kernel, KERNEL_CONFIGS[kernel]))
]


def _nvidia_gpu():
    from convlstm_triton.platform import platform

    return torch.cuda.is_available() and platform("cuda").vendor != "amd"


@pytest.mark.skipif(_nvidia_gpu(), reason="AMD options: NVIDIA's backend refuses them")
@pytest.mark.parametrize("kernel,cfg", AMD_PARAMS)
def test_amd_variant_matches_reference(kernel, cfg, force_config, poison_buffers):
    _, case, variant = PATHS[kernel][0]
    assert variant == "hoisted"
    launched = force_config(kernel, cfg)
    vs_reference.test_forward_and_gradients_match_reference(torch.float32, case, None)
    assert kernel in launched, f"{kernel} was never launched with the forced config"


def test_every_config_is_valid_for_a_gpu():
    """tl.dot needs every block dim >= 16 on a GPU (the interpreter does not check it); a CTA
    has at most 1024 threads (16 warps of 32, or of 64-lane waves on AMD)."""
    for kernel, configs in KERNEL_CONFIGS.items():
        for cfg in configs:
            blocks = {k: v for k, v in cfg.items() if k.startswith("BLOCK_")}
            assert all(v >= 16 and v & (v - 1) == 0 for v in blocks.values()), (kernel, cfg)
            assert cfg["num_warps"] in (4, 8, 16), (kernel, cfg)


@pytest.mark.parametrize("element_size", [2, 4], ids=["16bit", "fp32"])
def test_pruners_keep_only_pipelines_that_fit_shared_memory(element_size):
    """The launchers' candidates at a large problem: every kept pipeline (num_stages buffers of
    the A and B tiles) fits a CTA's shared memory in that element size, and the four-stage
    128 x 256 tiles are kept for 16-bit operands only (their fp32 twins would be refused at
    launch on sm_90)."""
    from convlstm_triton import launchers
    from convlstm_triton.platform import HOPPER

    rows = 1 << 20
    kept = {
        "step_forward": (launchers.step_forward_configs(128, rows, 4096,
                                                        element_size=element_size),
                         lambda cfg: (cfg["BLOCK_M"], 4 * cfg["BLOCK_F"])),
        "input_projection": (launchers.input_projection_configs(rows, 512, 4096, element_size),
                             lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_N"])),
        "step_backward": (launchers.step_backward_configs(128, rows, 4096,
                                                          element_size=element_size),
                          lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_F"])),
    }
    for kernel, (configs, tile_of) in kept.items():
        assert configs, kernel
        for cfg in configs:
            block_m, block_n = tile_of(cfg)
            pipeline = cfg["num_stages"] * cfg["BLOCK_K"] * (block_m + block_n) * element_size
            assert pipeline <= HOPPER.shared_memory, (kernel, cfg, pipeline)
    wide_step = dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=16, num_stages=4)
    wide_projection = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=4)
    assert (wide_step in kept["step_forward"][0]) == (element_size == 2)
    assert (wide_projection in kept["input_projection"][0]) == (element_size == 2)
