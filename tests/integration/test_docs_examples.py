"""The Python blocks of docs/quickstart.md run as written: in order, in one namespace, from a
scratch folder (the page writes to ``runs/`` relative to the current directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return PYTHON_BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.fixture
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the page sets 1 thread; give the session its own back


def test_quickstart_has_examples() -> None:
    assert len(python_blocks(QUICKSTART)) >= 5


@pytest.mark.slow
def test_quickstart_python_blocks_run(tmp_path, monkeypatch, _one_thread) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "quickstart"}
    for i, block in enumerate(python_blocks(QUICKSTART)):
        code = compile(block, f"docs/quickstart.md (python block {i + 1})", "exec")
        exec(code, namespace)
    assert (tmp_path / "runs" / "quickstart" / "survival" / "report.html").is_file()
    assert (tmp_path / "runs" / "quickstart" / "cgc" / "results.json").is_file()
