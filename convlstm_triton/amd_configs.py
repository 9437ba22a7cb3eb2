"""AMD-only autotune candidates: the compile options of Triton's HIP backend that matter for MFMA
kernels, added to a GEMM kernel's kept configs on an AMD platform only (NVIDIA's lists are
returned as they are, the same objects).

* ``matrix_instr_nonkdim=16``: 16 x 16 MFMAs instead of the backend's default choice (32 x 32
  for every GEMM main loop here, ``bench/amd_static.py``): more, smaller instructions, another
  LDS read pattern; AMD's tuning guide lists it among the first knobs for GEMMs. Added to the
  kernel's default (the first kept config).
* ``waves_per_eu=2``: lets the compiler use up to 256 registers a lane (512 / 2) for ILP,
  where occupancy is capped near two waves per SIMD anyway: the 128-row tiles, whose 32-64 KiB
  of LDS per workgroup already allow one or two workgroups a CU. Added to the first kept config
  of 128 rows whose fp32 accumulator takes at most 64 registers a lane (a quarter of that
  budget: the VGPR pruning; the weight gradient, register-bound at one wave with up to 295
  VGPRs + AGPRs on gfx942, gets none).

Not added: ``kpack=2`` (Triton 3.6/3.9 deprecate it and override it to 1 from gfx950 on). The
variants keep their base config's tiles and stages, so they fit the LDS their base was kept for
(``launchers._fitting_configs``); that each compiles for gfx942 and gfx90a without scratch is
gated by tests/test_amd_static.py (every config the launch path offers there, these included).
Which one is fastest is for the autotuner on an AMD GPU: none has been timed. Triton's
interpreter ignores these options (tests/test_every_config.py runs them: the same results as
their base config).
"""

# kernel name (launchers._tuned_launch's) -> (the accumulator's columns of a config, whether
# waves_per_eu variants are offered)
GEMM_KERNELS = {
    "step_forward": (lambda cfg: 4 * cfg["BLOCK_F"], True),
    "input_projection": (lambda cfg: cfg["BLOCK_N"], True),
    "step_backward": (lambda cfg: cfg["BLOCK_F"], True),
    "input_grad": (lambda cfg: cfg["BLOCK_C"], True),
    "weight_grad": (lambda cfg: cfg["BLOCK_N"], False),
}
AMD_OPTIONS = ("matrix_instr_nonkdim", "waves_per_eu", "kpack")
WAVE_SIZE = 64
MAX_ACCUMULATOR_REGISTERS = 64  # fp32 accumulator registers a lane for a waves_per_eu=2 variant

_variants = {}  # (kernel name, ids of the configs, arch) -> (the configs, with the variants)


def with_amd_variants(kernel_name, configs, gpu):
    """``configs`` (a launcher's kept candidates, default first) plus the AMD variants of
    ``kernel_name`` on an AMD ``gpu`` (a ``platform.Platform``); ``configs`` itself elsewhere.
    The default stays first. Cached per (kernel, configs, arch): launchers ask at every step."""
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise TypeError(f"with_amd_variants({kernel_name!r}): configs must be a list of dicts")
    if gpu.vendor != "amd" or kernel_name not in GEMM_KERNELS or not configs:
        return configs
    key = (kernel_name, tuple(map(id, configs)), gpu.arch)
    entry = _variants.get(key)
    if entry is None:
        entry = _variants[key] = (configs, configs + variants(kernel_name, configs))
        if len(_variants) > 4096:  # every distinct kept list adds one
            _variants.pop(next(iter(_variants)))
    return entry[1]


def variants(kernel_name, configs):
    """The AMD variants of a GEMM kernel's kept configs (see the module docstring)."""
    columns, waves = GEMM_KERNELS[kernel_name]
    base = configs[0]
    if any(option in base for option in AMD_OPTIONS):
        return []  # already an AMD config (a list given twice)
    out = [dict(base, matrix_instr_nonkdim=16)]
    if waves:
        for cfg in configs:
            lanes = WAVE_SIZE * cfg["num_warps"]
            if (cfg["BLOCK_M"] >= 128
                    and cfg["BLOCK_M"] * columns(cfg) / lanes <= MAX_ACCUMULATOR_REGISTERS):
                out.append(dict(cfg, waves_per_eu=2))
                break
    return out
