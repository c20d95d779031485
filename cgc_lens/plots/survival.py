"""Figures of the feature-survival audit (QDM paper Figs. 2-3, Apps. A, E, G).

Each function takes results of :mod:`cgc_lens.analysis.survival` / ``fragility`` and returns a
``go.Figure``; nothing is computed here beyond selecting what is drawn. The figures of
condition-level numbers (taxonomy, dissociation, survival against bits per weight) draw each
statistic's 95% interval as an error bar when the table has its ``<stat>_ci_low`` /
``<stat>_ci_high`` columns (:mod:`cgc_lens.analysis.survival_intervals`): asymmetric, since an
interval is clipped to the statistic's range (r to [-1, 1], percentages to [0, 100]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cgc_lens.analysis.fragility import RocCurve
from cgc_lens.errors import CgcLensError

__all__ = [
    "plot_dissociation",
    "plot_feature_scatter",
    "plot_nonsurvival_deciles",
    "plot_quartile_survival",
    "plot_roc_curves",
    "plot_survival_vs_bits",
    "plot_taxonomy",
]

_OUTCOME_COLORS = {"survived": "#2ca02c", "degraded": "#ff7f0e", "damaged": "#d62728"}
_R_COLOR, _PPL_COLOR = "#1f77b4", "#d62728"
"""The dissociation plot's two series (mean r, perplexity change)."""
_FORMAT_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                   "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
"""One colour per format in the survival-against-bits figure (plotly's default cycle)."""
_ERROR_COLOR = "#333333"
"""Error bars on the stacked taxonomy bars (dark: they cross the next segment's colour)."""


def _require(table: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CgcLensError(f"{what} needs columns {columns}; missing {missing}.")


def _error_bars(rows: pd.DataFrame, stat: str) -> dict[str, object] | None:
    """plotly ``error_y`` settings drawing ``stat``'s interval on each row: ``array`` =
    ``<stat>_ci_high`` − value, ``arrayminus`` = value − ``<stat>_ci_low`` (NaN where a row has
    no interval); None when the table has no interval of ``stat`` at all.

    Example:
        >>> rows = pd.DataFrame({"mean_corr": [0.8, 0.9], "mean_corr_ci_low": [0.75, None],
        ...                      "mean_corr_ci_high": [0.82, None]})
        >>> bars = _error_bars(rows, "mean_corr")
        >>> np.round(bars["array"], 6).tolist()[0], np.round(bars["arrayminus"], 6).tolist()[0]
        (0.02, 0.05)
    """
    low, high = f"{stat}_ci_low", f"{stat}_ci_high"
    if low not in rows.columns or high not in rows.columns:
        return None
    lo = pd.to_numeric(rows[low], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows[high], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(lo) & np.isfinite(hi)).any():
        return None
    value = rows[stat].to_numpy(dtype=float)
    return {"type": "data", "symmetric": False, "array": hi - value, "arrayminus": value - lo,
            "visible": True, "thickness": 1.2, "width": 4}  # fmt: skip


def plot_taxonomy(summary: pd.DataFrame) -> go.Figure:
    """Survived / degraded / damaged % stacked per condition (Fig. 2, App. A), each segment
    with its 95% interval as an error bar at its top when the table has intervals.

    Args:
        summary: :func:`~cgc_lens.analysis.survival.summary_table` output.

    Example:
        >>> table = pd.DataFrame({"name": ["int8", "int6"], "survived_pct": [98.0, 60.0],
        ...     "degraded_pct": [2.0, 38.0], "damaged_pct": [0.0, 2.0]})
        >>> [t.name for t in plot_taxonomy(table).data]
        ['survived', 'degraded', 'damaged']
    """
    _require(summary, ["name", "survived_pct", "degraded_pct", "damaged_pct"], "plot_taxonomy")
    fig = go.Figure()
    for outcome, color in _OUTCOME_COLORS.items():
        bars = _error_bars(summary, f"{outcome}_pct")
        fig.add_bar(
            x=summary["name"], y=summary[f"{outcome}_pct"], name=outcome, marker_color=color,
            error_y=None if bars is None else {**bars, "color": _ERROR_COLOR},
        )  # fmt: skip
    fig.update_layout(
        barmode="stack", xaxis_title="condition", yaxis_title="% of active features",
        yaxis_range=[0, 100], title="Feature survival by condition",
    )  # fmt: skip
    return fig


def _round_ticks(values: pd.Series, n_ticks: int = 5) -> dict[str, object]:
    """Axis settings for ticks at 0 ± multiples of a round step (1, 2, 2.5 or 5 × 10^k), about
    ``n_ticks`` of them over ``values``; plotly's own ticks when the values span nothing."""
    span = float(values.max() - values.min())
    if not np.isfinite(span) or span <= 0:
        return {"tickmode": "auto"}
    raw = span / n_ticks
    base = 10.0 ** np.floor(np.log10(raw))
    step = float(base * next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * base >= raw))
    return {"tickmode": "linear", "tick0": 0.0, "dtick": step}


def _reference_markers(fig: go.Figure, ref: pd.DataFrame, label: str) -> None:
    """The reference row of the dissociation plot: open diamonds in the series' colours at its
    own category ``label``, a dotted divider between it and the bit-widths."""
    series = (
        ("mean_corr", "mean r", _R_COLOR, False),
        ("ppl_delta_pct", "PPL Δ%", _PPL_COLOR, True),
    )
    for column, name, color, secondary in series:
        fig.add_trace(
            go.Scatter(
                x=[label] * len(ref), y=ref[column], mode="markers", showlegend=False,
                name=f"{label}: {name}", error_y=_error_bars(ref, column),
                marker={"symbol": "diamond-open", "size": 11, "color": color},
            ),
            secondary_y=secondary,
        )  # fmt: skip
    fig.add_vline(x=0.5, line_dash="dot", line_color="gray")


def plot_dissociation(summary: pd.DataFrame, *, reference: str | None = "reference") -> go.Figure:
    """Mean r (left axis, with its 95% interval as error bars when the table has one) and
    perplexity change % (right axis) against bit-width (§4.3).

    Rows without ``bits`` or ``ppl_delta_pct`` (e.g. pruning) are left out. The bit-widths are
    categories, read from full precision to coarse, so 8 → 4 bits gets the width it deserves;
    the row named ``reference`` (the survival study's null condition, at the model's own
    precision) is drawn apart at the left, behind a dotted divider, not joined to the lines.

    Example:
        >>> table = pd.DataFrame({"bits": [16, 8, 6], "mean_corr": [1.0, 0.98, 0.89],
        ...     "ppl_delta_pct": [0.0, 1.0, 14.7]})
        >>> [t.yaxis for t in plot_dissociation(table).data]
        ['y', 'y2']
    """
    _require(summary, ["bits", "mean_corr", "ppl_delta_pct"], "plot_dissociation")
    rows = summary.dropna(subset=["bits", "ppl_delta_pct"]).sort_values("bits", ascending=False)
    named = "name" in rows.columns and reference is not None
    is_ref = rows["name"] == reference if named else pd.Series(False, index=rows.index)
    ref, rows = rows[is_ref], rows[~is_ref]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(
            x=rows["bits"], y=rows["mean_corr"], name="mean r", mode="lines+markers",
            line={"color": _R_COLOR}, error_y=_error_bars(rows, "mean_corr"),
        ),
        secondary_y=False,
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=rows["bits"], y=rows["ppl_delta_pct"], name="PPL Δ%", mode="lines+markers",
            line={"dash": "dash", "color": _PPL_COLOR},
        ),
        secondary_y=True,
    )  # fmt: skip
    categories = list(rows["bits"])
    if not ref.empty:
        label = f"{reference} ({float(ref['bits'].iloc[0]):g} bits)"
        categories = [label, *categories]
        _reference_markers(fig, ref, label)
    fig.update_xaxes(title_text="bits", type="category", categoryorder="array",
                     categoryarray=categories)  # fmt: skip
    fig.update_yaxes(title_text="mean feature r", secondary_y=False)
    ppl = pd.concat([rows["ppl_delta_pct"], ref["ppl_delta_pct"], pd.Series([0.0])])
    fig.update_yaxes(title_text="perplexity change (%)", secondary_y=True, showgrid=False,
                     **_round_ticks(ppl))  # fmt: skip
    fig.update_layout(title="Feature fidelity and perplexity against bit-width")
    return fig


def _padded_range(values: np.ndarray) -> list[float]:
    """``[min, max]`` of ``values`` widened by 3 % of the span on each side (0.005 at least)."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.03 * (hi - lo), 0.005)
    return [lo - pad, hi + pad]


def _threshold_lines(
    fig: go.Figure, survived: float, damaged: float | None, axis_range: list[float]
) -> None:
    """Dotted survived (green) and damaged (red) thresholds on both axes of the scatter; the
    damaged one only where it falls inside ``axis_range``."""
    lines = [(survived, f"survived ≥ {survived:g}", _OUTCOME_COLORS["survived"])]
    if damaged is not None and axis_range[0] <= damaged <= axis_range[1]:
        lines.append((damaged, f"damaged < {damaged:g}", _OUTCOME_COLORS["damaged"]))
    for value, text, color in lines:
        style = {"line_dash": "dot", "line_color": color, "line_width": 1.5}
        fig.add_hline(y=value, annotation_text=text, annotation_position="bottom left",
                      annotation_font_color=color, **style)  # fmt: skip
        fig.add_vline(x=value, **style)


def plot_feature_scatter(
    r_a: np.ndarray,
    r_b: np.ndarray,
    *,
    names: tuple[str, str] = ("a", "b"),
    mask: np.ndarray | None = None,
    survived: float = 0.9,
    damaged: float | None = 0.5,
) -> go.Figure:
    """Per-feature r under two conditions, with y = x and the outcome thresholds (App. E).

    Both axes share one range, fitted to the drawn features (and the survival threshold) with a
    small margin; the survived and damaged thresholds are dotted lines on both axes (the damaged
    one only where it falls in that range).

    Args:
        r_a, r_b: per-feature r of the two conditions (shape ``[d_sae]``).
        names: axis labels of the two conditions.
        mask: features to draw (e.g. the active mask); default all with finite r in both.
        survived: r at and above which a feature survived (green dotted lines).
        damaged: r below which a feature is damaged (red dotted lines); None draws none.

    Example:
        >>> fig = plot_feature_scatter(np.array([0.9, 0.5]), np.array([0.8, 0.6]))
        >>> [t.name for t in fig.data]
        ['features', 'y = x']
    """
    r_a, r_b = np.asarray(r_a, dtype=float), np.asarray(r_b, dtype=float)
    if r_a.shape != r_b.shape or r_a.ndim != 1:
        raise CgcLensError(f"r_a and r_b must be 1-D of one shape, got {r_a.shape}, {r_b.shape}.")
    keep = np.isfinite(r_a) & np.isfinite(r_b)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool)
    ids = np.flatnonzero(keep)
    axis_range = _padded_range(np.concatenate([r_a[keep], r_b[keep], [survived]]))
    fig = go.Figure()
    fig.add_trace(
        go.Scattergl(
            x=r_a[keep], y=r_b[keep], mode="markers", name="features", customdata=ids,
            marker={"size": 4, "opacity": 0.5},
            hovertemplate="feature %{customdata}<br>%{x:.3f}, %{y:.3f}<extra></extra>",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(
            x=axis_range, y=axis_range, mode="lines", name="y = x",
            line={"color": "gray", "width": 1},
        )
    )  # fmt: skip
    _threshold_lines(fig, survived, damaged, axis_range)
    fig.update_layout(
        xaxis_title=f"r ({names[0]})", yaxis_title=f"r ({names[1]})",
        title=f"Per-feature r: {names[0]} vs {names[1]}",
    )  # fmt: skip
    fig.update_xaxes(range=axis_range, constrain="domain")
    fig.update_yaxes(range=axis_range, scaleanchor="x", scaleratio=1)
    return fig


def plot_nonsurvival_deciles(deciles: pd.DataFrame) -> go.Figure:
    """Non-survived % per reference firing-rate decile, one bar group per condition (App. E).

    Args:
        deciles: :func:`~cgc_lens.analysis.survival.decile_table` output.
    """
    _require(deciles, ["condition", "decile", "nonsurvived_pct"], "plot_nonsurvival_deciles")
    fig = go.Figure()
    for name, rows in deciles.groupby("condition", sort=False):
        fig.add_bar(x=rows["decile"], y=rows["nonsurvived_pct"], name=str(name))
    fig.update_layout(
        barmode="group", xaxis_title="reference firing-rate decile (1 = rarest)",
        yaxis_title="non-survived (%)", title="Non-survival by firing-rate decile",
    )  # fmt: skip
    return fig


def plot_roc_curves(roc_curves: Sequence[RocCurve]) -> go.Figure:
    """Per-fold cross-validated ROC curves of the fragility predictor, with chance (App. G).

    Args:
        roc_curves: ``FragilityPredictor.roc_curves_``.
    """
    if not roc_curves:
        raise CgcLensError("plot_roc_curves needs at least one ROC curve, got none.")
    fig = go.Figure()
    for curve in roc_curves:
        fig.add_scatter(
            x=curve.fpr, y=curve.tpr, mode="lines", name=f"fold {curve.fold} (AUC {curve.auc:.3f})"
        )
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash"})
    mean_auc = float(np.mean([c.auc for c in roc_curves]))
    fig.update_layout(
        xaxis_title="false-positive rate", yaxis_title="true-positive rate",
        title=f"Fragility predictor ROC (mean fold AUC {mean_auc:.3f})",
    )  # fmt: skip
    return fig


def plot_quartile_survival(quartiles: pd.DataFrame) -> go.Figure:
    """Survival % by predictor quartile, one bar group per predictor (Fig. 3).

    Args:
        quartiles: :func:`~cgc_lens.analysis.fragility.survival_by_quartile` output.
    """
    _require(quartiles, ["predictor", "quartile", "survived_pct"], "plot_quartile_survival")
    fig = go.Figure()
    for name, rows in quartiles.groupby("predictor", sort=False):
        fig.add_bar(x=rows["quartile"], y=rows["survived_pct"], name=str(name))
    fig.update_layout(
        barmode="group", xaxis_title="predictor quartile (1 = lowest)",
        yaxis_title="survived (%)", yaxis_range=[0, 100], title="Survival by predictor quartile",
    )  # fmt: skip
    return fig


def plot_survival_vs_bits(summary: pd.DataFrame) -> go.Figure:
    """Mean r (left) and survived % (right) against effective bits per weight, one labelled
    marker per condition, one colour per format: formats compared at equal size; each marker
    with its 95% interval as an error bar when the table has intervals.

    Rows without ``bits_per_weight`` (a plan of several steps, a checkpoint of unknown
    storage) are left out.

    Args:
        summary: Table 1 with ``name``, ``format``, ``bits_per_weight``, ``mean_corr`` and
            ``survived_pct`` (:meth:`~cgc_lens.studies.survival.SurvivalResult.to_frame`).

    Example:
        >>> table = pd.DataFrame({"name": ["int4", "nf4", "2:4"], "format": ["rtn", "nf4",
        ...     "semi_structured"], "bits_per_weight": [4.1, 4.5, 9.0],
        ...     "mean_corr": [0.79, 0.85, 0.43], "survived_pct": [29.0, 41.7, 2.4]})
        >>> sorted({t.name for t in plot_survival_vs_bits(table).data})
        ['nf4', 'rtn', 'semi_structured']
    """
    columns = ["name", "format", "bits_per_weight", "mean_corr", "survived_pct"]
    _require(summary, columns, "plot_survival_vs_bits")
    rows = summary.dropna(subset=["bits_per_weight"])
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=("mean feature r", "survived features (%)"),
    )
    formats = list(dict.fromkeys(rows["format"].fillna("other")))
    for i, fmt in enumerate(formats):
        part = rows[rows["format"].fillna("other") == fmt]
        for col, y in ((1, "mean_corr"), (2, "survived_pct")):
            fig.add_trace(
                go.Scatter(
                    x=part["bits_per_weight"], y=part[y], text=part["name"], name=fmt,
                    error_y=_error_bars(part, y), mode="markers+text", textposition="top center",
                    legendgroup=fmt, showlegend=col == 1,
                    marker={"size": 10, "color": _FORMAT_PALETTE[i % len(_FORMAT_PALETTE)]},
                    hovertemplate="%{text}: %{y:.3f} at %{x:.3f} bits/weight<extra></extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
    fig.update_xaxes(title_text="effective bits per weight")
    fig.update_yaxes(title_text="mean r", row=1, col=1)
    fig.update_yaxes(title_text="% survived", range=[0, 105], row=1, col=2)
    fig.update_layout(
        title="Feature survival against bits per weight, by format", legend_title_text="format"
    )
    return fig
