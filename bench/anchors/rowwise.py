"""Memory-bound row kernels, one program per row, as Liger-Kernel writes them (block = the next
power of two of the row, warps by Liger's ``calculate_settings``): ReLU² forward
(``ops/relu_squared.py``) and LayerNorm forward in fp32 (``ops/layer_norm.py``: Y, and each row's
mean and 1/std for the backward), written anew here. Their H100 times are Liger's published
``benchmark/data/all_benchmark_data.csv`` (``triton.testing.do_bench`` medians)."""

import triton
import triton.language as tl

CONFIGS = [{}]  # the launch follows the row length, as Liger's


def settings(n):
    """(BLOCK, num_warps) of Liger's calculate_settings."""
    block = triton.next_power_of_2(n)
    warps = 32 if block >= 32768 else 16 if block >= 8192 else 8 if block >= 2048 else 4
    return block, warps


@triton.jit
def relu_squared_kernel(x, y, stride, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * stride
    cols = tl.arange(0, BLOCK)
    v = tl.load(x + row + cols, mask=cols < N, other=0.0).to(tl.float32)
    v = tl.maximum(v, 0.0)
    tl.store(y + row + cols, (v * v).to(y.dtype.element_ty), mask=cols < N)


@triton.jit
def layer_norm_kernel(x, w, b, y, mean, rstd, stride, N, eps, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    row = r.to(tl.int64) * stride
    cols = tl.arange(0, BLOCK)
    inside = cols < N
    v = tl.load(x + row + cols, mask=inside, other=0.0)
    mu = tl.sum(v, 0) / N
    centered = tl.where(inside, v - mu, 0.0)
    inv = 1 / tl.sqrt(tl.sum(centered * centered, 0) / N + eps)
    tl.store(mean + r, mu)
    tl.store(rstd + r, inv)
    out = centered * inv * tl.load(w + cols, mask=inside) + tl.load(b + cols, mask=inside)
    tl.store(y + row + cols, out, mask=inside)


def launch(kind, M, N, dtype, config):
    """(kernel, args, kwargs, grid, None) of one launch on CPU tensors (nothing runs)."""
    import torch

    block, warps = settings(N)
    x, y = torch.empty(M, N, dtype=dtype), torch.empty(M, N, dtype=dtype)
    kwargs = dict(BLOCK=block, num_warps=warps)
    if kind == "relu_squared":
        return relu_squared_kernel, (x, y, N, N), kwargs, (M,), None
    w, b = torch.empty(N, dtype=dtype), torch.empty(N, dtype=dtype)
    mean, rstd = torch.empty(M, dtype=torch.float32), torch.empty(M, dtype=torch.float32)
    return layer_norm_kernel, (x, w, b, y, mean, rstd, N, N, 1e-6), kwargs, (M,), None
