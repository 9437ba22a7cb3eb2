"""Deployment of a trained layer: programs exported for inference (torch.export under
torch.no_grad(), as one exports for serving) on the Triton path (the kernels through the
interpreter on a CPU) run with grad enabled as well, and compile with AOTInductor."""

import shutil

import pytest
import torch
from helpers import kernel_device, triton_available_here

from convlstm_triton import ConvLSTM2D

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not triton_available_here(),
                                 reason="needs a GPU or TRITON_INTERPRET=1")]


def _exported_for_inference():
    device = kernel_device()
    layer = ConvLSTM2D(4, 3, in_channels=3, padding="same", return_sequences=True,
                       backend="triton", device=device).eval()
    x = torch.randn(2, 3, 5, 4, 3, device=device)
    with torch.no_grad():
        program = torch.export.export(layer, (x,))
        expected = layer(x)
    return program, x, expected


def test_program_exported_under_no_grad_runs_with_grad_enabled():
    program, x, expected = _exported_for_inference()
    module = program.module()
    with torch.no_grad():
        assert torch.allclose(module(x), expected, atol=1e-5)
    y = module(x)  # grad mode, parameters requiring grad: it used to raise here
    assert torch.allclose(y, expected, atol=1e-5) and y.requires_grad
    # A backward through an inference program cannot be: a clear error says what to do.
    with pytest.raises(RuntimeError, match="trace or export it with grad enabled"):
        y.sum().backward()


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="AOTInductor needs a C++ compiler")
def test_program_exported_under_no_grad_compiles_with_aotinductor(tmp_path):
    program, x, expected = _exported_for_inference()
    path = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "convlstm.pt2"))
    loaded = torch._inductor.aoti_load_package(path)  # needs `import convlstm_triton` (its op)
    assert torch.allclose(loaded(x), expected, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
def test_onnx_export_of_the_reference_path_runs_in_onnxruntime(dynamo, tmp_path):
    """The documented route: set_backend(model, "reference"), then either exporter; ONNX Runtime
    gives the layer's output (the legacy exporter used to write Transpose perm {0, -1, 1, 2},
    which ONNX Runtime refused). Masks and recurrent dropout masks go through the same
    permutations."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import warnings

    from convlstm_triton import set_backend

    model = torch.nn.Sequential(ConvLSTM2D(4, 3, in_channels=3, padding="same",
                                           return_sequences=True, backend="triton")).eval()
    assert set_backend(model, "reference") is model and model[0].backend == "reference"
    x = torch.randn(2, 3, 6, 5, 3)
    path = str(tmp_path / "convlstm.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=dynamo, input_names=["x"])
    session = onnxruntime.InferenceSession(path)
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert abs(y - model(x).numpy()).max() < 1e-4


def test_set_backend_refuses_what_it_cannot_set():
    from convlstm_triton import set_backend

    with pytest.raises(ValueError, match="backend must be one of"):
        set_backend(torch.nn.Sequential(ConvLSTM2D(2, 3)), "onnx")
    with pytest.raises(ValueError, match="holds no ConvLSTM layer"):
        set_backend(torch.nn.Linear(2, 2), "reference")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        set_backend("model", "reference")
    from convlstm_triton.compat import ConvLSTM as DropIn

    drop_in = set_backend(DropIn(2, 3, (3, 3), 2), "reference")  # compat's cells too
    assert drop_in.backend == "reference"
    assert all(cell.backend == "reference" for cell in drop_in.cell_list)
