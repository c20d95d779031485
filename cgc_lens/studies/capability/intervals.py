"""How sure the capability study is of its numbers: the interval keys of ``results.json``, the
correlations table with ± columns, the "how sure are we" paragraph and the density error bars.

Every correlation gets ``<stat>_ci_low``, ``<stat>_ci_high`` (bootstrap over heads, percentile)
and ``<stat>_perm_p`` (permutation test of the pairing) beside it; the scipy p-values already
stored (``p``, ``spearman_p``, ``pearson_p``) keep their meaning (the t approximation). The
density gets a jackknife standard error over groups of calibration blocks and a normal 95%
interval δ ± 1.96 SE. The statistics are :mod:`cgc_lens.analysis.uncertainty`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cgc_lens.analysis.density import DensityResult
from cgc_lens.analysis.importance import RankCorrelation
from cgc_lens.analysis.uncertainty import CorrelationInterval, jackknife_se

__all__ = [
    "add_density_error_bars",
    "correlation_rows",
    "density_payload",
    "how_sure",
    "interval_keys",
    "rank_interval_keys",
]

_Z95 = 1.959963984540054
"""Normal quantile of a two-sided 95% interval."""


def interval_keys(ci: CorrelationInterval | None, stat: str) -> dict[str, float]:
    """``{stat}_ci_low``, ``{stat}_ci_high``, ``{stat}_perm_p`` of one interval (NaN if None)."""
    nan = float("nan")
    if ci is None:
        return {f"{stat}_ci_low": nan, f"{stat}_ci_high": nan, f"{stat}_perm_p": nan}
    return {f"{stat}_ci_low": ci.ci_low, f"{stat}_ci_high": ci.ci_high, f"{stat}_perm_p": ci.p}


def rank_interval_keys(c: RankCorrelation, names: Mapping[str, str]) -> dict[str, float]:
    """The interval keys of a :class:`RankCorrelation`'s ρ and r, under ``names`` (``rho`` →
    ``spearman`` for the ablation dict)."""
    out: dict[str, float] = {}
    for key, stat in names.items():
        out |= interval_keys(c.intervals.get(key), stat)
    return out


def _from_keys(d: Mapping[str, Any], stat: str, n: int, kind: str) -> CorrelationInterval:
    def num(k: str) -> float:
        v = d.get(k)
        return float("nan") if v is None else float(v)

    return CorrelationInterval(statistic=num(stat), ci_low=num(f"{stat}_ci_low"),
                               ci_high=num(f"{stat}_ci_high"), p=num(f"{stat}_perm_p"), n=n,
                               kind=kind, confidence=0.95, n_resamples=0)  # fmt: skip


def correlation_rows(result: Any) -> pd.DataFrame:
    """One row per correlation the study reports: statistic, bootstrap interval, ± (half its
    width), permutation p, scipy's p and n."""
    rows = []

    def add(name: str, ci: CorrelationInterval | None, p: float) -> None:
        if ci is None:
            return
        rows.append({"correlation": name, "statistic": ci.statistic, "ci_low": ci.ci_low,
                     "ci_high": ci.ci_high, "±": (ci.ci_high - ci.ci_low) / 2,
                     "perm_p": ci.p, "scipy_p": p, "n": ci.n})  # fmt: skip

    for label, c in (("Wanda", result.wanda_corr), ("magnitude", result.magnitude_corr),
                     ("ablation ΔPPL", result.ablation_corr)):  # fmt: skip
        add(f"Spearman ρ(density, {label})", c.intervals.get("rho"), c.p_value)
        add(f"Pearson r(density, {label})", c.intervals.get("pearson"), c.pearson_p)
    t = result.theorem1
    for level in t.correlations:
        for what, d in (("destruction", level["destruction"]), ("ΔPPL", level.get("dppl"))):
            if d is not None and "rho_ci_low" in d:
                add(f"Spearman ρ(density, {what} at retention {level['retention']:g})",
                    _from_keys(d, "rho", int(d["n"]), "spearman"), d["p"])
    for what, d in t.ptp_correlations.items():
        if d is not None and "rho_ci_low" in d:
            add(f"Spearman ρ(density, PTP of {what})", _from_keys(d, "rho", int(d["n"]),
                                                                  "spearman"), d["p"])
    return pd.DataFrame(rows)


def density_payload(d: DensityResult) -> dict[str, Any]:
    """``density_se``, ``density_ci_low`` / ``_high``, ``consistency_se`` and the intervals of
    the density summary (mean from the jackknife replicates; min and max as δ ± 1.96 SE of
    their heads)."""
    nan = np.full(d.density.shape, np.nan)
    se = nan if d.density_se is None else d.density_se
    lo, hi = d.density.argmin(), d.density.argmax()
    mean_se = float("nan") if d.density_replicates is None else float(
        jackknife_se(d.density_replicates.reshape(d.density_replicates.shape[0], -1).mean(1)))
    mean = float(d.density.mean())
    return {
        "consistency_method": d.consistency_method,
        "density_se": se, "density_ci_low": d.density - _Z95 * se,
        "density_ci_high": d.density + _Z95 * se,
        "consistency_se": nan if d.consistency_se is None else d.consistency_se,
        "summary": {"mean_se": mean_se, "mean_ci_low": mean - _Z95 * mean_se,
                    "mean_ci_high": mean + _Z95 * mean_se,
                    "min_ci_low": float(d.density.flat[lo] - _Z95 * se.flat[lo]),
                    "min_ci_high": float(d.density.flat[lo] + _Z95 * se.flat[lo]),
                    "max_ci_low": float(d.density.flat[hi] - _Z95 * se.flat[hi]),
                    "max_ci_high": float(d.density.flat[hi] + _Z95 * se.flat[hi])},
    }  # fmt: skip


def how_sure(result: Any) -> str:
    """The "how sure are we" paragraph, generated from the numbers."""
    d = result.density
    parts = []
    w, a = result.wanda_corr.intervals, result.ablation_corr.intervals
    if "rho" in w:
        parts.append(f"density vs Wanda: {w['rho'].sentence()}")
    if "rho" in a:
        parts.append(f"density vs ablation ΔPPL: {a['rho'].sentence()}")
    if "pearson" in a:
        parts.append(f"{a['pearson'].sentence()}")
    th = result.theorem1
    j = int(np.argmin(np.abs(th.retentions - result.config.retention)))
    c = th.correlations[j]["destruction"]
    if "rho_ci_low" in c:
        ci = _from_keys(c, "rho", int(c["n"]), "spearman")
        parts.append(f"Theorem 1 (features destroyed at retention {th.retentions[j]:g}): "
                     f"{ci.sentence()}")
    text = ("**How sure are we.** Correlations over heads, with 95% bootstrap intervals over "
            "heads and permutation p-values: " + "; ".join(parts) + ".")
    if d.density_se is not None:
        spread = float(np.ptp(d.density))
        med = float(np.median(d.density_se))
        text += (f" Density ranges {d.density.min():.3f}-{d.density.max():.3f} across heads "
                 f"with a median standard error of {med:.4f} per head (jackknife over groups "
                 f"of calibration blocks), {med / spread if spread > 0 else math.inf:.1%} of "
                 "that range.")
    if result.consistency_categories == "block":
        text += (" Consistency Ψ here is cross-sequence (each block its own category), not "
                 "Def 3's cross-category consistency: the corpus had no category labels.")
    return text


def add_density_error_bars(fig: go.Figure, d: DensityResult) -> go.Figure:
    """Horizontal 95% error bars (δ ± 1.96 SE) on a per-layer density scatter whose traces
    hold the heads of one layer each (:func:`~cgc_lens.plots.capability.density_vs_ablation`)."""
    if d.density_se is None:
        return fig
    n_heads = d.density.shape[1]
    for ell, trace in enumerate(fig.data[: d.density.shape[0]]):
        trace.error_x = {"type": "data", "array": _Z95 * d.density_se[ell][:n_heads],
                         "visible": True, "thickness": 1}  # fmt: skip
    return fig
