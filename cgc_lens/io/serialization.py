"""Modules saved as a folder: ``weights.safetensors`` plus a ``config.json`` tagged with a format.

The ``format`` tag names what wrote the folder (``cgc-lens.batched-topk-sae``,
``cgc-lens.adaptive-compressor`` …), so loading one kind of folder as another fails with a
message instead of a shape error deep inside ``load_state_dict``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "load_folder", "save_folder"]

CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"


def save_folder(
    path: str | Path, tensors: Mapping[str, Tensor], config: Mapping[str, Any], *, fmt: str
) -> Path:
    """Write ``tensors`` to ``weights.safetensors`` and ``{"format": fmt, **config}`` to
    ``config.json`` in the folder ``path`` (made if missing); return the folder.

    Tensors are detached, moved to the CPU and made contiguous, so a ``state_dict()`` of a
    module on any device can be passed as it is.

    Example:
        >>> import tempfile, torch
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_folder(d, {"w": torch.ones(2)}, {"d_in": 2}, fmt="demo")
        ...     tensors, config = load_folder(d, fmt="demo", what="a demo")
        >>> tensors["w"].tolist(), config
        ([1.0, 1.0], {'d_in': 2})
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path / WEIGHTS_FILE)
    (path / CONFIG_FILE).write_text(json.dumps({"format": fmt, **config}, indent=1))
    return path


def load_folder(
    path: str | Path, *, fmt: str, what: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Inverse of :func:`save_folder`: the tensors (on the CPU) and the config without ``format``.

    Args:
        path: the folder.
        fmt: the format tag the folder must carry.
        what: what the folder holds, for messages (``"a compressor"``).

    Raises:
        CgcLensError: a file is missing, or the folder carries another format.
    """
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CgcLensError(
            f"Expected {what} folder with {CONFIG_FILE} and {WEIGHTS_FILE}, got {path}."
        )
    config = json.loads(cfg_file.read_text())
    found = config.pop("format", None)
    if found != fmt:
        raise CgcLensError(f"{cfg_file} is not a {fmt} config (format {found!r}).")
    return load_file(path / WEIGHTS_FILE), config
