"""The six survival-audit figures have the expected traces and axes."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from unit.plots.figure_builders import survival_summary

from cgc_lens import CgcLensError
from cgc_lens.analysis.fragility import FragilityPredictor, survival_by_quartile
from cgc_lens.analysis.survival import decile_table
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
    return survival_summary(seed=0)


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
    assert fig.layout.xaxis.type == "category"  # 8 -> 4 bits get their share of the width
    assert list(fig.layout.xaxis.categoryarray) == [16, 8, 6, 4]


def test_dissociation_draws_the_reference_apart_with_round_right_ticks():
    table = survival_summary(reference="reference", ref_bits=32)
    fig = plot_dissociation(table)
    assert [t.name for t in fig.data][:2] == ["mean r", "PPL Δ%"]
    assert list(fig.data[0].x) == [8, 6, 4] and list(fig.data[1].x) == [8, 6, 4]
    ref = [t for t in fig.data[2:]]
    assert [t.yaxis for t in ref] == ["y", "y2"] and all(t.mode == "markers" for t in ref)
    assert list(ref[0].x) == ["reference (32 bits)"] and list(ref[0].y) == [1.0]
    assert list(fig.layout.xaxis.categoryarray) == ["reference (32 bits)", 8, 6, 4]
    assert [s.x0 for s in fig.layout.shapes] == [0.5]  # the divider after the reference
    y2 = fig.layout.yaxis2
    assert (y2.tickmode, y2.tick0, y2.dtick) == ("linear", 0, 20)  # PPL change 0 .. 80 %
    assert plot_dissociation(table, reference=None).data[0].x[0] == 32


def test_feature_scatter_draws_masked_features_and_diagonal():
    r_a = np.array([0.9, 0.5, np.nan, 0.99])
    r_b = np.array([0.8, 0.6, 0.7, 0.98])
    fig = plot_feature_scatter(r_a, r_b, names=("rtn", "prune"), mask=np.array([1, 1, 1, 0], bool))
    assert [t.name for t in fig.data] == ["features", "y = x"]
    assert list(fig.data[0].x) == [0.9, 0.5] and list(fig.data[0].customdata) == [0, 1]
    assert fig.layout.xaxis.title.text == "r (rtn)"
    # survived (0.9) and damaged (0.5) threshold lines, horizontal and vertical
    lines = sorted((s.x0, s.y0) for s in fig.layout.shapes)
    assert lines == [(0, 0.5), (0, 0.9), (0.5, 0), (0.9, 0)]
    lo, hi = fig.layout.xaxis.range  # fitted to the drawn features, with a small margin
    assert 0.45 < lo < 0.5 and 0.9 < hi < 0.95 and tuple(fig.layout.yaxis.range) == (lo, hi)
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


def test_feature_scatter_range_fits_the_data_and_keeps_the_survival_line():
    rng = np.random.default_rng(0)
    r_a = rng.uniform(0.95, 1.0, 200)
    fig = plot_feature_scatter(r_a, r_a - 0.01, survived=0.9, damaged=0.5)
    lo, hi = fig.layout.xaxis.range
    assert 0.88 < lo < 0.9 and 1.0 <= hi < 1.01  # the survival line in view, 0.5 not
    assert sorted((s.x0, s.y0) for s in fig.layout.shapes) == [(0, 0.9), (0.9, 0)]
    assert len(plot_feature_scatter(r_a, r_a, damaged=None).layout.shapes) == 2
