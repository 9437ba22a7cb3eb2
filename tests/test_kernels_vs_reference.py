"""The Triton path (interpreter on CPU, real kernels on a GPU) against the torch reference:
forward outputs and every gradient, on odd shapes, with NaN-poisoned output buffers."""

import pytest
import torch
from helpers import TF32_TOLERANCE, TOLERANCES, assert_close, kernel_device, triton_available_here

from convlstm_triton.functional import conv_lstm
from convlstm_triton.geometry import ConvGeometry, normalize_tuple

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]

# (rank-specific) shapes: spatial, C_in, F, kernel_size, options. Channel counts are primes,
# pixel counts not multiples of any block size.
CASES = [
    pytest.param(dict(spatial=(11,), C=3, F=5, k=(3,), padding="same"), id="1d_k3_same"),
    pytest.param(dict(spatial=(13,), C=2, F=3, k=(4,), padding="valid", strides=2),
                 id="1d_k4_valid_s2"),
    pytest.param(dict(spatial=(5, 7), C=3, F=5, k=(3, 3), padding="same"), id="2d_k3_same"),
    pytest.param(dict(spatial=(6, 5), C=2, F=3, k=(2, 2), padding="same"),
                 id="2d_k2_same_even"),
    pytest.param(dict(spatial=(9, 7), C=3, F=2, k=(3, 3), padding="valid", strides=2),
                 id="2d_k3_valid_s2"),
    pytest.param(dict(spatial=(7, 8), C=2, F=3, k=(4, 3), padding="same", strides=(2, 3)),
                 id="2d_k4x3_same_s2x3"),
    pytest.param(dict(spatial=(8, 7), C=3, F=2, k=(3, 3), padding="same", dilation_rate=2),
                 id="2d_k3_same_dil2"),
    pytest.param(dict(spatial=(9, 8), C=2, F=3, k=(2, 3), padding="valid", dilation_rate=(2, 1)),
                 id="2d_k2x3_valid_dil2x1"),
    pytest.param(dict(spatial=(11, 13), C=1, F=37, k=(3, 3), padding="same", B=1, T=2),
                 id="2d_cin1_f37_multiblock"),
    pytest.param(dict(spatial=(3, 4, 5), C=2, F=3, k=(3, 3, 3), padding="same"),
                 id="3d_k3_same"),
    pytest.param(dict(spatial=(4, 5, 6), C=3, F=2, k=(2, 2, 3), padding="valid",
                      strides=(1, 2, 2)), id="3d_k2x2x3_valid_s1x2x2"),
    pytest.param(dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", go_backwards=True),
                 id="2d_go_backwards"),
    pytest.param(dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", initial_state=True),
                 id="2d_initial_state"),
    pytest.param(dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", mask=True,
                      initial_state=True, T=5, B=3), id="2d_mask_initial_state"),
    pytest.param(dict(spatial=(7,), C=3, F=5, k=(3,), padding="same", mask=True,
                      initial_state=True, go_backwards=True, T=5, B=3),
                 id="1d_mask_go_backwards_initial_state"),
    pytest.param(dict(spatial=(5, 6), C=2, F=3, k=(3, 3), padding="same", T=1),
                 id="2d_single_step"),
    pytest.param(dict(spatial=(5, 6), C=2, F=3, k=(3, 3), padding="valid", bias=False),
                 id="2d_no_bias"),
    pytest.param(dict(spatial=(5, 6), C=2, F=3, k=(3, 3), padding="same",
                      activation="relu", recurrent_activation="hard_sigmoid"),
                 id="2d_relu_hard_sigmoid"),
    pytest.param(dict(spatial=(9,), C=2, F=3, k=(5,), padding="same",
                      activation="linear", recurrent_activation="tanh", initial_state=True),
                 id="1d_linear_tanh"),
    pytest.param(dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", dropout=True,
                      initial_state=True), id="2d_dropout"),
    pytest.param(dict(spatial=(9, 7), C=2, F=3, k=(3, 2), padding="valid", strides=2,
                      dropout=True, mask=True, go_backwards=True, T=4, B=3),
                 id="2d_dropout_s2_mask_go_backwards"),
    pytest.param(dict(spatial=(3, 4, 5), C=2, F=3, k=(2, 3, 3), padding="same", dropout=True),
                 id="3d_dropout_even_same"),
    pytest.param(dict(spatial=(8,), C=3, F=5, k=(3,), padding="same", dilation_rate=2,
                      dropout=True, activation="gelu", recurrent_activation="hard_sigmoid_legacy"),
                 id="1d_dropout_dil2_gelu"),
    pytest.param(dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", peephole=True,
                      initial_state=True), id="2d_peephole"),
    pytest.param(dict(spatial=(7,), C=2, F=3, k=(3,), padding="same", peephole=True, mask=True,
                      dropout=True, go_backwards=True, initial_state=True, T=4, B=3),
                 id="1d_peephole_mask_dropout_go_backwards"),
    pytest.param(dict(spatial=(4, 5), C=16, F=32, k=(3, 3), padding="same", B=1, T=2,
                      initial_state=True), id="2d_c16_f32_aligned"),
    pytest.param(dict(spatial=(4, 3), C=48, F=48, k=(2, 2), padding="same", B=1, T=2,
                      dropout=True), id="2d_c48_f48_unaligned_k_tiles"),
    *[pytest.param(dict(spatial=(5, 4), C=2, F=3, k=(3, 3), padding="same", activation=act,
                        recurrent_activation=ract, initial_state=True), id=f"2d_{act}_{ract}")
      for act, ract in [("relu6", "elu"), ("selu", "silu"), ("gelu", "softsign"),
                        ("softplus", "swish"), ("hard_sigmoid_legacy", "sigmoid")]],
    # C_in >= 16: the input gradient's tensor-core GEMM through strided sub-pixel phases (k = 2
    # < s = 3: a phase that no tap reaches, all zeros) and through dilation
    pytest.param(dict(spatial=(9, 10), C=17, F=3, k=(3, 3), padding="valid", strides=(2, 3)),
                 id="2d_c17_k3_valid_s2x3"),
    pytest.param(dict(spatial=(7, 5), C=16, F=3, k=(2, 3), padding="same", strides=(3, 2),
                      dropout=True, B=1), id="2d_c16_k2x3_same_s3x2_dropout"),
    pytest.param(dict(spatial=(8, 7), C=18, F=3, k=(3, 2), padding="same",
                      dilation_rate=(2, 3), B=1), id="2d_c18_k3x2_same_dil2x3"),
# "exponential" explodes over time steps with random weights: checked in test_cell_kernels.py,
]


def make_inputs(case, dtype=torch.float32, device="cpu"):
    """Fresh random inputs (weights scaled so gates are neither saturated nor linear)."""
    B, T = case.get("B", 2), case.get("T", 3)
    spatial, C, F, k = case["spatial"], case["C"], case["F"], case["k"]
    kvol = 1
    for v in k:
        kvol *= v
    x = torch.randn(B, T, *spatial, C, dtype=dtype, device=device)
    kernel = torch.randn(*k, C, 4 * F, dtype=dtype, device=device) / (kvol * C) ** 0.5
    rkernel = torch.randn(*k, F, 4 * F, dtype=dtype, device=device) / (kvol * F) ** 0.5
    bias = torch.randn(4 * F, dtype=dtype, device=device) if case.get("bias", True) else None
    options = {key: case[key] for key in ("strides", "padding", "dilation_rate", "activation",
                                          "recurrent_activation", "go_backwards") if key in case}
    initial_state = mask = None
    out_spatial = ConvGeometry.build(
        spatial, k, normalize_tuple(case.get("strides", 1), len(k), "strides"),
        normalize_tuple(case.get("dilation_rate", 1), len(k), "dilation_rate"),
        case["padding"]).out_spatial
    if case.get("initial_state"):
        initial_state = (torch.randn(B, *out_spatial, F, dtype=dtype, device=device),
                         torch.randn(B, *out_spatial, F, dtype=dtype, device=device))
    if case.get("peephole"):
        options["peephole"] = torch.randn(3, F, dtype=dtype, device=device) * 0.5
    if case.get("dropout"):
        # per-gate inverted-dropout masks (keep 0.7), constant over time, as the layers draw them
        keep = 0.7
        options["input_dropout_mask"] = (
            torch.rand(4, B, *spatial, C, device=device) < keep).to(dtype) / keep
        options["recurrent_dropout_mask"] = (
            torch.rand(4, B, *out_spatial, F, device=device) < keep).to(dtype) / keep
    if case.get("mask"):
        mask = torch.rand(B, T, device=device) > 0.4
        mask[0, :2] = False  # leading masked steps: output zeros while the state stays h0
        mask[0, 2:] = True
        mask[-1, T // 2] = False  # a masked step in the middle
    return x, kernel, rkernel, bias, initial_state, mask, options


def run_with_grads(backend, x, kernel, rkernel, bias, initial_state, mask, options, cotangents):
    options = dict(options)
    peephole = options.get("peephole")
    if peephole is not None:
        peephole = options["peephole"] = peephole.detach().clone().requires_grad_()
    leaves = [t.detach().clone().requires_grad_() for t in (x, kernel, rkernel)]
    bias = bias.detach().clone().requires_grad_() if bias is not None else None
    state = (tuple(s.detach().clone().requires_grad_() for s in initial_state)
             if initial_state is not None else None)
    seq, h, c = conv_lstm(leaves[0], leaves[1], leaves[2], bias, state, mask=mask,
                          backend=backend, **options)
    d_seq, d_h, d_c = cotangents(seq, h, c)
    loss = (seq * d_seq).sum() + (h * d_h).sum() + (c * d_c).sum()
    inputs = (leaves + ([bias] if bias is not None else []) + (list(state) if state else [])
              + ([peephole] if peephole is not None else []))
    grads = torch.autograd.grad(loss, inputs)
    names = (["x", "kernel", "recurrent_kernel"] + (["bias"] if bias is not None else [])
             + (["h0", "c0"] if state else []) + (["peephole"] if peephole is not None else []))
    return (seq, h, c), dict(zip(names, grads))


def tolerance(dtype, device):
    if dtype == torch.float32 and device != "cpu":
        return TF32_TOLERANCE  # GPU fp32 dots use TF32 (PyTorch's conv default)
    return TOLERANCES[dtype]


LOW_PRECISION_CASES = [CASES[2], CASES[4], CASES[13], CASES[20]]
DTYPE_CASES = (
    [pytest.param(torch.float32, *c.values, id=f"fp32-{c.id}") for c in CASES]
    + [pytest.param(torch.float16, *c.values, id=f"fp16-{c.id}") for c in LOW_PRECISION_CASES]
    + [pytest.param(torch.bfloat16, *c.values, id=f"bf16-{c.id}") for c in LOW_PRECISION_CASES]
)


@pytest.mark.parametrize("dtype,case", DTYPE_CASES)
def test_forward_and_gradients_match_reference(dtype, case, poison_buffers):
    device = kernel_device()
    if dtype == torch.bfloat16 and device == "cpu":
        pytest.skip("Triton's CPU interpreter computes bf16 tl.dot wrongly; bf16 runs on a GPU")
    x, kernel, rkernel, bias, initial_state, mask, options = make_inputs(case, dtype, device)
    fixed = {}

    def cotangents(seq, h, c):
        if not fixed:
            fixed["v"] = (torch.randn_like(seq), torch.randn_like(h), torch.randn_like(c))
        return fixed["v"]

    (seq, h, c), grads = run_with_grads("triton", x, kernel, rkernel, bias, initial_state, mask,
                                        options, cotangents)
    ref_inputs = [t.double() if t is not None else None for t in (x, kernel, rkernel, bias)]
    ref_state = tuple(s.double() for s in initial_state) if initial_state is not None else None
    ref_options = {key: value.double() if isinstance(value, torch.Tensor) else value
                   for key, value in options.items()}
    (rseq, rh, rc), rgrads = run_with_grads(
        "reference", *ref_inputs, ref_state, mask, ref_options,
        lambda *_: tuple(v.double() for v in fixed["v"]))

    tol = tolerance(dtype, device)
    assert_close(seq, rseq, dtype, "seq", tol)
    assert_close(h, rh, dtype, "h", tol)
    assert_close(c, rc, dtype, "c", tol)
    assert grads.keys() == rgrads.keys()
    for name in grads:
        assert_close(grads[name], rgrads[name], dtype, f"d{name}", tol)


VARIANT_CASES = {c.id: c.values[0] for c in CASES}
FUSED_INPUT_CASES = ["1d_k4_valid_s2", "2d_k4x3_same_s2x3", "2d_k3_same_dil2",
                     "2d_cin1_f37_multiblock", "3d_k2x2x3_valid_s1x2x2",
                     "2d_dropout_s2_mask_go_backwards", "1d_peephole_mask_dropout_go_backwards",
                     "2d_no_bias"]
UNFUSED_CASES = ["2d_k3_same", "1d_k4_valid_s2", "2d_dropout", "2d_selu_silu"]
# the first kernel design, kept for comparisons
FOUR_DOTS_CASES = ["2d_k4x3_same_s2x3", "2d_cin1_f37_multiblock",
                   "1d_peephole_mask_dropout_go_backwards", "2d_c48_f48_unaligned_k_tiles"]


@pytest.mark.parametrize("variant,case", [
    *(pytest.param("fused_input", VARIANT_CASES[i], id=f"fused_input-{i}")
      for i in FUSED_INPUT_CASES),
    *(pytest.param("unfused", VARIANT_CASES[i], id=f"unfused-{i}") for i in UNFUSED_CASES),
    *(pytest.param(v, VARIANT_CASES[i], id=f"{v}-{i}") for i in FOUR_DOTS_CASES
      for v in ("hoisted_four_dots", "fused_input_four_dots")),
])
def test_forward_variants_match_reference(variant, case, poison_buffers, recompute_gates=False):
    """The other forward variants (the input conv inside the step; the cell as its own kernel)
    give the same outputs and, through the shared backward, the same gradients."""
    device = kernel_device()
    x, kernel, rkernel, bias, initial_state, mask, options = make_inputs(case, device=device)
    torch.manual_seed(3)
    cot = {}

    def cotangents(seq, h, c):
        cot.setdefault("v", tuple(torch.randn_like(t) for t in (seq, h, c)))
        return cot["v"]

    out, grads = run_with_grads("triton", x, kernel, rkernel, bias, initial_state, mask,
                                dict(options, forward_variant=variant,
                                     recompute_gates=recompute_gates), cotangents)
    ref, rgrads = run_with_grads("reference", x, kernel, rkernel, bias, initial_state, mask,
                                 options, cotangents)
    tol = tolerance(torch.float32, device)
    for name, a, r in zip(("seq", "h", "c"), out, ref):
        assert_close(a, r, torch.float32, name, tol)
    for name in rgrads:
        assert_close(grads[name], rgrads[name], torch.float32, f"d{name}", tol)
    with torch.no_grad():
        inference = conv_lstm(x, kernel, rkernel, bias, initial_state, mask=mask,
                              backend="triton", forward_variant=variant, **options)
    # the same kernels and configs with and without autograd: the same bits
    for name, a, t in zip(("seq (no grad)", "h (no grad)", "c (no grad)"), inference, out):
        assert torch.equal(a, t), name


@pytest.mark.parametrize("case", [CASES[2], CASES[13]], ids=["2d_k3_same", "2d_mask"])
def test_inference_without_grad_matches_reference(case, poison_buffers):
    """No grad needed: the kernels keep two cell-state slots and save no gates."""
    x, kernel, rkernel, bias, initial_state, mask, options = make_inputs(case,
                                                                        device=kernel_device())
    with torch.no_grad():
        out = conv_lstm(x, kernel, rkernel, bias, initial_state, mask=mask, backend="triton",
                        **options)
        ref = conv_lstm(x, kernel, rkernel, bias, initial_state, mask=mask,
                        backend="reference", **options)
    for name, a, r in zip(("seq", "h", "c"), out, ref):
        assert_close(a, r, torch.float32, name, tolerance(torch.float32, x.device.type))


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("c0_dtype", [torch.float32, torch.float16])
def test_inference_reads_c0_and_writes_c_T_directly(steps, c0_dtype, poison_buffers):
    """Without autograd the first step reads c0 itself (any float dtype, any layout) and the
    last writes the returned c_T: one step (c0 in, c_T out), two (no slot between) and three
    (one ping-pong slot) give the training forward's bits and the reference's values, and c0
    is left as it was."""
    case = dict(spatial=(5, 6), C=3, F=5, k=(3, 3), padding="same", initial_state=True,
                T=steps)
    x, kernel, rkernel, bias, (h0, c0), _, options = make_inputs(case, device=kernel_device())
    # c0 of another dtype and a non-contiguous layout: the kernels read an fp32 copy
    c0 = c0.to(c0_dtype).transpose(1, 2).contiguous().transpose(1, 2)
    kept = c0.clone()
    with torch.no_grad():
        out = conv_lstm(x, kernel, rkernel, bias, (h0, c0), backend="triton", **options)
    train = conv_lstm(x, kernel, rkernel.requires_grad_(), bias, (h0, c0), backend="triton",
                      **options)
    ref = conv_lstm(x, kernel, rkernel, bias, (h0, c0), backend="reference", **options)
    assert torch.equal(c0, kept)
    for name, a, t, r in zip(("seq", "h", "c"), out, train, ref):
        assert torch.equal(a, t.detach()), name
        assert_close(a, r.detach(), torch.float32, name, tolerance(torch.float32,
                                                                   x.device.type))


def test_masked_leading_steps_output_zeros_and_keep_initial_state():
    case = dict(spatial=(4, 5), C=2, F=3, k=(3, 3), padding="same", T=3, B=2,
                initial_state=True)
    x, kernel, rkernel, bias, initial_state, _, options = make_inputs(case,
                                                                     device=kernel_device())
    mask = torch.tensor([[False, False, False], [False, True, True]], device=x.device)
    seq, h, c = conv_lstm(x, kernel, rkernel, bias, initial_state, mask=mask, backend="triton",
                          **options)
    assert torch.equal(seq[0], torch.zeros_like(seq[0]))
    assert torch.equal(seq[1, 0], torch.zeros_like(seq[1, 0]))
    assert torch.equal(h[0], initial_state[0][0])
    assert torch.equal(c[0], initial_state[1][0])


def test_non_contiguous_inputs(poison_buffers):
    """Strided views (permuted x and state, sliced bias and weights) are read right."""
    device = kernel_device()
    B, T, H, W, C, F = 2, 3, 5, 6, 3, 2
    x = torch.randn(B, H, T, W, C, device=device).transpose(1, 2)  # (B, T, H, W, C), strided
    kernel = (torch.randn(3, 3, C, 8 * F, device=device) * 0.3)[..., ::2]
    rkernel = (torch.randn(3, 3, F, 4 * F, device=device) * 0.3).transpose(0, 1)
    bias = torch.randn(8 * F, device=device)[1::2]
    h0 = torch.randn(B, W, H, F, device=device).transpose(1, 2)
    c0 = torch.randn(B, H, W, F, device=device)
    assert not any(t.is_contiguous() for t in (x, kernel, rkernel, bias, h0))
    out = conv_lstm(x, kernel, rkernel, bias, (h0, c0), padding="same", backend="triton")
    ref = conv_lstm(x, kernel, rkernel, bias, (h0, c0), padding="same", backend="reference")
    for name, a, r in zip(("seq", "h", "c"), out, ref):
        assert_close(a, r, torch.float32, name, tolerance(torch.float32, device))


def test_double_backward_is_a_clear_error():
    device = kernel_device()
    x = torch.randn(1, 2, 4, 4, 2, device=device, requires_grad=True)
    kernel = torch.randn(3, 3, 2, 8, device=device, requires_grad=True)
    seq, _, _ = conv_lstm(x, kernel, torch.randn(3, 3, 2, 8, device=device), padding="same",
                          backend="triton")
    (gx,) = torch.autograd.grad(seq.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gx.sum(), kernel)


def test_non_contiguous_output_gradients(poison_buffers):
    """Gradients arriving for seq, h and c in any layout (a channels-first wrapper's movedim)."""
    device = kernel_device()
    case = dict(spatial=(4, 5), C=2, F=3, k=(3, 3), padding="same", initial_state=True)
    x, kernel, rkernel, bias, initial_state, _, options = make_inputs(case, device=device)

    def cotangents(seq, h, c):
        torch.manual_seed(7)
        # contiguous in a channels-first layout, seen through a channels-last view
        return tuple(torch.randn(t.movedim(-1, 1).shape, device=device).movedim(1, -1)
                     for t in (seq, h, c))

    _, grads = run_with_grads("triton", x, kernel, rkernel, bias, initial_state, None, options,
                              cotangents)
    _, rgrads = run_with_grads("reference", x, kernel, rkernel, bias, initial_state, None,
                               options, cotangents)
    for name in grads:
        assert_close(grads[name], rgrads[name], torch.float32, f"d{name}",
                     tolerance(torch.float32, device))


TAP_MAJOR_CASES = ["2d_c16_f32_aligned", "2d_c48_f48_unaligned_k_tiles",
                   "1d_k4_valid_s2", "2d_k2_same_even", "2d_k4x3_same_s2x3", "2d_k3_same_dil2",
                   "3d_k2x2x3_valid_s1x2x2", "2d_dropout_s2_mask_go_backwards",
                   "1d_peephole_mask_dropout_go_backwards", "3d_dropout_even_same"]


@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
@pytest.mark.parametrize("case_id", TAP_MAJOR_CASES)
def test_both_k_layouts_match_reference(case_id, variant, poison_buffers, monkeypatch):
    """Every conv through the tap-major K layout too (normally only from 16 channels on), so the
    small test shapes check both layouts of the implicit GEMMs."""
    from convlstm_triton import launchers

    monkeypatch.setattr(launchers, "TAP_MAJOR_MIN_CHANNELS", 1)
    test_forward_variants_match_reference(variant, VARIANT_CASES[case_id], None)


def test_tuning_trials_do_not_disturb_results(poison_buffers, monkeypatch, tmp_path):
    """With tuning switched on (as on a GPU), every launcher's trials run on private copies of
    what the kernel writes: in-place carries are not accumulated twice and the chosen config's
    results are exact. Trial timings are faked by config index: the last config wins."""
    from convlstm_triton import tuning

    monkeypatch.setenv("CONVLSTM_TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_tuning_enabled", lambda device: True)
    trials = []

    def fake_benchmark(run, cfg):
        run(cfg)
        trials.append(cfg)
        return 1.0 / (1 + len(trials))

    monkeypatch.setattr(tuning, "_benchmark", fake_benchmark)
    tuning._reset_state()
    try:
        case = VARIANT_CASES["1d_peephole_mask_dropout_go_backwards"]
        test_forward_variants_match_reference("hoisted", case, None)
        # forward_variant="auto" times both forward variants and keeps the faster
        x, kernel, rkernel, bias, state, mask, options = make_inputs(case, device=kernel_device())
        out = conv_lstm(x, kernel, rkernel, bias, state, mask=mask, backend="triton", **options)
        ref = conv_lstm(x, kernel, rkernel, bias, state, mask=mask, backend="reference",
                        **options)
        for name, a, r in zip(("seq", "h", "c"), out, ref):
            assert_close(a, r, torch.float32, f"{name} (auto variant)",
                         tolerance(torch.float32, x.device.type))
        kernels = {entry["kernel"] for entry in tuning.cached_entries("cpu").values()}
    finally:
        tuning._reset_state()
    assert {"input_projection", "step_forward", "step_backward", "weight_grad",
            "input_grad_reduce", "forward_variant"} <= kernels  # C_in = 2: the reduction
    assert len(trials) > len(kernels)


# Channel counts whose rows are 16-byte multiples (tensor descriptors need them), odd spatial
# sizes (partial spatial tiles), even and 1D/3D kernels, masks, peepholes, initial states.
TMA_CASES = [
    pytest.param(dict(spatial=(5, 7), C=3, F=8, k=(3, 3), padding="same", initial_state=True),
                 id="2d_k3_f8"),
    pytest.param(dict(spatial=(6, 5), C=2, F=12, k=(4, 3), padding="same", mask=True, B=3,
                      T=4, peephole=True), id="2d_k4x3_even_mask_peephole"),
    pytest.param(dict(spatial=(9, 7), C=3, F=4, k=(3, 3), padding="valid", strides=2),
                 id="2d_valid_s2_f4"),
    pytest.param(dict(spatial=(11,), C=1, F=8, k=(5,), padding="same", go_backwards=True),
                 id="1d_k5_f8"),
    pytest.param(dict(spatial=(3, 4, 5), C=2, F=8, k=(3, 3, 3), padding="same",
                      initial_state=True), id="3d_k3_f8"),
    pytest.param(dict(spatial=(4, 5), C=16, F=40, k=(3, 3), padding="same", B=1, T=2),
                 id="2d_f40_two_channel_blocks"),
]


def _gpu_without_tma():
    from convlstm_triton.platform import platform

    return torch.cuda.is_available() and not platform("cuda").tma


@pytest.mark.skipif(_gpu_without_tma(), reason="this GPU has no tensor descriptors (TMA: NVIDIA "
                    "sm_90 on; none on AMD): hoisted_tma takes the gather path there")
@pytest.mark.parametrize("case", TMA_CASES)
def test_tensor_descriptor_path_matches_reference(case, poison_buffers, monkeypatch):
    """forward_variant="hoisted_tma": the recurrent conv through tensor-descriptor box loads
    (negative and past-the-end coordinates zero-filled = "same" padding), checked to have been
    taken, forward and every gradient (backward recomputes nothing here: same kernels)."""
    from convlstm_triton import launchers

    eligible = []
    real = launchers.tma_eligible

    def spy(h_prev, hmask):
        eligible.append(real(h_prev, hmask))
        return eligible[-1]

    monkeypatch.setattr(launchers, "tma_eligible", spy)
    test_forward_variants_match_reference("hoisted_tma", case, None)
    assert eligible and all(eligible), "the tensor-descriptor path was not taken"


SPATIAL_TILE_CASES = ["2d_k3_same", "1d_k4_valid_s2", "3d_k2x2x3_valid_s1x2x2",
                      "2d_dropout_s2_mask_go_backwards", "2d_cin1_f37_multiblock",
                      "2d_c17_k3_valid_s2x3", "2d_c16_k2x3_same_s3x2_dropout"]


@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
@pytest.mark.parametrize("case_id", SPATIAL_TILE_CASES)
def test_spatial_tiles_match_reference(case_id, variant, poison_buffers, monkeypatch):
    """Every forward kernel with spatial M tiles (a TILE_H x TILE_W block of one frame per
    program; normally only where partial tiles waste little), on odd sizes: partial blocks at
    the right and bottom edges of every frame."""
    from convlstm_triton import launchers

    monkeypatch.setattr(launchers, "SPATIAL_TILE_WASTE", float("inf"))
    test_forward_variants_match_reference(variant, VARIANT_CASES[case_id], None)


TIME_CHUNK_CASES = ["2d_mask_initial_state", "2d_dropout_s2_mask_go_backwards",
                    "1d_peephole_mask_dropout_go_backwards"]


@pytest.mark.parametrize("recompute", [False, True], ids=["saved", "recompute"])
@pytest.mark.parametrize("case_id", TIME_CHUNK_CASES)
def test_time_chunks_match_reference(case_id, recompute, poison_buffers, monkeypatch):
    """Time chunks of one step (and of two: a partial last chunk, with spatial M tiles): the
    hoisted projection and backward's gate gradients chunk by chunk, in forward, in backward's
    recomputation and across chunk boundaries of the backward recurrence, forward and every
    gradient. A chunk of x is a (B, Tc) view with its own sample stride, and so is the chunk's
    dx, which the input-gradient kernels (the reduction at these C_in, and the GEMM) write in
    place."""
    from convlstm_triton import launchers

    case = VARIANT_CASES[case_id]
    tiles, gemm = launchers.SPATIAL_TILE_WASTE, launchers.INPUT_GRAD_GEMM_MIN_CHANNELS
    for chunk, waste, gemm_channels in ((1, tiles, gemm), (2, float("inf"), gemm), (2, tiles, 1)):
        monkeypatch.setattr(launchers, "time_chunk", lambda B, T, P, chunk=chunk: min(chunk, T))
        monkeypatch.setattr(launchers, "SPATIAL_TILE_WASTE", waste)
        monkeypatch.setattr(launchers, "INPUT_GRAD_GEMM_MIN_CHANNELS", gemm_channels)
        test_forward_variants_match_reference(
            "hoisted", case, None, recompute_gates=recompute)


INPUT_GRAD_CASES = ["1d_k4_valid_s2", "2d_k3_valid_s2", "2d_k4x3_same_s2x3",
                    "3d_k2x2x3_valid_s1x2x2", "2d_dropout_s2_mask_go_backwards",
                    "2d_k3_same_dil2", "2d_k2x3_valid_dil2x1", "1d_dropout_dil2_gelu",
                    "2d_cin1_f37_multiblock", "3d_k3_same", "3d_dropout_even_same",
                    "2d_c17_k3_valid_s2x3", "2d_c16_k2x3_same_s3x2_dropout",
                    "2d_c18_k3x2_same_dil2x3"]


@pytest.mark.parametrize("kernel", ["input_grad", "input_grad_reduce"])
@pytest.mark.parametrize("case_id", INPUT_GRAD_CASES)
def test_both_input_grad_kernels_match_reference(case_id, kernel, poison_buffers, monkeypatch):
    """dx through the tensor-core GEMM (normally from launchers.INPUT_GRAD_GEMM_MIN_CHANNELS
    input channels on) and through the CUDA-core reduction (normally below) on every shape:
    strided sub-pixel phases (one without taps), dilation, C_in = 1, 3D, dropout masks."""
    from convlstm_triton import launchers, tuning

    gemm = kernel == "input_grad"
    monkeypatch.setattr(launchers, "INPUT_GRAD_GEMM_MIN_CHANNELS", 1 if gemm else 1 << 30)
    launched = []
    pick = tuning.pick_config

    def spy(kernel_name, *args, **kwargs):
        launched.append(kernel_name)
        return pick(kernel_name, *args, **kwargs)

    monkeypatch.setattr(tuning, "pick_config", spy)
    test_forward_variants_match_reference("hoisted", VARIANT_CASES[case_id], None)
    assert kernel in launched, f"{kernel} was not launched"
