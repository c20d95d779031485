"""Figures of the AdaptiveCompress study: training curves, compressor vs TopK per layer, sparse
probing against the majority baseline, collapse diagnostics. Each returns a ``go.Figure``."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from cgc_lens.errors import CgcLensError
from cgc_lens.plots.grid import grid_shape, wrapped_grid

__all__ = ["plot_diagnostics", "plot_probing", "plot_quality_comparison",
           "plot_training_curves"]

_DASH = {"adaptive": "solid", "topk": "dash", "resid": "dot"}
_COLOR = {"adaptive": "#d62728", "topk": "#1f77b4", "resid": "#7f7f7f"}
_LABEL = {"adaptive": "AdaptiveCompress", "topk": "TopK SAE", "resid": "residual (no SAE)"}


def _need(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CgcLensError(f"The {what} table needs columns {list(columns)}; missing {missing}.")


def plot_training_curves(history: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Loss, batch explained variance, L0 and the retention r(t) over training steps.

    One line per (method, site): colour by site, solid for the compressor, dashed for TopK.

    Example:
        >>> h = pd.DataFrame({"step": [1, 2] * 2, "method": ["adaptive"] * 2 + ["topk"] * 2,
        ...     "site": ["blocks.0.hook_resid_post"] * 4, "layer": [0] * 4, "loss": [2.0, 1.0] * 2,
        ...     "explained_variance": [0.1, 0.5] * 2, "l0": [3.0, 2.0] * 2,
        ...     "retention": [0.999, 0.95] * 2})
        >>> len(plot_training_curves(h).data)
        7
    """
    _need(history, ("step", "method", "site", "loss", "explained_variance", "l0", "retention"),
          "training history")
    fig = wrapped_grid(["training loss<br>(Eq. 5; TopK: reconstruction)",
                        "explained variance<br>(training batches)",
                        "L0<br>(active latents per token)", "retention r(t)<br>(Eq. 6)"],
                       max_cols=2)  # fmt: skip
    sites = list(dict.fromkeys(history["site"]))
    labels, hook = _site_labels(sites)
    colors = {s: qualitative.Plotly[i % len(qualitative.Plotly)] for i, s in enumerate(sites)}
    for (method, site), part in history.groupby(["method", "site"], sort=False):
        name = f"{_LABEL.get(method, method)} · {labels[site]}"
        style = {"color": colors[site], "dash": _DASH.get(method, "solid")}
        for row, col, column in ((1, 1, "loss"), (1, 2, "explained_variance"), (2, 1, "l0")):
            fig.add_trace(go.Scatter(x=part["step"], y=part[column], mode="lines", name=name,
                                     line=style, legendgroup=name,
                                     showlegend=(row, col) == (1, 1)), row=row, col=col)
    schedule = history.dropna(subset=["retention"])
    schedule = schedule[schedule["site"] == sites[0]]
    fig.add_trace(go.Scatter(x=schedule["step"], y=schedule["retention"], mode="lines",
                             name="retention r(t)", line={"color": "black"}), row=2, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step", title_standoff=4)
    fig.update_layout(title=title or "AdaptiveCompress training curves"
                      + (f" at {hook}" if hook else ""))  # fmt: skip
    return fig


def _site_labels(sites: list[str]) -> tuple[dict[str, str], str | None]:
    """Short labels of hook sites: ``L12`` for ``blocks.12.hook_resid_post`` when every site is
    the same hook of a different layer (that hook is returned too), else the sites themselves.

    Example:
        >>> _site_labels(["blocks.0.hook_resid_post", "blocks.12.hook_resid_post"])
        ({'blocks.0.hook_resid_post': 'L0', 'blocks.12.hook_resid_post': 'L12'}, 'hook_resid_post')
        >>> _site_labels(["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"])[1] is None
        True
    """
    found = [re.fullmatch(r"blocks\.(\d+)\.(.+)", str(s)) for s in sites]
    hooks = {m.group(2) for m in found if m}
    layers = [m.group(1) for m in found if m]
    if all(found) and len(hooks) == 1 and len(set(layers)) == len(sites):
        return {s: f"L{ell}" for s, ell in zip(sites, layers, strict=True)}, hooks.pop()
    return {s: str(s) for s in sites}, None


_QUALITY = (("explained_variance", "explained variance"),
            ("latent_contribution", "… of it from the latents"), ("mse", "MSE per element"),
            ("l0", "L0"), ("kl", "KL (spliced), nats"), ("ce_loss_recovered", "CE loss recovered"))


def plot_quality_comparison(
    metrics: pd.DataFrame, *, title: str | None = None, max_cols: int = 3
) -> go.Figure:
    """Quality per layer, the compressor's bars beside the TopK baseline's; "… of it from the
    latents" is the explained variance minus that of the reconstruction with the code zeroed.

    One panel per metric, at most ``max_cols`` a row (six panels: 2 × 3); the layer axis of
    every panel labels each layer with its integer.

    Example:
        >>> m = pd.DataFrame({"method": ["adaptive", "topk"], "layer": [0, 0],
        ...     "explained_variance": [0.2, 0.9], "latent_contribution": [0.0, 0.9],
        ...     "mse": [3.0, 0.1], "l0": [0.0, 16.0], "kl": [2.0, 0.1],
        ...     "ce_loss_recovered": [-0.5, 0.9]})
        >>> fig = plot_quality_comparison(m)
        >>> len(fig.data), list(fig.data[0].x), fig.layout.xaxis6.ticktext
        (12, ['0'], ('0',))
    """
    _need(metrics, ("method", "layer", *(c for c, _ in _QUALITY)), "metrics")
    fig = wrapped_grid([t for _, t in _QUALITY], max_cols)
    n_cols = grid_shape(len(_QUALITY), max_cols)[1]
    layers = [str(int(v)) for v in sorted(set(metrics["layer"]))]
    for i, (column, _) in enumerate(_QUALITY):
        row, col = divmod(i, n_cols)
        for method, part in metrics.groupby("method", sort=False):
            fig.add_trace(go.Bar(x=[str(int(v)) for v in part["layer"]], y=part[column],
                                 name=_LABEL.get(method, method), legendgroup=method,
                                 marker_color=_COLOR.get(method), showlegend=i == 0,
                                 hovertemplate=f"L%{{x}} {column} %{{y:.4g}}<extra>{method}"
                                 "</extra>"), row=row + 1, col=col + 1)  # fmt: skip
    # Categorical layers, every one labelled, in layer order (never 0.5 steps or "L" strings).
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=layers,
                     tickmode="array", tickvals=layers, ticktext=layers, title_text="layer",
                     title_standoff=4)  # fmt: skip
    fig.update_layout(barmode="group", title=title or "AdaptiveCompress vs TopK SAE of the "
                      "same width, same tokens (evaluation split)")
    return fig


def plot_probing(probing: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Sparse-probing accuracy per task (rows: site, columns: k), bars per method, with the
    majority-class baseline as black markers.

    Example:
        >>> p = pd.DataFrame({"dataset": "d", "method": ["adaptive", "topk"], "site": "s",
        ...     "task": "a vs rest", "k": 1, "accuracy": [0.5, 0.9], "majority_accuracy": 0.5})
        >>> len(plot_probing(p).data)
        3
    """
    _need(probing, ("method", "site", "task", "k", "accuracy", "majority_accuracy"), "probing")
    if probing.empty:
        raise CgcLensError("The probing table is empty: no task had enough examples per class.")
    frame = probing.copy()
    if "dataset" in frame.columns and frame["dataset"].nunique() > 1:
        frame["task"] = frame["dataset"].astype(str) + ": " + frame["task"].astype(str)
    sites, ks = list(dict.fromkeys(frame["site"])), sorted(frame["k"].unique())
    labels, hook = _site_labels(sites)
    # A site x k matrix: one row per site, one column per k, rows spaced in pixels so that
    # tilted task names never reach the next row's titles.
    fig = wrapped_grid([f"{labels[s]} · k={k}" for s in sites for k in ks], max_cols=len(ks))
    for r, site in enumerate(sites, start=1):
        for c, k in enumerate(ks, start=1):
            part = frame[(frame["site"] == site) & (frame["k"] == k)]
            for method, rows in part.groupby("method", sort=False):
                fig.add_trace(go.Bar(x=rows["task"], y=rows["accuracy"], name=_LABEL.get(
                    method, method), marker_color=_COLOR.get(method), legendgroup=method,
                    showlegend=(r, c) == (1, 1)), row=r, col=c)
            base = part.drop_duplicates("task")
            fig.add_trace(go.Scatter(x=base["task"], y=base["majority_accuracy"], mode="markers",
                                     marker={"symbol": "line-ew-open", "size": 18,
                                             "color": "black", "line": {"width": 3}},
                                     name="majority class", legendgroup="majority",
                                     showlegend=(r, c) == (1, 1)), row=r, col=c)
    fig.update_yaxes(range=[0, 1.02])
    where = f" at {hook}" if hook else ""
    fig.update_layout(barmode="group", title=title or f"Sparse probing{where}<br><span style="
                      "'font-size:12px'>top-k latents by class-mean difference, logistic "
                      "regression; black: majority-class baseline</span>")
    return fig


def plot_diagnostics(diagnostics: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Which collapse checks fired (red) for each method and site, with the measured values.

    Example:
        >>> d = pd.DataFrame({"method": "adaptive", "site": "s", "value": [0.0, 1.0],
        ...     "name": ["zero_l0", "dead_latents"], "fired": True, "message": "m"})
        >>> plot_diagnostics(d).data[0].type
        'heatmap'
    """
    _need(diagnostics, ("method", "site", "name", "value", "fired", "message"), "diagnostics")
    frame = diagnostics.assign(row=diagnostics["method"] + " · " + diagnostics["site"])
    rows, names = list(dict.fromkeys(frame["row"])), list(dict.fromkeys(frame["name"]))
    z = np.full((len(rows), len(names)), np.nan)
    text = np.full((len(rows), len(names)), "", dtype=object)
    for rec in frame.itertuples():
        i, j = rows.index(rec.row), names.index(rec.name)
        z[i, j] = float(rec.fired)
        text[i, j] = f"{rec.value:.3g}" + (" ✗" if rec.fired else "")
    fig = go.Figure(go.Heatmap(z=z, x=names, y=rows, text=text, texttemplate="%{text}",
                               colorscale=[[0, "#d9f0d3"], [1, "#d62728"]], zmin=0, zmax=1,
                               showscale=False))
    n_fired = int(frame["fired"].sum())
    fig.update_layout(title=title or f"Collapse diagnostics ({n_fired} fired; red = fired)",
                      yaxis={"autorange": "reversed"}, height=max(300, 40 * len(rows) + 150))
    return fig
