"""Error bars of the survival figures of condition-level numbers (taxonomy, dissociation,
survival against bits per weight): each bar's ends are the row's jackknife interval, computed
here by the real intervals on grouped sums of random activations; no bars without intervals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.analysis.survival import summarize_condition, summary_table
from cgc_lens.analysis.survival_intervals import survival_intervals
from cgc_lens.plots.survival import plot_dissociation, plot_survival_vs_bits, plot_taxonomy

CONDITIONS = (  # name, bits, format, bits per weight, noise on the activations
    ("reference", 16, "dense", 16.0, 0.0),
    ("RTN INT8", 8, "rtn", 8.1, 0.1),
    ("RTN INT6", 6, "rtn", 6.1, 0.4),
    ("RTN INT4", 4, "rtn", 4.1, 1.0),
    ("nf4", 4, "nf4", 4.5, 0.8),
)


def _table(n_groups: int = 5) -> pd.DataFrame:
    """Table 1 of random activations read under five conditions, with jackknife intervals."""
    gen = torch.Generator().manual_seed(0)
    fires = torch.rand(300, 60, generator=gen) > 0.5
    x = torch.rand(300, 60, generator=gen, dtype=torch.float64) * fires
    groups = torch.arange(300) // (300 // n_groups)
    ref = ReferenceAccumulator(60, n_groups=n_groups).update(x, groups=groups)
    active = ref.stats().firing_rate > 0
    rows = []
    for name, bits, fmt, bpw, noise in CONDITIONS:
        scale = noise * torch.linspace(0.1, 2.0, 60, dtype=torch.float64)  # features differ
        y = x + scale * torch.rand(300, 60, generator=gen, dtype=torch.float64)
        acc = PearsonAccumulator(60, n_groups=n_groups).update(x, y, groups=groups)
        row = summarize_condition(name, acc.pearson(), active, tokens=300, bits=bits,
                                  ppl=10.0 + 10 * noise, ppl_reference=10.0)  # fmt: skip
        iv = survival_intervals(acc, ref)
        rows.append(dataclasses.replace(row, format=fmt, bits_per_weight=bpw, **iv.row_fields()))
    return summary_table(rows)


def _assert_bars_are_intervals(trace, rows: pd.DataFrame, stat: str) -> None:
    y = np.asarray(trace.y, dtype=float)
    np.testing.assert_array_equal(y, rows[stat].to_numpy(float))
    err = trace.error_y
    assert err.visible and err.symmetric is False
    np.testing.assert_allclose(y + np.asarray(err.array), rows[f"{stat}_ci_high"], rtol=0,
                               atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(y - np.asarray(err.arrayminus), rows[f"{stat}_ci_low"], rtol=0,
                               atol=1e-12)  # fmt: skip


def test_taxonomy_bars_carry_each_outcomes_interval():
    table = _table()
    assert (table["survived_pct_ci_high"] > table["survived_pct_ci_low"]).any()  # not all flat
    fig = plot_taxonomy(table)
    for trace in fig.data:
        _assert_bars_are_intervals(trace, table, f"{trace.name}_pct")
    # percentages are clipped to [0, 100]: the drawn bars never leave the range
    for trace in fig.data:
        assert (np.asarray(trace.y) - np.asarray(trace.error_y.arrayminus) >= 0).all()
        assert (np.asarray(trace.y) + np.asarray(trace.error_y.array) <= 100).all()


def test_dissociation_mean_r_carries_its_interval_and_perplexity_none():
    table = _table()
    fig = plot_dissociation(table.drop(index=4))  # the RTN sweep (nf4 shares INT4's bits)
    rows = table.iloc[1:4]  # the reference is drawn apart; then 8, 6, 4 bits
    _assert_bars_are_intervals(fig.data[0], rows, "mean_corr")
    assert fig.data[1].error_y.array is None  # perplexity has no interval
    ref = next(t for t in fig.data[2:] if t.yaxis == "y")
    _assert_bars_are_intervals(ref, table.iloc[[0]], "mean_corr")


def test_survival_vs_bits_markers_carry_both_intervals():
    table = _table()
    fig = plot_survival_vs_bits(table)
    for trace in fig.data:
        rows = table.set_index("name").loc[list(trace.text)].reset_index()
        _assert_bars_are_intervals(trace, rows, "mean_corr" if trace.xaxis == "x" else
                                   "survived_pct")  # fmt: skip


def test_no_intervals_no_error_bars():
    table = _table()
    plain = table.drop(columns=[c for c in table.columns if "_ci_" in c or c.endswith("_se")])
    for fig in (plot_taxonomy(plain), plot_dissociation(plain), plot_survival_vs_bits(plain)):
        assert all(t.error_y.array is None for t in fig.data)
    none = table.assign(**{c: None for c in table.columns if "_ci_" in c})  # n_groups = 0 rows
    assert all(t.error_y.array is None for t in plot_taxonomy(none).data)
