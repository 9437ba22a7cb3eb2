"""Property-based tests (hypothesis): random ConvLSTM configurations through the Triton path
(the interpreter on a CPU) against the float64 reference, forward outputs and every gradient.

Each example draws a rank (1-3), tiny sizes (spatial <= 6 per dim, T <= 3, B <= 2, C_in and F
1-5), kernel sizes 1-3 (even ones too), strides or dilation (never both > 1), "valid" or "same"
padding (valid always leaves an output pixel), activations, a random bool mask, go_backwards, an
initial state, dropout masks, peepholes, bias or none, the forward variant (hoisted or
fused_input), saved or recomputed gate pre-activations and the K layout of the implicit GEMMs.
Kernel output buffers are poisoned with NaN. Inputs come from a drawn seed, so a failing example
(hypothesis prints it, with a reproduction blob) reruns exactly.

Reproducible in CI: examples are derandomized (a fixed sequence per test). For a longer random
search set CONVLSTM_PROPERTY_EXAMPLES, e.g.
``CONVLSTM_PROPERTY_EXAMPLES=300 python -m pytest tests/test_properties.py --hypothesis-seed=1``.
bfloat16 is left to the GPU tests: Triton's CPU interpreter computes bf16 dots wrongly.
"""

import os
from dataclasses import asdict, dataclass
from unittest import mock

import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (the [test] extra)")

import torch  # noqa: E402
from helpers import assert_close, kernel_device, rel_err, triton_available_here  # noqa: E402
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_kernels_vs_reference import make_inputs, run_with_grads, tolerance  # noqa: E402

from convlstm_triton import launchers
from convlstm_triton.activations import KERNEL_ACTIVATION_CODES
from convlstm_triton.geometry import conv_output_size

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1"),
              # sigmoid's exp(-x) overflows to inf for very negative x (giving exactly 0)
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")]

# "exponential" (checked in test_cell_kernels.py) explodes over the steps: as the cell activation
# it overflows, and as the gates' activation exp(exp(...)) reaches float64's inf within 3 steps,
# where the reference's gradient through a masked step becomes 0 * inf = NaN.
ACTIVATIONS = sorted(set(KERNEL_ACTIVATION_CODES) - {"exponential"}) + ["swish"]
# fp16: no kinks (relu, clips, selu) whose side a rounded pre-activation could land on
# differently, and bounded gates: unbounded ones (linear, softplus, ...) let c grow past fp16's
# range within 3 steps.
SMOOTH_ACTIVATIONS = ["linear", "tanh", "sigmoid", "silu", "swish", "gelu", "softsign",
                      "softplus", "elu"]
SMOOTH_BOUNDED_ACTIVATIONS = ["tanh", "sigmoid", "softsign"]

_EXPLORE = int(os.environ.get("CONVLSTM_PROPERTY_EXAMPLES", "0"))


def property_settings(max_examples):
    """Derandomized (the same examples on every run) and without shrinking (an example takes
    seconds under the interpreter: shrinking a failure could take many minutes; the failing
    example, tiny anyway, is printed as drawn) unless exploring with CONVLSTM_PROPERTY_EXAMPLES."""
    phases = [p for p in Phase if _EXPLORE or p != Phase.shrink]
    return settings(
        max_examples=_EXPLORE or max_examples, derandomize=not _EXPLORE, database=None,
        deadline=None, print_blob=True, phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Config:
    """One conv_lstm call; its repr is what hypothesis prints for a failing example."""

    dtype: str
    spatial: tuple
    k: tuple
    padding: str
    strides: tuple
    dilation_rate: tuple
    B: int
    T: int
    C: int
    F: int
    activation: str
    recurrent_activation: str
    mask: tuple | None  # (B, T) bools, or None
    go_backwards: bool
    initial_state: bool
    dropout: bool
    peephole: bool
    bias: bool
    forward_variant: str
    recompute_gates: bool
    tap_major: bool  # the tap-major K layout for every conv (normally from 16 channels on)
    seed: int

    def out_spatial(self):
        return tuple(conv_output_size(n, k, s, d, self.padding) for n, k, s, d in
                     zip(self.spatial, self.k, self.strides, self.dilation_rate))


@st.composite
def configs(draw, rank=None, dtype="float32"):
    rank = draw(st.integers(1, 3)) if rank is None else rank
    k = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    if draw(st.booleans()):  # dilation, stride 1
        strides = (1,) * rank
        dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    else:
        strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
        dilation = (1,) * rank
    padding = draw(st.sampled_from(["valid", "same"]))
    # "valid" must leave at least one output pixel: the dim spans the dilated kernel
    low = [(kk - 1) * d + 1 if padding == "valid" else 1 for kk, d in zip(k, dilation)]
    spatial = tuple(draw(st.integers(lo, 6)) for lo in low)
    B, T = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    smooth = dtype != "float32"
    mask = None
    if draw(st.booleans()):
        mask = tuple(tuple(draw(st.booleans()) for _ in range(T)) for _ in range(B))
    cfg = Config(
        dtype=dtype, spatial=spatial, k=k, padding=padding, strides=strides,
        dilation_rate=dilation, B=B, T=T, C=draw(st.integers(1, 5)), F=draw(st.integers(1, 5)),
        activation=draw(st.sampled_from(SMOOTH_ACTIVATIONS if smooth else ACTIVATIONS)),
        recurrent_activation=draw(st.sampled_from(
            SMOOTH_BOUNDED_ACTIVATIONS if smooth else ACTIVATIONS)),
        mask=mask, go_backwards=draw(st.booleans()), initial_state=draw(st.booleans()),
        dropout=draw(st.booleans()), peephole=draw(st.booleans()), bias=draw(st.booleans()),
        forward_variant=draw(st.sampled_from(["hoisted", "fused_input"])),
        recompute_gates=draw(st.booleans()), tap_major=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    assume(all(o >= 1 for o in cfg.out_spatial()))
    return cfg


def assert_close_or_subnormal(out, ref, dtype, name, tol):
    """assert_close, except that fp16 results may also be off by the rounding of values in
    fp16's subnormal range (a weight gradient of 1e-7 is a multiple of 2**-24 = 6e-8 in fp16;
    a tiny example can have nothing larger)."""
    if dtype == torch.float16 and torch.isfinite(out).all():
        diff = (out.double() - ref.double()).norm().item()
        slack = 4 * out.numel() ** 0.5 * 2.0**-24
        if diff <= tol * ref.double().norm().item() + slack:
            return
    assert_close(out, ref, dtype, name, tol)


def nan_buffer(shape, device, dtype):
    return torch.full(shape, float("nan"), device=device, dtype=dtype)


def check_against_reference(cfg: Config):
    """Forward (seq, h, c) and the gradients of every input: Triton path vs float64 reference,
    within the per-dtype tolerance of tests/helpers.py."""
    for feature in ("mask", "go_backwards", "initial_state", "dropout", "peephole",
                    "recompute_gates", "tap_major"):
        if getattr(cfg, feature):
            event(feature)  # `pytest --hypothesis-show-statistics` shows what the examples hit
    event(f"{cfg.forward_variant}, {cfg.padding}, "
          + ("strides > 1" if max(cfg.strides) > 1 else
             "dilation > 1" if max(cfg.dilation_rate) > 1 else "stride 1"))
    device = kernel_device()
    dtype = getattr(torch, cfg.dtype)
    case = {key: value for key, value in asdict(cfg).items()
            if key in ("spatial", "C", "F", "k", "padding", "strides", "dilation_rate",
                       "activation", "recurrent_activation", "go_backwards", "B", "T",
                       "initial_state", "peephole", "dropout", "bias")}
    torch.manual_seed(cfg.seed)
    x, kernel, rkernel, bias, initial_state, _, options = make_inputs(case, dtype, device)
    mask = (torch.tensor(cfg.mask, device=device) if cfg.mask is not None else None)
    cot = {}

    def cotangents(seq, h, c):
        if not cot:
            g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
            cot["v"] = tuple(torch.randn(t.shape, generator=g, device=device, dtype=t.dtype)
                             for t in (seq, h, c))
        return cot["v"]

    triton_options = dict(options, forward_variant=cfg.forward_variant,
                          recompute_gates=cfg.recompute_gates, allow_tf32=False)
    tap_major_from = 1 if cfg.tap_major else launchers.TAP_MAJOR_MIN_CHANNELS
    with mock.patch.object(launchers, "new_buffer", nan_buffer), \
            mock.patch.object(launchers, "TAP_MAJOR_MIN_CHANNELS", tap_major_from):
        (seq, h, c), grads = run_with_grads("triton", x, kernel, rkernel, bias, initial_state,
                                            mask, triton_options, cotangents)

    def wide(t):
        return t.double() if t is not None else None

    ref_state = tuple(map(wide, initial_state)) if initial_state is not None else None
    ref_options = {key: wide(v) if isinstance(v, torch.Tensor) else v
                   for key, v in options.items()}
    (rseq, rh, rc), rgrads = run_with_grads(
        "reference", wide(x), wide(kernel), wide(rkernel), wide(bias), ref_state, mask,
        ref_options, lambda *_: tuple(v.double() for v in cot["v"]))

    # allow_tf32=False: IEEE fp32 dots on a GPU too, so the fp32 tolerance is the CPU's
    tol = tolerance(dtype, "cpu")
    note(f"out_spatial={cfg.out_spatial()}, tolerance {tol:.0e}")
    outputs = {"seq": seq, "h": h, "c": c, **{f"d{k}": v for k, v in grads.items()}}
    reference = {"seq": rseq, "h": rh, "c": rc, **{f"d{k}": v for k, v in rgrads.items()}}
    assert grads.keys() == rgrads.keys()
    tols = dict.fromkeys(outputs, tol)
    if dtype != torch.float32:
        # A tiny random example can be ill-conditioned in fp16 (a sum of two terms that nearly
        # cancel): then PyTorch's own fp16 computation misses the float64 result by more than
        # the table's tolerance too. The kernels must do no worse than twice as badly as it.
        (pseq, ph, pc), pgrads = run_with_grads("reference", x, kernel, rkernel, bias,
                                                initial_state, mask, options, cotangents)
        peer = {"seq": pseq, "h": ph, "c": pc, **{f"d{k}": v for k, v in pgrads.items()}}
        for name, value in peer.items():
            err = rel_err(value, reference[name])
            if err != float("inf"):
                tols[name] = max(tol, 2 * err)
        note("tolerances: " + ", ".join(f"{n} {t:.1e}" for n, t in tols.items()))
    for name, out in outputs.items():
        assert_close_or_subnormal(out, reference[name], dtype, name, tols[name])


# One test per rank (and one for fp16) so that `pytest -n 2` spreads them over the workers.
@property_settings(max_examples=12)
@given(cfg=configs(rank=1))
def test_rank1_matches_reference(cfg):
    check_against_reference(cfg)


@property_settings(max_examples=12)
@given(cfg=configs(rank=2))
def test_rank2_matches_reference(cfg):
    check_against_reference(cfg)


@property_settings(max_examples=8)
@given(cfg=configs(rank=3))
def test_rank3_matches_reference(cfg):
    check_against_reference(cfg)


@property_settings(max_examples=6)
@given(cfg=configs(dtype="float16"))
def test_fp16_matches_reference(cfg):
    check_against_reference(cfg)
