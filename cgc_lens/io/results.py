"""Results are data: one folder per study run, written and read back the same way by every study.

A results folder holds

- ``results.json``: the study's summary payload, its ``config``, the library ``versions`` and
  the ``study`` name;
- ``tables/<name>.csv``: DataFrames (per-feature, per-condition, per-head tables);
- ``arrays.safetensors``: named arrays (float64 kept as float64);
- ``figures/<name>.html``: each plotly figure on its own page;
- ``report.html``: everything on one page (:mod:`cgc_lens.io.report`), drawn by the same
  ``figures/plotly.min.js`` as the figure pages (plotly.js stored once);
- ``MANIFEST.json``: the size and SHA-256 of every other file, written last
  (:mod:`cgc_lens.io.manifest`).

The folder is written whole or not at all (:mod:`cgc_lens.io.staging`): into a hidden sibling
that is renamed into place, under a lock beside it; a non-empty folder is replaced only with
``overwrite=True`` (``--overwrite``), and then whole. :func:`read_results` refuses a folder that
does not match its manifest.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from safetensors.torch import load, save_file

from cgc_lens.errors import CgcLensError
from cgc_lens.io.manifest import check_manifest, warn_unsealed
from cgc_lens.io.report import SHARED_PLOTLYJS, write_report
from cgc_lens.io.staging import leftovers, staged_folder
from cgc_lens.progress import Stages

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
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a study's results folder (see the module docstring) and return its path.

    Args:
        out_dir: the folder; missing or empty unless ``overwrite``.
        study: the study's name (``results.json``'s ``study``).
        config: the config that made the results.
        payload: the summary (``results.json`` beside ``config``, ``versions``, ``study``).
        tables: DataFrames, one CSV each.
        arrays: named arrays (``arrays.safetensors``).
        figures: plotly figures, one HTML page each (and all on ``report.html``).
        title: the report's title.
        intro: the report's first paragraph.
        overwrite: replace a non-empty ``out_dir`` whole.
        extra: writes more files into the folder before it is sealed; called with the staging
            folder (not ``out_dir``).

    Raises:
        CgcLensError: ``out_dir`` is a file, non-empty without ``overwrite``, or another run is
            writing it; a payload key is reserved.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_results(d, study="demo", config={"seed": 0}, payload={"ppl": 12.5},
        ...                       arrays={"r": np.arange(3.0)})
        ...     back = read_results(d)
        >>> back.payload["ppl"], back.config, back.arrays["r"].dtype
        (12.5, {'seed': 0}, dtype('float64'))
    """
    reserved = {"config", "versions", "study"} & set(payload)
    if reserved:
        raise CgcLensError(f"payload keys {sorted(reserved)} are reserved; rename them.")
    doc = {"study": study, **to_jsonable(dict(payload)), "config": to_jsonable(config),
           "versions": versions()}
    report = {"title": title or f"cgc-lens {study}", "figures": dict(figures or {}),
              "tables": dict(tables or {}), "config": config, "versions": doc["versions"],
              "intro": intro}
    _write_staged(Path(out_dir), overwrite=overwrite, doc=doc, tables=tables or {},
                  arrays=arrays or {}, report=report, extra=extra)
    return Path(out_dir)


def _write_staged(
    out: Path,
    *,
    overwrite: bool,
    doc: dict[str, Any],
    tables: Mapping[str, pd.DataFrame],
    arrays: Mapping[str, torch.Tensor | np.ndarray],
    report: dict[str, Any],
    extra: Callable[[Path], None] | None,
) -> None:
    """Stage, write and seal the folder, with a bar naming the stage running."""
    stages = Stages(("results", "figures", "report", "seal"), desc=f"saving {out.name}")
    try:
        with staged_folder(out, overwrite=overwrite) as stage:
            _write_files(stage, doc, tables, arrays)
            stages.next()
            _write_figures(stage, report["figures"])
            stages.next()
            # the report reads the figures' plotly.min.js: plotly.js stored once per folder
            title = report.pop("title")
            write_report(stage, title, **report, plotlyjs=SHARED_PLOTLYJS)
            stages.next()
            if extra is not None:
                extra(stage)
        stages.next()
    finally:
        stages.close()


def _write_files(
    out: Path,
    doc: dict[str, Any],
    tables: Mapping[str, pd.DataFrame],
    arrays: Mapping[str, torch.Tensor | np.ndarray],
) -> None:
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    for name, table in tables.items():
        (out / "tables").mkdir(exist_ok=True)
        table.to_csv(out / "tables" / f"{name}.csv", index=False)
    if arrays:
        tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
                   else v.detach().cpu().contiguous() for k, v in arrays.items()}
        save_file(tensors, str(out / "arrays.safetensors"))


def _write_figures(out: Path, figures: Mapping[str, go.Figure]) -> None:
    for name, fig in figures.items():
        (out / "figures").mkdir(exist_ok=True)
        # "directory": one plotly.min.js beside the figures, read by relative path (offline;
        # inlining it would put 4.8 MB into every figure file)
        fig.write_html(out / "figures" / f"{name}.html", include_plotlyjs="directory",
                       full_html=True, div_id=f"figure-{name}")  # no random uuid: same bytes



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


def _missing_folder(out: Path) -> CgcLensError:
    found = leftovers(out)
    names = ", ".join(p.name for kind in found for p in found[kind])
    hint = (f" A save of it was interrupted ({names} beside it): the next save of {out} clears "
            f"that, or run the study again." if names else "")
    return CgcLensError(f"No results.json in {out}: expected a folder written by a cgc-lens "
                        f"study (--out DIR).{hint}")


def _inode(out: Path) -> int | None:
    try:
        return out.stat().st_ino
    except OSError:
        return None


def _read_once(out: Path) -> ResultsFolder:
    if not out.is_dir():
        raise _missing_folder(out)
    checked, sealed = check_manifest(out)
    if "results.json" not in checked:
        raise _missing_folder(out)
    if not sealed:
        warn_unsealed(out)
    doc = json.loads(checked["results.json"].decode("utf-8"))
    tables = {rel[len("tables/"):-len(".csv")]: pd.read_csv(io.BytesIO(data))
              for rel, data in sorted(checked.items())
              if rel.startswith("tables/") and rel.endswith(".csv") and rel.count("/") == 1}
    arrays = ({k: v.numpy() for k, v in load(checked["arrays.safetensors"]).items()}
              if "arrays.safetensors" in checked else {})
    return ResultsFolder(
        study=doc.pop("study", ""), config=doc.pop("config", {}),
        versions=doc.pop("versions", {}), payload=doc, tables=tables, arrays=arrays,
    )


def read_results(out_dir: str | Path) -> ResultsFolder:
    """Read a folder written by :func:`write_results`, checked against its manifest.

    Every file is read once and checked before it is parsed. A read that fails because a save
    replaced the folder meanwhile is tried again (up to 3 times), so a reader racing a writer
    gets one whole save or the other. A folder written before manifests (none in it) is read
    as it is, with a :class:`~cgc_lens.io.manifest.LegacyFolderWarning`.

    Raises:
        CgcLensError: no results folder there, or one that does not match its manifest
            (missing, extra or changed files: an interrupted or mixed save).
    """
    out = Path(out_dir)
    for attempt in range(3):
        before = _inode(out)
        try:
            return _read_once(out)
        except CgcLensError:
            if attempt == 2 or _inode(out) == before:
                raise
    raise AssertionError("unreachable")
