"""Test setup: run the real Triton kernels through the interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it must be set before
``convlstm_triton.kernels`` is imported; conftest.py is imported before any test module.
"""

import os
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402

# Tiny tensors gain nothing from intra-op threads; with `pytest -n 2` on 2 cores, OpenMP
# oversubscription made the suite ~30x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh but reproducible random inputs per test: the seed derives from the test id
    # (crc32, not hash(): str hashes change from process to process).
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture(autouse=True)
def _fresh_launch_plans():
    # Launch plans replay a problem's launches across calls (on a GPU) without asking the
    # tuner again: a test that forces configs (monkeypatching tuning.pick_config) must not
    # replay an earlier test's.
    from convlstm_triton import launch_plans

    launch_plans.clear_plans()
    yield


@pytest.fixture
def poison_buffers(monkeypatch):
    """Fill every kernel output buffer with NaN before the kernels write it."""
    from convlstm_triton import launchers

    def nan_buffer(shape, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(launchers, "new_buffer", nan_buffer)


@pytest.fixture
def fresh_dynamo_caches():
    """torch's scan compiles its own wrapper with torch.compile and keeps the entry on the
    wrapper's code: an earlier export in this process at a fixed T (an ONNX export of a T = 3
    model, say) has that entry's guards checked against a later export's symbolic T, which adds
    ``T != 3`` and fails a dynamic-T export (torch 2.13; README, Limits). Tests start clean."""
    import torch

    torch._dynamo.reset()
    yield
