"""On a CUDA GPU: the Triton kernels in fp32, bf16 and fp16 against the float64 reference.

Both sides see the same inputs: they are drawn in float64, rounded to the compute dtype, and the
reference runs on that rounded data upcast back to float64, so the measured error is the kernels'
arithmetic alone. Forward outputs (seq, h, c) and the gradients of x, kernel, recurrent_kernel,
bias, h0 and c0 are compared by relative error with the per-dtype table of tests/helpers.py.
fp32 dots run as TF32 on a GPU by default (as cuDNN convs do), hence TF32_TOLERANCE.
"""

import math
from dataclasses import dataclass, replace

import pytest
import torch
from helpers import TF32_TOLERANCE, TOLERANCES, assert_close, kernel_device, requires_gpu

from convlstm_triton.functional import conv_lstm
from convlstm_triton.geometry import conv_output_size, normalize_tuple

pytestmark = [pytest.mark.gpu, requires_gpu]
DEVICE = kernel_device()  # "cuda" whenever these tests run


@dataclass(frozen=True)
class Case:
    """One conv_lstm call: x (B, T, *spatial, C_in), F filters, and conv_lstm's options."""

    spatial: tuple
    in_channels: int
    filters: int
    kernel_size: tuple
    batch: int = 2
    steps: int = 3
    strides: int = 1
    padding: str = "same"
    dilation_rate: int = 1
    go_backwards: bool = False
    mask: bool = False
    bias: bool = True
    initial_state: bool = True
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"

    def options(self):
        return dict(strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                    activation=self.activation, recurrent_activation=self.recurrent_activation,
                    go_backwards=self.go_backwards)


_2D = Case(spatial=(13, 11), in_channels=3, filters=5, kernel_size=(3, 3))
CASES = [
    pytest.param(Case((13,), 3, 5, (3,)), id="1d_L13_C3_F5_k3_same"),
    pytest.param(_2D, id="2d_13x11_C3_F5_k3_same"),
    pytest.param(Case((5, 6, 7), 3, 5, (3, 3, 3), steps=2), id="3d_5x6x7_C3_F5_k3_same"),
    pytest.param(Case((13, 11), 5, 7, (3, 5), padding="valid"), id="2d_C5_F7_k3x5_valid"),
    pytest.param(replace(_2D, strides=2, padding="valid"), id="2d_k3_valid_s2"),
    pytest.param(replace(_2D, strides=2), id="2d_k3_same_s2"),
    pytest.param(replace(_2D, kernel_size=(4, 4)), id="2d_k4_same_even"),
    pytest.param(replace(_2D, kernel_size=(2, 4), strides=2), id="2d_k2x4_same_even_s2"),
    pytest.param(Case((17,), 7, 3, (4,), strides=2), id="1d_C7_F3_k4_same_even_s2"),
    pytest.param(Case((6, 5, 7), 3, 5, (2, 3, 3), strides=2, steps=2), id="3d_k2x3x3_same_s2"),
    pytest.param(replace(_2D, dilation_rate=2), id="2d_k3_same_dil2"),
    pytest.param(replace(_2D, dilation_rate=2, padding="valid"), id="2d_k3_valid_dil2"),
    pytest.param(replace(_2D, go_backwards=True), id="2d_go_backwards"),
    pytest.param(replace(_2D, mask=True, batch=3, steps=5), id="2d_mask"),
    pytest.param(Case((13,), 3, 5, (3,), mask=True, go_backwards=True, batch=3, steps=5),
                 id="1d_mask_go_backwards"),
    pytest.param(replace(_2D, bias=False, initial_state=False), id="2d_no_bias_zero_state"),
    pytest.param(replace(_2D, activation="relu", recurrent_activation="hard_sigmoid"),
                 id="2d_relu_hard_sigmoid"),
    pytest.param(Case((32, 32), 8, 32, (3, 3), batch=4, steps=5),
                 id="2d_medium_B4_T5_32x32_C8_F32"),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]
GRAD_NAMES = ("x", "kernel", "recurrent_kernel", "bias", "h0", "c0")


def tolerance(dtype):
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCES[dtype]


def out_spatial(case):
    rank = len(case.spatial)
    strides = normalize_tuple(case.strides, rank, "strides")
    dilation = normalize_tuple(case.dilation_rate, rank, "dilation_rate")
    return tuple(conv_output_size(n, k, s, d, case.padding)
                 for n, k, s, d in zip(case.spatial, case.kernel_size, strides, dilation))


def make_inputs(case, device=DEVICE):
    """float64 inputs; weights scaled so the gates are neither saturated nor linear.

    Returns (tensors, mask): tensors maps GRAD_NAMES (those the case has) to float64 tensors.
    """
    f, c_in, taps = case.filters, case.in_channels, math.prod(case.kernel_size)
    scale = 1.0 / math.sqrt(taps * (c_in + f))
    t = {
        "x": torch.randn(case.batch, case.steps, *case.spatial, c_in),
        "kernel": torch.randn(*case.kernel_size, c_in, 4 * f) * scale,
        "recurrent_kernel": torch.randn(*case.kernel_size, f, 4 * f) * scale,
    }
    if case.bias:
        t["bias"] = torch.randn(4 * f) * 0.5
    if case.initial_state:
        state = (case.batch, *out_spatial(case), f)
        t["h0"] = torch.randn(state) * 0.5
        t["c0"] = torch.randn(state)
    mask = None
    if case.mask:
        mask = torch.rand(case.batch, case.steps) > 0.3
        mask[0, 0] = False  # a leading masked step: the output there is zeros, not h0
        mask[1, :] = True
    tensors = {k: v.to(device=device, dtype=torch.float64) for k, v in t.items()}
    return tensors, None if mask is None else mask.to(device)


def run(case, tensors, mask, upstream, backend):
    """Forward + backward with ``upstream`` gradients for (seq, h, c); (outputs, name -> grad)."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in tensors.items()}
    state = (leaves["h0"], leaves["c0"]) if case.initial_state else None
    outputs = conv_lstm(leaves["x"], leaves["kernel"], leaves["recurrent_kernel"],
                        leaves.get("bias"), state, mask=mask, backend=backend, **case.options())
    grads = torch.autograd.grad(outputs, list(leaves.values()),
                                [g.to(o.dtype) for g, o in zip(upstream, outputs)])
    return [o.detach() for o in outputs], dict(zip(leaves, grads))


def random_upstream(case, dtype):
    """Random gradients for (seq, h, c), drawn in float64 and rounded to ``dtype``."""
    shape = (case.batch, *out_spatial(case), case.filters)
    return [torch.randn(case.batch, case.steps, *shape[1:], device=DEVICE,
                        dtype=torch.float64).to(dtype),
            torch.randn(shape, device=DEVICE, dtype=torch.float64).to(dtype),
            torch.randn(shape, device=DEVICE, dtype=torch.float64).to(dtype)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_float64_reference(case, dtype):
    tensors, mask = make_inputs(case)
    rounded = {k: v.to(dtype) for k, v in tensors.items()}
    upstream = random_upstream(case, dtype)

    out, grads = run(case, rounded, mask, upstream, "triton")
    ref_out, ref_grads = run(case, {k: v.double() for k, v in rounded.items()}, mask,
                             [u.double() for u in upstream], "reference")

    tol = tolerance(dtype)
    for name, o, r in zip(("seq", "h", "c"), out, ref_out):
        assert o.dtype == dtype, f"{name}: dtype {o.dtype}, expected {dtype}"
        assert_close(o, r, dtype, name, tol)
    for name, r in ref_grads.items():
        assert grads[name] is not None, f"no gradient for {name}"
        assert_close(grads[name], r, dtype, f"d{name}", tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inference_forward_matches_training_forward(dtype):
    """Under no_grad the Triton path may skip saving what backward needs: same results."""
    case = CASES[1].values[0]
    tensors, _ = make_inputs(case)
    x, k, r, b = (tensors[n].to(dtype) for n in ("x", "kernel", "recurrent_kernel", "bias"))
    state = (tensors["h0"].to(dtype), tensors["c0"].to(dtype))
    with torch.no_grad():
        inference = conv_lstm(x, k, r, b, state, backend="triton", **case.options())
    training = conv_lstm(x, k.requires_grad_(), r, b, state, backend="triton", **case.options())
    for name, o, t in zip(("seq", "h", "c"), inference, training):
        assert torch.equal(o, t), name  # the same kernels and configs: the same bits


def test_torch_compile_fullgraph():
    """The ops are registered as custom ops: torch.compile(fullgraph=True) traces them, forward
    and backward, and gives the eager Triton path's results."""
    case = CASES[1].values[0]
    tensors, _ = make_inputs(case)
    x, k, r, b, h0, c0 = (tensors[n].float().requires_grad_() for n in GRAD_NAMES)

    def f(x, k, r, b, h0, c0):
        return conv_lstm(x, k, r, b, (h0, c0), backend="triton", **case.options())

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, k, r, b, h0, c0)
    ref = f(x, k, r, b, h0, c0)
    for name, o, t in zip(("seq", "h", "c"), out, ref):
        assert_close(o, t, torch.float32, name, TF32_TOLERANCE)
    grads = torch.autograd.grad(out[0].square().sum(), (x, k, r, b, h0, c0))
    ref_grads = torch.autograd.grad(ref[0].square().sum(), (x, k, r, b, h0, c0))
    for name, g, t in zip(GRAD_NAMES, grads, ref_grads):
        assert_close(g, t, torch.float32, f"d{name}", TF32_TOLERANCE)


def test_autotuning_bf16_small_shape_matches_reference(monkeypatch, tmp_path):
    """With autotuning on (gpu_check.sh runs the other GPU tests with the default configs):
    every kernel of a bf16 forward + backward is tuned on its first launch, the tuned configs
    give the reference's results, the step kernels are timed with a warm L2 and the
    whole-sequence ones cold, and the choices land in the cache file."""
    from convlstm_triton import tuning

    monkeypatch.setenv("CONVLSTM_TRITON_AUTOTUNE", "1")
    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(tmp_path))
    tuning._reset_state()
    try:
        case = Case((8, 8), 4, 8, (3, 3), batch=2, steps=3)  # few configs survive pruning
        dtype = torch.bfloat16
        tensors, mask = make_inputs(case)
        rounded = {k: v.to(dtype) for k, v in tensors.items()}
        upstream = random_upstream(case, dtype)
        out, grads = run(case, rounded, mask, upstream, "triton")
        events = tuning.tuning_log()
        again, again_grads = run(case, rounded, mask, upstream, "triton")  # tuned: no new trials
        ref_out, ref_grads = run(case, {k: v.double() for k, v in rounded.items()}, mask,
                                 [u.double() for u in upstream], "reference")
        entries = tuning.cached_entries(DEVICE)
        later = tuning.tuning_log()[len(events):]
    finally:
        tuning._reset_state()

    tol = tolerance(dtype)
    for name, o, r in zip(("seq", "h", "c"), out, ref_out):
        assert_close(o, r, dtype, name, tol)
    for name, r in ref_grads.items():
        assert_close(grads[name], r, dtype, f"d{name}", tol)
    for name, o, a in zip(("seq", "h", "c"), out, again):
        assert torch.equal(o, a), f"{name}: the second (tuned) run differs"

    tuned = {e["kernel"]: e for e in events if e["source"] == "tuned"}
    assert {"step_forward", "step_backward"} <= set(tuned), sorted(
        (e["kernel"], e["source"]) for e in events)
    for kernel, event in tuned.items():
        timed = [t for t in event["trials"] if t["ms"] is not None]
        assert timed, f"{kernel}: no config ran: {event['trials']}"
        assert event["chosen"] == min(timed, key=lambda t: t["ms"])["config"]
        want = "warm_l2" if kernel.startswith("step_") else "cold_l2"
        assert event["timing"] == want, f"{kernel} timed {event['timing']}, expected {want}"
    assert not [e for e in later if e["source"] == "tuned"]
    assert {e["kernel"] for e in entries.values()} >= set(tuned)
    assert all(e["timing"] in ("warm_l2", "cold_l2") for e in entries.values())
