"""Survival taxonomy, Table 1 rows, overlaps, deciles, thresholds and stability checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from cgc_lens import CgcLensError
from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator, merge_all
from cgc_lens.analysis.stability import (
    budget_sensitivity,
    null_check,
    subset_stability,
    threshold_grid,
)
from cgc_lens.analysis.survival import (
    Outcome,
    SurvivalThresholds,
    active_features,
    classify,
    decile_table,
    equal_count_bins,
    feature_table,
    overlap,
    summarize_condition,
    summary_table,
)

D_SAE = 48


def batches(n_batches: int = 6, rows: int = 50, *, noise: float = 0.5, seed: int = 0):
    """SAE-like reference codes (rates ~1%-60%) and a noisy condition, per batch."""
    g = torch.Generator().manual_seed(seed)
    bias = torch.linspace(-2.5, 0.3, D_SAE)
    scale = torch.linspace(0.0, noise, D_SAE)  # feature 0 noiseless, noise grows with index
    out = []
    for _ in range(n_batches):
        pre = torch.randn(rows, D_SAE, generator=g) + bias
        noisy = pre + scale * torch.randn(rows, D_SAE, generator=g)
        out.append((torch.relu(pre), torch.relu(noisy)))
    return out


def shards(data):
    refs = [ReferenceAccumulator(D_SAE).update(x) for x, _ in data]
    conds = [PearsonAccumulator(D_SAE).update(x, y) for x, y in data]
    return refs, conds


def test_classify_boundaries_and_codes():
    r = np.array([0.9, 0.8999, 0.5, 0.4999, -0.3, np.nan, 1.0])
    active = np.array([True] * 6 + [False])
    codes = classify(r, active)
    assert [Outcome(c) for c in codes] == [
        Outcome.SURVIVED, Outcome.DEGRADED, Outcome.DEGRADED, Outcome.DAMAGED, Outcome.DAMAGED,
        Outcome.UNDEFINED, Outcome.INACTIVE,
    ]  # fmt: skip
    assert codes.dtype == np.int8
    assert classify(r, active, survived=0.95, damaged=0.3)[2] == Outcome.DEGRADED


def test_thresholds_validate(unchecked):
    with pytest.raises(CgcLensError, match="damaged <= survived"):
        SurvivalThresholds(survived=0.5, damaged=0.9)
    with pytest.raises(CgcLensError, match="active_rate"):
        SurvivalThresholds(active_rate=1.5)
    with pytest.raises(CgcLensError, match="bool array"):
        classify(np.ones(3), np.ones(3))
    with pytest.raises(CgcLensError, match=r"\[-1, 1\]"):
        classify(np.array([1.5]), np.array([True]))
    assert active_features(np.array([0.0, 0.002]), 1e-3).tolist() == [False, True]


def test_summary_excludes_undefined_and_never_averages_nan():
    r = np.array([0.99, 0.95, 0.7, 0.2, np.nan, 0.1])
    active = np.array([True, True, True, True, True, False])
    row = summarize_condition(
        "int6", r, active, tokens=1000, bits=6, ppl=77.78, ppl_reference=67.80, layer=4
    )
    assert row.n_active == 5 and row.n_undefined == 1 and row.n_features == 6
    assert row.survived_pct == 50.0 and row.degraded_pct == 25.0 and row.damaged_pct == 25.0
    assert row.mean_corr == pytest.approx(np.mean([0.99, 0.95, 0.7, 0.2]))
    assert row.median_corr == pytest.approx(0.825)
    assert row.ppl_delta_pct == pytest.approx(14.7198, abs=1e-4)  # Table 1, Pythia INT6
    assert np.isfinite([row.mean_corr, row.median_corr]).all()
    with pytest.raises(CgcLensError, match="no active feature"):
        summarize_condition("x", r, np.zeros(6, bool), tokens=1)


def test_summary_table_has_table1_columns():
    r = np.array([1.0, 0.95, 0.6])
    rows = [
        summarize_condition("FP16", r * 0 + 1, np.ones(3, bool), tokens=9, bits=16, ppl=10,
                            ppl_reference=10),
        summarize_condition("prune", r, np.ones(3, bool), tokens=9, sparsity=0.175),
    ]  # fmt: skip
    table = summary_table(rows)
    expected = ["name", "bits", "sparsity", "ppl", "ppl_delta_pct", "mean_corr", "median_corr",
                "survived_pct", "degraded_pct", "damaged_pct", "n_active", "tokens"]  # fmt: skip
    assert list(table.columns[: len(expected)]) == expected
    assert np.isnan(table.loc[1, "bits"]) and np.isnan(table.loc[0, "sparsity"])
    assert table.loc[0, "ppl_delta_pct"] == 0.0 and table.loc[0, "survived_pct"] == 100.0


def test_null_condition_end_to_end():
    data = batches()
    ref = merge_all([ReferenceAccumulator(D_SAE).update(x) for x, _ in data])
    null = merge_all([PearsonAccumulator(D_SAE).update(x, x.clone()) for x, _ in data])
    active = active_features(ref.stats().firing_rate, 1e-3)
    assert active.sum() > 40
    check = null_check(null.pearson(), active)
    assert check.passed
    assert abs(check.mean_corr - 1.0) <= 1e-6 and check.survived_pct == 100.0
    row = summarize_condition("null", null.pearson(), active, tokens=null.n_tokens)
    assert f"{row.mean_corr:.6f}" == "1.000000" and row.damaged_pct == 0.0
    assert not null_check(np.full(D_SAE, 0.95), active).passed


def naive_jaccard(a, b):
    sa, sb = set(np.flatnonzero(a)), set(np.flatnonzero(b))
    return len(sa & sb) / len(sa | sb)


def test_overlap_matches_sets_and_scipy():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 1.0, 200)
    r_a = np.clip(base + rng.normal(0, 0.05, 200), -1, 1)
    r_b = np.clip(base + rng.normal(0, 0.05, 200), -1, 1)
    r_b[3] = np.nan  # undefined under B: dropped from the comparison
    active = np.ones(200, bool)
    active[:2] = False
    res = overlap(r_a, r_b, active, names=("rtn", "prune"))
    keep = active & ~np.isnan(r_b)
    a, b = r_a[keep], r_b[keep]
    assert res.n_features == keep.sum() == 197
    assert res.jaccard == pytest.approx(naive_jaccard(a < 0.9, b < 0.9), abs=1e-15)
    assert res.damage_spearman == pytest.approx(scipy.stats.spearmanr(1 - a, 1 - b)[0], abs=1e-12)
    assert res.damage_pearson == pytest.approx(np.corrcoef(1 - a, 1 - b)[0, 1], abs=1e-12)
    # Spearman is Pearson of ranks (no ties here).
    ranks = np.corrcoef(scipy.stats.rankdata(a), scipy.stats.rankdata(b))[0, 1]
    assert res.damage_spearman == pytest.approx(ranks, abs=1e-12)
    assert res.damage_spearman > 0.8
    assert res.nonsurvived_pct_a == pytest.approx(100 * (a < 0.9).mean())


def test_overlap_degenerate_cases_are_defined():
    ones = np.ones(10)
    res = overlap(ones, ones, np.ones(10, bool))
    assert res.jaccard == 1.0 and res.n_union == 0
    assert np.isnan(res.damage_spearman) and np.isnan(res.damage_pearson)
    with pytest.raises(CgcLensError, match=">= 2"):
        overlap(ones, ones, np.zeros(10, bool))


def test_equal_count_bins_and_decile_table():
    counts = np.bincount(equal_count_bins(np.zeros(23), 10))  # all tied: still equal counts
    assert counts.size == 10 and counts.sum() == 23 and counts.max() - counts.min() <= 1
    with pytest.raises(CgcLensError, match="n_bins"):
        equal_count_bins(np.zeros(3), 10)
    rate = np.linspace(0.001, 0.5, 100) + 1e-4
    r_rising = 1 - rate  # non-survival rises with firing rate, as in App. E
    r_flat = np.full(100, 0.95)
    r_flat[0] = np.nan
    active = np.ones(100, bool)
    table = decile_table(rate, {"rtn": r_rising, "flat": r_flat}, active)
    assert list(table["condition"].unique()) == ["rtn", "flat"]
    rtn = table[table["condition"] == "rtn"]
    assert rtn["n_features"].tolist() == [10] * 10
    assert rtn["nonsurvived_pct"].is_monotonic_increasing
    assert rtn["nonsurvived_pct"].iloc[-1] == 100.0
    flat = table[table["condition"] == "flat"]
    assert flat["n_features"].iloc[0] == 9 and (flat["nonsurvived_pct"] == 0).all()
    assert (rtn["rate_min"].to_numpy()[1:] >= rtn["rate_max"].to_numpy()[:-1]).all()


def test_threshold_grid_matches_direct_summaries():
    rng = np.random.default_rng(1)
    r = rng.uniform(0.2, 1.0, 300)
    active = np.ones(300, bool)
    grid = threshold_grid(r, active)
    assert len(grid) == 20
    row = grid[(grid.survived_threshold == 0.9) & (grid.damaged_threshold == 0.5)].iloc[0]
    direct = summarize_condition("x", r, active, tokens=0)
    assert row.survived_pct == direct.survived_pct and row.damaged_pct == direct.damaged_pct
    sums = grid[["survived_pct", "degraded_pct", "damaged_pct"]].sum(axis=1)
    np.testing.assert_allclose(sums, 100.0)
    by_s = grid.groupby("survived_threshold")["survived_pct"].first()
    assert by_s.is_monotonic_decreasing


def test_budget_sensitivity_uses_prefixes():
    data = batches(n_batches=6, rows=50)
    refs, conds = shards(data)
    table = budget_sensitivity(refs, conds, [100, 149, 300])
    assert table["tokens"].tolist() == [100, 100, 300]
    x = torch.cat([b[0] for b in data[:2]])
    y = torch.cat([b[1] for b in data[:2]])
    r = PearsonAccumulator(D_SAE).update(x, y).pearson()
    active = active_features(ReferenceAccumulator(D_SAE).update(x).stats().firing_rate)
    direct = summarize_condition("x", r, active, tokens=100)
    assert table.loc[0, "mean_corr"] == pytest.approx(direct.mean_corr, abs=1e-12)
    assert table.loc[0, "n_active"] == direct.n_active
    assert refs[0].n_tokens == 50  # shards untouched
    with pytest.raises(CgcLensError, match="smaller than the first shard"):
        budget_sensitivity(refs, conds, [10])
    with pytest.raises(CgcLensError, match="one PearsonAccumulator per shard"):
        budget_sensitivity(refs, conds[:-1], [100])


def test_subset_stability_is_seeded():
    data = batches(n_batches=8, rows=25, seed=3)
    refs, conds = shards(data)
    first = subset_stability(refs, conds, 100, seeds=(0, 1, 2))
    again = subset_stability(refs, conds, 100, seeds=(0, 1, 2))
    pd.testing.assert_frame_equal(first, again)
    assert first["tokens"].tolist() == [100, 100, 100]
    assert first["seed"].tolist() == [0, 1, 2]
    chosen = np.random.default_rng(1).permutation(8)[:4]
    x = torch.cat([data[i][0] for i in chosen])
    y = torch.cat([data[i][1] for i in chosen])
    r = PearsonAccumulator(D_SAE).update(x, y).pearson()
    active = active_features(ReferenceAccumulator(D_SAE).update(x).stats().firing_rate)
    expected = summarize_condition("x", r, active, tokens=100)
    assert first.loc[1, "survived_pct"] == pytest.approx(expected.survived_pct)
    assert first.loc[1, "mean_corr"] == pytest.approx(expected.mean_corr, abs=1e-12)


def test_feature_table_lists_every_feature_and_outcome():
    rate = np.array([0.2, 0.05, 0.0, 0.3])
    active = active_features(rate)
    table = feature_table(rate, {"a": np.array([0.95, 0.4, 1.0, np.nan])}, active)
    assert table.index.name == "feature" and len(table) == 4
    assert table["outcome[a]"].tolist() == ["SURVIVED", "DAMAGED", "INACTIVE", "UNDEFINED"]
    assert table["active"].tolist() == [True, True, False, True]


def test_destruction_per_head_and_level() -> None:
    from cgc_lens.analysis.survival import destruction

    r = np.array([[[0.95, 0.2, 0.5], [np.nan, np.nan, np.nan]],
                  [[0.99, 0.98, 0.1], [0.91, 0.3, 0.2]]])
    active = np.array([[True, True, False], [True, True, True]])
    frac, n_active = destruction(r, active, survived=0.9)
    np.testing.assert_array_equal(n_active, [2, 3])
    np.testing.assert_allclose(frac, [[0.5, np.nan], [1 / 3, 2 / 3]])
