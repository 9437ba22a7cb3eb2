"""``cuda_graph=``: option checks, the "auto" rule, the cache key and LRU, the plain-path
conditions, and the graphed path's plumbing (static buffers, clones, backward replay, busy
graphs) on the CPU through an eager stand-in for CUDA graph capture; GPU-marked tests check
real capture + replay bit for bit against the plain path."""

import pytest
import torch
from helpers import requires_gpu, triton_available_here

from convlstm_triton import ConvLSTM, ConvLSTM2D, ConvLSTMCell, cuda_graphs
from convlstm_triton.functional import conv_lstm

GRAPH_OPTIONS = [False, True, "auto"]


def problem(device="cpu", B=1, T=2, H=4, W=3, C=2, F=3, k=3, dtype=torch.float32,
            same=False):
    """x, kernel, recurrent_kernel, bias, (h0, c0), the state for padding "same" if ``same``,
    else "valid"."""
    out_hw = (H, W) if same else (H - k + 1, W - k + 1)
    x = torch.randn(B, T, H, W, C, device=device, dtype=dtype)
    kernel = torch.randn(k, k, C, 4 * F, device=device, dtype=dtype) * 0.3
    rkernel = torch.randn(k, k, F, 4 * F, device=device, dtype=dtype) * 0.3
    bias = torch.randn(4 * F, device=device, dtype=dtype)
    state = (torch.randn(B, *out_hw, F, device=device, dtype=dtype),
             torch.randn(B, *out_hw, F, device=device, dtype=dtype))
    return x, kernel, rkernel, bias, state


# -- option checks --------------------------------------------------------------------------

@pytest.mark.parametrize("value, error", [("yes", ValueError), ("Auto", ValueError),
                                          (1, TypeError), (None, TypeError)])
def test_bad_option_raises_naming_the_argument(value, error):
    x, kernel, rkernel, bias, state = problem()
    with pytest.raises(error, match="cuda_graph must be True, False or 'auto'"):
        conv_lstm(x, kernel, rkernel, bias, backend="reference", cuda_graph=value)
    with pytest.raises(error, match="cuda_graph must be True, False or 'auto'"):
        ConvLSTM2D(3, 3, cuda_graph=value)
    with pytest.raises(error, match="cuda_graph must be True, False or 'auto'"):
        ConvLSTM(2, 3, 3, cuda_graph=value)
    with pytest.raises(error, match="cuda_graph must be True, False or 'auto'"):
        ConvLSTMCell(2, 3, 3, cuda_graph=value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_true_on_the_cpu_is_a_clear_error_and_auto_runs_the_plain_path(backend):
    x, kernel, rkernel, bias, state = problem()
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors; x is on cpu"):
        conv_lstm(x, kernel, rkernel, bias, state, backend=backend, cuda_graph=True)
    expected = conv_lstm(x, kernel, rkernel, bias, state, backend=backend)
    got = conv_lstm(x, kernel, rkernel, bias, state, backend=backend, cuda_graph="auto")
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert cuda_graphs.cache_size() == 0


def test_layers_keep_and_show_the_option():
    assert ConvLSTM2D(3, 3, cuda_graph="auto").cuda_graph == "auto"
    assert "cuda_graph='auto'" in repr(ConvLSTM2D(3, 3, cuda_graph="auto"))
    assert "cuda_graph" not in repr(ConvLSTM2D(3, 3))
    assert "cuda_graph=True" in repr(ConvLSTM(2, 3, 3, cuda_graph=True))
    assert "cuda_graph='auto'" in repr(ConvLSTMCell(2, 3, 3, cuda_graph="auto"))


# -- the "auto" rule and the plain-path conditions -------------------------------------------

def test_step_flop_counts_the_gate_gemm():
    # B*P rows = 2*(4*5), 4F = 12 columns, K = 9 * (2 + 3)
    assert cuda_graphs.step_flop(2, 20, 2, 3, (3, 3)) == 2 * 40 * 12 * 45


class _FakeDevice:
    def __init__(self, type_):
        self.type = type_


class _FakeX:
    def __init__(self, type_):
        self.device = _FakeDevice(type_)


def test_auto_graphs_small_steps_on_cuda_only():
    small, large = cuda_graphs.AUTO_MAX_STEP_FLOP / 2, cuda_graphs.AUTO_MAX_STEP_FLOP * 2
    cuda, cpu = _FakeX("cuda"), _FakeX("cpu")
    assert cuda_graphs.resolve("auto", cuda, small) is True
    assert cuda_graphs.resolve("auto", cuda, large) is False
    assert cuda_graphs.resolve(True, cuda, large) is True
    assert cuda_graphs.resolve(False, cuda, small) is False
    assert cuda_graphs.resolve("auto", cpu, small) is False
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cuda_graphs.resolve(True, cpu, small)


def test_plain_path_while_compiling_or_capturing(monkeypatch):
    cuda = _FakeX("cuda")
    assert cuda_graphs.plain_path_reason() is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "torch.compile" in cuda_graphs.plain_path_reason()
    assert cuda_graphs.resolve(True, cuda, 1.0) is False
    assert cuda_graphs.resolve("auto", cuda, 1.0) is False
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert "being captured" in cuda_graphs.plain_path_reason()
    assert cuda_graphs.resolve(True, cuda, 1.0) is False


# -- the cache key ---------------------------------------------------------------------------

def _op_tensors(B=1, T=2, P=12, C=2, F=3, dtype=torch.float32, grads=()):
    tensors = [torch.randn(B, T, 4, 3, C, dtype=dtype), torch.randn(9 * C, 4 * F, dtype=dtype),
               torch.randn(9 * F, 4 * F, dtype=dtype), torch.randn(4 * F, dtype=dtype),
               torch.randn(B, P, F, dtype=dtype), torch.randn(B, P, F), None, None, None, None]
    for i in grads:
        tensors[i].requires_grad_()
    return tensors


CONFIG = ([4, 3, 1] * 7, 0, 1, "ieee", "auto", True, True)


def _config(**changes):
    names = ("geometry", "act", "ract", "precision", "variant", "training", "save_preact")
    values = dict(zip(names, CONFIG))
    values.update(changes)
    return tuple(values[n] for n in names)


def test_key_is_equal_for_the_same_problem_with_other_values_and_strides():
    a, b = _op_tensors(grads=(1,)), _op_tensors(grads=(1,))
    b[0] = b[0].transpose(2, 3).contiguous().transpose(2, 3)  # other strides, same shape
    b[1] = torch.randn(a[1].shape).requires_grad_()  # a new weight tensor: copied each call
    assert cuda_graphs.graph_key(a, CONFIG, False) == cuda_graphs.graph_key(b, CONFIG, False)
    hash(cuda_graphs.graph_key(a, CONFIG, False))


@pytest.mark.parametrize("change", [
    "shape", "dtype", "c0_dtype", "bias_absent", "peephole_present", "mask_present",
    "xmask_present", "hmask_present", "requires_grad", "geometry", "act", "ract", "precision",
    "variant", "training", "save_preact", "go_backwards"])
def test_key_changes_with_every_input_property_and_option(change):
    base = _op_tensors(grads=(1,))
    tensors, config, go_backwards = list(base), CONFIG, False
    if change == "shape":
        tensors[0] = torch.randn(1, 3, 4, 3, 2)
    elif change == "dtype":
        tensors = _op_tensors(dtype=torch.float16, grads=(1,))
    elif change == "c0_dtype":
        tensors[5] = tensors[5].double()
    elif change == "bias_absent":
        tensors[3] = None
    elif change == "peephole_present":
        tensors[6] = torch.randn(9)
    elif change == "mask_present":
        tensors[7] = torch.ones(1, 2, dtype=torch.int8)
    elif change == "xmask_present":
        tensors[8] = torch.ones(4, 1, 4, 3, 2)
    elif change == "hmask_present":
        tensors[9] = torch.ones(4, 1, 12, 3)
    elif change == "requires_grad":
        tensors[0] = tensors[0].clone().requires_grad_()
    elif change == "geometry":
        config = _config(geometry=[4, 3, 1] * 6 + [0, 0, 0])
    elif change == "go_backwards":
        go_backwards = True
    else:
        value = {"act": 2, "ract": 0, "precision": "tf32", "variant": "hoisted",
                 "training": False, "save_preact": False}[change]
        config = _config(**{change: value})
    assert (cuda_graphs.graph_key(tensors, config, go_backwards)
            != cuda_graphs.graph_key(base, CONFIG, False))


def test_key_ignores_requires_grad_when_not_training():
    config = _config(training=False)
    assert (cuda_graphs.graph_key(_op_tensors(grads=(0, 1)), config, False)
            == cuda_graphs.graph_key(_op_tensors(), config, False))


# -- the LRU ---------------------------------------------------------------------------------

class _Entry:
    def __init__(self, name):
        self.name = name
        self.busy = False


def _build(log, name):
    def build():
        log.append(name)
        return _Entry(name)
    return build


def test_cache_reuses_evicts_least_recently_used_and_never_a_busy_entry():
    cache, built = cuda_graphs.GraphCache(2), []
    a = cache.acquire("a", _build(built, "a"))
    assert cache.acquire("a", _build(built, "a2")) is a
    b = cache.acquire("b", _build(built, "b"))
    cache.acquire("a", _build(built, "x"))  # a is now the most recently used
    cache.acquire("c", _build(built, "c"))  # evicts b
    assert built == ["a", "b", "c"] and len(cache) == 2
    assert cache.acquire("b", _build(built, "b again")) is not b
    # a busy entry: a second one for the same key, and busy ones are not evicted
    cache = cuda_graphs.GraphCache(2)
    a = cache.acquire("a", _build(built, "a"))
    a.busy = True
    a2 = cache.acquire("a", _build(built, "a2"))
    assert a2 is not a and len(cache) == 2
    a2.busy = True
    assert cache.acquire("a", _build(built, "a3")) is None  # full of busy entries: plain path
    assert cache.acquire("b", _build(built, "b")) is None
    a.busy = False
    assert cache.acquire("a", _build(built, "unused")) is a
    assert cache.acquire("b", _build(built, "b")).name == "b"  # evicted a, the idle one
    assert len(cache) == 2


def test_cache_resize_and_size_zero():
    cache, built = cuda_graphs.GraphCache(3), []
    for key in "abc":
        cache.acquire(key, _build(built, key))
    cache.resize(1)
    assert len(cache) == 1 and cache.acquire("c", _build(built, "new c")).name == "c"
    cache.resize(0)
    assert len(cache) == 0 and cache.acquire("a", _build(built, "a")) is None
    with pytest.raises(ValueError, match="graphs must be an int >= 0"):
        cuda_graphs.set_cache_size(-1)


# -- the graphed path, with an eager stand-in for capture (CPU, Triton interpreter) -----------

class _EagerGraph:
    def __init__(self, body, outputs):
        self.body, self.outputs, self.replays = body, outputs, 0

    def replay(self):
        self.replays += 1
        with torch.no_grad():
            for static, new in zip(self.outputs, self.body()):
                if static is not None:
                    static.copy_(new)


class EagerRecorder:
    """Runs what would be captured eagerly again at each replay, writing into the tensors the
    capture returned: the static-buffer plumbing is exercised without a GPU."""

    device_type = "cpu"

    def __init__(self):
        self.warm_ups = self.captures = 0

    def warm_up(self, device, run):
        self.warm_ups += 1
        run()

    def new_pool(self, device):
        return None

    def capture(self, device, body, pool):
        self.captures += 1
        outputs = body()
        return _EagerGraph(body, outputs), outputs


@pytest.fixture
def recorder(monkeypatch):
    if not triton_available_here():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    rec = EagerRecorder()
    monkeypatch.setattr(cuda_graphs, "_recorder", rec)
    cuda_graphs.clear_cache()
    yield rec
    cuda_graphs.clear_cache()


def run(inputs, cuda_graph, cotangents=None, **kwargs):
    x, kernel, rkernel, bias, state = inputs
    out = conv_lstm(x, kernel, rkernel, bias, state, backend="triton", cuda_graph=cuda_graph,
                    **kwargs)
    grads = []
    if cotangents is not None:
        leaves = [t for t in (x, kernel, rkernel, bias, *state, kwargs.get("peephole"))
                  if t is not None and t.requires_grad]
        grads = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out, cotangents)), leaves)
    return [o.detach().clone() for o in out], [g.clone() for g in grads]


def leaves(inputs, **extra):
    x, kernel, rkernel, bias, state = inputs
    out = [t.clone().requires_grad_() for t in (x, kernel, rkernel, bias)]
    return (*out, tuple(s.clone().requires_grad_() for s in state))


def assert_equal_lists(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def cotangents_for(out):
    return [torch.randn_like(o) for o in out]


def test_inference_replays_equal_the_plain_path(recorder):
    inputs = problem()
    expected, _ = run(inputs, False)
    with torch.no_grad():
        first, _ = run(inputs, True)
        again, _ = run(inputs, True)
    assert recorder.captures == 1 and cuda_graphs.cache_size() == 1
    assert_equal_lists(first, expected)
    assert_equal_lists(again, expected)
    other = problem()
    with torch.no_grad():
        got, _ = run(other, True)
    assert recorder.captures == 1  # same problem, other values: replayed
    assert_equal_lists(got, run(other, False)[0])


def test_returned_outputs_survive_the_next_replay(recorder):
    a, b = problem(), problem()
    with torch.no_grad():
        seq_a = conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)[0]
        kept = seq_a.clone()
        conv_lstm(*b[:4], b[4], backend="triton", cuda_graph=True)
    assert torch.equal(seq_a, kept)


@pytest.mark.parametrize("options", [
    dict(),
    dict(padding="same", go_backwards=True, mask=True, peephole=True, dropout=True),
], ids=["plain", "same_backwards_mask_peephole_dropout"])
def test_training_replays_equal_the_plain_path_for_every_gradient(recorder, options):
    B, T, H, W, C, F = 2, 3, 4, 3, 2, 3
    same = options.get("padding") == "same"
    inputs = leaves(problem(B=B, T=T, H=H, W=W, C=C, F=F, same=same))
    kwargs = {}
    if same:
        kwargs["padding"] = options["padding"]
        kwargs["go_backwards"] = options["go_backwards"]
    if options.get("mask"):
        kwargs["mask"] = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    if options.get("peephole"):
        kwargs["peephole"] = (torch.randn(3, F) * 0.5).requires_grad_()
    if options.get("dropout"):
        kwargs["input_dropout_mask"] = (torch.rand(4, B, H, W, C) < 0.7) / 0.7
        kwargs["recurrent_dropout_mask"] = (torch.rand(4, B, H, W, F) < 0.7) / 0.7  # same
    out, _ = run(inputs, False, **kwargs)
    cot = cotangents_for(out)
    expected = run(inputs, False, cot, **kwargs)
    for _ in range(2):  # capture, then a pure replay
        assert_equal_lists(run(inputs, True, cot, **kwargs)[0], expected[0])
    got = run(inputs, True, cot, **kwargs)
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])
    assert recorder.captures == 2  # forward and backward graphs, once


def test_two_inputs_an_in_place_weight_update_and_a_new_weight_tensor(recorder):
    inputs = leaves(problem())
    out, _ = run(inputs, False)
    cot = cotangents_for(out)
    run(inputs, True, cot)
    other = leaves(problem())
    for current in (other, inputs):
        got = run(current, True, cot)
        expected = run(current, False, cot)
        assert_equal_lists(got[0], expected[0])
        assert_equal_lists(got[1], expected[1])
    with torch.no_grad():
        inputs[1].mul_(0.5)  # in place, same storage
    x, kernel, rkernel, bias, state = inputs
    new_kernel = (rkernel.detach() * 1.5).requires_grad_()  # a new tensor, new storage
    for current in (inputs, (x, kernel, new_kernel, bias, state)):
        got = run(current, True, cot)
        expected = run(current, False, cot)
        assert_equal_lists(got[0], expected[0])
        assert_equal_lists(got[1], expected[1])
    assert recorder.captures == 2 and cuda_graphs.cache_size() == 1


def test_new_shape_or_requires_grad_pattern_makes_a_new_graph(recorder):
    inputs = leaves(problem())
    cot = cotangents_for(run(inputs, False)[0])
    run(inputs, True, cot)
    assert cuda_graphs.cache_size() == 1
    longer = leaves(problem(T=3))
    cot3 = cotangents_for(run(longer, False)[0])
    got = run(longer, True, cot3)
    expected = run(longer, False, cot3)
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])
    x, kernel, rkernel, bias, state = inputs
    frozen = (x.detach(), kernel.detach(), rkernel, bias, state)
    got = run(frozen, True, cot)
    expected = run(frozen, False, cot)
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])
    assert cuda_graphs.cache_size() == 3


def test_second_forward_before_backward_gets_its_own_graph(recorder):
    a, b = leaves(problem()), leaves(problem())
    out_a = conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)
    cot = cotangents_for(out_a)
    out_b = conv_lstm(*b[:4], b[4], backend="triton", cuda_graph=True)
    assert cuda_graphs.cache_size() == 2  # a's backward is pending: b could not reuse it
    grads_b = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out_b, cot)), b[1])
    grads_a = torch.autograd.grad(sum((o * g).sum() for o, g in zip(out_a, cot)), a[1])
    assert torch.equal(grads_a[0], run(a, False, cot)[1][1])
    assert torch.equal(grads_b[0], run(b, False, cot)[1][1])
    # both backwards done: the next call reuses a graph
    run(a, True, cot)
    assert cuda_graphs.cache_size() == 2


def test_dropped_outputs_free_the_graph(recorder):
    a = leaves(problem())
    out = conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)
    del out  # no backward: the graph is free again
    conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)
    assert cuda_graphs.cache_size() == 1


def test_full_cache_of_pending_graphs_runs_the_plain_path(recorder):
    cuda_graphs.set_cache_size(1)
    try:
        a, b = leaves(problem()), leaves(problem())
        out_a = conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)
        cot = cotangents_for(out_a)
        got = run(b, True, cot)
        assert cuda_graphs.cache_size() == 1 and recorder.captures == 2
        expected = run(b, False, cot)
        assert_equal_lists(got[0], expected[0])
        assert_equal_lists(got[1], expected[1])
        del out_a
    finally:
        cuda_graphs.set_cache_size(cuda_graphs.DEFAULT_CACHE_SIZE)


def test_backward_after_a_newer_replay_is_an_error_not_wrong_gradients(recorder):
    a = leaves(problem())
    out = conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)
    loss = sum(o.sum() for o in out)
    torch.autograd.grad(loss, a[1], retain_graph=True)
    conv_lstm(*a[:4], a[4], backend="triton", cuda_graph=True)  # replays the same graph
    with pytest.raises(RuntimeError, match="has been replayed since"):
        torch.autograd.grad(loss, a[1])


def test_compiling_runs_the_plain_path(recorder, monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    inputs = problem()
    with torch.no_grad():
        got, _ = run(inputs, True)
    assert recorder.captures == 0
    assert_equal_lists(got, run(inputs, False)[0])


def test_autocast_casts_before_the_graph(recorder):
    inputs = leaves(problem())
    cot = [c.bfloat16() for c in cotangents_for(run(inputs, False)[0])]
    results = []
    for option in (False, True, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(run(inputs, option, cot))
    for got in results[1:]:
        assert_equal_lists(got[0], results[0][0])
        assert_equal_lists(got[1], results[0][1])
        assert all(g.dtype == torch.float32 for g in got[1])


def test_modules_pass_the_option_through(recorder):
    layer = ConvLSTM2D(3, 3, padding="same", return_sequences=True, in_channels=2,
                       backend="triton")
    x = torch.randn(1, 2, 4, 3, 2)
    results = []
    for option in (False, True, True):
        layer.cuda_graph = option
        layer.zero_grad()
        out = layer(x)
        out.sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in layer.parameters()])
    assert recorder.captures == 2
    for got in results[1:]:
        assert_equal_lists(got, results[0])
    module = ConvLSTM(2, 3, 3, num_layers=2, bidirectional=True, backend="triton",
                      cuda_graph=True)
    x = torch.randn(1, 2, 2, 4, 3)
    out, (h, c) = module(x)
    # Four graphs with a pending backward: layer 0's forward direction reuses the idle graph
    # of the ConvLSTM2D above (same problem; the weights are copied in), three are new.
    assert cuda_graphs.cache_size() == 4
    (out.sum() + h.sum() + c.sum()).backward()
    got_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module.cuda_graph = False
    out2, (h2, c2) = module(x)
    (out2.sum() + h2.sum() + c2.sum()).backward()
    assert torch.equal(out, out2)
    assert_equal_lists(got_grads, [p.grad for p in module.parameters()])


# -- real capture on a GPU ------------------------------------------------------------------

@requires_gpu
@pytest.mark.gpu
def test_gpu_capture_and_replay_are_bit_identical_to_the_plain_path():
    cuda_graphs.clear_cache()
    B, T, H, W, C, F = 2, 6, 16, 16, 8, 16
    inputs = leaves(problem("cuda", B=B, T=T, H=H, W=W, C=C, F=F, same=True))
    kwargs = dict(padding="same", allow_tf32=False,
                  mask=torch.rand(B, T, device="cuda") < 0.8,
                  peephole=(torch.randn(3, F, device="cuda") * 0.5).requires_grad_())
    cot = cotangents_for(run(inputs, False, **kwargs)[0])
    for current in (inputs, leaves(problem("cuda", B=B, T=T, H=H, W=W, C=C, F=F, same=True))):
        expected = run(current, False, cot, **kwargs)
        for _ in range(2):  # the first call captures, the second replays
            got = run(current, True, cot, **kwargs)
            torch.cuda.synchronize()
            assert_equal_lists(got[0], expected[0])
            assert_equal_lists(got[1], expected[1])
    with torch.no_grad():
        inputs[1].mul_(0.5)
    expected = run(inputs, False, cot, **kwargs)
    got = run(inputs, True, cot, **kwargs)
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])
    assert cuda_graphs.cache_size() == 1
    longer = leaves(problem("cuda", B=B, T=T + 1, H=H, W=W, C=C, F=F, same=True))
    kwargs["mask"] = torch.ones(B, T + 1, dtype=torch.bool, device="cuda")
    cot = cotangents_for(run(longer, False, **kwargs)[0])
    expected = run(longer, False, cot, **kwargs)
    got = run(longer, True, cot, **kwargs)
    assert_equal_lists(got[0], expected[0])
    assert_equal_lists(got[1], expected[1])
    assert cuda_graphs.cache_size() == 2
    with torch.no_grad():
        expected = run(longer, False, **kwargs)[0]
        for _ in range(2):
            assert_equal_lists(run(longer, True, **kwargs)[0], expected)
    cuda_graphs.clear_cache()


@requires_gpu
@pytest.mark.gpu
def test_gpu_auto_graphs_a_small_problem_and_compile_uses_the_plain_path():
    cuda_graphs.clear_cache()
    inputs = problem("cuda")
    with torch.no_grad():
        expected = run(inputs, False)[0]
        assert_equal_lists(run(inputs, "auto")[0], expected)
        assert cuda_graphs.cache_size() == 1
        compiled = torch.compile(lambda *a: conv_lstm(*a, backend="triton", cuda_graph=True),
                                 fullgraph=True)
        got = compiled(*inputs[:4], inputs[4])
    assert cuda_graphs.cache_size() == 1  # compiling captured nothing
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    cuda_graphs.clear_cache()

