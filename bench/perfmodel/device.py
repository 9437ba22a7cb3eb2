"""The GPUs the model forecasts for: one set of constants per card, the same for every kernel.

Sources (each constant's): SM count, L2 size and register / shared-memory limits are NVIDIA's
(H100 SXM5 and H200 SXM product pages and the Hopper tuning guide). ``tc_peak`` is the dense
bf16/fp16 matmul rate this project measured (cuBLAS, 2026-11-26, H100 SXM: 788 TFLOP/s, 80 % of
the 989 TFLOP/s datasheet figure; the H200 gave the same), TF32 half of it; ``clock_hz`` is the
clock at which 132 SMs x 4096 FLOP/clk give that rate, so that cycle counts read off the SASS
(instruction issue, MUFU, shared memory) run at the same clock as the tensor cores. ``hbm``:
the device-to-device copy rate measured on each card (H100 3.0 TB/s of 3.35, H200 4.3 of 4.8).
The five constants of the ``Calibrated`` block (L2 bandwidth, memory latency under load, a
CTA's fixed cost, the overlap of MMAs with other instructions, the launch cost) are fitted once
on the published anchor kernels (``perfmodel.calibration``; 2026-12-03, Triton 3.6 and 3.9 give
the same fit) and are the same for both cards: no GPU has checked them on an H200 yet.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Calibrated:
    """Fitted on the anchors (see ``perfmodel.calibration``), not measured here."""

    l2_bytes_per_s: float = 6.5e12  # L2 -> SM, all SMs together
    memory_latency_s: float = 2.75e-6  # a main-loop load's round trip under load
    cta_fixed_s: float = 1.0e-6  # per CTA: CTA start and retire, what its loop cannot hide
    mma_overlap: float = 0.0  # fraction of min(MMA side, other issue) hidden per iteration
    launch_s: float = 6.0e-6  # a launch as do_bench / proton time it, the kernel aside


@dataclass(frozen=True)
class Device:
    name: str
    sms: int
    tc_peak: dict  # FLOP/s by rate class: "16bit", "tf32", "8bit"
    hbm_bytes_per_s: float
    l2_bytes: int
    schedulers: int = 4  # warp schedulers per SM, one instruction per clock each
    tc_flop_per_clk: dict = field(default_factory=lambda: {"16bit": 4096, "tf32": 2048,
                                                           "8bit": 8192})
    mufu_per_clk: int = 16  # ex2 / rcp / rsqrt lanes per clock per SM
    smem_bytes_per_clk: int = 128  # shared-memory bandwidth per SM (wgmma operands)
    l2_port_bytes_per_clk: int = 64  # one SM's L2 read/write path
    regs_per_sm: int = 65536
    smem_per_sm: int = 228 * 1024
    smem_per_cta_max: int = 227 * 1024
    smem_reserved_per_cta: int = 1024
    max_warps_per_sm: int = 64
    max_ctas_per_sm: int = 32
    calibrated: Calibrated = Calibrated()

    @property
    def clock_hz(self):
        return self.tc_peak["16bit"] / (self.sms * self.tc_flop_per_clk["16bit"])


_PEAK = {"16bit": 788e12, "tf32": 394e12, "8bit": 1576e12}
DEVICES = {
    "h100": Device("H100 SXM5", sms=132, tc_peak=_PEAK, hbm_bytes_per_s=3.0e12,
                   l2_bytes=50 * 2**20),
    "h200": Device("H200 SXM", sms=132, tc_peak=_PEAK, hbm_bytes_per_s=4.3e12,
                   l2_bytes=60 * 2**20),
}


def device(name_or_device):
    """A Device from its name ("h100", "h200") or itself."""
    if isinstance(name_or_device, Device):
        return name_or_device
    try:
        return DEVICES[name_or_device.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"device: {name_or_device!r} is not one of {sorted(DEVICES)}") from None
