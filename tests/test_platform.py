"""What the launchers read of the GPU (convlstm_triton.platform), on faked NVIDIA and ROCm
devices: TF32 only where Triton allows it (NVIDIA sm_80 on, AMD gfx942; gfx90a refused
input_precision="tf32" at compile time), TMA only on Hopper, the shared-memory budget the
config pruners use (AMD LDS: 64 KiB), the tuning cache keyed by the AMD arch."""

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


@pytest.mark.parametrize("arch, lds, tf32", [
    ("gfx90a:sramecc+:xnack-", 64 * 1024, False),
    ("gfx942:sramecc+:xnack-", 64 * 1024, True),
    ("gfx950", 160 * 1024, False),
])
def test_amd_archs(fake_gpu, arch, lds, tf32):
    fake_gpu(True, gcnArchName=arch, major=9, minor=4)
    found = platform.platform("cuda")
    assert (found.vendor, found.arch) == ("amd", arch.split(":")[0])
    assert (found.shared_memory, found.tf32, found.tma) == (lds, tf32, False)


@pytest.mark.parametrize("capability, shared, tf32, tma", [
    ((9, 0), 227 * 1024, True, True),
    ((8, 0), 163 * 1024, True, False),
    ((8, 9), 99 * 1024, True, False),
    ((7, 5), 99 * 1024, False, False),
])
def test_nvidia_capabilities(fake_gpu, capability, shared, tf32, tma):
    fake_gpu(False, major=capability[0], minor=capability[1], gcnArchName="")
    found = platform.platform(torch.device("cuda", 0))
    assert found.vendor == "nvidia" and found.arch == "sm_%d%d" % capability
    assert (found.shared_memory, found.tf32, found.tma) == (shared, tf32, tma)


def test_cpu_tensors_get_hopper():
    """The interpreter's tensors prune as an H100 would (the tests' configs are Hopper's)."""
    assert platform.platform("cpu") is platform.HOPPER


def test_configs_fit_amd_lds():
    """With 64 KiB of LDS the pruners keep only pipelines that fit it (and at least one)."""
    lds = 64 * 1024
    rows = 1 << 20
    for configs, tile_of in (
            (launchers.step_forward_configs(64, rows, 576, shared_memory=lds),
             lambda cfg: (cfg["BLOCK_M"], 4 * cfg["BLOCK_F"])),
            (launchers.input_projection_configs(rows, 256, 576, 2, lds),
             lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_N"])),
            (launchers.step_backward_configs(64, rows, 256, shared_memory=lds),
             lambda cfg: (cfg["BLOCK_M"], cfg["BLOCK_F"]))):
        assert configs
        for cfg in configs:
            assert launchers.pipeline_fits(cfg, *tile_of(cfg), 2, lds), cfg
    for cfg in launchers.weight_grad_configs(64, 64, 9, False, True, 2, False, lds):
        smem = cfg["num_stages"] * cfg["BLOCK_R"] * (cfg["K_BLOCKS"] * cfg["BLOCK_K"]
                                                     + cfg["BLOCK_N"]) * 2
        assert smem <= lds, cfg


def test_tuning_cache_is_keyed_by_the_amd_arch(fake_gpu):
    fake_gpu(True, name="AMD Instinct MI300X", gcnArchName="gfx942:sramecc+:xnack-", major=9,
             minor=4)
    assert tuning._device_name(torch.device("cuda", 0)) == "AMD Instinct MI300X (gfx942)"
    fake_gpu(False, name="NVIDIA H100 80GB HBM3", major=9, minor=0)
    assert tuning._device_name(torch.device("cuda", 0)) == "NVIDIA H100 80GB HBM3"
