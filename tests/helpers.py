"""Shared test helpers: one tolerance table, relative error, device/backends."""

import os

import pytest
import torch

# Relative-error tolerance ||out - ref|| / ||ref|| per compute dtype.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,  # IEEE fp32 under the interpreter; TF32 dots on a GPU get TF32_TOLERANCE
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
}
TF32_TOLERANCE = 5e-3


def rel_err(out, ref):
    """Relative error in float64; NaN or Inf anywhere in ``out`` gives inf (never passes)."""
    out = out.detach().double()
    ref = ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    denom = ref.norm().item()
    return (out - ref).norm().item() / max(denom, 1e-30)


def assert_close(out, ref, dtype, name, tol=None):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    tol = TOLERANCES[dtype] if tol is None else tol
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def triton_available_here():
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def kernel_device():
    """Where Triton kernels run in this test session: the GPU, or the CPU under the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def run_compile_worker(worker, args, target):
    """Run ``worker`` (a ``python -c`` script compiling kernels ahead of time) with ``args`` in
    a process without TRITON_INTERPRET; the JSON it prints on its ``JSON:`` line. A worker that
    prints ``SKIP: why`` skips the test (this Triton cannot compile for ``target``)."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence Triton 3.9's notice; fusion is its default
    run = subprocess.run([sys.executable, "-c", worker, *args], env=env, capture_output=True,
                         text=True, timeout=3600)  # only a hang
    if run.returncode == 0 and run.stdout.startswith("SKIP: "):
        pytest.skip(f"this Triton cannot compile for {target} ahead of time: {run.stdout[6:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("JSON:"))
    return json.loads(line[5:])
