"""Figures of the AdaptiveCompress study: panels that wrap, integer layer ticks, short site
labels, and values carried through unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from unit.plots.figure_builders import adaptive_figures

from cgc_lens.plots.grid import grid_shape, wrapped_grid


def _rows_and_cols(fig) -> tuple[int, int]:
    xs = {round(fig.layout[t.xaxis.replace("x", "xaxis")].domain[0], 6) for t in fig.data}
    ys = {round(fig.layout[t.yaxis.replace("y", "yaxis")].domain[0], 6) for t in fig.data}
    return len(ys), len(xs)


@pytest.mark.parametrize(("n", "max_cols", "shape"), [
    (1, 3, (1, 1)), (3, 3, (1, 3)), (4, 3, (2, 2)), (6, 3, (2, 3)), (7, 3, (3, 3)),
    (7, 4, (2, 4)), (20, 4, (5, 4)),
])  # fmt: skip
def test_grid_shape_holds_every_panel_in_as_few_even_rows_as_can_be(n, max_cols, shape):
    rows, cols = grid_shape(n, max_cols)
    assert (rows, cols) == shape
    assert cols <= max_cols and rows * cols >= n > (rows - 1) * cols  # no empty row
    # naive cross-check: the fewest rows of at most max_cols, then the fewest columns
    naive_rows = next(r for r in range(1, n + 1) if r * max_cols >= n)
    assert rows == naive_rows and cols == next(c for c in range(1, n + 1) if naive_rows * c >= n)


def test_wrapped_grid_keeps_the_same_pixels_between_rows():
    one, three = wrapped_grid(["a"] * 3, 3), wrapped_grid(["a"] * 9, 3)
    assert three.layout.height - one.layout.height == 2 * (220 + 115)
    gap = three.layout.yaxis.domain[1] - three.layout.yaxis4.domain[1]  # top of rows 1 and 2
    plot_px = three.layout.height - three.layout.margin.t - three.layout.margin.b
    assert gap * plot_px == pytest.approx(220 + 115)


def test_quality_comparison_wraps_six_panels_into_two_rows_of_integer_layers():
    fig = adaptive_figures(layers=(0, 5, 11))["quality"]
    assert _rows_and_cols(fig) == (2, 3)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:6] == ["explained variance", "… of it from the latents", "MSE per element",
                          "L0", "KL (spliced), nats", "CE loss recovered"]  # fmt: skip
    for k in ("", *range(2, 7)):
        axis = fig.layout[f"xaxis{k}"]
        assert axis.type == "category" and axis.title.text == "layer"
        assert list(axis.tickvals) == list(axis.ticktext) == ["0", "5", "11"]
    assert {tuple(t.x) for t in fig.data} == {("0", "5", "11")}
    assert len(fig.data) == 12 and sum(t.showlegend for t in fig.data) == 2


def test_probing_is_a_site_by_k_grid_with_short_site_labels():
    fig = adaptive_figures(layers=(0, 6, 23), ks=(1, 2, 5, 10))["probing"]
    assert _rows_and_cols(fig) == (3, 4)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:5] == ["L0 · k=1", "L0 · k=2", "L0 · k=5", "L0 · k=10", "L6 · k=1"]
    assert fig.layout.title.text.startswith("Sparse probing at hook_resid_post<br>")
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 3 * 3 * 4  # methods x sites x ks
    assert all(0 <= v <= 1 for t in bars for v in t.y)
    baseline = next(t for t in fig.data if t.type == "scatter")
    np.testing.assert_allclose(baseline.y, [0.5, 0.5, 0.5, 1 / 3])


def test_training_curves_name_layers_and_wrap_two_by_two():
    fig = adaptive_figures(layers=(0, 1))["training_curves"]
    assert _rows_and_cols(fig) == (2, 2)
    legend = [t.name for t in fig.data if t.showlegend is not False]  # None: shown
    assert legend == ["AdaptiveCompress · L0", "AdaptiveCompress · L1", "TopK SAE · L0",
                      "TopK SAE · L1", "retention r(t)"]  # fmt: skip
    assert fig.layout.title.text == "AdaptiveCompress training curves at hook_resid_post"
    assert fig.layout.yaxis.type == "log"
