"""Bad inputs: every malformed call is a clear ValueError/TypeError naming the argument, raised
before any kernel is built (never a Triton compile error or a crash inside a launch); inputs
that are odd but legal (0/1 integer masks, NaN/Inf values) behave as the reference does.

tests/test_functional_api.py::bad_calls has the basic table; this file adds what it does not
cover (dtype and device mixes, empty dims, masks of other dtypes, non-tensor arguments, ...).
"meta" tensors stand in for "another device" on a CPU-only machine.
"""

import numpy as np
import pytest
import torch
from helpers import TOLERANCES, assert_close, triton_available_here

from convlstm_triton.activations import KERNEL_ACTIVATION_CODES
from convlstm_triton.functional import conv_lstm

needs_kernels = pytest.mark.skipif(not triton_available_here(),
                                   reason="needs a GPU or TRITON_INTERPRET=1")
# NaN and Inf make numpy (the interpreter) warn about invalid values: expected here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
BACKENDS = ["reference", pytest.param("triton", marks=needs_kernels)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

B, T, H, W, C, F = 2, 3, 5, 6, 3, 4  # "valid" 3x3 -> 3x4 states


def inputs(dtype=torch.float32, device=DEVICE):
    """A well-formed 2D call: (x, kernel, recurrent_kernel, bias) and the keyword arguments that
    go with them (states and masks in their "valid"-padding shapes)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype=dtype, device=device)

    x = randn(B, T, H, W, C)
    kernel = randn(3, 3, C, 4 * F, scale=0.2)
    rkernel = randn(3, 3, F, 4 * F, scale=0.2)
    bias = randn(4 * F)
    return dict(x=x, kernel=kernel, recurrent_kernel=rkernel, bias=bias)


def call(backend="reference", **override):
    """conv_lstm on the well-formed inputs with some arguments replaced."""
    args = inputs()
    positional = [override.pop(k) if k in override else v for k, v in args.items()]
    return conv_lstm(*positional, backend=backend, **override)


def state(dtype=torch.float32, device=DEVICE, shape=(B, 3, 4, F)):
    return torch.zeros(shape, dtype=dtype, device=device)


def bad_calls():
    x, kernel, rkernel, bias = inputs().values()
    h0, c0 = state(), state()
    meta = "meta"

    def zeros(*shape, **kw):
        return torch.zeros(*shape, device=DEVICE, **kw)

    def full(shape, value, **kw):
        return torch.full(shape, value, device=DEVICE, **kw)
    return [
        # wrong rank
        ("x must have shape", ValueError, dict(x=x[:, :, :, :1].reshape(B, T, H, C))),
        ("x must have shape", ValueError, dict(x=x[..., None, :])),
        ("kernel must have shape .* 1 to 3 kernel dims", ValueError,
         dict(kernel=kernel.reshape(9, C, 4 * F)[None, None, None])),
        ("kernel must have shape .* 1 to 3 kernel dims", ValueError,
         dict(kernel=kernel.reshape(-1, 4 * F))),
        ("recurrent_kernel must have shape", ValueError, dict(recurrent_kernel=rkernel[0])),
        # wrong channel counts
        ("kernel must have shape \\(\\*kernel_size, C_in=2", ValueError,
         dict(x=x[..., :2])),
        ("recurrent_kernel must have shape \\(3, 3, 4, 16\\)", ValueError,
         dict(recurrent_kernel=rkernel[:, :, :3])),
        ("initial_state\\[0\\] \\(h0\\) must have shape", ValueError,
         dict(initial_state=(state(shape=(B, 3, 4, F + 1)), c0))),
        ("initial_state\\[1\\] \\(c0\\) must have shape", ValueError,
         dict(initial_state=(h0, state(shape=(B, 3, 4))))),
        ("recurrent_dropout_mask must have shape", ValueError,
         dict(recurrent_dropout_mask=zeros(4, B, 3, 4, F + 1))),
        # kernel and recurrent_kernel disagree on the kernel size
        ("recurrent_kernel must have shape \\(3, 3, 4, 16\\)", ValueError,
         dict(recurrent_kernel=zeros(3, 1, F, 4 * F))),
        ("recurrent_kernel must have shape \\(3, 3, 4, 16\\)", ValueError,
         dict(recurrent_kernel=zeros(5, 5, F, 4 * F))),
        # dtype mixes (x float32)
        ("kernel has dtype torch.float16 but x has dtype torch.float32", TypeError,
         dict(kernel=kernel.half())),
        ("recurrent_kernel has dtype torch.float16", TypeError,
         dict(recurrent_kernel=rkernel.half())),
        ("bias has dtype torch.float16", TypeError, dict(bias=bias.half())),
        ("bias has dtype torch.int64", TypeError, dict(bias=bias.long())),
        ("bias has dtype torch.float64", TypeError, dict(bias=bias.double())),
        ("peephole has dtype torch.bfloat16", TypeError,
         dict(peephole=zeros(3, F, dtype=torch.bfloat16))),
        ("input_dropout_mask has dtype torch.float16", TypeError,
         dict(input_dropout_mask=zeros(4, B, H, W, C, dtype=torch.float16))),
        ("recurrent_dropout_mask has dtype torch.bool", TypeError,
         dict(recurrent_dropout_mask=zeros(4, B, 3, 4, F, dtype=torch.bool))),
        ("initial_state\\[0\\] \\(h0\\) has dtype torch.float16", TypeError,
         dict(initial_state=(h0.half(), c0))),
        ("initial_state\\[1\\] \\(c0\\) must be floating point", TypeError,
         dict(initial_state=(h0, c0.long()))),
        ("kernel has dtype torch.float32 but x has dtype torch.float16", TypeError,
         dict(x=x.half())),
        # device mixes ("meta" as the other device)
        ("kernel is on meta but x is on", ValueError, dict(kernel=kernel.to(meta))),
        ("recurrent_kernel is on meta", ValueError, dict(recurrent_kernel=rkernel.to(meta))),
        ("bias is on meta", ValueError, dict(bias=bias.to(meta))),
        ("initial_state\\[0\\] \\(h0\\) is on meta", ValueError,
         dict(initial_state=(h0.to(meta), c0))),
        ("initial_state\\[1\\] \\(c0\\) is on meta", ValueError,
         dict(initial_state=(h0, c0.to(meta)))),
        ("mask is on meta", ValueError, dict(mask=torch.ones(B, T, dtype=torch.bool,
                                                             device=meta))),
        ("mask is on meta", ValueError, dict(mask=torch.full((B, T), 0.5, device=meta))),
        ("peephole is on meta", ValueError, dict(peephole=torch.zeros(3, F, device=meta))),
        ("input_dropout_mask is on meta", ValueError,
         dict(input_dropout_mask=torch.ones(4, B, H, W, C, device=meta))),
        ("recurrent_dropout_mask is on meta", ValueError,
         dict(recurrent_dropout_mask=torch.ones(4, B, 3, 4, F, device=meta))),
        # empty dims
        ("x must have at least one sample and one time step", ValueError, dict(x=x[:0])),
        ("x must have at least one sample and one time step", ValueError, dict(x=x[:, :0])),
        ("x must have at least one channel", ValueError,
         dict(x=x[..., :0], kernel=kernel[..., :0, :])),
        ("x of shape \\(2, 3, 0, 6, 3\\).*too small", ValueError, dict(x=x[:, :, :0])),
        ("x of shape \\(2, 3, 5, 0, 3\\).*too small", ValueError,
         dict(x=x[:, :, :, :0], padding="same")),
        ("kernel must have a kernel size of at least 1", ValueError,
         dict(kernel=kernel[:0], recurrent_kernel=rkernel[:0])),
        ("kernel must have shape", ValueError, dict(kernel=kernel[..., :0],
                                                    recurrent_kernel=rkernel[..., :0, :0])),
        # kernel larger than the input under "valid" padding (also through dilation)
        ("x of shape \\(2, 3, 5, 6, 3\\).*too small for kernel_size \\(6, 3\\)", ValueError,
         dict(kernel=zeros(6, 3, C, 4 * F), recurrent_kernel=zeros(6, 3, F, 4 * F))),
        ("too small for kernel_size \\(3, 3\\) with dilation_rate \\(3, 1\\)", ValueError,
         dict(dilation_rate=(3, 1))),
        ("x of shape \\(2, 3, 4, 3\\).*too small", ValueError,
         dict(x=x[:, :, :4, 0], kernel=zeros(5, C, 4 * F), recurrent_kernel=zeros(5, F, 4 * F))),
        # non-float x
        ("x must be a floating-point tensor", TypeError, dict(x=x.long())),
        ("x must be a floating-point tensor", TypeError, dict(x=x.int())),
        ("x must be a floating-point tensor", TypeError, dict(x=x > 0)),
        ("x must be a floating-point tensor", TypeError, dict(x=x.to(torch.complex64))),
        ("x must be a floating-point tensor", TypeError,
         dict(x=x.to(torch.complex64), kernel=kernel.to(torch.complex64),
              recurrent_kernel=rkernel.to(torch.complex64), bias=bias.to(torch.complex64))),
        # non-tensor arguments
        ("x must be a torch.Tensor, got list", TypeError, dict(x=x.tolist())),
        ("kernel must be a torch.Tensor, got list", TypeError, dict(kernel=kernel.tolist())),
        ("kernel must be a torch.Tensor, got ndarray", TypeError,
         dict(kernel=kernel.cpu().numpy())),
        ("recurrent_kernel must be a torch.Tensor, got ndarray", TypeError,
         dict(recurrent_kernel=rkernel.cpu().numpy())),
        ("bias must be a torch.Tensor, got ndarray", TypeError, dict(bias=bias.cpu().numpy())),
        ("bias must be a torch.Tensor, got float", TypeError, dict(bias=0.0)),
        ("initial_state\\[0\\] \\(h0\\) must be a torch.Tensor", TypeError,
         dict(initial_state=(h0.cpu().numpy(), c0))),
        ("initial_state\\[1\\] \\(c0\\) must be a torch.Tensor", TypeError,
         dict(initial_state=(h0, None))),
        ("initial_state must be a pair", TypeError, dict(initial_state=(h0, c0, c0))),
        ("mask must be a torch.Tensor, got ndarray", TypeError,
         dict(mask=np.ones((B, T), dtype=bool))),
        ("peephole must be a torch.Tensor, got list", TypeError, dict(peephole=[[0.0] * F] * 3)),
        ("input_dropout_mask must be a torch.Tensor", TypeError,
         dict(input_dropout_mask=np.ones((4, B, H, W, C), dtype=np.float32))),
        ("recurrent_dropout_mask must be a torch.Tensor", TypeError,
         dict(recurrent_dropout_mask=1.0)),
        # masks of other dtypes: 0/1 is accepted (below), anything else is an error
        ("mask must be boolean \\(or 0/1 valued\\), got a torch.int64", ValueError,
         dict(mask=full((B, T), 2))),
        ("mask must be boolean \\(or 0/1 valued\\), got a torch.int64", ValueError,
         dict(mask=full((B, T), 256))),  # int8 would wrap 256 to 0 (False)
        ("mask must be boolean \\(or 0/1 valued\\), got a torch.int8", ValueError,
         dict(mask=full((B, T), -1, dtype=torch.int8))),
        ("mask must be boolean \\(or 0/1 valued\\), got a torch.float32", ValueError,
         dict(mask=full((B, T), float("nan")))),
        ("mask must be a bool .* got torch.complex64", TypeError,
         dict(mask=zeros(B, T, dtype=torch.complex64))),
        ("mask must have shape \\(2, 3\\)", ValueError,
         dict(mask=zeros(B, T, 1, dtype=torch.bool))),
        ("mask must have shape \\(2, 3\\)", ValueError, dict(mask=zeros(T, B, dtype=torch.bool))),
        # strides and dilation: zero, negative, wrong type
        ("strides must be positive", ValueError, dict(strides=-1)),
        ("strides must be positive", ValueError, dict(strides=(1, 0))),
        ("strides must be positive", ValueError, dict(strides=(-2, 1))),
        ("strides must be an int or a tuple of 2 ints", TypeError, dict(strides=1.0)),
        ("strides must be an int or a tuple of 2 ints", ValueError, dict(strides=(1.0, 1))),
        ("strides must be an int or a tuple of 2 ints", TypeError, dict(strides=True)),
        ("dilation_rate must be positive", ValueError, dict(dilation_rate=0)),
        ("dilation_rate must be positive", ValueError, dict(dilation_rate=(1, -1))),
        ("dilation_rate must be an int or a tuple of 2 ints", ValueError,
         dict(dilation_rate=(1, 1, 1))),
        # other options
        ("padding must be 'valid' or 'same'", ValueError, dict(padding=None)),
        ("padding must be 'valid' or 'same'", ValueError, dict(padding="causal")),
        ("forward_variant must be one of", ValueError, dict(forward_variant="fused")),
        ("recompute_gates must be True, False or 'auto'", TypeError,
         dict(recompute_gates="yes")),
        ("recompute_gates must be True, False or 'auto'", TypeError, dict(recompute_gates=1)),
        ("forward_variant='unfused' .* supports neither mask nor peephole", ValueError,
         dict(forward_variant="unfused", peephole=zeros(3, F))),
        ("activation='softsine' is not a supported activation", ValueError,
         dict(activation="softsine")),
        ("activation='glu' cannot be a ConvLSTM gate activation", ValueError,
         dict(activation="glu")),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("match,error,override", bad_calls(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_bad_arguments_raise_clear_errors(match, error, override, backend):
    with pytest.raises(error, match=match):
        call(backend, **override)


def test_triton_backend_refuses_tensors_on_other_devices():
    """Only CUDA tensors (or CPU ones under the interpreter) can reach the kernels."""
    args = {k: v.to("meta") for k, v in inputs().items()}
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors .* x is on meta"):
        conv_lstm(*args.values(), backend="triton")
    # the reference runs on meta tensors: shape inference without data
    seq, h, c = conv_lstm(*args.values(), backend="reference")
    assert seq.device.type == "meta" and seq.shape == (B, T, 3, 4, F) and h.shape == c.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.float32,
                                   torch.float16])
def test_zero_one_masks_of_any_real_dtype_equal_the_bool_mask(dtype, backend):
    bool_mask = torch.tensor([[False, True, True], [True, False, True]], device=DEVICE)
    expected = call(backend, mask=bool_mask)
    got = call(backend, mask=bool_mask.to(dtype))
    for a, e in zip(got, expected):
        assert torch.equal(a, e)


# --- NaN and Inf ----------------------------------------------------------------------------

# Activations built on clamps and where(): NaN must propagate through them as through torch's.
CLAMPING_ACTIVATIONS = ("hard_sigmoid", "relu", "relu6", "elu", "selu", "hard_sigmoid_legacy",
                        "celu", "hard_shrink", "hard_silu", "hard_tanh", "leaky_relu",
                        "soft_shrink", "sparse_plus", "sparse_sigmoid")
SMOOTH_ACTIVATIONS = sorted(
    set(KERNEL_ACTIVATION_CODES) - set(CLAMPING_ACTIVATIONS) - {"exponential"})


def nan_inf_positions_match(value, activation="tanh", recurrent_activation="sigmoid",
                            forward_variant="hoisted", grads=True):
    """One NaN/Inf in x: the Triton path's NaN and Inf positions (outputs, and gradients when
    asked) are the reference's, and nothing crashes."""
    args = inputs()
    args["x"][0, 1, 2, 3, 1] = value
    options = dict(padding="same", activation=activation,
                   recurrent_activation=recurrent_activation)
    results = {}
    for backend, extra in (("triton", dict(forward_variant=forward_variant, allow_tf32=False)),
                           ("reference", {})):
        leaves = [t.detach().clone().requires_grad_(grads) for t in args.values()]
        outs = conv_lstm(*leaves, backend=backend, **options, **extra)
        tensors = dict(zip(("seq", "h", "c"), outs))
        if grads:
            sum(o.sum() for o in outs).backward()
            tensors.update((f"d{name}", leaf.grad) for name, leaf in zip(args, leaves))
        results[backend] = tensors
    for name, ref in results["reference"].items():
        out = results["triton"][name]
        assert torch.equal(out.isnan(), ref.isnan()), (
            f"{name}: NaN at {out.isnan().sum().item()} positions, the reference at "
            f"{ref.isnan().sum().item()}")
        assert torch.equal(out.isinf(), ref.isinf()), f"{name}: Inf positions differ"
        assert torch.equal(out[out.isinf()], ref[ref.isinf()].to(out.dtype)), f"{name}: Inf signs"
        finite = torch.isfinite(ref)
        assert_close(out[finite], ref[finite], torch.float32, f"{name} (finite part)")
    return results


@needs_kernels
@pytest.mark.parametrize("variant", ["hoisted", "fused_input"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
def test_nan_and_inf_in_x_propagate_as_in_the_reference(value, variant):
    results = nan_inf_positions_match(value, forward_variant=variant)
    if value != value:  # a NaN pixel reaches every output within the receptive field
        assert results["triton"]["seq"].isnan().any()


@needs_kernels
@pytest.mark.parametrize("activation", SMOOTH_ACTIVATIONS)
def test_nan_propagates_through_every_smooth_activation(activation):
    nan_inf_positions_match(float("nan"), activation, activation, grads=False)
    nan_inf_positions_match(float("inf"), activation, "sigmoid", grads=False)


@needs_kernels
@pytest.mark.parametrize("activation", CLAMPING_ACTIVATIONS)
def test_nan_propagates_through_clamping_activations(activation):
    nan_inf_positions_match(float("nan"), activation, activation, grads=False)


@needs_kernels
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_leading_masked_steps_output_zeros_even_with_non_finite_initial_state(value):
    h0, c0 = state(), state()
    h0[0, 1, 1, 0] = value
    mask = torch.tensor([[False, True, True], [True, True, True]], device=DEVICE)
    seq, _, _ = call("triton", padding="valid", initial_state=(h0, c0), mask=mask)
    ref, _, _ = call("reference", padding="valid", initial_state=(h0, c0), mask=mask)
    assert torch.equal(ref[0, 0], torch.zeros_like(ref[0, 0]))
    assert torch.equal(seq[0, 0], ref[0, 0])


# --- c0 in another float dtype ----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_c0_in_a_narrower_float_dtype_is_accepted(backend):
    h0, c0 = state(), torch.randn(B, 3, 4, F, device=DEVICE)
    expected = call(backend, initial_state=(h0, c0))
    got = call(backend, initial_state=(h0, c0.half()))
    for name, a, e in zip(("seq", "h", "c"), got, expected):
        assert a.dtype == torch.float32
        assert_close(a, e, torch.float16, name, TOLERANCES[torch.float16])


def test_c0_in_a_wider_float_dtype_is_accepted_by_the_reference():
    h0, c0 = state(), torch.randn(B, 3, 4, F, device=DEVICE)
    expected = call("reference", initial_state=(h0, c0))
    got = call("reference", initial_state=(h0, c0.double()))
    for name, a, e in zip(("seq", "h", "c"), got, expected):
        assert_close(a, e, torch.float32, name)


@needs_kernels
def test_c0_in_a_wider_float_dtype_on_the_triton_path():
    h0, c0 = state(), torch.randn(B, 3, 4, F, device=DEVICE)
    expected = call("triton", initial_state=(h0, c0))
    got = call("triton", initial_state=(h0, c0.double()))
    for a, e in zip(got, expected):
        assert a.dtype == torch.float32 and torch.equal(a, e)


# --- validation kept per call signature -------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_valid_call_does_not_excuse_a_later_bad_one(backend):
    """Validation is kept per call signature (shapes, dtypes, devices, options and their
    types): a later call that differs from a valid one only in the mask's values or in an
    option's type is still refused."""
    mask = torch.ones(B, T, device=DEVICE)
    call(backend, mask=mask)
    with pytest.raises(ValueError, match="mask must be boolean"):
        call(backend, mask=mask * 2)
    call(backend, go_backwards=True)
    with pytest.raises(TypeError, match="go_backwards must be a bool"):
        call(backend, go_backwards=1)  # == True, and hashes alike
    call(backend, strides=(1, 1))
    with pytest.raises(ValueError, match="strides must be an int or a tuple of 2 ints"):
        call(backend, strides=(True, 1))
    call(backend, recompute_gates=True)
    with pytest.raises(TypeError, match="recompute_gates must be True, False or 'auto'"):
        call(backend, recompute_gates=1)


def test_calls_without_a_signature_are_validated_every_time():
    """Unhashable options, tensor subclasses and callable activations are not cached: each
    such call is validated."""
    from convlstm_triton.validation import call_signature

    x, kernel, rkernel, bias = inputs().values()
    options = (1, "valid", 1, "tanh", "sigmoid", False, "reference", "auto", "auto", False)
    assert call_signature(x, kernel, rkernel, bias, None, None, None, None, None,
                          options) is not None
    unhashable = (np.array([1, 1]), *options[1:])
    assert call_signature(x, kernel, rkernel, bias, None, None, None, None, None,
                          unhashable) is None
    with pytest.raises(ValueError, match="strides must be an int or a tuple of 2 ints"):
        call(strides=np.array([1, 1]))

    class Sub(torch.Tensor):
        pass

    assert call_signature(x.as_subclass(Sub), kernel, rkernel, bias, None, None, None, None,
                          None, options) is None
    # a callable activation is not kept alive by a cache key
    callable_activation = (*options[:3], torch.tanh, *options[4:])
    assert call_signature(x, kernel, rkernel, bias, None, None, None, None, None,
                          callable_activation) is None
