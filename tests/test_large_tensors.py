"""Tensors past 2**31 elements: the kernels' element offsets must not wrap around in int32.

* GPU (``gpu`` marker): conv_lstm end to end with x past 2**31 elements (bf16, ~4.8 GB), and
  with xg / the gate pre-activations past 2**31 elements; sampled output pixels (and, with 1x1
  kernels, gradients) against the reference computed on a slice. The same checks run on tiny
  shapes on any machine (interpreter on a CPU), so their logic is tested everywhere.
* Any machine: the per-gate dropout-mask offsets of every kernel that reads a dropout mask
  (``gate * gate_stride``), with the launchers fed a mask whose gate stride is past 2**31 / 3
  over a ~4.3 GB storage that is never touched except where the masks are written (on a CPU the
  untouched pages of a large allocation are not committed: it costs a few pages of RAM). Each
  check runs in a subprocess, because a wrapped-around offset reads outside the allocation.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close, kernel_device, requires_gpu, triton_available_here

from convlstm_triton.functional import conv_lstm
from convlstm_triton.geometry import ConvGeometry

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]

GIB = 2**30
INT32_LIMIT = 2**31


@pytest.fixture
def no_autotune(monkeypatch):
    """Default configs: tuning huge shapes would only cost time (and memory for trial copies)."""
    monkeypatch.setenv("CONVLSTM_TRITON_AUTOTUNE", "0")


def free_gpu_memory_or_skip(needed_bytes):
    free, _ = torch.cuda.mem_get_info()
    if free < needed_bytes:
        pytest.skip(f"needs {needed_bytes / GIB:.0f} GiB of free GPU memory, "
                    f"{free / GIB:.0f} GiB free")


# --- end to end: x, xg and the pre-activations past 2**31 elements ----------------------------

def check_crops(B, T, H, W, C, F, dtype, device, forward_variant, crops):
    """Inference with a 3x3 "same" ConvLSTM on x (B, T, H, W, C); for each crop
    (b, row, col, size) the output pixels [row, row + size) x [col, col + size) of sample b
    against the reference run on x cut around them. A pixel's outputs depend on x within
    T + 1 pixels (input conv, then one recurrent conv per step): the cut keeps a margin of
    T + 2 on every side that is not the image border (where "same" pads with zeros anyway)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.empty(B, T, H, W, C, dtype=dtype, device=device)
    for b in range(B):  # one sample at a time keeps the fp32 temporary small
        x[b] = torch.randn(T, H, W, C, generator=g, device=device).to(dtype)
    kernel = (torch.randn(3, 3, C, 4 * F, generator=g, device=device) / (9 * C) ** 0.5).to(dtype)
    rkernel = (torch.randn(3, 3, F, 4 * F, generator=g, device=device) / (9 * F) ** 0.5).to(dtype)
    bias = torch.randn(4 * F, generator=g, device=device).to(dtype)
    with torch.no_grad():
        seq, h, c = conv_lstm(x, kernel, rkernel, bias, padding="same", backend="triton",
                              forward_variant=forward_variant, allow_tf32=False)
        margin = T + 2
        for b, row, col, size in crops:
            r0, r1 = max(row - margin, 0), min(row + size + margin, H)
            c0, c1 = max(col - margin, 0), min(col + size + margin, W)
            ref = conv_lstm(x[b:b + 1, :, r0:r1, c0:c1].float(), kernel.float(),
                            rkernel.float(), bias.float(), padding="same",
                            backend="reference")
            rows = slice(row - r0, row - r0 + size)
            cols = slice(col - c0, col - c0 + size)
            where = f"sample {b}, pixels [{row}:{row + size}, {col}:{col + size}]"
            assert_close(seq[b, :, row:row + size, col:col + size], ref[0][0, :, rows, cols],
                         dtype, f"seq at {where}")
            assert_close(h[b, row:row + size, col:col + size], ref[1][0, rows, cols], dtype,
                         f"h at {where}")
            assert_close(c[b, row:row + size, col:col + size], ref[2][0, rows, cols], dtype,
                         f"c at {where}")


def x_offset_crops(B, T, H, W, C, size=4):
    """Crops of the last sample: its first pixels, the pixels whose x offsets straddle the
    int32 limit (when x is that large), and the last pixels."""
    crops = [(B - 1, 0, 0, size), (B - 1, H - size, W - size, size)]
    frame = C * H * W
    last_frame_start = (B * T - 1) * frame
    if last_frame_start < INT32_LIMIT < B * T * frame:
        pixel = (INT32_LIMIT - last_frame_start) // C
        row, col = divmod(pixel, W)
        crops.append((B - 1, max(min(row - size // 2, H - size), 0),
                      max(min(col - size // 2, W - size), 0), size))
    return crops


def check_one_by_one_pixels(B, T, H, W, C, F, dtype, device, forward_variant, pixels):
    """1x1 kernels make every pixel an independent LSTM, so the reference on a few pixels is
    exact for them, gradients included: forward and backward with the output gradient nonzero
    only at ``pixels`` [(b, row, col)], so that the weight and bias gradients (sums over every
    pixel) are those of the sampled pixels alone and dx is zero everywhere else."""
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.empty(B, T, H, W, C, dtype=dtype, device=device)
    for b in range(B):
        x[b] = torch.randn(T, H, W, C, generator=g, device=device).to(dtype)
    kernel = (torch.randn(1, 1, C, 4 * F, generator=g, device=device) / C ** 0.5).to(dtype)
    rkernel = (torch.randn(1, 1, F, 4 * F, generator=g, device=device) / F ** 0.5).to(dtype)
    bias = torch.randn(4 * F, generator=g, device=device).to(dtype)
    leaves = [t.requires_grad_() for t in (x, kernel, rkernel, bias)]
    seq, h, c = conv_lstm(*leaves, backend="triton", forward_variant=forward_variant,
                          allow_tf32=False)
    bs, rs, cs = (torch.tensor(v, device=device) for v in zip(*pixels))
    outputs = {"seq": seq[bs, :, rs, cs], "h": h[bs, rs, cs], "c": c[bs, rs, cs]}
    d_seq = torch.randn(len(pixels), T, F, generator=g, device=device).to(dtype)
    d_h = torch.randn(len(pixels), F, generator=g, device=device).to(dtype)
    loss = ((outputs["seq"] * d_seq).float().sum() + (outputs["h"] * d_h).float().sum()
            + outputs["c"].float().sum())
    dx, dk, drk, db = torch.autograd.grad(loss, leaves)
    del loss, seq, h, c

    # the reference: the sampled pixels as a batch of 1x1 images
    ref_leaves = [t.detach().float().requires_grad_()
                  for t in (x[bs, :, rs, cs][:, :, None, None], kernel, rkernel, bias)]
    rseq, rh, rc = conv_lstm(*ref_leaves, backend="reference")
    reference = {"seq": rseq[:, :, 0, 0], "h": rh[:, 0, 0], "c": rc[:, 0, 0]}
    rloss = ((reference["seq"] * d_seq.float()).sum() + (reference["h"] * d_h.float()).sum()
             + reference["c"].sum())
    rdx, rdk, rdrk, rdb = torch.autograd.grad(rloss, ref_leaves)
    for name, out in outputs.items():
        assert_close(out, reference[name], dtype, f"{name} at the sampled pixels")
    assert_close(dx[bs, :, rs, cs], rdx[:, :, 0, 0], dtype, "dx at the sampled pixels")
    dx[bs, :, rs, cs] = 0
    assert not dx.any(), "dx is nonzero (or NaN) away from the sampled pixels"
    for name, a, r in (("dkernel", dk, rdk), ("drecurrent_kernel", drk, rdrk), ("dbias", db, rdb)):
        assert_close(a, r, dtype, name)


def edge_pixels(B, T, H, W, F, per_pixel):
    """(b, row, col) samples: first and last pixels, and where a tensor of ``per_pixel``
    elements per (b, t, pixel) crosses the int32 limit in its last frame (when it does)."""
    pixels = [(0, 0, 0), (B - 1, H - 1, W - 1), (B - 1, H - 1, 0), (B - 1, H // 2, W // 3)]
    last_frame_start = (B * T - 1) * H * W * per_pixel
    if last_frame_start < INT32_LIMIT < B * T * H * W * per_pixel:
        pixel = (INT32_LIMIT - last_frame_start) // per_pixel
        for p in (pixel - 1, pixel, pixel + 1):
            if 0 <= p < H * W:
                pixels.append((B - 1, *divmod(p, W)))
    return list(dict.fromkeys(pixels))  # distinct: each sampled pixel gets one cotangent


@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
def test_crop_and_pixel_checks_on_small_shapes(variant, no_autotune):
    """The large-tensor checks below, on shapes the interpreter runs in seconds."""
    device = kernel_device()
    check_crops(2, 2, 9, 11, 3, 2, torch.float32, device, variant,
                x_offset_crops(2, 2, 9, 11, 3) + [(0, 3, 4, 2)])
    check_one_by_one_pixels(2, 2, 5, 7, 3, 5, torch.float32, device, variant,
                            edge_pixels(2, 2, 5, 7, 3, 3))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
def test_input_past_2_31_elements(variant, no_autotune):
    """x (2, 2, 2048, 2048, 144) bf16: 2.4e9 elements (4.8 GB); the last frame's pixels from
    row ~1139 on sit past 2**31 elements."""
    B, T, H, W, C, F = 2, 2, 2048, 2048, 144, 4
    assert B * T * H * W * C > INT32_LIMIT
    free_gpu_memory_or_skip(12 * GIB)
    check_crops(B, T, H, W, C, F, torch.bfloat16, "cuda", variant,
                x_offset_crops(B, T, H, W, C))


@pytest.mark.gpu
@requires_gpu
def test_input_and_input_gradient_past_2_31_elements(no_autotune):
    """Training with x (2, 2, 2048, 2048, 144) bf16 and 1x1 kernels: the input projection, the
    weight gradient (reads x) and the input gradient (writes dx, 4.8 GB) past 2**31 elements."""
    B, T, H, W, C, F = 2, 2, 2048, 2048, 144, 4
    free_gpu_memory_or_skip(20 * GIB)
    check_one_by_one_pixels(B, T, H, W, C, F, torch.bfloat16, "cuda", "hoisted",
                            edge_pixels(B, T, H, W, F, C))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
def test_gates_past_2_31_elements(variant, no_autotune):
    """Training with F = 272 on (1, 2, 1024, 1024, 4): xg, the saved pre-activations and the gate
    gradients are (1, 2, 2**20, 1088), 2.3e9 elements each; the states 5.7e8."""
    B, T, H, W, C, F = 1, 2, 1024, 1024, 4, 272
    assert B * T * H * W * 4 * F > INT32_LIMIT
    free_gpu_memory_or_skip(40 * GIB)
    check_one_by_one_pixels(B, T, H, W, C, F, torch.bfloat16, "cuda", variant,
                            edge_pixels(B, T, H, W, F, 4 * F))


# --- dropout-mask gate offsets past 2**31, through the launchers ------------------------------

# A gate stride just past 2**31 / 3: gate 3 of the mask starts past 2**31 elements.
GATE_STRIDE = INT32_LIMIT // 3 + 16
MASKED_KERNELS = {
    # kernel launch -> what reads the mask
    "step_forward_recurrent_dropout": "step_forward: hmask in the recurrent conv",
    "step_forward_fused_input_dropout": "step_forward (fused_input): xmask in the input conv",
    "step_backward_recurrent_dropout": "step_backward: hmask on the recurrent dgrad",
    "input_grad_input_dropout": "input_grad: xmask on the input gradient",
    "input_projection_input_dropout": "input_projection: xmask (gate offset cast to int64)",
    "weight_grad_input_dropout": "weight_grad: smask (gate offset cast to int64)",
}
def strided_mask(values, gate_stride):
    """``values`` (4, ...) as a view whose gates lie ``gate_stride`` elements apart in one large
    storage, of which only the four gate regions are written."""
    n = values[0].numel()
    storage = torch.empty(3 * gate_stride + n, dtype=values.dtype, device=values.device)
    for g in range(4):
        storage[g * gate_stride: g * gate_stride + n] = values[g].reshape(-1)
    inner = values[0].stride()
    return storage.as_strided(values.shape, (gate_stride, *inner))


def run_masked_kernel(name, gate_stride):
    """Launch kernel ``name`` once with contiguous dropout masks and once with the same masks
    at ``gate_stride``; returns the two results."""
    from convlstm_triton import launchers
    from convlstm_triton.launchers import KernelGeometry

    device = kernel_device()
    dtype = torch.float16
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    B, T, H, W, C, F = 2, 2, 3, 4, 3, 5
    geom = KernelGeometry.from_conv(ConvGeometry.build((H, W), (3, 3), (1, 1), (1, 1), "same"))
    P = H * W
    keep = 0.7
    hmask = ((torch.rand(4, B, P, F, generator=g) < keep) / keep).to(device=device, dtype=dtype)
    xmask = ((torch.rand(4, B, 1, H, W, C, generator=g) < keep) / keep).to(device=device,
                                                                          dtype=dtype)
    x = randn(B, T, 1, H, W, C)
    kernel2d, rk2d = randn(9 * C, 4 * F) * 0.3, randn(9 * F, 4 * F) * 0.3
    bias = randn(4 * F)
    h_prev, c_prev, xg_t = randn(B, P, F), randn(B, P, F, dtype=torch.float32), randn(B, P, 4 * F)
    dgates = randn(B, T, P, 4 * F)
    precision, act, ract = "ieee", 1, 2

    def launch(hm, xm):
        if name.startswith("step_forward"):
            h_out = torch.zeros(B, P, F, device=device, dtype=dtype)
            c_out = torch.zeros(B, P, F, device=device)
            preact = torch.zeros(B, P, 4 * F, device=device, dtype=dtype)
            inputs = (dict(xg_t=xg_t, hmask=hm) if name == "step_forward_recurrent_dropout" else
                      dict(xg_t=None, hmask=None, x_t=x[:, 1], kernel2d=kernel2d, bias=bias,
                           xmask=xm))
            launchers.step_forward(h_prev=h_prev, c_prev=c_prev, rk2d=rk2d, h_out=h_out,
                                   c_out=c_out, preact_t=preact, mask_t=None, peephole=None,
                                   geom=geom, act=act, ract=ract, precision=precision, **inputs)
            return h_out, c_out, preact
        if name == "step_backward_recurrent_dropout":
            dh = torch.randn(B, P, F, generator=torch.Generator().manual_seed(1)).to(device)
            dc = torch.randn(B, P, F, generator=torch.Generator().manual_seed(2)).to(device)
            dg_out = torch.zeros(B, P, 4 * F, device=device, dtype=dtype)
            launchers.step_backward(dgates[:, 1], rk2d, h_prev, dh, dc, dgates[:, 0],
                                    c_prev.abs(), c_prev, None, hm, None, dg_out, geom, act,
                                    ract, precision)
            return dh, dc, dg_out
        if name == "input_grad_input_dropout":
            return (launchers.input_grad(dgates, kernel2d, xm, geom, C, precision),)
        if name == "input_projection_input_dropout":
            return (launchers.input_projection(x, kernel2d, bias, xm, geom, precision),)
        if name == "weight_grad_input_dropout":
            return launchers.weight_grad(x, dgates, xm, geom, True, precision)
        raise ValueError(name)

    expected = launch(hmask, xmask)
    try:
        hm, xm = strided_mask(hmask, gate_stride), strided_mask(xmask, gate_stride)
    except RuntimeError as error:  # the allocation
        raise MemoryError(str(error)) from error
    return expected, launch(hm, xm)


def _main(name, gate_stride):
    """Subprocess entry: exit 0 when the strided masks give the contiguous masks' results,
    1 when they differ, 3 when the large storage cannot be allocated."""
    try:
        expected, got = run_masked_kernel(name, gate_stride)
    except MemoryError as error:
        print(f"cannot allocate the mask storage: {error}")
        return 3
    for i, (e, a) in enumerate(zip(expected, got)):
        if not torch.equal(e, a):
            print(f"output {i} differs: max |diff| {(e.float() - a.float()).abs().max()}")
            return 1
    return 0


def run_in_subprocess(name, gate_stride):
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    run = subprocess.run([sys.executable, str(Path(__file__).resolve()), name, str(gate_stride)],
                         env=env, capture_output=True, text=True, timeout=300)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip())
    return run


@pytest.mark.parametrize("name", list(MASKED_KERNELS))
def test_dropout_mask_gate_offsets_past_2_31(name):
    if torch.cuda.is_available():
        free_gpu_memory_or_skip(6 * GIB)
    run = run_in_subprocess(name, GATE_STRIDE)
    assert run.returncode == 0, (
        f"{MASKED_KERNELS[name]}: with the mask's gate stride {GATE_STRIDE} (gate 3 at "
        f"{3 * GATE_STRIDE} > 2**31 elements) the kernel "
        + ("read the wrong mask values" if run.returncode == 1 else
           f"crashed (exit status {run.returncode})")
        + f"\n{run.stdout[-2000:]}{run.stderr[-2000:]}")


def test_dropout_mask_gate_stride_harness_below_2_31():
    """The same harness with a gate stride whose gate-3 offset still fits in int32: every
    kernel reads the strided masks right (so the test above fails for the offsets alone)."""
    for name in MASKED_KERNELS:
        expected, got = run_masked_kernel(name, 1000)
        for e, a in zip(expected, got):
            assert torch.equal(e, a), name


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], int(sys.argv[2])))
