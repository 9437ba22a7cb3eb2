"""A tiled GEMM C = A @ B (A (M, K) row-major, B (K, N) K-major, C (M, N)), fp32 accumulation,
in the grouped program order of Triton's matmul tutorials (GROUP_M rows of tiles share the B
tiles in L2): the algorithm and autotune set of ``matmul_kernel`` in triton-lang/triton
python/tutorials/09-persistent-matmul.py (non-persistent), written anew here."""

import triton
import triton.language as tl

# the tutorial's autotune set: BLOCK_M 128, BLOCK_N 128 / 256, BLOCK_K 64 / 128, 3 / 4 stages,
# 4 / 8 warps, GROUP_M 8
CONFIGS = [dict(BLOCK_M=128, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, num_stages=s, num_warps=w)
           for bn in (128, 256) for bk in (64, 128) for s in (3, 4) for w in (4, 8)]


@triton.jit
def gemm_kernel(a, b, c, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # GROUP_M rows of tiles run next to each other, column after column
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = min(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % rows
    tile_n = (pid % per_group) // rows
    rm = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.max_contiguous(tl.multiple_of(tl.where(rm < M, rm, 0), BLOCK_M), BLOCK_M)
    rn = tl.max_contiguous(tl.multiple_of(tl.where(rn < N, rn, 0), BLOCK_N), BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_tile = a + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_tile = b + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        left = K - k * BLOCK_K
        acc = tl.dot(tl.load(a_tile, mask=rk[None, :] < left, other=0.0),
                     tl.load(b_tile, mask=rk[:, None] < left, other=0.0), acc)
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk
    cm = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cn = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(c + cm[:, None] * stride_cm + cn[None, :] * stride_cn,
             acc.to(c.dtype.element_ty), mask=(cm[:, None] < M) & (cn[None, :] < N))


def launch(M, N, K, dtype, config):
    """(kernel, args, kwargs, grid, useful FLOP) of one launch on CPU tensors (nothing runs)."""
    import torch

    a = torch.empty(M, K, dtype=dtype)
    b = torch.empty(N, K, dtype=dtype).t()  # K-major, as the tutorial's benchmark passes it
    c = torch.empty(M, N, dtype=dtype)
    grid = (triton.cdiv(M, config["BLOCK_M"]) * triton.cdiv(N, config["BLOCK_N"]),)
    args = (a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride())
    return gemm_kernel, args, dict(config), grid, 2.0 * M * N * K
