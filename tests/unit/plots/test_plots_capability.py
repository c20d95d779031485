import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from unit.plots.figure_builders import PROBE_COLUMNS, capability_table, density_result

from cgc_lens.analysis.allocation import cgc_l, uniform
from cgc_lens.analysis.evolution import EvoConfig, cgc_f
from cgc_lens.analysis.importance import rank_correlation
from cgc_lens.errors import CgcLensError
from cgc_lens.plots.capability import (
    allocation_bars,
    density_heatmap,
    density_vs_ablation,
    density_wanda_ranks,
    reallocation_map,
    search_history,
)


@pytest.fixture
def result():
    return density_result(2, 4, seed=0)


def test_density_heatmap_shows_density_and_sub_measures(result):
    fig = density_heatmap(result)
    assert isinstance(fig, go.Figure)
    hm = fig.data[0]
    np.testing.assert_array_equal(hm.z, result.density)
    np.testing.assert_array_equal(np.asarray(hm.customdata)[..., 2], result.consistency)
    assert "β̃" in hm.hovertemplate and "Ψ" in hm.hovertemplate
    assert hm.hovertemplate.startswith("L%{y}H%{x}<br>")  # hovers read L1H3


@pytest.mark.parametrize("draw", [density_heatmap, lambda r: reallocation_map(cgc_l(r, rho=0.5))])
def test_head_heatmaps_label_every_layer_and_head_with_integers(result, draw):
    layout = draw(result).layout
    for axis, title in ((layout.xaxis, "head"), (layout.yaxis, "layer")):
        assert (axis.tickmode, axis.tick0, axis.dtick) == ("linear", 0, 1)
        assert axis.title.text == title
    assert layout.yaxis.autorange == "reversed"  # layer 0 on top
    assert layout.height is None  # plotly's default fits 2 layers


def test_head_heatmap_of_a_deep_model_has_a_row_per_layer():
    assert density_heatmap(density_result(48, 16)).layout.height >= 48 * 20


def test_rank_and_ablation_scatters(result):
    wanda = np.arange(8.0).reshape(2, 4)
    corr = rank_correlation(result.density, wanda)
    fig = density_wanda_ranks(result, wanda, corr)
    x = np.concatenate([t.x for t in fig.data])  # one trace per layer, layer-major
    assert sorted(x) == list(range(1, 9)) and "Spearman" in fig.layout.title.text
    assert np.concatenate([t.text for t in fig.data])[5] == "L1H1"
    fig2 = density_vs_ablation(result.density, wanda, corr)
    np.testing.assert_array_equal(np.concatenate([t.x for t in fig2.data]), result.density.ravel())
    assert "Pearson" in fig2.layout.title.text
    for f in (fig, fig2):  # layers are categories: a legend entry and a colour each
        assert [t.name for t in f.data] == ["L0", "L1"] and f.layout.legend.title.text == "layer"
        assert len({t.marker.color for t in f.data}) == 2
        assert all(len(t.x) == 4 for t in f.data)
    with pytest.raises(CgcLensError, match="n_layers, n_heads"):
        density_wanda_ranks(result, wanda[:, :2])


def test_reallocation_map(result):
    alloc = cgc_l(result, rho=0.5)
    fig = reallocation_map(alloc)
    np.testing.assert_allclose(fig.data[0].z, alloc.retention - 0.5)
    assert fig.data[0].zmid == 0
    fig2 = reallocation_map(alloc, uniform((2, 4), 0.5))
    np.testing.assert_allclose(fig2.data[0].z, fig.data[0].z)
    with pytest.raises(CgcLensError, match="shape"):
        reallocation_map(alloc, uniform((1, 4), 0.5))


def test_allocation_bars_and_history():
    table = pd.DataFrame(
        {"ppl": [26.7, 27.6, 27.9, 27.9], "induction": [0.9, 0.8, 0.85, 0.6]},
        index=["dense", "uniform", "cgc_l", "inverted"],
    )
    fig = allocation_bars(table)
    assert len(fig.data) == 2 and list(fig.data[1].x) == ["uniform", "cgc_l", "inverted"]
    assert len(fig.layout.shapes) == 2  # the dense reference line in each panel
    assert len(allocation_bars(table, reference=None).data[0].x) == 4
    with pytest.raises(CgcLensError, match="at least one"):
        allocation_bars(pd.DataFrame())
    assert all("dense" not in (s.label.text or "") for s in fig.layout.shapes)  # no labels on bars
    res = cgc_f(
        uniform((1, 4), 0.5),
        lambda ret, n: 0.0,
        EvoConfig(generations=2, offspring=2, level_step=0.1, progress=False),
    )
    assert len(search_history(res).data[0].y) == 3


def test_allocation_bars_wrap_into_rows_with_room_for_the_titles():
    table = capability_table()  # ppl, kl and five probes: 7 panels
    fig = allocation_bars(table)
    assert len(fig.data) == 7 and len(fig.layout.shapes) == 7
    rows = sorted({round(fig.layout[t.yaxis.replace("y", "yaxis")].domain[0], 6) for t in fig.data})
    assert len(rows) == 3  # 3 + 3 + 1 panels
    cols = sorted({round(fig.layout[t.xaxis.replace("x", "xaxis")].domain[0], 6) for t in fig.data})
    assert len(cols) == 3
    titles = [a.text for a in fig.layout.annotations]
    assert [t.split("<br>")[0] for t in titles] == ["ppl", "kl", *PROBE_COLUMNS]
    assert all("dense" in t for t in titles)  # the reference value under each title
    assert fig.layout.height >= 3 * 200
    # the same colour for a method in every panel
    assert all(list(t.marker.color) == list(fig.data[0].marker.color) for t in fig.data)
    four = allocation_bars(table, max_cols=4)  # 4 + 3
    assert len({four.layout[t.yaxis.replace("y", "yaxis")].domain[0] for t in four.data}) == 2
    square = allocation_bars(table.iloc[:, :4])  # 4 panels, 3 a row at most: 2 x 2
    assert len({square.layout[t.xaxis.replace("x", "xaxis")].domain[0] for t in square.data}) == 2
    assert len({square.layout[t.yaxis.replace("y", "yaxis")].domain[0] for t in square.data}) == 2
