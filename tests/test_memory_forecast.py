"""bench/memory_forecast.py: the allocation counter, and the CI gate on the FORECAST peak training
memory of the benchmark shapes (no GPU: every allocation of the real code path is counted, the
kernels do not run; the eager peers run on fake tensors)."""

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import memory_forecast as mf  # noqa: E402
from bench_convlstm import SHAPES  # noqa: E402

# the gate: peak training memory <= half of the eager peer's (eager_cat: one cuDNN conv
# of cat(x_t, h) per step, what PyTorch users write), in the default configuration
MAX_FRACTION_OF_EAGER = 0.5


def test_counter_counts_allocations_not_views_and_frees():
    counter = mf.LiveBytes()
    with counter:
        a = torch.empty(1000)  # 4000 B
        view = a[10:]  # no allocation
        b = a * 2  # 4000 B
        a.add_(1)  # in place: no allocation
        del a  # the view keeps the storage alive
        assert counter.live == 8000
        del view
        assert counter.live == 4000
        c = torch.cat([b, b])  # 8000 B
        del b, c
    assert counter.live == 0 and counter.peak == 12000  # b and c


def test_ours_counts_the_saved_tensors():
    """Inference keeps nothing of the sequence but the output; training keeps the states, the
    fp32 cell states and (by default) the pre-activations."""
    shape = SHAPES["small"]
    B, T, F = shape.batch, shape.steps, shape.filters
    P = shape.spatial[0] * shape.spatial[1]
    saved = mf.ours_peak(shape, "bf16", "hoisted", recompute_gates=False)
    lean = mf.ours_peak(shape, "bf16", "hoisted", recompute_gates=True)
    states, c_all, preact = B * T * P * F * 2, B * (T + 1) * P * F * 4, B * T * P * 4 * F * 2
    assert saved["fwd"] >= states + c_all + preact
    assert lean["fwd"] >= states + c_all
    assert saved["fwd"] - lean["fwd"] == preact
    assert saved["train"] >= saved["fwd"] and lean["train"] >= lean["fwd"]


@pytest.mark.parametrize("shape", ["mnist_l1", "mnist_l2", "nowcast"])
def test_training_peak_is_at_most_half_of_eager(shape):
    eager = mf.eager_peak(SHAPES[shape], "bf16", "eager_cat")["train"]
    ours = mf.ours_peak(SHAPES[shape], "bf16", "auto")["train"]
    assert ours <= MAX_FRACTION_OF_EAGER * eager, (
        f"FORECAST {shape} bf16: training peak {ours / 1e6:.0f} MB > "
        f"{MAX_FRACTION_OF_EAGER} x eager_cat's {eager / 1e6:.0f} MB")
