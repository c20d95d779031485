import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from cgc_lens.analysis.allocation import cgc_l, uniform
from cgc_lens.analysis.density import DensityResult
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
    rng = np.random.default_rng(0)
    b, e, c = rng.random((3, 2, 4))
    return DensityResult(
        breadth=b,
        entropy=e,
        consistency=c,
        density=(b * e * c) ** (1 / 6),
        breadth_count=(b * 8).astype(int),
        entropy_nats=e * np.log(8),
        n_tokens=np.array([100, 100]),
        pairs=np.zeros((2, 5, 2), int),
        d_sae=8,
    )


def test_density_heatmap_shows_density_and_sub_measures(result):
    fig = density_heatmap(result)
    assert isinstance(fig, go.Figure)
    hm = fig.data[0]
    np.testing.assert_array_equal(hm.z, result.density)
    np.testing.assert_array_equal(np.asarray(hm.customdata)[..., 2], result.consistency)
    assert "β̃" in hm.hovertemplate and "Ψ" in hm.hovertemplate


def test_rank_and_ablation_scatters(result):
    wanda = np.arange(8.0).reshape(2, 4)
    corr = rank_correlation(result.density, wanda)
    fig = density_wanda_ranks(result, wanda, corr)
    assert sorted(fig.data[0].x) == list(range(1, 9)) and "Spearman" in fig.layout.title.text
    assert fig.data[0].text[5] == "L1H1"
    fig2 = density_vs_ablation(result.density, wanda, corr)
    np.testing.assert_array_equal(fig2.data[0].x, result.density.ravel())
    assert "Pearson" in fig2.layout.title.text
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
    res = cgc_f(
        uniform((1, 4), 0.5),
        lambda ret, n: 0.0,
        EvoConfig(generations=2, offspring=2, level_step=0.1, progress=False),
    )
    assert len(search_history(res).data[0].y) == 3
