"""What the GPU a launch runs on can do, read once per device: NVIDIA (CUDA) or AMD (ROCm).

A ROCm build of torch reports ``torch.version.hip`` and keeps the ``"cuda"`` device type; the
AMD arch is the device's ``gcnArchName`` ("gfx942:sramecc+:xnack-" -> "gfx942"). The launchers
ask it for what differs between the two: whether fp32 dots may run in TF32 (Triton allows it
from NVIDIA sm_80 and on AMD gfx942, CDNA3's xf32, and refuses it elsewhere: gfx90a has none),
whether tensor descriptors (TMA) are there (NVIDIA sm_90 on), and how much shared memory (AMD:
LDS) one program may take and how many pipeline stages take none, the budget of the config
pruners. Tensors on the CPU (Triton's interpreter) get the Hopper the configs were written for,
so that tests prune as an H100 would.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Platform:
    vendor: str  # "nvidia" or "amd"
    arch: str  # "sm_90", "gfx942", ...
    shared_memory: int  # bytes of shared memory (LDS) one program may use
    tf32: bool  # fp32 dots may run in TF32 (xf32 on CDNA3)
    tma: bool  # tensor descriptors (TMA)
    # pipeline stages Triton's backend holds in registers, not in shared memory: a config of
    # num_stages takes num_stages - register_stages tiles of shared memory (see
    # AMD_REGISTER_STAGE_ARCHS); 0 on NVIDIA, whose pipeliner keeps every stage there
    register_stages: int = 0


HOPPER = Platform("nvidia", "sm_90", 227 * 1024, tf32=True, tma=True)

# LDS one workgroup may use, by AMD arch (CDNA2, CDNA3: 64 KiB; CDNA4: 160 KiB)
AMD_LDS_BYTES = {"gfx90a": 64 * 1024, "gfx942": 64 * 1024, "gfx950": 160 * 1024}
AMD_LDS_DEFAULT = 64 * 1024
AMD_TF32_ARCHS = ("gfx942",)  # Triton's HIP backend allows input_precision="tf32" there only
# Triton's AMD stream pipeliner on CDNA2/3 prefetches one stage from global memory into registers
# and keeps num_stages - 1 tiles in LDS (compiled with Triton 3.6 and 3.9: a GEMM's LDS is
# (num_stages - 1) x its A + B tile, bench/amd_static.py reads it). gfx950 copies straight into
# LDS (async copies): counted as NVIDIA's, every stage in shared memory.
AMD_REGISTER_STAGE_ARCHS = ("gfx90a", "gfx942")

# shared memory one block may opt in to, by NVIDIA compute capability (CUDA's tables), where
# torch's device properties do not say
NVIDIA_SHARED_MEMORY = {(9, 0): 227 * 1024, (8, 0): 163 * 1024, (8, 7): 163 * 1024,
                        (8, 6): 99 * 1024, (8, 9): 99 * 1024, (12, 0): 99 * 1024}
NVIDIA_SHARED_MEMORY_DEFAULT = 99 * 1024

_platforms = {}  # device index -> Platform


def is_hip():
    """Whether this torch is a ROCm build (its "cuda" devices are AMD GPUs)."""
    return getattr(torch.version, "hip", None) is not None


def platform(device):
    """The Platform of a torch device (``HOPPER`` for the CPU: Triton's interpreter)."""
    device = torch.device(device)
    if device.type != "cuda":
        return HOPPER
    index = device.index if device.index is not None else torch.cuda.current_device()
    found = _platforms.get(index)
    if found is None:
        found = _platforms[index] = _read(torch.cuda.get_device_properties(index))
    return found


def amd_platform(arch):
    """The Platform of an AMD GPU of ``arch`` ("gfx942", "gfx90a", ...)."""
    return Platform("amd", arch, AMD_LDS_BYTES.get(arch, AMD_LDS_DEFAULT),
                    tf32=arch in AMD_TF32_ARCHS, tma=False,
                    register_stages=int(arch in AMD_REGISTER_STAGE_ARCHS))


def _read(props):
    if is_hip():
        return amd_platform((getattr(props, "gcnArchName", "") or "").split(":")[0] or "unknown")
    capability = (props.major, props.minor)
    shared = getattr(props, "shared_memory_per_block_optin", None)
    if not shared:
        shared = NVIDIA_SHARED_MEMORY.get(capability, NVIDIA_SHARED_MEMORY_DEFAULT)
    return Platform("nvidia", f"sm_{props.major}{props.minor}", int(shared),
                    tf32=capability >= (8, 0), tma=capability >= (9, 0))


def clear():
    """Forget what was read (tests that fake a device)."""
    _platforms.clear()
