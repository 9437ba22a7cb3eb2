"""The weight-gradient launcher against torch's conv weight gradient, with the reduction split
many ways, as on a GPU (under the interpreter, one "SM", the launcher picks one split): the partial
sums of every split, the bias partials that a split's K tiles share, strided (B, T') views of
src and dgates (as the recurrent kernel's states[:, :T-1] with dgates[:, 1:]), spatial and
flat row tiles, both K layouts (the flattened one with the bias as a row of the MMA),
per-gate dropout masks."""

import pytest
import torch
from helpers import TOLERANCES, assert_close, kernel_device, triton_available_here

from convlstm_triton import launchers, reference
from convlstm_triton.geometry import ConvGeometry

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]

# spatial, C, F, kernel, strides, dilation, padding, dropout, spatial row tiles
CASES = [
    pytest.param((6, 7), 16, 5, (3, 3), (1, 1), (1, 1), "same", False, False, id="2d_tap_major"),
    pytest.param((6, 7), 16, 5, (3, 3), (1, 1), (1, 1), "same", False, True,
                 id="2d_tap_major_spatial_tiles"),
    pytest.param((9, 8), 3, 6, (3, 2), (2, 1), (1, 2), "valid", False, True,
                 id="2d_flat_s2_dil2"),
    pytest.param((5, 7), 3, 4, (3, 3), (1, 1), (1, 1), "same", True, False, id="2d_flat_dropout"),
    pytest.param((5, 6), 17, 5, (2, 3), (1, 1), (1, 1), "same", True, True,
                 id="2d_tap_major_dropout"),
    pytest.param((3, 4, 5), 2, 3, (2, 3, 3), (1, 2, 1), (1, 1, 1), "same", False, True,
                 id="3d_flat_s1x2x1"),
    pytest.param((13,), 16, 3, (4,), (2,), (1,), "valid", False, False, id="1d_tap_major_s2"),
]


def torch_weight_grad(x, dgates, smask, geom, kernel_size, strides, dilation):
    """dW (taps * C, 4F) and db (4F,) of a channels-last conv by autograd: x (B, T, *in, C),
    dgates (B, T, Po, 4F), smask (4, B, *in, C) or None (per-gate masks, constant over time)."""
    B, T = x.shape[:2]
    rank = len(kernel_size)
    C, N = x.shape[-1], dgates.shape[-1]
    F = N // 4
    pads = reference._pad_pairs(geom.in_spatial, geom.out_spatial, kernel_size, strides,
                                dilation, geom.pad_before)
    w = torch.zeros(*kernel_size, C, N, dtype=torch.float64, requires_grad=True)
    loss = 0.0
    for g in range(4):
        src = x.double()
        if smask is not None:
            src = src * smask[g].double()[:, None]
        frames = reference._to_channels_first(src.reshape(B * T, *x.shape[2:]))
        weight = reference._torch_weight(w[..., g * F:(g + 1) * F], rank)
        y = reference._conv(frames, weight, None, strides, dilation, pads, rank)
        up = dgates[..., g * F:(g + 1) * F].double().reshape(B * T, *geom.out_spatial, F)
        loss = loss + (reference._to_channels_last(y) * up).sum()
    (dw,) = torch.autograd.grad(loss, w)
    return dw.reshape(-1, N), dgates.double().sum((0, 1, 2))


@pytest.mark.parametrize("spatial,C,F,k,strides,dilation,padding,dropout,spatial_tiles", CASES)
def test_weight_grad_many_splits_matches_torch(spatial, C, F, k, strides, dilation, padding,
                                               dropout, spatial_tiles, poison_buffers,
                                               monkeypatch):
    # splits of 4 row tiles (the last one shorter): a bias range of 0 or 1 tiles per program
    monkeypatch.setattr(launchers, "weight_grad_split",
                        lambda tiles, row_tiles, sm_count, block_r: (-(-row_tiles // 4), 4))
    monkeypatch.setattr(launchers, "SPATIAL_TILE_WASTE",
                        float("inf") if spatial_tiles else -1.0)
    device = kernel_device()
    B, T = 2, 3
    geom = ConvGeometry.build(spatial, k, strides, dilation, padding)
    kgeom = launchers.KernelGeometry.from_conv(geom)
    Po = kgeom.out_pixels
    # (B, T) views of larger sequences: sample strides that are not T frames
    x_all = torch.randn(B, T + 1, *kgeom.in_spatial, C, device=device)
    dg_all = torch.randn(B, T + 1, Po, 4 * F, device=device)
    x, dgates = x_all[:, 1:], dg_all[:, :T]
    smask = None
    if dropout:
        smask = (torch.rand(4, B, *kgeom.in_spatial, C, device=device) < 0.7) / 0.7
    dw, db = launchers.weight_grad(x, dgates, smask, kgeom, True, "ieee")
    ref_dw, ref_db = torch_weight_grad(x.reshape(B, T, *spatial, C), dgates,
                                       None if smask is None else
                                       smask.reshape(4, B, *spatial, C), geom, k, strides,
                                       dilation)
    assert_close(dw, ref_dw, torch.float32, "dW", TOLERANCES[torch.float32])
    assert_close(db, ref_db, torch.float32, "db", TOLERANCES[torch.float32])
