"""Training-path options: recomputed vs saved pre-activations (same gradients, less memory),
determinism (bit-identical gradients run to run), and a CUDA-graph-captured training step."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import kernel_device, requires_gpu, triton_available_here

from convlstm_triton import autograd
from convlstm_triton.functional import conv_lstm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_convlstm import SHAPES  # noqa: E402

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]

CASES = [
    pytest.param("hoisted", dict(padding="same"), id="hoisted_same"),
    pytest.param("hoisted", dict(padding="same", mask=True, peephole=True, dropout=True),
                 id="hoisted_mask_peephole_dropout"),
    pytest.param("fused_input", dict(padding="valid", strides=2, mask=True, peephole=True,
                                     dropout=True), id="fused_input_s2_mask_peephole_dropout"),
    pytest.param("unfused", dict(padding="same", go_backwards=True, dropout=True),
                 id="unfused_go_backwards_dropout"),
]


def make_problem(options, device, B=2, T=4, H=7, W=6, C=3, F=5):
    torch.manual_seed(11)
    x = torch.randn(B, T, H, W, C, device=device)
    kernel = torch.randn(3, 3, C, 4 * F, device=device) * 0.3
    rkernel = torch.randn(3, 3, F, 4 * F, device=device) * 0.3
    bias = torch.randn(4 * F, device=device)
    kwargs = {k: options[k] for k in ("padding", "strides", "go_backwards") if k in options}
    out_hw = (H, W) if options["padding"] == "same" else ((H - 3) // 2 + 1, (W - 3) // 2 + 1)
    state = (torch.randn(B, *out_hw, F, device=device), torch.randn(B, *out_hw, F, device=device))
    if options.get("mask"):
        kwargs["mask"] = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool,
                                      device=device)
    if options.get("peephole"):
        kwargs["peephole"] = torch.randn(3, F, device=device) * 0.5
    if options.get("dropout"):
        kwargs["input_dropout_mask"] = (torch.rand(4, B, H, W, C, device=device) < 0.7) / 0.7
        kwargs["recurrent_dropout_mask"] = (
            torch.rand(4, B, *out_hw, F, device=device) < 0.7) / 0.7
    cotangents = [torch.randn(B, T, *out_hw, F, device=device),
                  torch.randn(B, *out_hw, F, device=device),
                  torch.randn(B, *out_hw, F, device=device)]
    return (x, kernel, rkernel, bias, state), kwargs, cotangents


def train_step(tensors, kwargs, cotangents, **options):
    """Forward + backward; returns the outputs, the gradients of every tensor input, and the
    bytes autograd saved for backward."""
    x, kernel, rkernel, bias, state = [t.detach().clone().requires_grad_() if t is not None
                                       else None for t in tensors[:4]] + [tensors[4]]
    state = tuple(s.detach().clone().requires_grad_() for s in state)
    peephole = kwargs.get("peephole")
    kwargs = dict(kwargs)
    if peephole is not None:
        kwargs["peephole"] = peephole = peephole.detach().clone().requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = conv_lstm(x, kernel, rkernel, bias, state, backend="triton", **kwargs, **options)
    loss = sum((o * g).sum() for o, g in zip(out, cotangents))
    leaves = [x, kernel, rkernel, bias, *state] + ([peephole] if peephole is not None else [])
    return out, torch.autograd.grad(loss, leaves), sum(saved)


@pytest.mark.parametrize("variant,options", CASES)
def test_recomputed_preactivations_give_the_same_gradients_with_less_memory(variant, options,
                                                                            poison_buffers):
    device = kernel_device()
    tensors, kwargs, cot = make_problem(options, device)
    out, grads, saved = train_step(tensors, kwargs, cot, forward_variant=variant)
    out_rc, grads_rc, saved_rc = train_step(tensors, kwargs, cot, forward_variant=variant,
                                            recompute_gates=True)
    # the recomputation runs forward's own kernel and config on forward's own inputs: the
    # same numbers, bit for bit
    for a, b in zip(list(out) + list(grads), list(out_rc) + list(grads_rc)):
        assert torch.equal(b, a)
    B, T, P, F = 2, 4, out[1][0, ..., 0].numel(), 5
    assert saved - saved_rc == B * T * P * 4 * F * 4  # exactly the fp32 pre-activations


def test_auto_recomputes_where_the_preactivations_are_large(monkeypatch):
    """recompute_gates="auto" (the default) keeps the pre-activations below
    RECOMPUTE_MIN_BYTES and recomputes them from there on: at every benchmark shape but small."""
    device = kernel_device()
    tensors, kwargs, cot = make_problem(dict(padding="same"), device)
    kept = train_step(tensors, kwargs, cot, recompute_gates=False)[2]
    assert train_step(tensors, kwargs, cot, recompute_gates="auto")[2] == kept
    monkeypatch.setattr(autograd, "RECOMPUTE_MIN_BYTES", 0)
    B, T, P, F = 2, 4, 7 * 6, 5
    preact = B * T * P * 4 * F * 4
    assert train_step(tensors, kwargs, cot, recompute_gates="auto")[2] == kept - preact
    monkeypatch.undo()
    for shape, recompute in (("mnist_l1", True), ("mnist_l2", True), ("nowcast", True),
                             ("small", False)):
        s = SHAPES[shape]
        P = s.spatial[0] * s.spatial[1]
        assert autograd.recompute_by_default(s.batch, s.steps, P, s.filters, 2) == recompute


@pytest.mark.parametrize("variant,options", CASES)
def test_gradients_are_bit_identical_run_to_run(variant, options):
    """No races anywhere on the path (weight gradients reduce split partials in a fixed order;
    time chunks add to them with one writer per element), so the deterministic mode costs
    nothing and repeats exactly."""
    device = kernel_device()
    tensors, kwargs, cot = make_problem(options, device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = train_step(tensors, kwargs, cot, forward_variant=variant)
        second = train_step(tensors, kwargs, cot, forward_variant=variant)
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.use_deterministic_algorithms(False)
    try:
        free = train_step(tensors, kwargs, cot, forward_variant=variant)
    finally:
        torch.use_deterministic_algorithms(previous)
    for run in (second, free):  # the same bits with and without the deterministic mode
        for a, b in zip(list(first[0]) + list(first[1]), list(run[0]) + list(run[1])):
            assert torch.equal(a, b)


@pytest.mark.gpu
@requires_gpu
def test_training_step_captures_in_a_cuda_graph():
    """The whole forward + backward replays from one CUDA graph (no host synchronisation inside)
    and gives the eager step's gradients."""
    tensors, kwargs, cot = make_problem(dict(padding="same"), "cuda", B=2, T=5, H=16, W=16,
                                        C=16, F=32)
    x, kernel, rkernel, bias, state = tensors
    params = [t.clone().requires_grad_() for t in (kernel, rkernel, bias)]
    static_x = x.clone()

    def step():
        for p in params:
            p.grad = None
        out = conv_lstm(static_x, *params, state, backend="triton", **kwargs)
        sum((o * g).sum() for o, g in zip(out, cot)).backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm up: compile, tune, allocate
            step()
    torch.cuda.current_stream().wait_stream(side)
    expected = [p.grad.clone() for p in params]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    for p, e in zip(params, expected):
        assert torch.equal(p.grad, e)
