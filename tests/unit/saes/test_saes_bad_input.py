"""A spoilt SAE folder or a dtype typo is refused naming the file (or value) and the fix, never a
raw SAELens or safetensors traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cgc_lens.errors import CgcLensError
from cgc_lens.saes import load_sae
from cgc_lens.saes.loading import EMBEDDED_SAE_DIRS

RESID = EMBEDDED_SAE_DIRS["cgc-tiny"] / "resid_post_layer2"


def _wrong_d_sae(folder: Path) -> str:
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 2 * cfg["d_sae"]}))
    return r"does not fit its sae_weights\.safetensors.*size mismatch.*Fix d_in / d_sae"


def _wrong_d_in(folder: Path) -> str:
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_in": 64}))
    return r"does not fit its sae_weights\.safetensors.*Fix d_in / d_sae"


def _corrupt_cfg(folder: Path) -> str:
    (folder / "cfg.json").write_text('{"d_in": 128, ')
    return r"SAE config .*cfg\.json is not valid JSON.*restore it"


def _truncated_weights(folder: Path) -> str:
    w = folder / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    return r"SAE weights .*sae_weights\.safetensors cannot be read.*copy or download them again"


@pytest.mark.parametrize("spoil", [_wrong_d_sae, _wrong_d_in, _corrupt_cfg, _truncated_weights])
def test_spoilt_saelens_folder_is_refused_naming_file_and_fix(tmp_path, spoil):
    folder = tmp_path / "sae"
    shutil.copytree(RESID, folder)
    match = spoil(folder)
    with pytest.raises(CgcLensError, match=match):
        load_sae(folder)


@pytest.mark.parametrize(("dtype", "match"), [
    ("flaot32", r"Unknown SAE dtype 'flaot32'. Closest: \['float32'"),
    ("bf16", r"Unknown SAE dtype 'bf16'"),
    ("int8", r"Unknown SAE dtype 'int8'"),
])
def test_sae_dtype_typo_is_refused_with_closest_names(dtype, match):
    with pytest.raises(CgcLensError, match=match):
        load_sae("cgc-tiny", dtype=dtype)


def test_torch_prefixed_dtype_still_loads():
    assert str(next(load_sae("cgc-tiny", dtype="torch.float16").parameters()).dtype) == \
        "torch.float16"
