"""Weight (and bias) gradient of a conv: a Hopper GEMM whose reduction runs over B·T·pixels.

    dW[k, n] = sum_{frame, p} im2col(src * smask[gate(n)])[frame, p, k] * dgates[frame, p, n]
    db[n]    = sum_{frame, p} dgates[frame, p, n]
Serves both ``kernel`` (src = x, the input conv's geometry: strides, dilation) and
``recurrent_kernel`` (src = h_{t-1}, stride 1 "same"). src (B, T, D, H, W, C) and dgates
(B, T, Po, 4F) may be strided (B, T) views: frame (b, t) starts at b * stride_b + t * stride_t.

GEMM view: dW (K x N) = A^T G with A = im2col(src) (rows x K) and G = dgates (rows x N); the
rows (frame, output pixel) are the reduction, the MMA's K. A program owns K_BLOCKS blocks of
BLOCK_K = 64 rows of dW (the MMA's M side: wgmma needs 64 per warpgroup), which share each
loaded G tile, one column tile, and a contiguous range of row tiles (its split of the
reduction); it writes fp32 partials (SPLIT, K, N) that the launcher sums in a fixed order:
deterministic. With ACCUMULATE it adds its partials to those the previous launch (time chunk)
left, by reductions in memory with one writer per element (no race: the same sums run to
run), so a sequence's chunks sum into one buffer and the launcher sums its splits once.
A^T and G are MN-major in shared memory (channels and columns are the contiguous dims): wgmma
reads 16-bit operands transposed; TF32 needs K-major operands, which Triton makes with 4-byte
async copies (one per element) into a transposed layout.

Row tiles (TILES_PER_FRAME per frame, never straddling two frames, numbered frame-major):
    SPATIAL_TILES   a TILE_H x TILE_W block of one (d) slice: row coordinates by constant
                    shifts (no runtime division per row), as the forward's spatial tiles.
    otherwise       BLOCK_R consecutive pixels of one frame: a 32-bit division per row
                    (for frames whose spatial tiles would be mostly padding).
A row tile index -> (frame, tile) -> (b, t) takes a few scalar 32-bit divisions per iteration,
and a frame's base offsets are scalar pointers: no 64-bit or per-element division in the loop,
and no 64-bit division anywhere (ptxas makes one a call of a runtime routine).
K blocks (K steps in conv_k_loop's order; constexpr TAP_MAJOR): one tap x BLOCK_K channels
(per-row index math, loads contiguous along channels: k_step_a_tile), or BLOCK_K consecutive k
of the flattened (tap, channel) index for small C such as C_in = 1 (``_flat_offsets``). A
program's K blocks are fixed, so their column index math is loop invariant.
Column tiles (constexpr GATE_TILES): without dropout masks a tile may span gates (N up to 4F
at once: all four gates share the A tile); with per-gate dropout masks smask (4, B, D, H, W, C;
constant over time) a tile stays inside one gate, whose mask scales the A tile (HAS_DROPOUT).

Bias gradient, where the flattened K leaves a padding lane (constexpr BIAS_ROW): a column of
ones in A at k = K_TOTAL, so the MMA's row K_TOTAL is db, at no extra instruction but the
load's fill value. Otherwise (BIAS_SUMS) the column sums of G tiles the program loads anyway,
each row tile's sum taken by one of the split's K_TILES programs: program pid_k sums the
pid_k-th K_TILES-th of the split's row tiles, in a loop of its own (the sums' instructions
are not paid by the other row tiles' iterations), and writes partials (SPLIT, K_TILES, N),
summed in a fixed order by the launcher. No program does all of a split's bias work.
"""

import triton
import triton.language as tl

from .conv_k_loop import k_step_a_tile, k_step_count
from .im2col import gate_columns

# Autotuning candidates (convlstm_triton.tuning picks one per shape; the launcher's pruner keeps
# the ones a problem can use); the first is the default, used untuned and under the interpreter.
# BLOCK_R: rows (output pixels) per row tile, the MMA's reduction; BLOCK_K: rows of a dW block,
# the MMA's M side (64: wgmma's minimum); K_BLOCKS: dW blocks per program, which share the
# dgates tile; BLOCK_N: columns.
CONFIGS = [
    dict(BLOCK_R=64, BLOCK_K=64, K_BLOCKS=1, BLOCK_N=128, num_warps=4, num_stages=3),
    # all four gates of F = 64 at once: one wgmma of N = 256 (128 accumulator registers)
    dict(BLOCK_R=64, BLOCK_K=64, K_BLOCKS=1, BLOCK_N=256, num_warps=4, num_stages=3),
    # two dW blocks per dgates tile: half the dgates traffic from L2 per FLOP (which the
    # one-block tiles need at ~15 TB/s for the peak rate); two warpgroups split N
    dict(BLOCK_R=64, BLOCK_K=64, K_BLOCKS=2, BLOCK_N=256, num_warps=8, num_stages=3),
    # 32-row tiles: fp32's N = 256 pipeline in shared memory, and the flattened K layout
    # (small C), whose per-element gather needs the registers
    dict(BLOCK_R=32, BLOCK_K=64, K_BLOCKS=1, BLOCK_N=256, num_warps=4, num_stages=3),
    dict(BLOCK_R=32, BLOCK_K=64, K_BLOCKS=1, BLOCK_N=128, num_warps=4, num_stages=3),
    # per-gate column tiles (dropout masks) of F <= 64
    dict(BLOCK_R=64, BLOCK_K=64, K_BLOCKS=1, BLOCK_N=64, num_warps=4, num_stages=4),
    # the two-block tile in four stages (196 KiB of 16-bit tiles; fp32: pruned): its K loop
    # over the output pixels is latency-bound at three (sm_90 forecast, mnist_l1's recurrent
    # dW: 149 -> 123 us a time chunk)
    dict(BLOCK_R=64, BLOCK_K=64, K_BLOCKS=2, BLOCK_N=256, num_warps=8, num_stages=4),
]


@triton.jit
def _row_tile(j, TILES_PER_FRAME, T, TILES_W, TILES_HW, Do, Ho, Wo, Po,
              SPATIAL_TILES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Row tile j -> its frame's (b, t) (scalars) and its rows: output pixel coordinates
    od, oh, ow, flat pixel index p and row_mask ([TILE_H * TILE_W] each). Scalar 32-bit
    divisions only, and none per row with SPATIAL_TILES."""
    frame = j // TILES_PER_FRAME
    tile = j - frame * TILES_PER_FRAME
    b = frame // T
    t = frame - b * T
    r = tl.arange(0, TILE_H * TILE_W)
    if SPATIAL_TILES:
        d0 = tile // TILES_HW
        rest = tile - d0 * TILES_HW
        th = rest // TILES_W
        oh = th * TILE_H + r // TILE_W
        ow = (rest - th * TILES_W) * TILE_W + r % TILE_W
        od = tl.zeros_like(r) + d0
        row_mask = (oh < Ho) & (ow < Wo)
        p = (d0 * Ho + oh) * Wo + ow
    else:
        p = tile * (TILE_H * TILE_W) + r
        row_mask = p < Po
        od = p // (Ho * Wo)
        oh = (p // Wo) % Ho
        ow = p % Wo
    return b, t, od, oh, ow, p, row_mask


@triton.jit
def _k_rows(it, C: tl.constexpr, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
            TAP_MAJOR: tl.constexpr, BIAS_ROW: tl.constexpr, BLOCK_K: tl.constexpr):
    """The rows of dW (k = tap * C + c) of K step ``it`` (conv_k_loop's order: tap-major
    (tap, channel block), or flattened), and which exist (none past the last step; with
    BIAS_ROW, flattened, row K_TOTAL too: the bias)."""
    if TAP_MAJOR:
        C_BLOCKS: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
        cs = (it % C_BLOCKS) * BLOCK_K + tl.arange(0, BLOCK_K)
        tap = it // C_BLOCKS
        ks = tap * C + cs
        k_ok = (cs < C) & (ks < KD * KH * KW * C)
    else:
        ks = it * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = ks < KD * KH * KW * C + BIAS_ROW
    return ks, k_ok


@triton.jit
def _flat_offsets(od, oh, ow, row_mask, it, C: tl.constexpr, D, H, W,
                  KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                  SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                  LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr, BLOCK_K: tl.constexpr):
    """Flattened-K im2col tile [rows, BLOCK_K] of K step ``it`` (k = tap * C + c): element
    offsets within the frame and valid mask. The source coordinate is a row part (output pixel
    * stride - pad) plus a column part (tap * dilation), and so is the offset: per element
    only the sums, one unsigned compare per dim (negative wraps past the size), and no compare
    at all along a dim the kernel does not extend (size 1: the row part is in range)."""
    ks = it * BLOCK_K + tl.arange(0, BLOCK_K)
    tap = ks // C
    kd = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    k_ok = ks < KD * KH * KW * C
    rd = od * SD - PD
    rh = oh * SH - PH
    rw = ow * SW - PW
    row_offs = ((rd * H + rh) * W + rw) * C
    col_offs = ((kd * LD * H + kh * LH) * W + kw * LW) * C + ks % C
    valid = row_mask[:, None] & k_ok[None, :]
    if KD > 1:
        valid = valid & ((rd[:, None] + (kd * LD)[None, :]).to(tl.uint32, bitcast=True) < D)
    if KH > 1:
        valid = valid & ((rh[:, None] + (kh * LH)[None, :]).to(tl.uint32, bitcast=True) < H)
    if KW > 1:
        valid = valid & ((rw[:, None] + (kw * LW)[None, :]).to(tl.uint32, bitcast=True) < W)
    return row_offs[:, None] + col_offs[None, :], valid, ks


@triton.jit
def _a_tile(it, src_ptr, src_base, od, oh, ow, row_mask, smask_ptr, smask_base, C: tl.constexpr,
            D, H, W, KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
            SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
            PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
            LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
            HAS_DROPOUT: tl.constexpr, TAP_MAJOR: tl.constexpr, BIAS_ROW: tl.constexpr,
            BLOCK_K: tl.constexpr):
    """K step ``it`` of a row tile's im2col (src * smask with HAS_DROPOUT: the mask shares
    src's layout, so its tile sits at the same offsets). BIAS_ROW (flattened K only): column
    k = K_TOTAL, a padding lane, is 1 on the tile's rows (what masked-off lanes load), so the
    MMA's row K_TOTAL is the bias gradient."""
    other = 0.0
    if TAP_MAJOR:
        a, offs, valid, _, _ = k_step_a_tile(
            src_ptr, src_base, od, oh, ow, row_mask, it, C, D, H, W, KD, KH, KW,
            SD, SH, SW, PD, PH, PW, LD, LH, LW, TAP_MAJOR, BLOCK_K)
    else:
        offs, valid, ks = _flat_offsets(od, oh, ow, row_mask, it, C, D, H, W, KD, KH, KW,
                                        SD, SH, SW, PD, PH, PW, LD, LH, LW, BLOCK_K)
        if BIAS_ROW:
            other = ((ks == KD * KH * KW * C)[None, :] & row_mask[:, None]).to(
                src_ptr.dtype.element_ty)
        a = tl.load(src_ptr + src_base[:, None] + offs, mask=valid, other=other)
    if HAS_DROPOUT:
        a = a * tl.load(smask_ptr + smask_base[:, None] + offs, mask=valid, other=other)
    return a


@triton.jit
def _row_tile_product(acc0, acc1, j, it0, src_ptr, stride_sb, stride_st, dg_ptr, stride_gb,
                      stride_gt, smask_ptr, smask_gate_base, cols, col_mask,
                      T, TILES_PER_FRAME, TILES_W, TILES_HW, D, H, W, Do, Ho, Wo, Po,
                      C: tl.constexpr, N: tl.constexpr,
                      KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                      SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                      PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                      LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
                      HAS_DROPOUT: tl.constexpr, TAP_MAJOR: tl.constexpr,
                      SPATIAL_TILES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                      BIAS_ROW: tl.constexpr, DOT_PRECISION: tl.constexpr,
                      K_BLOCKS: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row tile j: acc0 += A(it0)^T G_j and, with K_BLOCKS = 2, acc1 += A(it0 + 1)^T G_j,
    where A(it) is K step ``it`` of the frame's im2col (fixed per program: its column index
    math is loop invariant) and G_j the dgates tile of this program's columns, loaded once for
    both. Returns (acc0, acc1, G_j)."""
    b, t, od, oh, ow, p, row_mask = _row_tile(j, TILES_PER_FRAME, T, TILES_W, TILES_HW,
                                              Do, Ho, Wo, Po, SPATIAL_TILES, TILE_H, TILE_W)
    b = b.to(tl.int64)
    # the frame's pointers (scalars): per element only 32-bit offsets within the frame
    src_frame = src_ptr + (b * stride_sb + t.to(tl.int64) * stride_st)
    smask_frame = smask_ptr + (smask_gate_base + b * (D * H * W * C))
    dg_frame = dg_ptr + (b * stride_gb + t.to(tl.int64) * stride_gt)
    zero = tl.zeros_like(p)
    g = tl.load(dg_frame + (p * N)[:, None] + cols[None, :],
                mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    a = _a_tile(it0, src_frame, zero, od, oh, ow, row_mask, smask_frame, zero, C, D, H, W,
                KD, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW, HAS_DROPOUT, TAP_MAJOR, BIAS_ROW,
                BLOCK_K)
    acc0 = tl.dot(tl.trans(a), g, acc0, input_precision=DOT_PRECISION)
    if K_BLOCKS == 2:
        # the second step may lie past the last one (an odd step count): no rows then
        row_mask = row_mask & (zero + (it0 + 1) < k_step_count(C, KD, KH, KW, TAP_MAJOR,
                                                               BLOCK_K))
        a = _a_tile(it0 + 1, src_frame, zero, od, oh, ow, row_mask, smask_frame, zero, C,
                    D, H, W, KD, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW, HAS_DROPOUT,
                    TAP_MAJOR, BIAS_ROW, BLOCK_K)
        acc1 = tl.dot(tl.trans(a), g, acc1, input_precision=DOT_PRECISION)
    return acc0, acc1, g


@triton.jit
def _k_block(it, pid_s, cols, col_mask, C: tl.constexpr, N: tl.constexpr, KD: tl.constexpr,
             KH: tl.constexpr, KW: tl.constexpr, TAP_MAJOR: tl.constexpr,
             BIAS_ROW: tl.constexpr, BLOCK_K: tl.constexpr):
    """Offsets and mask of this split's partial dW rows of K step ``it`` (none past the last
    step) in the partials (SPLIT, K_TOTAL + BIAS_ROW, N)."""
    ks, k_ok = _k_rows(it, C, KD, KH, KW, TAP_MAJOR, BIAS_ROW, BLOCK_K)
    offs = (pid_s.to(tl.int64) * ((KD * KH * KW * C + BIAS_ROW) * N) + ks[:, None] * N
            + cols[None, :])
    return offs, k_ok[:, None] & col_mask[None, :]


@triton.jit
def _store_k_block(acc, it, dw_ptr, pid_s, cols, col_mask, C: tl.constexpr, N: tl.constexpr,
                   KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                   TAP_MAJOR: tl.constexpr, BIAS_ROW: tl.constexpr, ACCUMULATE: tl.constexpr,
                   BLOCK_K: tl.constexpr):
    """This split's partial dW rows of K step ``it``: stored, or (ACCUMULATE) added to what the
    previous launch left there."""
    offs, mask = _k_block(it, pid_s, cols, col_mask, C, N, KD, KH, KW, TAP_MAJOR, BIAS_ROW,
                          BLOCK_K)
    _write(dw_ptr + offs, acc, mask, ACCUMULATE)


@triton.jit
def _write(ptrs, values, mask, ACCUMULATE: tl.constexpr):
    """Store, or add to memory with a reduction (RED, no value returned: no registers for a
    loaded tile, which spilled the widest configs). Each element has one writer per launch and
    launches run in stream order: the sums are the same run to run."""
    if ACCUMULATE:
        tl.atomic_add(ptrs, values, mask=mask, sem="relaxed")
    else:
        tl.store(ptrs, values, mask=mask)


@triton.jit
def weight_grad_kernel(
    src_ptr, stride_sb, stride_st,
    dg_ptr, stride_gb, stride_gt,
    smask_ptr, stride_smask_gate,
    dw_ptr, db_ptr,
    T, ROW_TILES, TILES_PER_SPLIT, TILES_PER_FRAME, TILES_W, TILES_HW,
    D, H, W, Do, Ho, Wo, Po,
    C: tl.constexpr, F: tl.constexpr,
    KD: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
    BIAS_SUMS: tl.constexpr, BIAS_ROW: tl.constexpr, ACCUMULATE: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, GATE_TILES: tl.constexpr,
    TAP_MAJOR: tl.constexpr, SPATIAL_TILES: tl.constexpr,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, K_BLOCKS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    tl.static_assert(BLOCK_R == TILE_H * TILE_W)
    tl.static_assert(K_BLOCKS == 1 or K_BLOCKS == 2)
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(2)
    K_TILES = tl.num_programs(0)
    N: tl.constexpr = 4 * F
    smask_gate_base = 0
    if GATE_TILES:
        gate, cols, col_mask = gate_columns(tl.program_id(1), F, BLOCK_N)
        # int64 gate offset: 3 * stride may pass 2**31
        smask_gate_base = gate.to(tl.int64) * stride_smask_gate
    else:
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < N
    it0 = pid_k * K_BLOCKS  # this program's first K step

    # This split's row tiles [j_start, j_end); of them, [bias_lo, bias_hi) (a K_TILES-th)
    # also go into this program's bias partial.
    j_start = pid_s * TILES_PER_SPLIT
    j_end = tl.minimum(j_start + TILES_PER_SPLIT, ROW_TILES)
    bias_lo = j_start
    bias_hi = j_start
    if BIAS_SUMS:
        # K_TILES near-equal parts, the first n % K_TILES of them one tile longer: 32-bit
        # math throughout (pid_k * q <= n), where pid_k * n // K_TILES needed int64 (K_TILES x
        # tiles per split may pass 2**31), a 64-bit division: a runtime routine call
        n = j_end - j_start
        q = n // K_TILES
        r = n % K_TILES
        bias_lo = j_start + pid_k * q + tl.minimum(pid_k, r)
        bias_hi = j_start + (pid_k + 1) * q + tl.minimum(pid_k + 1, r)
    acc0 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_K if K_BLOCKS == 2 else 16, BLOCK_N), dtype=tl.float32)
    # the main loop: the split's row tiles outside the bias range (one loop, so the pipeliner
    # prefetches across the gap: a scalar select skips it)
    for i in range(j_start, j_end - (bias_hi - bias_lo)):
        j = tl.where(i < bias_lo, i, i + (bias_hi - bias_lo))
        acc0, acc1, _ = _row_tile_product(
            acc0, acc1, j, it0, src_ptr, stride_sb, stride_st, dg_ptr, stride_gb, stride_gt,
            smask_ptr, smask_gate_base, cols, col_mask, T, TILES_PER_FRAME, TILES_W, TILES_HW,
            D, H, W, Do, Ho, Wo, Po, C, N, KD, KH, KW, SD, SH, SW, PD, PH, PW, LD, LH, LW,
            HAS_DROPOUT, TAP_MAJOR, SPATIAL_TILES, TILE_H, TILE_W, BIAS_ROW, DOT_PRECISION,
            K_BLOCKS, BLOCK_K)
    if BIAS_SUMS:
        # the bias range: the same products, and the column sums of the dgates tiles
        bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for j in range(bias_lo, bias_hi):
            acc0, acc1, g = _row_tile_product(
                acc0, acc1, j, it0, src_ptr, stride_sb, stride_st, dg_ptr, stride_gb,
                stride_gt, smask_ptr, smask_gate_base, cols, col_mask, T, TILES_PER_FRAME,
                TILES_W, TILES_HW, D, H, W, Do, Ho, Wo, Po, C, N, KD, KH, KW, SD, SH, SW,
                PD, PH, PW, LD, LH, LW, HAS_DROPOUT, TAP_MAJOR, SPATIAL_TILES, TILE_H, TILE_W,
                BIAS_ROW, DOT_PRECISION, K_BLOCKS, BLOCK_K)
            bias_acc += tl.sum(g.to(tl.float32), axis=0)
        db_offs = (pid_s * K_TILES + pid_k).to(tl.int64) * N + cols
        _write(db_ptr + db_offs, bias_acc, col_mask, ACCUMULATE)
    _store_k_block(acc0, it0, dw_ptr, pid_s, cols, col_mask, C, N, KD, KH, KW, TAP_MAJOR,
                   BIAS_ROW, ACCUMULATE, BLOCK_K)
    if K_BLOCKS == 2:
        _store_k_block(acc1, it0 + 1, dw_ptr, pid_s, cols, col_mask, C, N, KD, KH, KW,
                       TAP_MAJOR, BIAS_ROW, ACCUMULATE, BLOCK_K)
