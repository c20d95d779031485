"""Module folders: weights.safetensors plus a format-tagged config.json."""

from __future__ import annotations

import json
import re

import pytest
import torch

from cgc_lens.errors import CgcLensError
from cgc_lens.io.serialization import CONFIG_FILE, WEIGHTS_FILE, load_folder, save_folder


def test_round_trip_is_exact_and_the_config_is_tagged(tmp_path):
    w = torch.randn(3, 4, dtype=torch.float64).T  # not contiguous; saved as it reads
    path = save_folder(tmp_path / "m", {"w": w, "n": torch.arange(3)}, {"d_in": 4}, fmt="f")
    assert path == tmp_path / "m"
    assert json.loads((path / CONFIG_FILE).read_text()) == {"format": "f", "d_in": 4}
    tensors, config = load_folder(path, fmt="f", what="a module")
    assert config == {"d_in": 4}
    torch.testing.assert_close(tensors["w"], w, atol=0, rtol=0)
    assert torch.equal(tensors["n"], torch.arange(3))


def test_missing_files_and_other_formats_raise(tmp_path):
    expected = f"Expected a module folder with {CONFIG_FILE} and {WEIGHTS_FILE}, got {tmp_path}."
    with pytest.raises(CgcLensError, match=re.escape(expected)):
        load_folder(tmp_path, fmt="f", what="a module")
    save_folder(tmp_path, {"w": torch.ones(1)}, {}, fmt="other")
    with pytest.raises(CgcLensError, match=r"is not a f config \(format 'other'\)"):
        load_folder(tmp_path, fmt="f", what="a module")
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CgcLensError, match="Expected a module folder"):
        load_folder(tmp_path, fmt="other", what="a module")
