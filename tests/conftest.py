"""Test setup: run the real Triton kernels through the interpreter when there is no GPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it must be set before
``convlstm_triton.kernels`` is imported; conftest.py is imported before any test module.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh but reproducible random inputs per test: the seed derives from the test id.
    torch.manual_seed(hash(request.node.nodeid) % (2**31))
    yield
