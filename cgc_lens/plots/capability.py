"""Figures of the capability study (Gupta 2026, Figs 1-4 and Table 1). Each returns a go.Figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from jaxtyping import Real
from plotly.colors import qualitative
from scipy.stats import rankdata

from cgc_lens.analysis.allocation import Allocation
from cgc_lens.analysis.density import DensityResult
from cgc_lens.analysis.evolution import SearchResult
from cgc_lens.analysis.importance import RankCorrelation
from cgc_lens.errors import CgcLensError
from cgc_lens.plots.grid import grid_shape, wrapped_grid

__all__ = [
    "allocation_bars",
    "density_heatmap",
    "density_vs_ablation",
    "density_wanda_ranks",
    "reallocation_map",
    "search_history",
]


def _density(density: DensityResult | np.ndarray) -> np.ndarray:
    return density.density if isinstance(density, DensityResult) else np.asarray(density, float)


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise CgcLensError(
            f"density and {what} must both be [n_layers, n_heads]; got {a.shape} and {b.shape}."
        )


def _head_labels(shape: tuple[int, ...]) -> np.ndarray:
    layer, head = np.divmod(np.arange(int(np.prod(shape))), shape[1])
    return np.array([f"L{ell}H{h}" for ell, h in zip(layer, head, strict=True)])


def _layer_colors(n_layers: int) -> list[str]:
    """One categorical colour per layer (Plotly's 10, Dark24 beyond ten layers; cycled)."""
    palette = qualitative.Plotly if n_layers <= len(qualitative.Plotly) else qualitative.Dark24
    return [palette[ell % len(palette)] for ell in range(n_layers)]


def _per_layer_scatter(
    fig: go.Figure, x: np.ndarray, y: np.ndarray, shape: tuple[int, ...], hovertemplate: str
) -> None:
    """Add one marker trace per layer (``L0``, ``L1`` … in the legend, a colour each) of the
    per-head values ``x`` and ``y`` (flattened ``[n_layers, n_heads]``, layer-major)."""
    n_layers, n_heads = shape
    labels = _head_labels(shape)
    for ell, color in enumerate(_layer_colors(n_layers)):
        part = slice(ell * n_heads, (ell + 1) * n_heads)
        fig.add_trace(
            go.Scatter(
                x=x[part], y=y[part], mode="markers", name=f"L{ell}", text=labels[part],
                marker={"color": color, "size": 9}, hovertemplate=hovertemplate,
            )
        )  # fmt: skip
    fig.update_layout(legend_title_text="layer")


def _head_grid_axes(fig: go.Figure, n_layers: int) -> None:
    """Integer ticks on both axes of a layer × head heatmap, every layer and head labelled,
    layer 0 on top; tall enough for a readable row per layer (20 px at least)."""
    fig.update_xaxes(title_text="head", tickmode="linear", tick0=0, dtick=1, showgrid=False)
    fig.update_yaxes(title_text="layer", tickmode="linear", tick0=0, dtick=1, showgrid=False,
                     autorange="reversed")  # fmt: skip
    if n_layers > 14:  # plotly's default 450 px holds about 14 labelled rows
        fig.update_layout(height=180 + 20 * n_layers)


_HEAD_HOVER = "L%{y}H%{x}<br>"
"""Hover prefix of a layer × head heatmap cell: ``L3H2``."""


def density_heatmap(result: DensityResult, *, title: str | None = None) -> go.Figure:
    """Figure 1: capability density, layer × head, hover showing β̃, H̃ and Ψ.

    Example:
        >>> from cgc_lens.analysis.density import DensityResult
        >>> z = np.full((2, 3), 0.5)
        >>> r = DensityResult(breadth=z, entropy=z, consistency=z, density=z,
        ...     breadth_count=np.ones((2, 3), int), entropy_nats=z, n_tokens=np.array([9, 9]),
        ...     pairs=np.zeros((2, 1, 2), int), d_sae=4)
        >>> density_heatmap(r).data[0].type
        'heatmap'
    """
    n_layers, n_heads = result.density.shape
    custom = np.stack([result.breadth, result.entropy, result.consistency], axis=-1)
    fig = go.Figure(
        go.Heatmap(
            z=result.density,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            customdata=custom,
            colorscale="Reds",
            colorbar={"title": "δ"},
            xgap=1,
            ygap=1,
            hovertemplate=_HEAD_HOVER + "δ = %{z:.4f}<br>β̃ = %{customdata[0]:.4f}"
            "<br>H̃ = %{customdata[1]:.4f}<br>Ψ = %{customdata[2]:.4f}<extra></extra>",
        )
    )
    lo, hi = float(result.density.min()), float(result.density.max())
    fig.update_layout(title=title or f"Capability density δ (range {lo:.3f}-{hi:.3f})")
    _head_grid_axes(fig, n_layers)
    return fig


def density_wanda_ranks(
    density: DensityResult | Real[np.ndarray, "n_layers n_heads"],
    importance: Real[np.ndarray, "n_layers n_heads"],
    correlation: RankCorrelation | None = None,
    *,
    importance_name: str = "Wanda",
) -> go.Figure:
    """Figure 3: density rank vs importance rank per head, one colour (and trace) per layer."""
    d, w = _density(density), np.asarray(importance, float)
    _same_shape(d, w, importance_name)
    fig = go.Figure()
    _per_layer_scatter(
        fig, rankdata(w.ravel()), rankdata(d.ravel()), d.shape,
        "%{text}<br>" + importance_name + " rank %{x}<br>density rank %{y}<extra></extra>",
    )  # fmt: skip
    sub = ""
    if correlation is not None:
        c = correlation
        sub = f": Spearman ρ = {c.rho:.3f} (p = {c.p_value:.2g}, n = {c.n})"
    fig.update_layout(
        title=f"Capability density vs {importance_name} importance{sub}",
        xaxis_title=f"{importance_name} rank",
        yaxis_title="density rank",
    )
    return fig


def density_vs_ablation(
    density: DensityResult | Real[np.ndarray, "n_layers n_heads"],
    delta_ppl: Real[np.ndarray, "n_layers n_heads"],
    correlation: RankCorrelation | None = None,
) -> go.Figure:
    """Figure 2: density δ vs the ΔPPL of ablating each head alone, one colour per layer."""
    d, dp = _density(density), np.asarray(delta_ppl, float)
    _same_shape(d, dp, "delta_ppl")
    fig = go.Figure()
    _per_layer_scatter(
        fig,
        d.ravel(),
        dp.ravel(),
        d.shape,
        "%{text}<br>δ = %{x:.4f}<br>ΔPPL = %{y:.4g}<extra></extra>",
    )
    sub = (
        ""
        if correlation is None
        else (
            f": Pearson r = {correlation.pearson_r:.3f} (p = {correlation.pearson_p:.2g}), "
            f"Spearman ρ = {correlation.rho:.3f} (p = {correlation.p_value:.2g})"
        )
    )
    fig.update_layout(
        title=f"Capability density vs head ablation impact{sub}",
        xaxis_title="capability density δ",
        yaxis_title="ΔPPL when ablated",
    )
    return fig


def reallocation_map(allocation: Allocation, baseline: Allocation | None = None) -> go.Figure:
    """Figure 4 (right): retention − baseline per head; blue protected, red compressed harder.

    ``baseline`` defaults to uniform retention at the allocation's ρ.

    Example:
        >>> from cgc_lens.analysis.allocation import cgc_l
        >>> fig = reallocation_map(cgc_l(np.array([[0.2, 0.4], [0.6, 0.8]]), rho=0.5))
        >>> np.round(fig.data[0].z, 3).tolist()
        [[-0.3, -0.1], [0.1, 0.3]]
    """
    base = (
        np.full(allocation.retention.shape, allocation.rho)
        if baseline is None
        else baseline.retention
    )
    if base.shape != allocation.retention.shape:
        raise CgcLensError(
            f"baseline shape {base.shape} differs from the allocation's "
            f"{allocation.retention.shape}."
        )
    delta = allocation.retention - base
    n_layers, n_heads = delta.shape
    ceil = allocation.ceilings if allocation.ceilings is not None else np.full(delta.shape, np.nan)
    custom = np.stack([allocation.retention, ceil], axis=-1)
    bound = float(np.abs(delta).max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=delta,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            customdata=custom,
            colorscale="RdBu",
            zmid=0.0,
            zmin=-bound,
            zmax=bound,
            colorbar={"title": "Δ retention"},
            xgap=1,
            ygap=1,
            hovertemplate=_HEAD_HOVER + "Δ = %{z:+.3f}<br>retention = %{customdata[0]:.3f}"
            "<br>ceiling = %{customdata[1]:.3f}<extra></extra>",
        )
    )
    name = "uniform" if baseline is None else baseline.method
    fig.update_layout(title=f"{allocation.method} reallocation vs {name} (ρ = {allocation.rho:g})")
    _head_grid_axes(fig, n_layers)
    return fig


def allocation_bars(
    table: pd.DataFrame, *, reference: str | None = "dense", max_cols: int = 3
) -> go.Figure:
    """Table 1 as bars: one panel per metric column (PPL, probe scores …), one bar per method.

    Panels wrap onto a new row after ``max_cols``; a method has the same colour in every panel.

    Args:
        table: index = method (``dense``, ``uniform``, ``cgc_l``, ``inverted``, ``cgc_f`` …),
            columns = metrics.
        reference: a row drawn as a dashed line in every panel instead of a bar (if present);
            its value is written under the panel's title.
        max_cols: panels per row.

    Example:
        >>> t = pd.DataFrame({"ppl": [26.7, 27.6, 27.9]}, index=["dense", "uniform", "cgc_l"])
        >>> [list(b.x) for b in allocation_bars(t).data]
        [['uniform', 'cgc_l']]
    """
    if table.empty or table.shape[1] == 0:
        raise CgcLensError("table needs at least one method row and one metric column.")
    has_ref = reference in table.index
    bars = table.drop(index=reference) if has_ref else table
    palette = qualitative.Plotly
    colors = [palette[i % len(palette)] for i in range(len(bars))]
    titles = [
        f"{metric}<br><span style='font-size:11px'>dashed: {reference} "
        f"{float(table.loc[reference, metric]):.4g}</span>" if has_ref else str(metric)
        for metric in table.columns
    ]  # fmt: skip
    fig = wrapped_grid(titles, max_cols)
    n_cols = grid_shape(len(titles), max_cols)[1]
    for i, metric in enumerate(table.columns):
        row, col = divmod(i, n_cols)
        values = bars[metric].to_numpy(dtype=float)
        fig.add_trace(
            go.Bar(
                x=[str(m) for m in bars.index], y=values, name=str(metric), marker_color=colors,
                text=[f"{v:.4g}" for v in values], showlegend=False,
                hovertemplate="%{x}: %{y:.4g}<extra>" + str(metric) + "</extra>",
            ),
            row=row + 1, col=col + 1,
        )  # fmt: skip
        if has_ref:
            fig.add_hline(y=float(table.loc[reference, metric]), line_dash="dash",
                          line_color="#444", row=row + 1, col=col + 1)  # fmt: skip
    fig.update_layout(title="Compression results per allocation"
                      + (f" (dashed line: {reference})" if has_ref else ""))  # fmt: skip
    return fig


def search_history(result: SearchResult) -> go.Figure:
    """CGC-F: best fitness per generation (generation 0 is the snapped start)."""
    fig = go.Figure(
        go.Scatter(x=np.arange(len(result.history)), y=result.history, mode="lines+markers")
    )
    fig.update_layout(
        title=f"CGC-F search ({result.n_evaluations} fitness evaluations)",
        xaxis_title="generation",
        yaxis_title="fitness (lower is better)",
    )
    return fig
