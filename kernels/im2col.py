"""Implicit-GEMM tile gathers shared by every convolution kernel.

Glossary (all kernels):
    B batch, T time steps, frame = one (b, t) image.
    D, H, W   spatial size of the tensor being gathered from (D = H = 1 for 1D, D = 1 for 2D).
    C         channels of that tensor (C_in for x, F for h, 4F for gate gradients).
    KD, KH, KW kernel size (constexpr); S* strides, P* padding before, L* dilation (constexpr).
    K         flattened reduction index k = ((kd * KH + kh) * KW + kw) * C + c, the row index of a
              Keras kernel reshaped to (KD*KH*KW*C, N), so one K loop covers taps and channels
              (a C_in = 1 input wastes no lanes).
Tensors are channels-last; a row's ``row_base`` is the int64 element offset of its frame.
"""

import triton
import triton.language as tl


@triton.jit
def split_rows(rows, P, H, W):
    """Row index (frame-major over P = D*H*W pixels) -> (frame, d, h, w)."""
    frame = rows // P
    p = rows % P
    return frame, p // (H * W), (p // W) % H, p % W


@triton.jit
def state_tile(M, P, H, W, F, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """This program's tile of a (B, P, F) state: rows (b, p) on axis 0, channels on axis 1.

    Returns rows, row_mask, b (int64), p, d, h, w, channels, channel_mask.
    """
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    b, d, h, w = split_rows(rows, P, H, W)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    return rows, rows < M, b.to(tl.int64), rows % P, d, h, w, fs, fs < F


@triton.jit
def step_tile(M, P, B, D, H, W, F, SPATIAL_TILES: tl.constexpr, TILE_H: tl.constexpr,
              TILE_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """A step kernel's tile of a (B, P, F) state: a TILE_H x TILE_W block of one sample's (d)
    slice (SPATIAL_TILES: row coordinates by constant shifts) or BLOCK_M flattened rows, and a
    channel block. Returns the block's scalars (b, d, h0, w0; zeros for flattened rows), then
    b (int64), p, d, h, w, row_mask per row and the channels fs, f_mask."""
    if SPATIAL_TILES:
        b_s, d_s, h0, w0, b, d, h, w, row_mask = spatial_block(B, D, H, W, TILE_H, TILE_W)
        fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
        return (b_s, d_s, h0, w0, b, (d * H + h) * W + w, d, h, w, row_mask, fs, fs < F)
    else:
        _, row_mask, b, p, d, h, w, fs, f_mask = state_tile(M, P, H, W, F, BLOCK_M, BLOCK_F)
        return 0, 0, 0, 0, b, p, d, h, w, row_mask, fs, f_mask


@triton.jit
def spatial_block(N, D, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """This program's TILE_H x TILE_W block of an (N, D, H, W) tensor of frames (samples), program
    ids w-tile fastest. Returns the scalars (n, d, h0, w0) and the rows of the block: n (int64),
    d, h, w and row_mask ([TILE_H * TILE_W] each), row coordinates by constant shifts: no
    runtime division per row."""
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_h = tl.cdiv(H, TILE_H)
    pid = tl.program_id(0)
    w0 = (pid % tiles_w) * TILE_W
    rest = pid // tiles_w
    h0 = (rest % tiles_h) * TILE_H
    rest = rest // tiles_h
    n_s = rest // D
    d_s = rest % D
    r = tl.arange(0, TILE_H * TILE_W)
    h = h0 + r // TILE_W
    w = w0 + r % TILE_W
    n = tl.zeros((TILE_H * TILE_W,), tl.int64) + n_s
    d = tl.zeros((TILE_H * TILE_W,), tl.int32) + d_s
    return n_s, d_s, h0, w0, n, d, h, w, (h < H) & (w < W)


@triton.jit
def conv_gather_offsets(
    od, oh, ow, row_mask, ks, K_TOTAL, C, D, H, W,
    KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
):
    """Flattened-K im2col tile [rows, ks]: (element offsets within a frame, valid).

    k = tap * C + c is decoded per element, so any C (even C_in = 1) fills the K lanes; the
    price is per-element index math (registers). See ``conv_tap_offsets`` for large C.
    """
    tap = ks // C
    c = ks % C
    kd = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    idd = od[:, None] * SD - PD + kd[None, :] * LD
    ih = oh[:, None] * SH - PH + kh[None, :] * LH
    iw = ow[:, None] * SW - PW + kw[None, :] * LW
    valid = (row_mask[:, None] & (ks < K_TOTAL)[None, :]
             & (idd >= 0) & (idd < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
    return ((idd * H + ih) * W + iw) * C + c[None, :], valid


@triton.jit
def conv_gather(
    src_ptr, row_base, od, oh, ow, row_mask, ks, K_TOTAL, C, D, H, W,
    KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
):
    """im2col tile [rows, ks] of a conv: src pixel = out pixel * stride - pad + tap * dil."""
    offs, valid = conv_gather_offsets(od, oh, ow, row_mask, ks, K_TOTAL, C, D, H, W, KH, KW,
                                      SD, SH, SW, PD, PH, PW, LD, LH, LW)
    return tl.load(src_ptr + row_base[:, None] + offs, mask=valid, other=0.0)


@triton.jit
def conv_tap_offsets(
    od, oh, ow, row_mask, tap, C, D, H, W,
    KH: tl.constexpr, KW: tl.constexpr,
    SD: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PD: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    LD: tl.constexpr, LH: tl.constexpr, LW: tl.constexpr,
):
    """Tap-major im2col: for one kernel tap (a scalar), each row's source pixel offset within
    its frame (pixel * C) and whether that pixel exists. A K tile is then
    ``offsets[:, None] + channels[None, :]``: index math per row, not per element, and loads
    contiguous along the channels (channels-last)."""
    kd = tap // (KH * KW)
    kh = (tap // KW) % KH
    kw = tap % KW
    idd = od * SD - PD + kd * LD
    ih = oh * SH - PH + kh * LH
    iw = ow * SW - PW + kw * LW
    ok = row_mask & (idd >= 0) & (idd < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return ((idd * H + ih) * W + iw) * C, ok


@triton.jit
def gate_columns(pid_n, F, BLOCK_N: tl.constexpr):
    """Column tile of a (., 4F) gate matrix that stays inside one gate: (gate, cols, col_mask).

    Keeping a tile inside one gate lets per-gate dropout masks scale the A tile."""
    per_gate = tl.cdiv(F, BLOCK_N)
    gate = pid_n // per_gate
    fs = (pid_n % per_gate) * BLOCK_N + tl.arange(0, BLOCK_N)
    return gate, gate * F + fs, fs < F
