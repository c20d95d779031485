"""The result of a feature-survival audit: tables, analyses, figures, and its results folder.

:class:`SurvivalResult` holds everything the paper reports (Tables 1-5, Apps. B, E-H) for one
run; it converts to a DataFrame (Table 1), draws the six figures of
:mod:`cgc_lens.plots.survival`, saves through :func:`cgc_lens.io.results.write_results` and loads
back (:meth:`SurvivalResult.load`). Nothing here computes a statistic: the numbers come from
:mod:`cgc_lens.analysis` in :func:`~cgc_lens.studies.survival.run.run_survival`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cgc_lens.analysis.accumulators import ReferenceStats
from cgc_lens.analysis.fragility import RocCurve
from cgc_lens.analysis.stability import NullCheck
from cgc_lens.analysis.survival import (
    ConditionSummary,
    OverlapResult,
    feature_table,
    summary_table,
)
from cgc_lens.compress import MatchResult
from cgc_lens.errors import CgcLensError
from cgc_lens.io.results import read_results, write_results
from cgc_lens.plots.survival import (
    plot_dissociation,
    plot_feature_scatter,
    plot_nonsurvival_deciles,
    plot_quartile_survival,
    plot_roc_curves,
    plot_survival_vs_bits,
    plot_taxonomy,
)
from cgc_lens.studies.survival.config import NULL_NAME, SurvivalConfig
from cgc_lens.studies.survival.intervals_text import how_sure, protocol_text, with_half_widths

__all__ = ["TABLE1_COLUMNS", "FragilityReport", "StabilityChecks", "SurvivalResult"]

log = logging.getLogger(__name__)

STUDY = "survival"
TABLE1_COLUMNS = ("name", "bits", "sparsity", "ppl", "ppl_delta_pct", "mean_corr", "median_corr",
                  "survived_pct", "degraded_pct", "damaged_pct", "n_active", "tokens")
"""Table 1's columns, in the paper's order."""
_REF_FIELDS = ("fire_count", "sum_activation", "sum_activation_firing", "sum_sq_firing",
               "peak_activation")


def _bit_sweep(table: pd.DataFrame) -> pd.DataFrame:
    """The rows the dissociation plot draws against bits: per-channel RTN and the reference
    (every row of a result saved before rows had a format)."""
    keep = table["format"].isna() | table["format"].eq("dense") | (
        table["format"].eq("rtn") & table["group_size"].isna())
    return table[keep]


@dataclass(frozen=True, kw_only=True, eq=False)
class FragilityReport:
    """The fragility predictor of §3.7 / App. G on one condition."""

    condition: str
    """The condition whose survival labels were predicted."""
    n_features: int
    """Active features with a defined r (the rows of the fit)."""
    survived_pct: float
    """Percent of them that survived (the positive class)."""
    cv_auc: float
    """Mean ROC AUC over the stratified folds (the paper's figure)."""
    cv_auc_std: float
    """Standard deviation of the fold AUCs."""
    oof_auc: float
    """AUC of the pooled out-of-fold scores."""
    fold_aucs: tuple[float, ...]
    """Per-fold AUCs."""
    coefficients: pd.DataFrame
    """Standardised coefficients (predictor, coef), largest magnitude first (Table 2)."""
    marginal_aucs: dict[str, float]
    """AUC of each predictor alone."""
    quartiles: pd.DataFrame
    """Survival % by predictor quartile (Fig. 3)."""
    roc_curves: tuple[RocCurve, ...]
    """Per-fold ROC curves (App. G)."""


@dataclass(frozen=True, kw_only=True, eq=False)
class StabilityChecks:
    """The checks of §3.8 / App. B / Table 5 on the focus condition."""

    condition: str
    """The condition the budget, subset and threshold checks are run on."""
    null: NullCheck | None
    """The null condition's check (mean r = 1 to 1e-6, 100% survived); None without a null."""
    budget: pd.DataFrame
    """Token-budget sensitivity: one row per budget (whole shards)."""
    subsets: pd.DataFrame
    """Random-subset stability: one row per seed."""
    thresholds: pd.DataFrame
    """The App. B grid of survival and damage thresholds."""
    second_layer: pd.DataFrame | None
    """Table 1 at the second read-out site (``second_sae``), if one was given."""


@dataclass(frozen=True, kw_only=True, eq=False)
class SurvivalResult:
    """Everything a survival audit found; see the module docstring."""

    config: SurvivalConfig
    """The config that made the result."""
    conditions: tuple[ConditionSummary, ...]
    """Table 1, one row per condition, in run order."""
    r: dict[str, np.ndarray]
    """Per-feature Pearson r (float64 ``[d_sae]``) by condition name."""
    reference: ReferenceStats
    """Reference-side statistics (firing counts, sums, peaks) of every feature."""
    active: np.ndarray
    """Active-feature mask (Eq. 4), bool ``[d_sae]``."""
    read_out: str
    """The read-out site (the SAE's hook, ``hook[head]`` for a per-head SAE)."""
    overlaps: tuple[OverlapResult, ...]
    """Overlaps between condition pairs (matched target vs matched pruning; Table 4)."""
    deciles: pd.DataFrame
    """Non-survival by reference firing-rate decile for every compressed condition (App. E)."""
    fragility: FragilityReport | None
    """The fragility predictor on the focus condition, or None (see ``fragility_note``)."""
    fragility_note: str | None
    """Why there is no fragility report (e.g. a single outcome), else None."""
    stability: StabilityChecks
    """Null, budget, subset, threshold and second-layer checks."""
    matches: dict[str, MatchResult]
    """Matched-pruning searches by condition name (App. F)."""
    info: dict[str, Any]
    """Run facts: model, SAE, d_sae, token counts, timings, cache use."""
    r_intervals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per condition, ``[3, d_sae]``: each feature's r jackknife SE, 95% interval low and high
    (empty without groups; see :mod:`cgc_lens.analysis.survival_intervals`)."""

    def to_frame(self) -> pd.DataFrame:
        """Table 1 as a DataFrame (every :class:`ConditionSummary` field, Table 1 first)."""
        table = summary_table(list(self.conditions))
        rest = [c for c in table.columns if c not in TABLE1_COLUMNS]
        return table[[*TABLE1_COLUMNS, *rest]]

    def summary(self, name: str) -> ConditionSummary:
        """One condition's row."""
        for row in self.conditions:
            if row.name == name:
                return row
        names = [c.name for c in self.conditions]
        raise CgcLensError(f"No condition {name!r}; conditions: {names}.")

    def feature_table(self) -> pd.DataFrame:
        """Per-feature results: firing rate, active, reference peak / mean, r and outcome per
        condition (one row per feature, ``feature`` = SAE feature index)."""
        table = feature_table(self.reference.firing_rate, self.r, self.active,
                              survived=self.config.survived, damaged=self.config.damaged,
                              constant=self.reference.constant)
        table.insert(2, "peak_activation", self.reference.peak_activation)
        table.insert(3, "mean_when_firing", self.reference.mean_when_firing)
        for name, iv in self.r_intervals.items():  # ± columns right after the condition's r
            at = table.columns.get_loc(f"r[{name}]") + 1
            for k, col in enumerate(("r_se", "r_ci_low", "r_ci_high")):
                table.insert(at + k, f"{col}[{name}]", iv[k])
        return table.reset_index()

    def _scatter_pair(self) -> tuple[str, str] | None:
        if self.overlaps:
            return self.overlaps[0].name_a, self.overlaps[0].name_b
        names = [c.name for c in self.conditions if c.name != NULL_NAME]
        focus = self.stability.condition
        others = [n for n in names if n != focus]
        return (focus, others[-1]) if others else None

    def figures(self) -> dict[str, go.Figure]:
        """The figures: taxonomy, dissociation, survival against bits per weight (when the
        conditions span formats), scatter, deciles, ROC, quartiles (those that have data: ROC
        and quartiles need a fragility report, the scatter two conditions)."""
        table = self.to_frame()
        figs = {"taxonomy": plot_taxonomy(table),
                "dissociation": plot_dissociation(_bit_sweep(table))}
        sized = table[table["bits_per_weight"].notna() & table["format"].ne("dense")]
        if sized["format"].nunique() >= 2:  # formats to compare at equal size
            figs["bits_per_weight"] = plot_survival_vs_bits(table)
        pair = self._scatter_pair()
        if pair is not None:
            figs["feature_scatter"] = plot_feature_scatter(
                self.r[pair[0]], self.r[pair[1]], names=pair, mask=self.active,
                survived=self.config.survived, damaged=self.config.damaged)
        if not self.deciles.empty:
            figs["deciles"] = plot_nonsurvival_deciles(self.deciles)
        if self.fragility is not None:
            figs["roc"] = plot_roc_curves(list(self.fragility.roc_curves))
            figs["quartiles"] = plot_quartile_survival(self.fragility.quartiles)
        return figs

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table but the per-feature one, by name (what the report shows); the conditions
        table has a ``<stat>_pm`` column (± of the 95% interval) after each statistic that has
        an interval."""
        out = {"conditions": with_half_widths(self.to_frame())}
        if self.overlaps:
            out["overlaps"] = pd.DataFrame([dataclasses.asdict(o) for o in self.overlaps])
        out["deciles"] = self.deciles
        if self.fragility is not None:
            out["fragility_coefficients"] = self.fragility.coefficients
            out["fragility_quartiles"] = self.fragility.quartiles
        s = self.stability
        checks = {"budget": s.budget, "subsets": s.subsets, "thresholds": s.thresholds}
        out.update({k: v for k, v in checks.items() if not v.empty})  # empty: check skipped
        if s.second_layer is not None:
            out["second_layer"] = s.second_layer
        rows = [{"condition": name, "step": k, "level": lvl, "ppl": v, "target_ppl": m.target}
                for name, m in self.matches.items() for k, (lvl, v) in enumerate(m.evaluations)]
        if rows:
            out["matching"] = pd.DataFrame(rows)
        return out

    def _payload(self) -> dict[str, Any]:
        frag = None
        if self.fragility is not None:
            f = self.fragility
            frag = {k: getattr(f, k) for k in ("condition", "n_features", "survived_pct", "cv_auc",
                                               "cv_auc_std", "oof_auc", "fold_aucs",
                                               "marginal_aucs")}
            frag["coefficients"] = dict(zip(f.coefficients["predictor"], f.coefficients["coef"],
                                            strict=True))
        return {
            "conditions": [row.to_dict() for row in self.conditions],
            "read_out": self.read_out,
            "overlaps": [dataclasses.asdict(o) for o in self.overlaps],
            "fragility": frag, "fragility_note": self.fragility_note,
            "focus": self.stability.condition,
            "null_check": None if self.stability.null is None
            else dataclasses.asdict(self.stability.null),
            "matched": {k: dataclasses.asdict(m) for k, m in self.matches.items()},
            "reference_tokens": self.reference.n_tokens,
            "info": self.info,
        }

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the results folder: ``results.json`` (top-level ``conditions``, ``config``,
        ``versions``), ``tables/*.csv`` (``features.csv`` per feature), ``arrays.safetensors``
        (r per condition, reference statistics, ROC curves), ``figures/*.html``, ``report.html``
        and ``MANIFEST.json``, whole or not at all (:func:`cgc_lens.io.results.write_results`).

        Args:
            out_dir: the folder; missing or empty unless ``overwrite``.
            overwrite: replace a non-empty ``out_dir`` whole.
        """
        arrays: dict[str, np.ndarray] = {f"r/{k}": np.asarray(v) for k, v in self.r.items()}
        arrays.update({f"reference/{k}": np.asarray(getattr(self.reference, k))
                       for k in _REF_FIELDS})
        arrays["active"] = self.active.astype(np.uint8)
        arrays.update({f"r_intervals/{k}": np.asarray(v) for k, v in self.r_intervals.items()})
        for c in self.fragility.roc_curves if self.fragility else ():
            arrays[f"roc/{c.fold}/fpr"], arrays[f"roc/{c.fold}/tpr"] = c.fpr, c.tpr
        intro = (f"Feature-survival audit of **{self.info.get('model')}** read out at "
                 f"`{self.read_out}` through a frozen SAE ({self.info.get('d_sae')} features, "
                 f"{self.conditions[0].tokens:,} tokens). Focus condition: "
                 f"**{self.stability.condition}**.")
        intro = "\n\n".join(t for t in (intro, how_sure(self), protocol_text(self.info)) if t)
        features = self.feature_table()

        def write_features(folder: Path) -> None:
            # The per-feature table (d_sae rows) is kept out of report.html to keep it light.
            (folder / "tables").mkdir(exist_ok=True)
            features.to_csv(folder / "tables" / "features.csv", index=False)

        return write_results(out_dir, study=STUDY, config=self.config,
                             payload=self._payload(), tables=self.tables(), arrays=arrays,
                             figures=self.figures(), title="cgc-lens survival audit", intro=intro,
                             overwrite=overwrite, extra=write_features)

    @classmethod
    def load(cls, out_dir: str | Path) -> SurvivalResult:
        """Read a folder written by :meth:`save`.

        Raises:
            CgcLensError: not a complete survival results folder (see
                :func:`cgc_lens.io.results.read_results`).
        """
        folder = read_results(out_dir)
        if folder.study != STUDY:
            raise CgcLensError(f"{out_dir} holds a {folder.study!r} study, expected {STUDY!r}.")
        p, t, a = folder.payload, folder.tables, folder.arrays
        rows = tuple(ConditionSummary(**row) for row in p["conditions"])
        ref = ReferenceStats(n_tokens=int(p["reference_tokens"]),
                             **{k: a[f"reference/{k}"] for k in _REF_FIELDS})
        r = {row.name: a[f"r/{row.name}"] for row in rows}
        frag = None
        if p["fragility"] is not None:
            f = p["fragility"]
            folds = sorted({int(k.split("/")[1]) for k in a if k.startswith("roc/")})
            curves = tuple(RocCurve(fold=k, fpr=a[f"roc/{k}/fpr"], tpr=a[f"roc/{k}/tpr"],
                                    auc=f["fold_aucs"][k]) for k in folds)
            frag = FragilityReport(
                condition=f["condition"], n_features=f["n_features"],
                survived_pct=f["survived_pct"], cv_auc=f["cv_auc"], cv_auc_std=f["cv_auc_std"],
                oof_auc=f["oof_auc"], fold_aucs=tuple(f["fold_aucs"]),
                coefficients=t["fragility_coefficients"], marginal_aucs=f["marginal_aucs"],
                quartiles=t["fragility_quartiles"], roc_curves=curves)
        null = p["null_check"]
        stability = StabilityChecks(
            condition=p["focus"], null=None if null is None else NullCheck(**null),
            budget=t.get("budget", pd.DataFrame()), subsets=t.get("subsets", pd.DataFrame()),
            thresholds=t["thresholds"],
            second_layer=t.get("second_layer"))
        matches = {k: MatchResult(**{**m, "evaluations": tuple(map(tuple, m["evaluations"]))})
                   for k, m in p["matched"].items()}
        return cls(config=SurvivalConfig.from_dict(folder.config), conditions=rows, r=r,
                   reference=ref, active=a["active"].astype(bool), read_out=p["read_out"],
                   overlaps=tuple(OverlapResult(**o) for o in p["overlaps"]),
                   deciles=t["deciles"], fragility=frag, fragility_note=p["fragility_note"],
                   stability=stability, matches=matches, info=p["info"],
                   r_intervals={row.name: a[f"r_intervals/{row.name}"] for row in rows
                                if f"r_intervals/{row.name}" in a})

    def __repr__(self) -> str:
        rows = ", ".join(f"{c.name}: {c.survived_pct:.1f}%" for c in self.conditions)
        return f"SurvivalResult({self.read_out}, survived {rows})"

