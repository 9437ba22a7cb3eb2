"""The README's quickstart runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# Keras' numpy conversion of its torch tensors warns under numpy 2 (Keras' issue); a dynamic-T
# export must not meet an earlier export's compiled scan (conftest.py)
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("fresh_dynamo_caches")]


def test_quickstart_runs(capsys):
    text = README.read_text()
    quickstart = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S).group(1)
    exec(compile(code, "README quickstart", "exec"), {})
    assert "torch.Size([4, 10, 32, 32, 16])" in capsys.readouterr().out


def test_pytorch_style_example_runs(capsys):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                 if "from convlstm_triton import ConvLSTM," in b)
    exec(compile(block, "README ConvLSTM example", "exec"), {})
    assert "torch.Size([2, 5, 128, 16, 16]) torch.Size([2, 32, 16, 16])" in capsys.readouterr().out


def test_every_python_block_runs_as_written(tmp_path, monkeypatch, capsys):
    """Each ```python block of the README, on its own (its own imports, no names from another
    block), in a scratch directory (the Keras block writes a file)."""
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        exec(compile(block, f"README python block {i + 1}", "exec"), {})
    out = capsys.readouterr().out
    assert "['enc', 'dec']\nTrue\nTrue" in out  # the Keras ports match Keras
    assert "torch.Size([2, 6, 12, 12, 8]) torch.Size([2, 12, 12, 8])" in out  # functional


def test_keras_block_runs_in_a_fresh_process_without_keras_backend(tmp_path):
    """The "Port a Keras model" block as a newcomer runs it: a fresh Python, no KERAS_BACKEND set
    (Keras would default to TensorFlow, which is not installed), the reference path on the CPU."""
    import os
    import subprocess
    import sys

    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                 if "import keras" in b)
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TRITON_INTERPRET")}
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, timeout=900,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "['enc', 'dec']\nTrue\nTrue" in done.stdout


def test_onnx_example_takes_another_time_length(tmp_path, monkeypatch, capsys):
    """The ONNX block of "PyTorch integration": the dynamo ONNX export and torch.export with a
    dynamic T, run at another T than the example's, equal the model (the ref branch's Deploy
    example, folded into this one)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                 if "torch.onnx.export" in b)
    exec(compile(block, "README ONNX example", "exec"), {})
    lines = [line for line in capsys.readouterr().out.splitlines() if line in ("True", "False")]
    assert lines == ["True", "True"]
