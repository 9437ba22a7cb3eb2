"""How the layers fit into PyTorch training: torch.compile(fullgraph=True) of both backends (the
Triton path as the custom ops ``torch.ops.convlstm_triton.forward`` / ``backward``),
torch.autocast (outputs in the autocast dtype, fp32 gradients for fp32 parameters), GradScaler,
DistributedDataParallel (gloo, two processes), and module round trips: state_dict, deepcopy,
pickle, ``.to(dtype)``, strided inputs, no_grad / inference_mode (nothing kept for backward).

Compiles are the slow part (seconds each, inductor's C++ build ~20 s on a CPU): few of them, on
tiny shapes.
"""

import copy
import io
import os
import pickle
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import (
    TF32_TOLERANCE,
    TOLERANCES,
    assert_close,
    kernel_device,
    requires_gpu,
    triton_available_here,
)

from convlstm_triton import ConvLSTM, ConvLSTM2D, ConvLSTMCell, launchers, ops
from convlstm_triton.activations import KERNEL_ACTIVATION_CODES
from convlstm_triton.functional import conv_lstm
from convlstm_triton.geometry import ConvGeometry

needs_kernels = pytest.mark.skipif(not triton_available_here(),
                                   reason="needs a GPU or TRITON_INTERPRET=1")
kernels = [pytest.mark.kernels, needs_kernels]
B, T, H, W, C, F = 2, 3, 4, 3, 2, 3


def make_layer(backend, device="cpu", **kwargs):
    options = dict(padding="same", return_sequences=True, in_channels=C, backend=backend,
                   device=device)
    options.update(kwargs)
    return ConvLSTM2D(F, 3, **options)


def clone_leaf(t):
    return t.detach().clone().requires_grad_()


def run(module, x, *args, **kwargs):
    """Forward + backward of a fixed random loss over every output; returns (outputs, grads of
    x and of the parameters)."""
    x = clone_leaf(x)
    module.zero_grad(set_to_none=True)
    out = flatten(module(x, *args, **kwargs))
    gen = torch.Generator().manual_seed(5)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum()
               for o in out)
    loss.backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return [o.detach() for o in out], grads


def flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flatten(o)]


def assert_all_close(got, want, tol, name):
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a.float(), b.float(), torch.float32, f"{name}[{i}]", tol=tol)


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)


def _keras_features_case(device="cpu"):
    """Inputs exercising most of the layer: float mask, initial state, go_backwards,
    channels_first, return_state."""
    x = torch.randn(B, T, C, H, W, device=device)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], device=device)
    state = [torch.randn(B, F, H, W, device=device) for _ in range(2)]
    options = dict(data_format="channels_first", go_backwards=True, return_state=True)
    return x, dict(initial_state=state, mask=mask), options


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_compiled_reference_layer_matches_eager(compiler):
    """The reference backend (plain torch) compiles without graph breaks, forward and
    backward."""
    x, call, options = _keras_features_case()
    layer = make_layer("reference", **options)
    want = run(layer, x, **call)
    got = run(torch.compile(layer, fullgraph=True, backend=compiler), x, **call)
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-5, compiler)


@pytest.mark.skipif(os.environ.get("CONVLSTM_TRITON_TEST_INDUCTOR") != "1",
                    reason="inductor on a CPU works but its C++ build takes 30-50 s cold (7 s "
                    "with its cache warm): set CONVLSTM_TRITON_TEST_INDUCTOR=1 to run it")
def test_compiled_reference_layer_with_inductor():
    """The default backend (inductor) on a CPU, on the smallest graph."""
    layer = make_layer("reference")
    x = torch.randn(B, 2, H, W, C)
    want = run(layer, x)
    got = run(torch.compile(layer, fullgraph=True), x)
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-5, "inductor")


def test_compiled_lazy_layer_with_dropout_and_dynamic_shapes():
    """A lazy layer initializes at the first compiled call; dropout masks (no seed) trace, also
    after a second shape has made the sizes dynamic (the automatic recompile)."""
    layer = ConvLSTM2D(F, 3, padding="same", return_sequences=True, dropout=0.3,
                       recurrent_dropout=0.2, backend="reference")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for shape in [(B, 1, H, W, C), (B + 1, 1, H + 1, W, C)]:
        x = torch.randn(shape, requires_grad=True)
        y = compiled(x)
        assert y.shape == (*shape[:-1], F)
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all() and layer.kernel.grad is not None
    assert tuple(layer.kernel.shape) == (3, 3, C, 4 * F)


def test_compiled_torch_modules():
    """ConvLSTM (bidirectional, two layers, peepholes) and ConvLSTMCell compile too."""
    lstm = ConvLSTM(C, [3, 4], 3, num_layers=2, bidirectional=True, peephole=True,
                    backend="reference")
    x = torch.randn(B, T, C, H, W)
    want = run(lstm, x)
    got = run(torch.compile(lstm, fullgraph=True, backend="eager"), x)
    assert_all_close(got[1], want[1], 1e-5, "ConvLSTM grads")
    cell = ConvLSTMCell(C, F, 3, peephole=True, backend="reference")
    want = run(cell, x[:, 0])
    got = run(torch.compile(cell, fullgraph=True, backend="eager"), x[:, 0])
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-5, "ConvLSTMCell")


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.kernels
@needs_kernels
def test_compiled_triton_layer_matches_eager(compiler, poison_buffers):
    """The Triton path compiles as two opaque custom ops (under the interpreter on a CPU)."""
    device = kernel_device()
    x, call, options = _keras_features_case(device)
    layer = make_layer("triton", device, **options)
    want = run(layer, x, **call)
    got = run(torch.compile(layer, fullgraph=True, backend=compiler), x, **call)
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-6, compiler)


@pytest.mark.kernels
@needs_kernels
def test_compiled_functional_peephole_dropout_recompute(poison_buffers):
    """conv_lstm with peepholes, dropout masks, strides and recomputed pre-activations under
    compile, in training and under no_grad (the op's inference path)."""
    device = kernel_device()
    x = torch.randn(B, T, 5, 5, C, device=device)
    kernel = torch.randn(3, 3, C, 4 * F, device=device) * 0.3
    rkernel = torch.randn(3, 3, F, 4 * F, device=device) * 0.3
    bias = torch.randn(4 * F, device=device)
    peephole = torch.randn(3, F, device=device)
    xmask = (torch.rand(4, B, 5, 5, C, device=device) < 0.7) / 0.7
    hmask = (torch.rand(4, B, 3, 3, F, device=device) < 0.7) / 0.7

    def fn(x, kernel, rkernel, bias, peephole):
        seq, h, c = conv_lstm(x, kernel, rkernel, bias, strides=2, padding="same",
                              peephole=peephole, input_dropout_mask=xmask,
                              recurrent_dropout_mask=hmask, backend="triton",
                              recompute_gates=True)
        return seq.square().sum() + h.sum() + c.sum()

    def value_and_grads(f):
        leaves = [clone_leaf(t) for t in (x, kernel, rkernel, bias, peephole)]
        loss = f(*leaves)
        return [loss.detach()] + list(torch.autograd.grad(loss, leaves))

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert_all_close(value_and_grads(compiled), value_and_grads(fn), 1e-6, "train")
    with torch.no_grad():
        assert_all_close([compiled(x, kernel, rkernel, bias, peephole)],
                         [fn(x, kernel, rkernel, bias, peephole)], 1e-6, "no_grad")


def _op_args(device, requires_grad, T=2, H=3, W=2):
    geom = launchers.KernelGeometry.from_conv(
        ConvGeometry.build((H, W), (3, 3), (1, 1), (1, 1), "same"))
    P = H * W

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).requires_grad_(requires_grad)

    tensors = (t(B, T, 1, H, W, C), t(9 * C, 4 * F, scale=0.3), t(9 * F, 4 * F, scale=0.3),
               t(4 * F), t(B, P, F), t(B, P, F), t(3 * F),
               torch.tensor([[0, 1], [1, 1]], dtype=torch.int8, device=device),
               None, None)
    config = (ops.geometry_to_ints(geom), KERNEL_ACTIVATION_CODES["tanh"],
              KERNEL_ACTIVATION_CODES["sigmoid"], "ieee")
    return tensors, config


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
@pytest.mark.kernels
@needs_kernels
def test_custom_ops_pass_opcheck(training):
    """torch.library.opcheck: schema, fake implementation (shapes, dtypes, strides) against
    the real one, autograd registration, AOT dispatch with dynamic shapes; the backward op
    with saved and with recomputed pre-activations."""
    device = kernel_device()
    tensors, config = _op_args(device, requires_grad=training)
    torch.library.opcheck(torch.ops.convlstm_triton.forward.default,
                          (*tensors, *config, "auto", training, True))
    if not training:
        return
    tensors = [t.detach() if t is not None else None for t in tensors]
    x, k, rk, b, h0, _, peep, mask, xmask, hmask = tensors
    for save_preact in (True, False):
        states, h, c, c_all, preact = torch.ops.convlstm_triton.forward(
            *tensors, *config, "hoisted", True, save_preact)
        assert preact.numel() == (states.numel() * 4 if save_preact else 0)
        needs = [True, True, True, False, True, True, True]
        args = (torch.randn_like(states), None, torch.randn_like(c), x, k, rk, b, h0, states,
                c_all, preact if save_preact else None, peep, mask, xmask, hmask, *config,
                "hoisted", needs)
        torch.library.opcheck(torch.ops.convlstm_triton.backward.default, args,
                              test_utils=("test_schema", "test_faketensor"))


@requires_gpu
@pytest.mark.gpu
@pytest.mark.kernels
def test_gpu_kernels_compiled_with_inductor():
    """The real kernels inside a graph compiled with the default backend (inductor)."""
    x, call, options = _keras_features_case("cuda")
    layer = make_layer("triton", "cuda", **options)
    want = run(layer, x, **call)
    got = run(torch.compile(layer, fullgraph=True), x, **call)
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-5, "inductor")


# ---------------------------------------------------------------------------------------------
# torch.autocast, GradScaler


def _check_autocast(backend, device, dtype):
    """Under autocast the layer computes exactly what it computes on inputs and weights cast to
    the autocast dtype; outputs are in that dtype, fp32 parameters get fp32 gradients."""
    x, call, options = _keras_features_case(device)
    layer = make_layer(backend, device, **options)
    with torch.autocast(device, dtype=dtype):
        got = run(layer, x, **call)
    assert all(o.dtype == dtype for o in got[0])
    assert all(g.dtype == torch.float32 for g in got[1])

    low = copy.deepcopy(layer).to(dtype)
    state = call["initial_state"]
    # autocast casts h0 and leaves c0 (the kernels keep c in fp32; the reference casts it)
    c0 = state[1].to(dtype) if backend == "reference" else state[1]
    want = run(low, x.to(dtype), initial_state=[state[0].to(dtype), c0], mask=call["mask"])
    assert_all_close(got[0] + got[1], want[0] + want[1], 0.0, "autocast vs cast by hand")

    # Against fp32: the inputs, weights and every step's h rounded to the autocast dtype (unit
    # roundoff u = 2^-8 bf16, 2^-11 fp16; sums in fp32), through a contracting recurrence of 3
    # steps: a few u. Measured on this case (5 seeds, CPU, 2026-11-29): at most 2.7 u (bf16,
    # reference) and 1.8 u (fp16, kernels); the bound is 8 u.
    full = run(layer, x, **call)
    unit_roundoff = torch.finfo(dtype).eps / 2
    assert_all_close(got[0] + got[1], full[0] + full[1], 8 * unit_roundoff, "vs fp32")


def test_cpu_autocast_bf16_reference():
    _check_autocast("reference", "cpu", torch.bfloat16)


@pytest.mark.kernels
@needs_kernels
def test_autocast_fp16_kernels():
    """On a CPU the interpreter: fp16 only (it computes bf16 dots wrongly)."""
    _check_autocast("triton", kernel_device(), torch.float16)


def test_autocast_leaves_float64_alone_and_compiles():
    x = torch.randn(B, T, H, W, C, dtype=torch.float64)
    layer = make_layer("reference", dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.float64
        compiled = torch.compile(make_layer("reference"), fullgraph=True, backend="eager")
        assert compiled(x.float()).dtype == torch.bfloat16


@requires_gpu
@pytest.mark.gpu
@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_autocast(dtype):
    _check_autocast("triton", "cuda", dtype)


@requires_gpu
@pytest.mark.gpu
@pytest.mark.kernels
def test_gpu_grad_scaler_fp16():
    """A GradScaler step under fp16 autocast: the unscaled gradients are fp32 and close to
    the fp32 run's (the scale keeps small fp16 gradients out of the subnormals), nothing
    overflows, and the step updates the fp32 parameters."""
    torch.manual_seed(0)
    layer = ConvLSTM2D(8, 3, padding="same", return_sequences=True, in_channels=4,
                       device="cuda")
    x = torch.randn(2, 4, 8, 8, 4, device="cuda")

    def grads(dtype=None, scaler=None):
        layer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=dtype is not None):
            y = layer(x)
            assert y.dtype == (dtype or torch.float32)
            loss = y.float().square().mean()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        return [p.grad.clone() for p in layer.parameters()]

    full = grads()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    scale = 2.0 ** 14
    scaler = torch.amp.GradScaler("cuda", init_scale=scale)
    grads(torch.float16, scaler)
    scaler.unscale_(opt)
    unscaled = [p.grad.clone() for p in layer.parameters()]
    assert all(g.dtype == torch.float32 for g in unscaled)
    assert_all_close(unscaled, full, 4 * TOLERANCES[torch.float16], "unscaled vs fp32")
    before = [p.detach().clone() for p in layer.parameters()]
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale  # no inf/NaN found (it grows only after 2000 steps)
    assert all(not torch.equal(a, p) for a, p in zip(before, layer.parameters()))


# ---------------------------------------------------------------------------------------------
# DistributedDataParallel


def _ddp_worker(rank, world, init_file, state, x, out_path, backend):
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        layer = make_layer(backend)
        layer.load_state_dict(state)
        model = DistributedDataParallel(layer)
        # loss = mean over this rank's samples: DDP's gradient average is then the gradient
        # of the mean over the whole batch
        model(x.chunk(world)[rank]).square().mean().backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in layer.named_parameters()}, out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # A rank whose work is done leaves without running C++ static destructors: at interpreter
    # exit a still-joinable native thread made one rank abort now and then ("terminate called
    # without an active exception", SIGABRT: 1 run in 4 here, before and after the barrier).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("backend", [
    "reference",
    # the kernels: on a CPU through the interpreter (the spawned ranks inherit TRITON_INTERPRET)
    pytest.param("triton", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="gloo on CPU tensors: the interpreter's case")),
])
def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path, backend):
    if backend == "triton" and not triton_available_here():
        pytest.skip("needs TRITON_INTERPRET=1")
    layer = make_layer(backend)
    x = torch.randn(2 * B, T, H, W, C)
    layer(x).square().mean().backward()
    out_path = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), layer.state_dict(), x,
                                str(out_path), backend), nprocs=2, join=True)
    ddp_grads = torch.load(out_path)
    for name, p in layer.named_parameters():
        assert_close(ddp_grads[name], p.grad, torch.float32, name, tol=1e-5)


# ---------------------------------------------------------------------------------------------
# Round trips


def test_state_dict_deepcopy_and_pickle_round_trips():
    layer = make_layer("reference", dropout=0.3, seed=4, activity_regularizer="l2")
    x = torch.randn(B, T, H, W, C)
    layer(x)  # after a call: a generator, a kept activity penalty
    layer.eval()
    want = layer(x)

    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    for fresh in (make_layer("reference"),
                  ConvLSTM2D(F, 3, padding="same", return_sequences=True,  # lazy
                             backend="reference")):
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer))
        assert torch.equal(fresh(x), want)
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert torch.equal(other(x), want)
        # the seeded dropout stream is copied with its state: copies draw the same masks
    a, b = copy.deepcopy(layer).train(), pickle.loads(pickle.dumps(layer)).train()
    assert torch.equal(a(x), b(x))

    lstm = ConvLSTM(C, 4, 3, num_layers=2, bidirectional=True, peephole=True)
    out = lstm(torch.randn(B, T, C, H, W))[0]
    assert pickle.loads(pickle.dumps(lstm)).state_dict().keys() == lstm.state_dict().keys()
    assert out.shape == (B, T, 8, H, W)


@pytest.mark.kernels
@needs_kernels
def test_to_dtype(poison_buffers):
    """float64 falls back to the reference (one warning), float16 runs the kernels."""
    device = kernel_device()
    layer = make_layer("triton", device)
    x = torch.randn(B, T, H, W, C, device=device)
    want = layer(x)
    layer64 = copy.deepcopy(layer).to(torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-time fallback warning, if not shown yet
        y64 = layer64(x.double())
    assert y64.dtype == torch.float64
    ref = make_layer("reference", device).to(torch.float64)
    ref.load_state_dict(layer64.state_dict())
    assert_close(y64, ref(x.double()), torch.float64, "float64")
    y16 = copy.deepcopy(layer).to(torch.float16)(x.half())
    assert y16.dtype == torch.float16
    # fp16 rounding of inputs and weights on top of the kernels' (and TF32 on a GPU)
    assert_close(y16.float(), want, torch.float16, "float16", tol=2 * TOLERANCES[torch.float16])


def _strided_inputs(device):
    """The same values contiguous and in strided layouts: x channels-first in a channels-last
    buffer, every other time step of a longer sequence, and a transposed h0."""
    frames = torch.randn(B * 2 * T, H, W, C, device=device)  # (B*2T, H, W, C) storage
    x_cf = frames.permute(0, 3, 1, 2).reshape(B, 2 * T, C, H, W)[:, ::2]
    h0 = torch.randn(B, W, H, F, device=device).transpose(1, 2)  # (B, H, W, F) not contiguous
    c0 = torch.randn(B, H, W, F, device=device)
    return x_cf, (h0.movedim(-1, 1), c0.movedim(-1, 1))


@pytest.mark.parametrize("backend", [
    pytest.param("reference", id="reference"),
    pytest.param("triton", marks=kernels, id="triton"),
])
def test_strided_and_channels_last_inputs(backend, poison_buffers):
    device = kernel_device() if backend == "triton" else "cpu"
    layer = make_layer(backend, device, data_format="channels_first", return_state=True)
    x, state = _strided_inputs(device)
    assert not x.is_contiguous() and not state[0].is_contiguous()
    got = run(layer, x, initial_state=state)
    want = run(layer, x.contiguous(), initial_state=[s.contiguous() for s in state])
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-6, "strided")

    cell = ConvLSTMCell(C, F, 3, backend=backend, device=device)
    frame = x[:, 0].contiguous(memory_format=torch.channels_last)
    assert not frame.is_contiguous()
    got = run(cell, frame, state)
    want = run(cell, frame.contiguous(), [s.contiguous() for s in state])
    assert_all_close(got[0] + got[1], want[0] + want[1], 1e-6, "cell channels_last")


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "frozen"])
@pytest.mark.parametrize("backend", [
    pytest.param("reference", id="reference"),
    pytest.param("triton", marks=kernels, id="triton"),
])
def test_inference_keeps_nothing_for_backward(backend, context, monkeypatch):
    """Under no_grad / inference_mode (or with nothing requiring grad) autograd saves nothing,
    and the Triton forward allocates neither the pre-activations (B, T, P, 4F) nor more than
    two cell-state slots."""
    device = kernel_device() if backend == "triton" else "cpu"
    layer = make_layer(backend, device)
    x = torch.randn(B, T, H, W, C, device=device)
    with torch.no_grad():
        layer(x)  # on a GPU the first call tunes (trial runs allocate too): not recorded
    allocated = []

    def recording_buffer(shape, device, dtype):
        allocated.append(tuple(shape))
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(launchers, "new_buffer", recording_buffer)
    saved = []

    def infer():
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            if context == "no_grad":
                with torch.no_grad():
                    return layer(x)
            if context == "inference_mode":
                with torch.inference_mode():
                    return layer(x)
            layer.requires_grad_(False)
            try:
                return layer(x)
            finally:
                layer.requires_grad_(True)

    y = infer()
    assert not y.requires_grad and saved == []
    with torch.no_grad():
        assert_close(y.cpu(), _reference_copy(layer)(x.cpu()), torch.float32, "inference",
                     tol=TF32_TOLERANCE if device == "cuda" else None)
    if backend == "triton":
        # (B, T, P, 4F) once: the hoisted input projection, and no pre-activations
        assert allocated.count((B, T, H * W, 4 * F)) == 1, allocated
        assert (B, 2, H * W, F) in allocated and (B, T + 1, H * W, F) not in allocated
        # the recorder sees the training buffers when there is a backward to keep them for
        allocated.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            layer(x)
        assert allocated.count((B, T, H * W, 4 * F)) == 2, allocated
        assert (B, T + 1, H * W, F) in allocated and saved


def _reference_copy(layer):
    ref = make_layer("reference")
    ref.load_state_dict({k: v.cpu() for k, v in layer.state_dict().items()})
    return ref
