"""Deployment of a trained layer: programs exported for inference (torch.export under
torch.no_grad(), as one exports for serving) on the Triton path (the kernels through the
interpreter on a CPU) run with grad enabled as well, and compile with AOTInductor; on a GPU the
program holds the Triton kernels themselves (``traceable_ops``), so that the AOTInductor package
runs without this library."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import kernel_device, triton_available_here

from convlstm_triton import ConvLSTM2D, launch_plans, launchers, ops

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


# Exported as on a GPU (the kernels are JITFunctions: no TRITON_INTERPRET), with CPU tensors
# let onto the Triton path and Triton's driver faked to report an sm_90 target: enough for
# torch.export and make_fx to trace the launches (nothing runs: the tensors are fake there).
_TRACE_SCRIPT = textwrap.dedent("""
    import json, sys
    from unittest import mock
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from convlstm_triton import ConvLSTM2D, functional

    functional.triton_interpreter_enabled = lambda: True

    class Driver:  # what tracing asks of the driver: the target to read the kernels for
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

        def get_current_device(self):
            return 0

    torch.manual_seed(0)
    layer = ConvLSTM2D(4, 3, in_channels=3, padding="same", return_sequences=True,
                       backend="triton").eval()
    x = torch.randn(2, 3, 5, 4, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = {}
    with mock.patch.object(triton.runtime.driver, "_active", Driver(), create=True):
        with torch.no_grad():
            program = torch.export.export(layer, (x,), {"mask": mask})
            batch = torch.export.Dim("batch", min=2)
            dynamic = torch.export.export(layer, (x,), {"mask": mask},
                                          dynamic_shapes=({0: batch}, {0: batch}))
        out["exported"] = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
        out["dynamic"] = [str(n.target) for n in dynamic.graph.nodes if n.op == "call_function"]
        lowered = program.run_decompositions(decompose_custom_triton_ops=True)
        from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
        out["lowered"] = [str(n.target) for n in lowered.graph.nodes if n.op == "call_function"]
        out["kernels"] = [kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__
                          for n in lowered.graph.nodes
                          if "triton_kernel_wrapper" in str(n.target)]
    print(json.dumps(out))
""")


def test_program_exported_for_serving_holds_the_triton_kernels():
    """The inference program's forward is ``convlstm_triton::forward_inference`` (a triton_op):
    decomposed as AOTInductor does, it is the kernels themselves, one node per launch (the
    input projection of the sequence's time chunk, then one step kernel per time step), and no
    op of this library is left for a package to need. A dynamic batch keeps the opaque op."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert "convlstm_triton.forward_inference.default" in out["exported"]
    assert not any("triton_kernel_wrapper" in t for t in out["exported"])
    assert out["kernels"] == ["input_projection_kernel"] + ["step_forward_kernel"] * 3
    assert not any(t.startswith("convlstm_triton.") for t in out["lowered"])
    assert "convlstm_triton.forward.default" in out["dynamic"]


@pytest.mark.parametrize("variant", ["hoisted", "fused_input", "unfused"])
def test_traceable_launches_compute_the_same_bits(variant, monkeypatch):
    """The launches a traced program records (``launch_plans.traceable_launches``: through
    ``wrap_triton``, no plans, no raw pointers, fresh dummies) are the usual ones: on real
    tensors they give the forward op's bits, with masks, peepholes, biases and several time
    chunks."""
    monkeypatch.setattr(launchers, "TIME_CHUNK_MIN_ROWS", 40)  # 2 steps of 20 rows a chunk
    device = kernel_device()
    g = torch.Generator().manual_seed(7)
    B, T, H, W, C, F = 2, 5, 5, 4, 3, 6
    geometry = [1, H, W, 1, H, W, 1, 3, 3, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1]

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)

    args = (rand(B, T, 1, H, W, C), rand(9 * C, 4 * F) * 0.3, rand(9 * F, 4 * F) * 0.3,
            rand(4 * F), rand(B, H * W, F), rand(B, H * W, F), rand(3 * F),
            torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.int8, device=device),
            None, None, geometry, 1, 2, "ieee", variant, False, False)
    with torch.no_grad():
        expected = ops._sequence_forward(*args)[:3]
        with launch_plans.traceable_launches():
            traced = ops._sequence_forward(*args)[:3]
    for want, got in zip(expected, traced):
        assert torch.equal(want, got)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_aotinductor_package_runs_without_this_library(tmp_path):
    """On a GPU: the inference program's AOTInductor package holds the compiled kernels, and a
    fresh process loads and runs it with torch alone (``import convlstm_triton`` never runs)."""
    layer = ConvLSTM2D(8, 3, in_channels=4, padding="same", return_sequences=True,
                       backend="triton", device="cuda").eval()
    x = torch.randn(2, 5, 12, 10, 4, device="cuda")
    with torch.no_grad():
        program = torch.export.export(layer, (x,))
        expected = layer(x)
    assert any("forward_inference" in str(n.target) for n in program.graph.nodes)
    path = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "convlstm.pt2"))
    torch.save({"x": x.cpu(), "expected": expected.cpu()}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        io = torch.load({str(tmp_path / "io.pt")!r})
        model = torch._inductor.aoti_load_package({path!r})
        with torch.no_grad():
            y = model(io["x"].cuda()).cpu()
        assert "convlstm_triton" not in sys.modules
        print((y - io["expected"]).abs().max().item())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-3


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
