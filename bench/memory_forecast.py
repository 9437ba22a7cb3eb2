"""Peak training memory without a GPU: a FORECAST by counting every tensor allocation.

    python bench/memory_forecast.py --shapes mnist_l1,mnist_l2,nowcast --dtypes bf16

One training step of the layer (forward, then backward from a given gradient of the output
sequence: gradients of x and every weight; the benchmark's loss adds the same fp32 copies of the
sequence to every peer and is left out) runs on the CPU with every allocation counted: a
``TorchDispatchMode`` adds the bytes of each new storage an op returns and subtracts them when the
storage is freed (``weakref.finalize`` on the storage), and keeps the peak. Inputs, weights and
the output gradient exist before the step and are not counted, as the rise of
``torch.cuda.max_memory_allocated`` during one call (what ``compare.py`` measures on a GPU) does
not count them.

* ours: the real ``conv_lstm(..., backend="triton")`` code path on CPU tensors of the real sizes
  (``torch.empty``: pages are never touched) with Triton's kernel launches replaced by no-ops and
  tuning by the default config: every buffer the launchers, autograd and backward allocate is
  counted, exactly as the code allocates it.
* the eager peers (``eager_convlstm.py``): run under ``FakeTensorMode`` (no data at all), so the
  count is what autograd saves plus the transients of its backward, op by op.

Not counted: the CUDA caching allocator's rounding and fragmentation, cuDNN and cuBLAS
workspaces, Triton's kernel arguments. It is a FORECAST of the allocator's peak, not a
measurement; ``compare.py --modes train`` measures the real one on a GPU.
"""

import argparse
import contextlib
import os
import sys
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from bench_convlstm import DTYPES, SHAPES  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

FORECAST_LABEL = "FORECAST"


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are still alive, and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive = set()

    def _track(self, tensor):
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._alive:
            return
        nbytes = storage.nbytes()
        self._alive.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, nbytes)

    def _freed(self, key, nbytes):
        self._alive.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "convlstm_triton":
            # our custom ops: run their Python implementation inside the mode, so that the
            # buffers it allocates (xg, dgates, partial sums, ...) are counted too
            with self:
                out = _custom_op_impl(func)(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        # a view or an in-place op returns a storage it was given: not an allocation
        given = {id(a.untyped_storage()) for a in (*args, *kwargs.values())
                 if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in given:
                self._track(t)
        return out


def _custom_op_impl(func):
    from convlstm_triton import ops

    return getattr(ops, func._opname)._init_fn


@contextlib.contextmanager
def _kernels_not_run():
    """Every Triton launch a no-op, tuning by the default config, grids sized for 132 SMs,
    and the Triton path allowed on CPU tensors: only the Python code and its allocations run."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from convlstm_triton import functional, launchers, tuning

    def pick_config(kernel_name, key, configs, run, device, **_):
        return configs[0]

    def no_launch(self, *args, **kwargs):
        return None

    patches = [(JITFunction, "run", no_launch),
               (InterpretedFunction, "run", no_launch),  # under TRITON_INTERPRET (the tests)
               (tuning, "pick_config", pick_config),
               (functional, "triton_interpreter_enabled", lambda: True),
               (launchers, "_sm_count", lambda device: 132)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def ours_peak(shape, dtype_name="bf16", variant="hoisted", recompute_gates="auto"):
    """{"fwd": peak bytes during the forward, "train": during forward + backward} of
    ``conv_lstm(..., backend="triton")`` (``recompute_gates`` as conv_lstm's: "auto" is the
    library's default)."""
    from convlstm_triton import functional, launchers

    dtype = DTYPES[dtype_name]
    k, F, C = shape.kernel_size, shape.filters, shape.in_channels

    def leaf(*size):
        return torch.empty(*size, dtype=dtype).requires_grad_()

    x = leaf(shape.batch, shape.steps, *shape.spatial, C)
    weights = (leaf(*k, C, 4 * F), leaf(*k, F, 4 * F), leaf(4 * F))
    d_seq = torch.empty(shape.batch, shape.steps, *shape.spatial, F, dtype=dtype)
    # the launchers' pointers for absent tensors: 16 bytes per dtype once per process, not a
    # call's memory (made here, so that the first call counted does not count them)
    for dummy_dtype in {dtype, torch.float32}:
        launchers.dummy(x.device, dummy_dtype)
    counter = LiveBytes()
    with _kernels_not_run(), counter:
        seq = functional.conv_lstm(x, *weights, backend="triton", padding="same",
                                   forward_variant=variant, recompute_gates=recompute_gates)[0]
        fwd = counter.peak
        seq.backward(d_seq)
        del seq
    return {"fwd": fwd, "train": counter.peak}


def eager_peak(shape, dtype_name="bf16", peer="eager_cat"):
    """The same for an eager peer (``eager_cat``: one conv of cat(x_t, h) per step;
    ``eager_hoisted``: the input conv of all frames first), under FakeTensorMode."""
    import eager_convlstm

    dtype = DTYPES[dtype_name]
    k, F, C = shape.kernel_size, shape.filters, shape.in_channels
    with FakeTensorMode():
        def leaf(*size):
            return torch.empty(*size, dtype=dtype).requires_grad_()

        x = leaf(shape.batch, shape.steps, C, *shape.spatial)
        d_seq = torch.empty(shape.batch, shape.steps, F, *shape.spatial, dtype=dtype)
        bias = leaf(4 * F)
        if peer == "eager_cat":
            weight = leaf(4 * F, C + F, *k)
            run = lambda: eager_convlstm.eager_loop(x, weight, bias)  # noqa: E731
        else:
            wx, wh = leaf(4 * F, C, *k), leaf(4 * F, F, *k)
            run = lambda: eager_convlstm.eager_hoisted_loop(x, wx, wh, bias)  # noqa: E731
        counter = LiveBytes()
        with counter:
            seq = run()[0]
            fwd = counter.peak
            seq.backward(d_seq)
            del seq
    return {"fwd": fwd, "train": counter.peak}


def table(shapes, dtypes, configs):
    """Markdown rows: per shape and dtype, each peer's forward and training peak (MB) and the
    training peak as a fraction of eager_cat's; "(default)" marks what recompute_gates="auto"
    picks for the shape."""
    from convlstm_triton.autograd import recompute_by_default

    rows = [f"**{FORECAST_LABEL}: peak memory of one training step, counted allocations "
            "(bench/memory_forecast.py); MB = 1e6 bytes; inputs, weights and the output "
            "gradient not counted**", "",
            "| shape | dtype | peer | forward peak MB | training peak MB | / eager_cat |",
            "|---|---|---|---|---|---|"]
    for name in shapes:
        shape = SHAPES[name]
        for dtype in dtypes:
            results = {peer: eager_peak(shape, dtype, peer)
                       for peer in ("eager_cat", "eager_hoisted")}
            default = recompute_by_default(
                shape.batch, shape.steps, shape.spatial[0] * shape.spatial[1], shape.filters,
                DTYPES[dtype].itemsize)
            for variant, recompute in configs:
                label = (f"triton {variant} " + ("recompute_gates" if recompute else "saved")
                         + (" (default)" if recompute == default else ""))
                results[label] = ours_peak(shape, dtype, variant, recompute)
            base = results["eager_cat"]["train"]
            for peer, r in results.items():
                rows.append(f"| {name} | {dtype} | {peer} | {r['fwd'] / 1e6:.0f} | "
                            f"{r['train'] / 1e6:.0f} | {r['train'] / base:.2f} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="mnist_l1,mnist_l2,nowcast")
    p.add_argument("--dtypes", default="bf16")
    p.add_argument("--variants", default="hoisted,fused_input",
                   help="forward variants of ours (each with and without recompute_gates)")
    args = p.parse_args(argv)
    configs = [(v, r) for v in args.variants.split(",") for r in (False, True)]
    print(table(args.shapes.split(","), args.dtypes.split(","), configs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
