"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


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
