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
