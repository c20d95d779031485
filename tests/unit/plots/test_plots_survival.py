"""The six survival-audit figures have the expected traces and axes."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cgc_lens import CgcLensError
from cgc_lens.analysis.fragility import FragilityPredictor, survival_by_quartile
from cgc_lens.analysis.survival import decile_table, summarize_condition, summary_table
from cgc_lens.plots.survival import (
    plot_dissociation,
    plot_feature_scatter,
    plot_nonsurvival_deciles,
    plot_quartile_survival,
    plot_roc_curves,
    plot_taxonomy,
)


@pytest.fixture
def table():
    rng = np.random.default_rng(0)
    active = np.ones(50, bool)
    rows = [summarize_condition("FP16", np.ones(50), active, tokens=10, bits=16, ppl=10.0,
                                ppl_reference=10.0)]  # fmt: skip
    for bits, spread in ((8, 0.02), (6, 0.2), (4, 0.5)):
        r = np.clip(1 - rng.uniform(0, spread, 50), -1, 1)
        rows.append(summarize_condition(f"INT{bits}", r, active, tokens=10, bits=bits,
                                        ppl=10 + 16 - 2 * bits, ppl_reference=10.0))  # fmt: skip
    rows.append(summarize_condition("prune", np.full(50, 0.8), active, tokens=10, sparsity=0.2))
    return summary_table(rows)


def test_taxonomy_stacks_three_outcomes(table):
    fig = plot_taxonomy(table)
    assert isinstance(fig, go.Figure) and fig.layout.barmode == "stack"
    assert [t.name for t in fig.data] == ["survived", "degraded", "damaged"]
    assert all(t.type == "bar" and len(t.x) == len(table) for t in fig.data)
    np.testing.assert_allclose(sum(np.asarray(t.y) for t in fig.data), 100.0)


def test_dissociation_uses_two_axes_and_skips_rows_without_bits(table):
    fig = plot_dissociation(table)
    assert [t.name for t in fig.data] == ["mean r", "PPL Δ%"]
    assert [t.yaxis for t in fig.data] == ["y", "y2"]
    assert list(fig.data[0].x) == [16, 8, 6, 4]  # pruning (no bits) left out
    assert fig.layout.yaxis2.overlaying == "y"


def test_feature_scatter_draws_masked_features_and_diagonal():
    r_a = np.array([0.9, 0.5, np.nan, 0.99])
    r_b = np.array([0.8, 0.6, 0.7, 0.98])
    fig = plot_feature_scatter(r_a, r_b, names=("rtn", "prune"), mask=np.array([1, 1, 1, 0], bool))
    assert [t.name for t in fig.data] == ["features", "y = x"]
    assert list(fig.data[0].x) == [0.9, 0.5] and list(fig.data[0].customdata) == [0, 1]
    assert fig.layout.xaxis.title.text == "r (rtn)"
    assert len(fig.layout.shapes) == 2  # survival-threshold lines
    with pytest.raises(CgcLensError, match="1-D of one shape"):
        plot_feature_scatter(r_a, r_b[:2])


def test_decile_bars_one_trace_per_condition():
    rate = np.linspace(0.01, 0.5, 40)
    deciles = decile_table(rate, {"rtn": 1 - rate, "prune": 0.95 - rate}, np.ones(40, bool))
    fig = plot_nonsurvival_deciles(deciles)
    assert [t.name for t in fig.data] == ["rtn", "prune"]
    assert list(fig.data[0].x) == list(range(1, 11)) and fig.layout.barmode == "group"
    with pytest.raises(CgcLensError, match="missing"):
        plot_nonsurvival_deciles(deciles.drop(columns="decile"))


def test_roc_and_quartile_figures():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 2))
    y = (X[:, 0] + rng.normal(0, 0.5, 120) > 0).astype(int)
    model = FragilityPredictor(n_splits=3).fit(X, y)
    fig = plot_roc_curves(model.roc_curves_)
    assert len(fig.data) == 4 and fig.data[-1].name == "chance"
    assert fig.data[0].name.startswith("fold 0 (AUC ")
    with pytest.raises(CgcLensError, match="at least one"):
        plot_roc_curves([])
    quartiles = survival_by_quartile(X, y)
    fig = plot_quartile_survival(quartiles)
    assert [t.name for t in fig.data] == ["x0", "x1"]
    assert list(fig.data[0].x) == [1, 2, 3, 4]
