"""Results are data: one folder per study run, written and read back the same way by every study.

A results folder holds

- ``results.json``: the study's summary payload, its ``config``, the library ``versions`` and
  the ``study`` name;
- ``tables/<name>.csv``: DataFrames (per-feature, per-condition, per-head tables);
- ``arrays.safetensors``: named arrays (float64 kept as float64);
- ``figures/<name>.html``: each plotly figure on its own page;
- ``report.html``: everything on one self-contained page (:mod:`cgc_lens.io.report`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import load_file, save_file

from cgc_lens.errors import CgcLensError
from cgc_lens.io.report import write_report

__all__ = ["ResultsFolder", "read_results", "to_jsonable", "versions", "write_results"]

_DISTRIBUTIONS = ("cgc-lens", "torch", "transformer-lens", "sae-lens", "transformers", "numpy",
                  "scipy", "scikit-learn", "pandas", "plotly")


def versions() -> dict[str, str]:
    """Versions of cgc-lens and of the libraries whose numerics it depends on.

    Example:
        >>> "torch" in versions() and "python" in versions()
        True
    """
    out = {}
    for dist in _DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def to_jsonable(obj: Any) -> Any:
    """Turn configs and results into JSON values: objects with a ``to_dict()`` → its dict (so
    a compress ``Plan`` reads back with ``Plan.from_dict``), other dataclasses → dicts of their
    fields, arrays → lists, Paths and enums → strings, non-finite floats → None (JSON has no
    NaN).

    Example:
        >>> to_jsonable({"a": (1, 2.5), "b": float("nan"), "c": np.float32(0.5)})
        {'a': [1, 2.5], 'b': None, 'c': 0.5}
        >>> from cgc_lens.compress import RTN, Plan
        >>> to_jsonable(Plan.compose(RTN(4)))["steps"][0]["operator"]["operator"]
        'rtn'
    """
    if callable(getattr(obj, "to_dict", None)) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, enum.Enum):
        return obj.name if not isinstance(obj.value, (int, str)) else obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_results(
    out_dir: str | Path,
    *,
    study: str,
    config: Any,
    payload: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame] | None = None,
    arrays: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    figures: Mapping[str, go.Figure] | None = None,
    title: str | None = None,
    intro: str | None = None,
) -> Path:
    """Write a study's results folder (see the module docstring) and return its path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_results(d, study="demo", config={"seed": 0}, payload={"ppl": 12.5},
        ...                       arrays={"r": np.arange(3.0)})
        ...     back = read_results(d)
        >>> back.payload["ppl"], back.config, back.arrays["r"].dtype
        (12.5, {'seed': 0}, dtype('float64'))
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reserved = {"config", "versions", "study"} & set(payload)
    if reserved:
        raise CgcLensError(f"payload keys {sorted(reserved)} are reserved; rename them.")
    doc = {"study": study, **to_jsonable(dict(payload)), "config": to_jsonable(config),
           "versions": versions()}
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    for name, table in (tables or {}).items():
        (out / "tables").mkdir(exist_ok=True)
        table.to_csv(out / "tables" / f"{name}.csv", index=False)
    if arrays:
        tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                   else v.detach().cpu().contiguous() for k, v in arrays.items()}
        save_file(tensors, str(out / "arrays.safetensors"))
    for name, fig in (figures or {}).items():
        (out / "figures").mkdir(exist_ok=True)
        # "directory": one plotly.min.js beside the figures, read by relative path (offline;
        # inlining it would put 4.8 MB into every figure file)
        fig.write_html(out / "figures" / f"{name}.html", include_plotlyjs="directory",
                       full_html=True)
    write_report(out, title or f"cgc-lens {study}", figures=dict(figures or {}),
                 tables=dict(tables or {}), config=config, versions=doc["versions"], intro=intro)
    return out


@dataclass(frozen=True)
class ResultsFolder:
    """What :func:`read_results` gives back."""

    study: str
    """The study that wrote the folder."""
    payload: dict[str, Any]
    """``results.json`` without ``config``, ``versions`` and ``study``."""
    config: dict[str, Any]
    """The config that made the results."""
    versions: dict[str, str]
    """Library versions at the time."""
    tables: dict[str, pd.DataFrame]
    """Tables by name."""
    arrays: dict[str, np.ndarray]
    """Arrays by name."""


def read_results(out_dir: str | Path) -> ResultsFolder:
    """Read a folder written by :func:`write_results`."""
    out = Path(out_dir)
    path = out / "results.json"
    if not path.is_file():
        raise CgcLensError(f"No results.json in {out}: expected a folder written by a cgc-lens "
                           f"study (--out DIR).")
    doc = json.loads(path.read_text(encoding="utf-8"))
    tables = {p.stem: pd.read_csv(p) for p in sorted((out / "tables").glob("*.csv"))}
    arrays_path = out / "arrays.safetensors"
    arrays = ({k: v.numpy() for k, v in load_file(str(arrays_path)).items()}
              if arrays_path.is_file() else {})
    return ResultsFolder(
        study=doc.pop("study", ""), config=doc.pop("config", {}),
        versions=doc.pop("versions", {}), payload=doc, tables=tables, arrays=arrays,
    )
