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

# FORECAST training peak / eager_cat's (one cuDNN conv of cat(x_t, h) per step, what PyTorch
# users write), bf16. The target is 0.5 for the library's default (recompute_gates="auto", which
# recomputes the pre-activations at these shapes): reached, 0.44 / 0.46 / 0.496. With the
# pre-activations saved (recompute_gates=False, the fastest) 0.79-0.87. These limits keep what is
# reached from slipping back.
MAX_FRACTION_OF_EAGER = {
    ("mnist_l1", "auto"): 0.50, ("mnist_l2", "auto"): 0.50, ("nowcast", "auto"): 0.50,
    ("mnist_l1", False): 0.90, ("mnist_l2", False): 0.90, ("nowcast", False): 0.90,
}


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


@pytest.mark.parametrize("shape, recompute", [
    pytest.param(shape, recompute, id=f"{shape}-{'default' if recompute else 'saved'}")
    for shape, recompute in MAX_FRACTION_OF_EAGER])
def test_training_peak_against_eager(shape, recompute):
    eager = mf.eager_peak(SHAPES[shape], "bf16", "eager_cat")["train"]
    ours = mf.ours_peak(SHAPES[shape], "bf16", "hoisted", recompute_gates=recompute)["train"]
    limit = MAX_FRACTION_OF_EAGER[(shape, recompute)]
    assert ours <= limit * eager, (
        f"FORECAST {shape} bf16 recompute_gates={recompute}: training peak {ours / 1e6:.0f} MB "
        f"> {limit} x eager_cat's {eager / 1e6:.0f} MB")
