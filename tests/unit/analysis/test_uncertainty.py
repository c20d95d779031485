"""Bootstrap intervals and permutation p-values of correlations over heads, checked against
naive numpy resampling loops; the jackknife against the textbook standard error of a mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cgc_lens.analysis.uncertainty import correlation_interval, jackknife_se, token_groups
from cgc_lens.errors import CgcLensError


def _heads(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, -0.6 * x + rng.normal(size=n) * 0.8


@pytest.mark.parametrize("kind", ["spearman", "pearson"])
def test_bootstrap_interval_agrees_with_a_naive_resampling_loop(kind):
    """Loose statistical agreement: the percentile interval of scipy's paired bootstrap and of a
    naive loop (independent draws of 20,000 resamples each) differ by Monte Carlo error only;
    with 20,000 resamples the 2.5% / 97.5% quantiles of ρ move by well under 0.03."""
    x, y = _heads()
    got = correlation_interval(x, y, kind=kind, seed=3, n_resamples=20_000)
    fn = (lambda a, b: stats.spearmanr(a, b)[0]) if kind == "spearman" else (
        lambda a, b: stats.pearsonr(a, b)[0])  # fmt: skip
    rng = np.random.default_rng(12345)
    boot = []
    for _ in range(20_000):
        i = rng.integers(0, x.size, x.size)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boot.append(fn(x[i], y[i]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert got.statistic == pytest.approx(fn(x, y), abs=1e-12)
    assert got.ci_low == pytest.approx(lo, abs=0.03) and got.ci_high == pytest.approx(hi, abs=0.03)
    assert got.ci_low < got.statistic < got.ci_high and got.n == 24
    # the same seed gives the same interval
    again = correlation_interval(x, y, kind=kind, seed=3, n_resamples=20_000)
    assert (again.ci_low, again.ci_high, again.p) == (got.ci_low, got.ci_high, got.p)


def test_permutation_p_agrees_with_a_naive_shuffle_loop():
    x, y = _heads(n=12, seed=1)
    got = correlation_interval(x, y, seed=0, n_resamples=20_000)
    rho = stats.spearmanr(x, y)[0]
    rng = np.random.default_rng(99)
    null = np.array([stats.spearmanr(x, rng.permutation(y))[0] for _ in range(20_000)])
    naive = (np.sum(np.abs(null) >= abs(rho) - 1e-12) + 1) / (null.size + 1)
    # binomial SE of a p near 0.05 over 20k draws is ~0.0015 per estimate
    assert got.p == pytest.approx(naive, abs=0.008)
    assert got.p == pytest.approx(stats.spearmanr(x, y)[1], abs=0.02)  # t approximation


def test_nan_pairs_are_left_out_and_flat_signals_are_undefined(unchecked):
    # unchecked: our own shape error is what users meet (the type checker pre-empts it in tests)
    x, y = _heads(n=10)
    x[3] = np.nan
    got = correlation_interval(x, y, n_resamples=999)
    assert got.n == 9
    assert got.statistic == pytest.approx(stats.spearmanr(np.delete(x, 3), np.delete(y, 3))[0])
    flat = correlation_interval(np.ones(8), y[:8], n_resamples=99)
    assert np.isnan(flat.statistic) and np.isnan(flat.ci_low) and np.isnan(flat.p)
    assert "undefined" in flat.sentence()
    assert correlation_interval(x, y, n_resamples=99).sentence().startswith("ρ = ")
    with pytest.raises(CgcLensError, match=r"one shape, got \(10,\) and \(9,\)"):
        correlation_interval(x, y[:9])
    with pytest.raises(CgcLensError, match="confidence must lie in"):
        correlation_interval(x, y, confidence=95)
    with pytest.raises(CgcLensError, match="kind must be"):
        correlation_interval(x, y, kind="kendall")


def test_jackknife_se_of_a_mean_is_the_textbook_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2))
    reps = np.stack([np.delete(x, g, axis=0).mean(0) for g in range(30)])
    np.testing.assert_allclose(jackknife_se(reps), x.std(0, ddof=1) / np.sqrt(30), rtol=1e-12)
    assert np.isnan(jackknife_se(reps[:1])).all()


def test_token_groups_keep_blocks_together():
    g = token_groups(np.arange(100), n_tokens=100, block_len=10, n_groups=4)
    assert g.max() == 3 and all(len(set(g[i : i + 10])) == 1 for i in range(0, 100, 10))
    assert np.bincount(g).tolist() == [30, 20, 30, 20]
    assert token_groups(np.arange(6), n_tokens=6, block_len=3, n_groups=20).tolist() == [0] * 3 + [
        1
    ] * 3  # fewer blocks than groups: one group per block
    with pytest.raises(CgcLensError, match="block_len"):
        token_groups(np.arange(3), n_tokens=3, block_len=0, n_groups=2)
