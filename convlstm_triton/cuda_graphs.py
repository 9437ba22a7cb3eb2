"""CUDA graphs for the Triton path: a problem's whole time loop is captured on its first call
and replayed afterwards (``conv_lstm(..., cuda_graph=True | "auto")``).

The design is that of ``torch.cuda.make_graphed_callables``, applied to the
``torch.ops.convlstm_triton.forward`` op (and, when training, its backward op):

* **Static buffers.** Each graphed problem owns contiguous static copies of the op's ten tensor
  inputs (x, the two weights, bias, h0, c0, peephole, step mask, dropout masks). Every call
  copies its tensors into them and replays the graph, so the weights are copied on every call:
  an in-place update, a new weight tensor and a new storage are all seen; the graph never reads
  a user tensor. When training, backward copies the incoming gradients of (seq, h, c) into
  static buffers and replays a second graph captured from autograd's backward of the op.
* **Outputs are clones.** What a call returns (outputs, and gradients in backward) is cloned
  out of the static buffers, so the next replay never overwrites it.
* **Tuning first.** Before capture the problem runs eagerly (``WARMUP_CALLS`` times, forward and
  backward, on a side stream as PyTorch prescribes), so that Triton compilation and the
  autotuner (``convlstm_triton.tuning``, which does not benchmark during a capture) are done.
* **Cache key** (``graph_key``): device, each input's shape and dtype (None where absent: bias,
  peephole, masks), the requires_grad pattern when training, the geometry (padding, strides,
  dilation, kernel size), activations, precision (allow_tf32), forward_variant, training,
  saved vs recomputed gate pre-activations (recompute_gates) and go_backwards. Strides do not
  matter: the static buffers are contiguous. Weight identity does not either (copied).
* **One pending backward per graph.** A training replay's saved activations live in the
  graph's memory until its backward runs. A second forward of the same problem before that
  backward (a layer applied twice, two same-shaped layers) gets a second graph; graphs are in
  an LRU (``set_cache_size``, default ``DEFAULT_CACHE_SIZE``) that never evicts one whose
  backward is pending; when none can be evicted the call runs the plain path. A backward
  through a graph that was replayed again since (``retain_graph=True`` then a new forward) is a
  RuntimeError rather than wrong gradients.
* **Memory.** Per cached graph: the static inputs, the static outputs, when training the static
  incoming gradients and the static weight gradients, plus the graph's private memory pool,
  which holds what one eager call allocates (its peak: the outputs, and when training the
  saved activations and backward's workspace). About one eager call's peak per graph, held
  until the graph is evicted or ``clear_cache()`` is called; plus the clones handed out.
* **Plain path instead** (silently) while ``torch.compile`` traces (``torch.compiler.
  is_compiling()``) and inside a CUDA-graph capture of the caller's own. Autocast is switched
  off around warm-up and capture: ``conv_lstm`` has cast the inputs already and the op does no
  autocast-eligible work itself. DDP needs nothing: its hooks sit on the parameters' gradient
  accumulation, outside the graphs, and the gradients are returned as usual.
* **"auto"** graphs a problem on CUDA when one step's GEMM, ``step_flop``: 2 * (B * P rows) *
  (4F columns) * (prod(kernel_size) * (C_in + F)), is below ``AUTO_MAX_STEP_FLOP`` (2e9 FLOP, a
  few tens of microseconds of an H100's tensor cores): there the launches, not the math, bound
  a step. The threshold is not measured on a GPU yet.

Not thread-safe: capture from one thread at a time.
"""

import math
import weakref
from collections import OrderedDict

import torch

from . import ops
from .autograd import GRAD_INPUTS

__all__ = ["CUDA_GRAPH_OPTIONS", "AUTO_MAX_STEP_FLOP", "DEFAULT_CACHE_SIZE", "WARMUP_CALLS",
           "step_flop", "plain_path_reason", "resolve", "graph_key",
           "GraphCache", "graphed_forward", "set_cache_size", "clear_cache", "cache_size"]

CUDA_GRAPH_OPTIONS = (False, True, "auto")
AUTO_MAX_STEP_FLOP = 2e9
DEFAULT_CACHE_SIZE = 8
WARMUP_CALLS = 2
_DIFFERENTIABLE = len(GRAD_INPUTS)  # x, kernel2d, recurrent_kernel2d, bias, h0, c0, peephole


def step_flop(batch, out_pixels, in_channels, filters, kernel_size):
    """FLOP of one time step's gate GEMM: B*P rows, 4F columns, K = prod(k) * (C_in + F)."""
    return 2 * batch * out_pixels * 4 * filters * math.prod(kernel_size) * (in_channels + filters)


def plain_path_reason():
    """Why no graph may be captured or replayed here, or None."""
    if torch.compiler.is_compiling():
        return "torch.compile is tracing"
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured by the caller"
    return None


def resolve(option, x, flop_per_step):
    """Whether this call replays a graph. ``cuda_graph=True`` on a device other than CUDA is a
    ValueError; "auto" there, and both under ``plain_path_reason``, mean the plain path."""
    if option is False:
        return False
    supported = x.device.type == _recorder.device_type
    if option is True and not supported:
        raise ValueError(f"cuda_graph=True needs CUDA tensors; x is on {x.device} (use "
                         "cuda_graph='auto' for code that also runs elsewhere)")
    if not supported or plain_path_reason() is not None:
        return False
    return option is True or flop_per_step < AUTO_MAX_STEP_FLOP


def _tensor_spec(t, training):
    if t is None:
        return None
    return (tuple(t.shape), t.dtype, training and t.requires_grad)


def graph_key(tensors, op_config, go_backwards):
    """Hashable key of a problem: two calls with equal keys replay the same graph.

    ``tensors``: the op's ten tensor inputs; ``op_config``: its other arguments (geometry, act,
    ract, precision, variant, training, save_preact)."""
    geometry, act, ract, precision, variant, training, save_preact = op_config
    return (str(tensors[0].device),
            tuple(_tensor_spec(t, training) for t in tensors),
            tuple(int(v) for v in geometry), int(act), int(ract), precision, variant,
            bool(training), bool(save_preact), bool(go_backwards))


class GraphCache:
    """LRU of graphed problems, several per key (a problem whose backward is pending is busy and
    cannot be replayed again, nor evicted). ``build()`` makes a new entry; entries have ``busy``."""

    def __init__(self, capacity):
        self.capacity = capacity
        self._entries = OrderedDict()  # (key, slot) -> entry

    def __len__(self):
        return len(self._entries)

    def clear(self):
        self._entries.clear()

    def resize(self, capacity):
        """Keep at most ``capacity`` entries, evicting idle ones from the least recently used."""
        self.capacity = capacity
        self._evict_to(capacity)

    def _evict_to(self, size):
        """Evict idle entries, least recently used first, down to ``size``; False if the busy
        ones alone are more."""
        while len(self._entries) > max(size, 0):
            victim = next((k for k, e in self._entries.items() if not e.busy), None)
            if victim is None:
                return False
            del self._entries[victim]
        return size >= 0

    def acquire(self, key, build):
        """A free entry for ``key`` (made with ``build`` if none), or None when every entry that
        could make room is busy (the caller then runs the plain path)."""
        slot = 0
        while (key, slot) in self._entries:
            entry = self._entries[(key, slot)]
            if not entry.busy:
                self._entries.move_to_end((key, slot))
                return entry
            slot += 1
        if not self._evict_to(self.capacity - 1):
            return None
        entry = build()
        self._entries[(key, slot)] = entry
        return entry


class _CudaRecorder:
    """Warm-up and capture on CUDA; tests substitute an eager stand-in with the same methods."""

    device_type = "cuda"

    def warm_up(self, device, run):
        with torch.cuda.device(device):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                run()
            torch.cuda.current_stream().wait_stream(stream)

    def new_pool(self, device):
        with torch.cuda.device(device):
            return torch.cuda.graph_pool_handle()

    def capture(self, device, body, pool):
        """(graph with ``replay()``, body's outputs, which each replay rewrites in place)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device), torch.cuda.graph(graph, pool=pool):
            outputs = body()
        return graph, outputs


class _Lease:
    """Held by the autograd node of a training replay: the graph is busy while it lives and its
    backward has not run (dropping the outputs without backward frees the graph too)."""

    __slots__ = ("backward_done", "__weakref__")

    def __init__(self):
        self.backward_done = False


class _GraphedProblem:
    def __init__(self, tensors, op_config, recorder):
        training = op_config[5]
        self._op_config = op_config
        self._training = training
        device = tensors[0].device
        with torch.inference_mode(False), torch.no_grad():
            self.static_inputs = [None if t is None else t.detach().clone(
                memory_format=torch.contiguous_format) for t in tensors]
        self._grad_indices = [i for i in range(_DIFFERENTIABLE)
                              if training and tensors[i] is not None and tensors[i].requires_grad]
        for i in self._grad_indices:
            self.static_inputs[i].requires_grad_(True)
        self.generation = 0
        self._pending = None
        self._autograd_outputs = None  # (seq, h, c) with autograd history, during capture
        with torch.inference_mode(False), torch.autocast(device.type, enabled=False):
            recorder.warm_up(device, self._warm_up)
            pool = recorder.new_pool(device)
            self._forward_graph, outputs = recorder.capture(device, self._forward_body, pool)
            self.static_outputs = [o.detach() for o in outputs]
            if training:
                self.static_grad_outputs = [torch.zeros_like(o) for o in self.static_outputs]
                self._backward_graph, grads = recorder.capture(device, self._backward_body,
                                                               pool)
                self.static_grads = [None if g is None else g.detach() for g in grads]
        self._autograd_outputs = None

    @property
    def busy(self):
        lease = self._pending() if self._pending is not None else None
        return lease is not None and not lease.backward_done

    def _forward_body(self):
        with torch.set_grad_enabled(self._training):
            states, h, c, _, _ = ops.forward(*self.static_inputs, *self._op_config)
        self._autograd_outputs = (states, h, c)
        return self._autograd_outputs

    def _backward_body(self):
        grads = torch.autograd.grad(self._autograd_outputs,
                                    [self.static_inputs[i] for i in self._grad_indices],
                                    self.static_grad_outputs, allow_unused=True)
        return list(grads)

    def _warm_up(self):
        for _ in range(WARMUP_CALLS):
            outputs = self._forward_body()
            if self._training:
                torch.autograd.grad(outputs, [self.static_inputs[i] for i in self._grad_indices],
                                    [torch.zeros_like(o) for o in outputs], allow_unused=True)
        self._autograd_outputs = None

    def replay_forward(self, tensors):
        with torch.no_grad():
            for static, t in zip(self.static_inputs, tensors):
                if static is not None:
                    static.copy_(t)
            self._forward_graph.replay()
            self.generation += 1
            return tuple(o.clone() for o in self.static_outputs)

    def lease(self):
        lease = _Lease()
        self._pending = weakref.ref(lease)
        return lease

    def replay_backward(self, grad_outputs, generation):
        if generation != self.generation:
            raise RuntimeError(
                "convlstm_triton: backward through a CUDA-graphed conv_lstm call whose graph "
                "has been replayed since (its saved activations are overwritten); run backward "
                "before the next call of the same problem, or use cuda_graph=False")
        with torch.no_grad():
            for static, g in zip(self.static_grad_outputs, grad_outputs):
                static.copy_(g)
            self._backward_graph.replay()
            grads = [None] * len(self.static_inputs)
            for i, g in zip(self._grad_indices, self.static_grads):
                if g is not None:
                    grads[i] = g.clone()
        return grads


class _ReplayConvLSTM(torch.autograd.Function):
    """Forward replays the problem's forward graph, backward its backward graph."""

    @staticmethod
    def forward(ctx, problem, *tensors):
        outputs = problem.replay_forward(tensors)
        ctx.problem = problem
        ctx.generation = problem.generation
        ctx.lease = problem.lease()
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        grads = ctx.problem.replay_backward(grad_outputs, ctx.generation)
        ctx.lease.backward_done = True
        return (None, *grads)


_recorder = _CudaRecorder()
_cache = GraphCache(DEFAULT_CACHE_SIZE)


def graphed_forward(tensors, op_config, go_backwards):
    """(states, h, c) of ``ops.forward(*tensors, *op_config)`` from a cached graph (captured
    now if new), differentiable when ``op_config``'s training flag is set; None when no graph
    can be had (every cached one busy): the caller runs the op itself."""
    key = graph_key(tensors, op_config, go_backwards)
    problem = _cache.acquire(key, lambda: _GraphedProblem(tensors, op_config, _recorder))
    if problem is None:
        return None
    if not op_config[5]:
        return problem.replay_forward(tensors)
    return _ReplayConvLSTM.apply(problem, *tensors)


def set_cache_size(graphs):
    """At most ``graphs`` graphed problems per process (0: never graph); evicts the least
    recently used idle ones beyond it."""
    if isinstance(graphs, bool) or not isinstance(graphs, int) or graphs < 0:
        raise ValueError(f"graphs must be an int >= 0, got {graphs!r}")
    _cache.resize(graphs)


def cache_size():
    """How many graphed problems are cached now."""
    return len(_cache)


def clear_cache():
    """Drop every cached graph (their memory is freed once no pending backward holds them)."""
    _cache.clear()
