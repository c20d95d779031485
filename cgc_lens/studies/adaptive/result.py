"""What the AdaptiveCompress study returns: :class:`AdaptiveResult` (DataFrames, diagnostics, a
results folder that loads back, and the trained modules)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cgc_lens.adaptive.compressor import AdaptiveCompressor
from cgc_lens.adaptive.diagnostics import Diagnostic, collapsed
from cgc_lens.errors import CgcLensError
from cgc_lens.io.results import read_results, write_results
from cgc_lens.saes.per_head import BatchedTopKSAE
from cgc_lens.studies.adaptive.config import AdaptiveStudyConfig

__all__ = ["AdaptiveResult"]


@dataclass(kw_only=True)
class AdaptiveResult:
    """What the study found; :meth:`save` writes it, :meth:`load` reads it back."""

    config: AdaptiveStudyConfig
    """The config that made it."""
    metrics: pd.DataFrame
    """One row per (method, site): SAEQuality and SplicedLoss figures."""
    probing: pd.DataFrame
    """One row per (dataset, method, site, task, k): accuracy and majority baseline."""
    diagnostics: list[Diagnostic]
    """Every collapse check, fired or not."""
    history: pd.DataFrame
    """Training curves (see :class:`cgc_lens.adaptive.TrainHistory`)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Steps, tokens, seconds, first non-finite loss per method/site."""
    skipped_probes: list[str] = field(default_factory=list)
    """Probing tasks skipped for too few examples, with the reason."""
    compressor: AdaptiveCompressor | None = None
    """The trained compressor (not read back by :meth:`load`; load its folder)."""
    baseline: BatchedTopKSAE | None = None
    """The trained TopK baseline."""

    @property
    def collapsed(self) -> dict[str, dict[str, list[str]]]:
        """method → site → names of the collapse checks that fired."""
        return collapsed(self.diagnostics)

    @property
    def any_collapsed(self) -> bool:
        """Whether any check fired for the compressor."""
        return any(self.collapsed.get("adaptive", {}).values())

    def to_frame(self) -> pd.DataFrame:
        """The per-layer metrics of both methods."""
        return self.metrics

    def diagnostics_frame(self) -> pd.DataFrame:
        """The diagnostics as a DataFrame."""
        return pd.DataFrame([dataclasses.asdict(d) for d in self.diagnostics])

    def probing_summary(self) -> pd.DataFrame:
        """Mean accuracy and majority baseline over tasks, per dataset, method, site and k."""
        if self.probing.empty:
            return self.probing
        keys = ["dataset", "method", "site", "k"]
        return self.probing.groupby(keys, sort=False)[["accuracy", "majority_accuracy"]].mean(
        ).reset_index()

    def payload(self) -> dict[str, Any]:
        """The ``results.json`` summary."""
        metrics: dict[str, dict[str, Any]] = {}
        for row in self.metrics.to_dict("records"):
            metrics.setdefault(row["site"], {})[row["method"]] = {
                k: v for k, v in row.items() if k not in ("site", "method")}
        return {
            "metrics": metrics, "probing": self.probing_summary().to_dict("records"),
            "probing_tasks": self.probing.to_dict("records"),
            "skipped_probes": self.skipped_probes,
            "diagnostics": [dataclasses.asdict(d) for d in self.diagnostics],
            "collapsed": self.collapsed, "any_collapsed": self.any_collapsed,
            "training": self.training,
        }

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the results folder (JSON, tables, figures, report, manifest) and the weights,
        whole or not at all (:func:`cgc_lens.io.results.write_results`); ``overwrite`` replaces
        a non-empty ``out_dir`` whole."""
        from cgc_lens.plots.adaptive import (
            plot_diagnostics,
            plot_probing,
            plot_quality_comparison,
            plot_training_curves,
        )

        figures = {"quality": plot_quality_comparison(self.metrics),
                   "diagnostics": plot_diagnostics(self.diagnostics_frame())}
        if not self.history.empty:
            figures["training_curves"] = plot_training_curves(self.history)
        if not self.probing.empty:
            figures["probing"] = plot_probing(self.probing)
        tables = {"metrics": self.metrics, "probing": self.probing,
                  "diagnostics": self.diagnostics_frame(), "history": self.history}
        fired = {m: {s: n for s, n in sites.items() if n} for m, sites in self.collapsed.items()}
        intro = ("AdaptiveCompress (EMA-importance residual compressor) beside a TopK SAE of the "
                 f"same width trained on the same tokens. Collapse checks that fired: {fired}.")
        return write_results(out_dir, study="adaptive", config=self.config,
                             payload=self.payload(), tables=tables, figures=figures,
                             title="cgc-lens adaptive", intro=intro, overwrite=overwrite,
                             extra=self._save_weights)

    def _save_weights(self, folder: Path) -> None:
        if self.config.save_weights and self.compressor is not None:
            self.compressor.save(folder / "compressor", extra={"study": "adaptive"})
        if self.config.save_weights and self.baseline is not None:
            self.baseline.save(folder / "baseline")

    @classmethod
    def load(cls, out_dir: str | Path) -> AdaptiveResult:
        """Read a folder written by :meth:`save` (weights stay in their folders)."""
        folder = read_results(out_dir)
        if folder.study != "adaptive":
            raise CgcLensError(f"{out_dir} holds a {folder.study!r} study, not 'adaptive'.")
        tables = folder.tables
        diagnostics = [Diagnostic(**d) for d in folder.payload["diagnostics"]]
        probing = tables.get("probing", pd.DataFrame())
        if "latents" in probing.columns:
            probing["latents"] = probing["latents"].map(
                lambda s: [int(v) for v in str(s).strip("[]").split(",") if v.strip()])
        return cls(config=AdaptiveStudyConfig.from_dict(folder.config),
                   metrics=tables["metrics"], probing=probing, diagnostics=diagnostics,
                   history=tables.get("history", pd.DataFrame()),
                   training=folder.payload.get("training", {}),
                   skipped_probes=folder.payload.get("skipped_probes", []))
