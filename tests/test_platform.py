"""What the launchers read of the GPU (convlstm_triton.platform), on faked NVIDIA and ROCm
devices: TF32 only where Triton allows it (NVIDIA sm_80 on, AMD gfx942; gfx90a refused
input_precision="tf32" at compile time), TMA only on Hopper, the shared-memory budget the
config pruners use (AMD LDS: 64 KiB, of which a pipeline of num_stages takes num_stages - 1
tiles on gfx90a/gfx942: Triton's AMD pipeliner holds one stage in registers), the tuning cache
keyed by the AMD arch. That every config the pruners keep for AMD compiles within its LDS:
tests/test_amd_static.py."""

from types import SimpleNamespace

import pytest
import torch

from convlstm_triton import launchers, platform, tuning


@pytest.fixture
def fake_gpu(monkeypatch):
    """fake_gpu(hip=bool, **properties): device 0 of a (ROCm or CUDA) torch has them."""

    def make(hip, name="GPU", **props):
        monkeypatch.setattr(torch.version, "hip", "6.4" if hip else None, raising=False)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda index: SimpleNamespace(name=name, **props))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: name)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        platform.clear()
        tuning._device_names.clear()

    yield make
    platform.clear()
    tuning._device_names.clear()


@pytest.mark.parametrize("arch, lds, tf32, register_stages", [
    ("gfx90a:sramecc+:xnack-", 64 * 1024, False, 1),
    ("gfx942:sramecc+:xnack-", 64 * 1024, True, 1),
    ("gfx950", 160 * 1024, False, 0),
])
def test_amd_archs(fake_gpu, arch, lds, tf32, register_stages):
    fake_gpu(True, gcnArchName=arch, major=9, minor=4)
    found = platform.platform("cuda")
    assert (found.vendor, found.arch) == ("amd", arch.split(":")[0])
    assert (found.shared_memory, found.tf32, found.tma) == (lds, tf32, False)
    assert found.register_stages == register_stages
    assert found == platform.amd_platform(arch.split(":")[0])


@pytest.mark.parametrize("capability, shared, tf32, tma", [
    ((9, 0), 227 * 1024, True, True),
    ((8, 0), 163 * 1024, True, False),
    ((8, 9), 99 * 1024, True, False),
    ((7, 5), 99 * 1024, False, False),
])
def test_nvidia_capabilities(fake_gpu, capability, shared, tf32, tma):
    fake_gpu(False, major=capability[0], minor=capability[1], gcnArchName="")
    found = platform.platform(torch.device("cuda", 0))
    assert found.vendor == "nvidia" and found.arch == f"sm_{capability[0]}{capability[1]}"
    assert (found.shared_memory, found.tf32, found.tma) == (shared, tf32, tma)
    assert found.register_stages == 0


def test_cpu_tensors_get_hopper():
    """The interpreter's tensors prune as an H100 would (the tests' configs are Hopper's)."""
    assert platform.platform("cpu") is platform.HOPPER


@pytest.mark.parametrize("arch", ["gfx90a", "gfx942"])
@pytest.mark.parametrize("element_size", [2, 4])
@pytest.mark.parametrize("filters", [32, 64, 128])
def test_configs_fit_amd_lds(arch, element_size, filters):
    """On gfx90a/gfx942 the pruners keep, for every GEMM kernel, bf16 and fp32, at least one
    config, and only pipelines whose num_stages - 1 buffers fit the 64 KiB of LDS. Before the
    AMD pipeline was modelled (every stage counted), fp32 training had no step-backward config
    at all (only BLOCK_F = 16 fit, which F >= 32 excluded) and no weight-gradient config that
    fit (the fallback took 96 KiB)."""
    amd = platform.amd_platform(arch)
    lds, held = amd.shared_memory, amd.register_stages
    assert (lds, held) == (64 * 1024, 1)
    F, rows = filters, 1 << 20
    gemms = (
        (launchers.step_forward_configs(F, rows, 9 * F, element_size=element_size,
                                        shared_memory=lds, register_stages=held),
         lambda cfg: (cfg["BLOCK_M"], 4 * cfg["BLOCK_F"])),
        (launchers.step_forward_configs(F, rows, 9 * (F + 64), fused_input=True,
                                        element_size=element_size, shared_memory=lds,
                                        register_stages=held),
         lambda cfg: (cfg["BLOCK_M"], 4 * cfg["BLOCK_F"])),
        (launchers.input_projection_configs(rows, 4 * F, 576, element_size, lds, held),
         lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_N"])),
        (launchers.step_backward_configs(F, rows, 4 * F, element_size=element_size,
                                         shared_memory=lds, register_stages=held),
         lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_F"])),
        (launchers.input_grad_configs(rows, 64, 4 * F, False, element_size, lds, held),
         lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_C"])),
    )
    for configs, tile_of in gemms:
        assert configs
        for cfg in configs:
            assert launchers.pipeline_fits(cfg, *tile_of(cfg), element_size, lds, held), cfg
            buffers = cfg["num_stages"] - 1
            assert buffers * cfg["BLOCK_K"] * sum(tile_of(cfg)) * element_size <= lds, cfg
    # the wide step-backward tiles (BLOCK_F >= 32) survive in fp32 too
    backward = launchers.step_backward_configs(F, rows, 4 * F, element_size=element_size,
                                               shared_memory=lds, register_stages=held)
    assert all(cfg["BLOCK_F"] >= 32 for cfg in backward), backward
    for c_in, tap_major in ((64, True), (1, False)):
        configs = launchers.weight_grad_configs(F, c_in, 9, False, tap_major, element_size,
                                                False, lds, held)
        assert configs
        for cfg in configs:
            smem = ((cfg["num_stages"] - 1) * cfg["BLOCK_R"]
                    * (cfg["K_BLOCKS"] * cfg["BLOCK_K"] + cfg["BLOCK_N"]) * element_size)
            assert smem <= lds, cfg


def test_step_backward_keeps_a_config_where_no_wide_tile_fits():
    """A shared memory in which none of the wide (BLOCK_F >= 32) step-backward tiles fits (fp32
    in 64 KiB, every stage in shared memory): the narrow ones, not an empty list (which made
    tuning.pick_config raise)."""
    configs = launchers.step_backward_configs(64, 1 << 20, 256, element_size=4,
                                              shared_memory=64 * 1024)
    assert configs and all(cfg["BLOCK_F"] < 32 for cfg in configs)
    for cfg in configs:
        assert launchers.pipeline_fits(cfg, cfg["BLOCK_M"], cfg["BLOCK_F"], 4, 64 * 1024)


def test_tuning_cache_is_keyed_by_the_amd_arch(fake_gpu):
    fake_gpu(True, name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-", major=9,
             minor=4)
    assert tuning._device_name(torch.device("cuda", 0)) == "AMD Instinct MI300X (gfx942)"
    fake_gpu(False, name="NVIDIA H100 80GB HBM3", major=9, minor=0)
    assert tuning._device_name(torch.device("cuda", 0)) == "NVIDIA H100 80GB HBM3"


# ---------------------------------------------------------------------------------------------
# AMD-only candidates (convlstm_triton/amd_configs.py)


def _kept(kernel):
    from convlstm_triton.kernels import (
        input_grad,
        input_projection,
        step_backward,
        step_forward,
        weight_grad,
    )

    return {"step_forward": step_forward.CONFIGS, "input_projection": input_projection.CONFIGS,
            "step_backward": step_backward.CONFIGS, "input_grad": input_grad.CONFIGS,
            "weight_grad": weight_grad.CONFIGS, "input_grad_reduce": input_grad.REDUCE_CONFIGS,
            }[kernel]


KERNELS = ["step_forward", "input_projection", "step_backward", "input_grad", "weight_grad",
           "input_grad_reduce"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("nvidia", [platform.HOPPER,
                                    platform.Platform("nvidia", "sm_80", 163 * 1024, True, False)])
def test_nvidia_config_lists_are_unchanged(kernel, nvidia):
    from convlstm_triton.amd_configs import with_amd_variants

    configs = list(_kept(kernel))
    assert with_amd_variants(kernel, configs, nvidia) is configs


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("arch", ["gfx90a", "gfx942"])
def test_amd_variants_of_the_gemm_kernels(kernel, arch):
    """The default stays first and every base config stays; a GEMM kernel gets its default with
    16 x 16 MFMAs, and (not the register-bound weight gradient) the first 128-row tile whose
    accumulator takes <= 64 registers a lane with waves_per_eu=2; nothing else."""
    from convlstm_triton.amd_configs import GEMM_KERNELS, with_amd_variants

    configs = list(_kept(kernel))
    amd = with_amd_variants(kernel, configs, platform.amd_platform(arch))
    assert amd[:len(configs)] == configs
    added = amd[len(configs):]
    if kernel not in GEMM_KERNELS:
        assert amd is configs
        return
    assert added[0] == dict(configs[0], matrix_instr_nonkdim=16)
    waves = [cfg for cfg in added if "waves_per_eu" in cfg]
    if kernel == "weight_grad":
        assert not waves and len(added) == 1
        return
    assert len(waves) == 1 and len(added) == 2, added
    base = {k: v for k, v in waves[0].items() if k != "waves_per_eu"}
    assert base in configs and base["BLOCK_M"] >= 128 and waves[0]["waves_per_eu"] == 2
    columns = GEMM_KERNELS[kernel][0](base)
    assert base["BLOCK_M"] * columns / (64 * base["num_warps"]) <= 64
    # asked again (every step): the same list; and the variants of variants are none
    assert with_amd_variants(kernel, configs, platform.amd_platform(arch)) is amd
    assert with_amd_variants(kernel, added, platform.amd_platform(arch)) == added


def test_amd_variants_need_128_rows_and_a_small_accumulator():
    from convlstm_triton.amd_configs import variants

    small = dict(BLOCK_M=64, BLOCK_F=32, BLOCK_K=32, num_warps=4, num_stages=3)
    wide = dict(BLOCK_M=128, BLOCK_F=64, BLOCK_K=64, num_warps=4, num_stages=3)  # 128 regs
    assert variants("step_forward", [small, wide]) == [dict(small, matrix_instr_nonkdim=16)]
    fits = dict(wide, num_warps=8)  # 64 registers a lane
    assert variants("step_forward", [small, wide, fits])[1] == dict(fits, waves_per_eu=2)


def test_amd_variants_refuse_what_is_not_a_config_list():
    from convlstm_triton.amd_configs import with_amd_variants

    with pytest.raises(TypeError, match="list of dicts"):
        with_amd_variants("step_forward", ({"BLOCK_M": 64},), platform.HOPPER)
    with pytest.raises(TypeError, match="list of dicts"):
        with_amd_variants("step_forward", [("BLOCK_M", 64)], platform.HOPPER)


def test_the_launch_path_offers_the_amd_variants_on_amd_only(monkeypatch):
    """conv_lstm on the interpreter with the platform faked: on gfx942 tuning is offered each
    GEMM kernel's AMD variants after its NVIDIA-written configs, on Hopper exactly those."""
    from helpers import triton_available_here

    if not triton_available_here():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from convlstm_triton.functional import conv_lstm

    offered = {}

    def pick(kernel_name, key, configs, run, device, **kwargs):
        offered.setdefault(kernel_name, list(configs))
        return configs[0]

    monkeypatch.setattr(tuning, "pick_config", pick)
    x = torch.randn(1, 2, 4, 4, 3)
    weights = [torch.randn(3, 3, 3, 32) * 0.1, torch.randn(3, 3, 8, 32) * 0.1, torch.zeros(32)]
    for gpu in (platform.HOPPER, platform.amd_platform("gfx942")):
        monkeypatch.setattr(launchers, "platform", lambda device, gpu=gpu: gpu)
        offered.clear()
        with torch.no_grad():
            conv_lstm(x, *weights, padding="same", backend="triton")
        options = {kernel: [cfg for cfg in configs if "matrix_instr_nonkdim" in cfg]
                   for kernel, configs in offered.items()}
        assert {"step_forward", "input_projection"} <= set(offered)
        if gpu.vendor == "amd":
            assert all(len(found) == 1 for found in options.values()), options
        else:
            assert not any(options.values()), options
