"""Per-group sums of the survival accumulators and the jackknife built on them: the groups add
up to the pooled sums (1e-12), merge through state_dict by summing, leave-one-out equals a fresh
accumulator of the other groups, and the intervals match a naive loop and scipy's t."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cgc_lens import CgcLensError
from cgc_lens.analysis import PearsonAccumulator, ReferenceAccumulator, SurvivalThresholds
from cgc_lens.analysis.survival import summarize_condition
from cgc_lens.analysis.survival_intervals import jackknife_interval, survival_intervals


def data(n=300, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, d, generator=gen))
    y = torch.relu(x + 0.4 * torch.randn(n, d, generator=gen))
    groups = torch.arange(n) * 5 // n  # 5 contiguous groups
    return x, y, groups


def test_groups_sum_to_pooled_and_pooled_is_unchanged():
    x, y, g = data()
    plain = PearsonAccumulator(12).update(x, y)
    grouped = PearsonAccumulator(12, n_groups=5).update(x, y, groups=g)
    state, plain_state = grouped.state_dict(), plain.state_dict()
    for k in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy"):
        assert torch.equal(state[k], plain_state[k])  # pooled bit for bit
        torch.testing.assert_close(state[f"group_{k}"].sum(0), state[k], rtol=1e-12, atol=0)
    assert state["group_n_tokens"].tolist() == [60] * 5
    ref = ReferenceAccumulator(12, n_groups=5).update(x, groups=g)
    rs = ref.state_dict()
    assert torch.equal(rs["group_fire_count"].sum(0), rs["fire_count"])
    torch.testing.assert_close(
        rs["group_sum_sq_firing"].sum(0), rs["sum_sq_firing"], rtol=1e-12, atol=0
    )
    assert "group_max_act" not in rs


def test_group_fields_merge_by_summing_through_state_dict():
    """Two shards of the blocks (any split) summed field by field, as an all-reduce would,
    equal one pass; from_sums takes the state back."""
    x, y, g = data()
    whole = PearsonAccumulator(12, n_groups=5).update(x, y, groups=g)
    halves = [
        PearsonAccumulator(12, n_groups=5).update(x[i::2], y[i::2], groups=g[i::2]) for i in (0, 1)
    ]
    summed = {
        k: halves[0].state_dict()[k] + halves[1].state_dict()[k] for k in halves[0].state_dict()
    }
    back = PearsonAccumulator.from_sums(**summed)
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=1e-12, atol=0)
    merged = halves[0].copy().merge(halves[1])
    np.testing.assert_allclose(merged.pearson(), whole.pearson(), rtol=0, atol=1e-12)
    with pytest.raises(CgcLensError, match="different settings"):
        PearsonAccumulator(12).merge(halves[0])


def test_leave_one_out_is_the_accumulator_of_the_other_groups():
    x, y, g = data()
    acc = PearsonAccumulator(12, n_groups=5).update(x, y, groups=g)
    for k in range(5):
        fresh = PearsonAccumulator(12).update(x[g != k], y[g != k])
        np.testing.assert_allclose(
            acc.leave_one_out(k).pearson(), fresh.pearson(), rtol=0, atol=1e-12
        )
    ref = ReferenceAccumulator(12, n_groups=5).update(x, groups=g)
    fresh = ReferenceAccumulator(12).update(x[g != 2]).stats()
    assert (ref.leave_one_out(2).stats().fire_count == fresh.fire_count).all()


def test_bad_groups_raise():
    x, y, g = data()
    with pytest.raises(CgcLensError, match="pass groups="):
        PearsonAccumulator(12, n_groups=5).update(x, y)
    with pytest.raises(CgcLensError, match=r"lie in \[0, 5\)"):
        PearsonAccumulator(12, n_groups=5).update(x, y, groups=g + 1)
    with pytest.raises(CgcLensError, match="built without groups"):
        PearsonAccumulator(12).update(x, y, groups=g)
    with pytest.raises(CgcLensError, match="n_groups must be"):
        PearsonAccumulator(12, n_groups=-1)


def test_intervals_match_a_naive_jackknife_loop():
    """Each statistic's SE is sqrt((G-1)/G Σ(θ₋g − θ̄)²) over replicates recomputed from
    scratch without group g (active filter included), the interval θ̂ ± t_{G-1} SE."""
    x, y, g = data(n=400, d=30, seed=1)
    thr = SurvivalThresholds(active_rate=0.0)
    acc = PearsonAccumulator(30, n_groups=5).update(x, y, groups=g)
    ref = ReferenceAccumulator(30, n_groups=5).update(x, groups=g)
    iv = survival_intervals(acc, ref, thresholds=thr)

    def stat(mask):
        r = np.array([np.corrcoef(x[mask, i], y[mask, i])[0, 1] for i in range(30)])
        fires = (x[mask] > 0).double().mean(0).numpy() > 0
        return r, summarize_condition("", r, fires, tokens=int(mask.sum()), thresholds=thr)

    r_all, row = stat(torch.ones(400, dtype=torch.bool))
    reps = [stat(g != k) for k in range(5)]
    t = stats.t.ppf(0.975, 4)
    for name in ("mean_corr", "median_corr", "survived_pct"):
        vals = np.array([getattr(rep, name) for _, rep in reps])
        se = np.sqrt(4 / 5 * ((vals - vals.mean()) ** 2).sum())
        assert iv.stats[name][0] == pytest.approx(se, rel=1e-9, abs=1e-12)
        assert iv.stats[name][2] == pytest.approx(
            min(getattr(row, name) + t * se, 1.0 if "corr" in name else 100.0), rel=1e-9
        )
    r_reps = np.stack([r for r, _ in reps])
    se_r = np.sqrt(4 / 5 * ((r_reps - r_reps.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(iv.r[0], se_r, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(iv.r[1], np.clip(r_all - t * se_r, -1, 1), rtol=0, atol=1e-8)


def test_jackknife_interval_of_a_mean_is_the_t_interval():
    x = np.random.default_rng(0).normal(size=12)
    reps = np.array([np.delete(x, k).mean() for k in range(12)])
    se, lo, hi = jackknife_interval(x.mean(), reps)
    ref = stats.t.interval(0.95, 11, loc=x.mean(), scale=stats.sem(x))
    np.testing.assert_allclose([lo, hi], ref, rtol=1e-12)
    assert float(se) == pytest.approx(stats.sem(x), rel=1e-12)
