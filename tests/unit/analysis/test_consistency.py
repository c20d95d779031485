"""Def 3's Ψ over all cross-category pairs against a pairwise Python loop, its jackknife
replicates against recomputation without each group, and the sampled fallback."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cgc_lens.analysis.consistency import all_pairs_bytes, cross_input_consistency
from cgc_lens.analysis.density import (
    DensityConfig,
    FeatureAccumulator,
    GroupCounts,
    capability_density,
    feature_breadth,
    feature_entropy,
)
from cgc_lens.analysis.uncertainty import jackknife_se, token_groups

L, H, F, K = 2, 3, 16, 4


def _stream(n_tokens=160, n_cats=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n_tokens, L * H, F, generator=g).argsort(-1)[..., :K]
    vals = torch.rand(n_tokens, L * H, K, generator=g) + 0.1
    vals[torch.rand(vals.shape, generator=g) < 0.3] = 0.0  # some tokens fire fewer features
    vals[:5, 0] = 0.0  # empty sets: J(∅, ∅) = 0
    cats = torch.randint(0, n_cats, (n_tokens,), generator=g)
    return idx, vals, cats


def _stats(n_tokens=160, sample=12, seed=0):
    idx, vals, cats = _stream(n_tokens, seed=seed)
    acc = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=sample)
    for s in range(0, n_tokens, 32):
        acc.update(cats[s : s + 32], indices=idx[s : s + 32], values=vals[s : s + 32])
    return acc.stats(), (idx, vals, cats)


def _naive_psi(sets, cats, counts, weighting, keep):
    """Σ_{a≠b} w_ab · mean_{i∈a, j∈b} J(A_i, A_j) / Σ w_ab, one pair at a time."""
    by_cat: dict[int, list[int]] = {}
    for i in keep:
        by_cat.setdefault(int(cats[i]), []).append(i)
    num = den = 0.0
    for a, b in itertools.permutations(sorted(by_cat), 2):
        w = counts[a] * counts[b] if weighting == "tokens" else 1.0
        jac = []
        for i in by_cat[a]:
            for j in by_cat[b]:
                u = sets[i] | sets[j]
                jac.append(len(sets[i] & sets[j]) / len(u) if u else 0.0)
        num += w * sum(jac) / len(jac)
        den += w
    return num / den


def _sets(stats, ell, h):
    bits = np.unpackbits(stats.sample_bits[ell][:, h], axis=-1, count=F).astype(bool)
    return [set(np.flatnonzero(row).tolist()) for row in bits]


@pytest.mark.parametrize("weighting", ["tokens", "balanced"])
def test_all_pairs_equals_the_pairwise_loop(weighting):
    stats, _ = _stats()
    psi = cross_input_consistency(stats, n_pairs=10, pair_weighting=weighting, seed=0)
    assert psi.method == "all-pairs" and psi.pairs.shape == (L, 0, 2)
    for ell in range(L):
        cats, m = stats.sample_categories[ell], stats.sample_categories[ell].size
        sizes = np.bincount(cats)
        assert psi.n_pairs[ell] == m * m - (sizes**2).sum()
        for h in range(H):
            ref = _naive_psi(_sets(stats, ell, h), cats, stats.category_counts[ell], weighting,
                             range(m))  # fmt: skip
            assert psi.value[ell, h] == pytest.approx(ref, abs=1e-12)


def test_all_pairs_is_the_expectation_of_the_sampled_estimate():
    stats, _ = _stats()
    exact = cross_input_consistency(stats, n_pairs=1, pair_weighting="tokens", seed=0)
    drawn = cross_input_consistency(stats, n_pairs=200_000, pair_weighting="tokens", seed=1,
                                    max_bytes=0)  # fmt: skip
    assert drawn.method == "sampled" and drawn.pairs.shape == (L, 200_000, 2)
    # pair-sampling SE of a mean of 200k Jaccards in [0, 1] is below 1e-3
    np.testing.assert_allclose(drawn.value, exact.value, atol=3e-3)


def test_jackknife_replicates_equal_recomputation_without_each_group():
    stats, _ = _stats()
    psi = cross_input_consistency(stats, n_pairs=10, pair_weighting="tokens", seed=0,
                                  groups=(16, 4))  # fmt: skip
    assert psi.replicates.shape == (4, L, H)
    for ell in range(L):
        cats = stats.sample_categories[ell]
        group = token_groups(stats.sample_tokens[ell], n_tokens=160, block_len=16, n_groups=4)
        for g in range(4):
            keep = np.flatnonzero(group != g)
            for h in range(H):
                ref = _naive_psi(_sets(stats, ell, h), cats, stats.category_counts[ell], "tokens",
                                 keep)  # fmt: skip
                assert psi.replicates[g, ell, h] == pytest.approx(ref, abs=1e-12)
    np.testing.assert_allclose(psi.se, jackknife_se(psi.replicates), rtol=0)
    assert (psi.se > 0).all()


def test_sampled_replicates_leave_out_the_pairs_touching_each_group():
    stats, _ = _stats()
    psi = cross_input_consistency(stats, n_pairs=400, pair_weighting="tokens", seed=2,
                                  max_bytes=0, groups=(16, 4))  # fmt: skip
    for ell in range(L):
        pos = psi.pairs[ell]
        group = token_groups(pos, n_tokens=160, block_len=16, n_groups=4)
        row = {int(t): i for i, t in enumerate(stats.sample_tokens[ell])}
        for h in range(H):
            sets = _sets(stats, ell, h)
            jac = np.array([len(sets[row[a]] & sets[row[b]]) / len(sets[row[a]] | sets[row[b]])
                            if sets[row[a]] | sets[row[b]] else 0.0 for a, b in pos])  # fmt: skip
            assert psi.value[ell, h] == pytest.approx(jac.mean(), abs=1e-12)
            for g in range(4):
                kept = (group != g).all(axis=1)
                assert psi.replicates[g, ell, h] == pytest.approx(jac[kept].mean(), abs=1e-12)


def test_memory_limit_switches_to_sampling():
    stats, _ = _stats()
    m = max(c.size for c in stats.sample_categories)
    at = DensityConfig(all_pairs_max_bytes=all_pairs_bytes(m), n_pairs=50)
    below = DensityConfig(all_pairs_max_bytes=all_pairs_bytes(m) - 1, n_pairs=50)
    assert capability_density(stats, at).consistency_method == "all-pairs"
    res = capability_density(stats, below)
    assert res.consistency_method == "sampled" and res.pairs.shape == (L, 50, 2)
    assert res.consistency_se is not None and np.isfinite(res.consistency_se).all()
    assert res.density_se is None  # no group counts: only Ψ's standard error


def test_density_jackknife_from_group_counts():
    stats, (idx, vals, cats) = _stats()
    block_len, n_groups = 16, 4
    group = token_groups(np.arange(160), n_tokens=160, block_len=block_len, n_groups=n_groups)
    counts = np.zeros((n_groups, L, H, F), np.int64)
    for g in range(n_groups):
        acc = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F)
        rows = torch.from_numpy(np.flatnonzero(group == g))
        acc.update(cats[rows], indices=idx[rows], values=vals[rows])
        counts[g] = acc.counts_
    np.testing.assert_array_equal(counts.sum(0), stats.counts)  # the groups sum to the pool
    groups = GroupCounts(counts=counts, n_tokens=np.full((n_groups, L), 40), block_len=block_len)
    cfg = DensityConfig(gamma=1.0, alpha=(1.0, 1.0, 1.0), tau_min=0.02)
    res = capability_density(stats, cfg, groups=groups)
    psi = cross_input_consistency(stats, n_pairs=10, pair_weighting="tokens", seed=0,
                                  groups=(block_len, n_groups))  # fmt: skip
    for g in range(n_groups):
        rest = stats.counts - counts[g]
        b, e = feature_breadth(rest / 120, 0.02), feature_entropy(rest)
        ref = (b * e * psi.replicates[g]) ** (1 / 3)
        np.testing.assert_allclose(res.density_replicates[g], ref, rtol=1e-12)
    np.testing.assert_allclose(res.density_se, jackknife_se(res.density_replicates), rtol=0)
    frame = res.se_frame()
    assert (frame["density_ci_low"] < res.density.ravel()).all()
