"""A static performance model of Triton kernels on Hopper GPUs: compile for sm_90 without a GPU,
read the SASS, FORECAST the time on a named card. Calibrated on published times of public
kernels (``calibration``: every anchor within +-25 %, one set of constants).

    import sys; sys.path.insert(0, "bench")
    from perfmodel import forecast_kernel
    fc = forecast_kernel(kernel, args, kwargs, grid, useful_flop, device="h100")
    print(fc.time_s, fc.limiter, fc.bounds)

Modules (each imports only those before it; ``compiling`` and ``amdgcn`` stand apart):
``device`` the cards' constants; ``sass`` reading compiled code; ``compiling`` the sm_90 compile
of a launch with Triton's own JIT specialization (and the AMD one, ``target=hip_target(arch)``);
``forecast`` the model; ``calibration`` the anchors (kernels in ``bench/anchors``) and the fit;
``amdgcn`` reading compiled AMD code (registers, scratch, LDS, occupancy, the MFMA main loop: no
model, no forecast). Run without TRITON_INTERPRET.
"""

from .forecast import Forecast, forecast_kernel  # noqa: F401
