import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from cgc_lens.analysis.density import (
    DensityConfig,
    FeatureAccumulator,
    capability_density,
    feature_breadth,
    feature_entropy,
    jaccard_packed,
)
from cgc_lens.errors import CgcLensError

L, H, F, K = 2, 3, 16, 4
SAMPLED = DensityConfig(all_pairs_max_bytes=0)  # Ψ over drawn pairs (the fallback)


def make_stream(n_tokens=120, n_cats=3, seed=0, zero_frac=0.2):
    """Random TopK outputs [tokens, L*H, K] with some non-positive values, and categories."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n_tokens, L * H, F, generator=g).argsort(-1)[..., :K]
    vals = torch.rand(n_tokens, L * H, K, generator=g) + 0.1
    vals[torch.rand(vals.shape, generator=g) < zero_frac] = 0.0
    cats = torch.randint(0, n_cats, (n_tokens,), generator=g)
    return idx, vals, cats


def active_sets(idx, vals):
    """Naive python sets: sets[t][head_total] = {features with value > 0}."""
    return [
        [
            {int(f) for f, v in zip(idx[t, h], vals[t, h], strict=True) if v > 0}
            for h in range(idx.shape[1])
        ]
        for t in range(idx.shape[0])
    ]


def feed(acc, idx, vals, cats, batch):
    for s in range(0, len(cats), batch):
        acc.update(cats[s : s + batch], indices=idx[s : s + batch], values=vals[s : s + batch])
    return acc


def test_counts_match_naive_and_dense_input():
    idx, vals, cats = make_stream()
    acc = feed(FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F), idx, vals, cats, 17)
    sets = active_sets(idx, vals)
    naive = np.zeros((L * H, F), int)
    for t in range(len(cats)):
        for h in range(L * H):
            for f in sets[t][h]:
                naive[h, f] += 1
    np.testing.assert_array_equal(acc.counts_.reshape(L * H, F), naive)
    dense = torch.zeros(len(cats), L * H, F).scatter_(2, idx, vals)
    acc2 = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F)
    for s in range(0, len(cats), 40):
        acc2.update(cats[s : s + 40], acts=dense[s : s + 40])
    a, b = acc.stats(), acc2.stats()
    np.testing.assert_array_equal(a.counts, b.counts)
    for ell in range(L):
        np.testing.assert_array_equal(a.sample_bits[ell], b.sample_bits[ell])
        np.testing.assert_array_equal(a.sample_tokens[ell], b.sample_tokens[ell])


def test_breadth_and_entropy_match_reference():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(L, H, F))
    counts[0, 0, :5] = 0
    n_tok = 1000
    freq = counts / n_tok
    for tau in (0.0, 1e-3, 0.02):
        expected = np.array(
            [
                [
                    sum(
                        1
                        for f in range(F)
                        if counts[ell, h, f] > 0 and counts[ell, h, f] / n_tok >= tau
                    )
                    / F
                    for h in range(H)
                ]
                for ell in range(L)
            ]
        )
        np.testing.assert_allclose(feature_breadth(freq, tau), expected, atol=0)
    ent = feature_entropy(counts)
    for ell in range(L):
        for h in range(H):
            ref = scipy_entropy(counts[ell, h]) / np.log(F)
            assert ent[ell, h] == pytest.approx(ref, abs=1e-12)


def test_consistency_matches_naive_jaccard_on_recorded_pairs():
    idx, vals, cats = make_stream(n_tokens=150)
    acc = feed(
        FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=20),
        idx,
        vals,
        cats,
        32,
    )
    res = capability_density(acc, DensityConfig(n_pairs=300, seed=3, all_pairs_max_bytes=0))
    sets = active_sets(idx, vals)
    for ell in range(L):
        pairs = res.pairs[ell]
        assert (cats[pairs[:, 0]] != cats[pairs[:, 1]]).all()
        for h in range(H):
            hh = ell * H + h
            jac = []
            for t, u in pairs:
                a, b = sets[t][hh], sets[u][hh]
                jac.append(len(a & b) / len(a | b) if a | b else 0.0)
            assert res.consistency[ell, h] == pytest.approx(np.mean(jac), abs=1e-12)


def test_jaccard_packed_matches_sets():
    rng = np.random.default_rng(1)
    a, b = rng.random((50, 13)) < 0.3, rng.random((50, 13)) < 0.3
    a[0], b[0] = False, False  # J(∅, ∅) = 0
    got = jaccard_packed(np.packbits(a, -1), np.packbits(b, -1))
    ref = [
        (x & y).sum() / (x | y).sum() if (x | y).any() else 0.0 for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_density_formula_and_readings():
    idx, vals, cats = make_stream()
    acc = feed(FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F), idx, vals, cats, 64)
    res = capability_density(acc)
    subs = res.breadth * res.entropy * res.consistency
    np.testing.assert_allclose(res.density, subs ** (1 / 6), rtol=1e-12)
    res1 = capability_density(acc, DensityConfig(gamma=1.0, alpha=(2.0, 1.0, 1.0)))
    np.testing.assert_allclose(
        res1.density, res.breadth**0.5 * res.entropy**0.25 * res.consistency**0.25, rtol=1e-12
    )
    np.testing.assert_array_equal(res1.consistency, res.consistency)
    assert np.all((res.density >= 0) & (res.density <= 1))
    frame = res.to_frame()
    assert len(frame) == L * H
    assert {"layer", "head", "breadth", "entropy", "consistency", "density"} <= set(frame)
    assert res.config.tau_min == 1e-3 and res.breadth_count.dtype.kind == "i"


def test_batch_size_layerwise_feeding_and_seed_reproducible():
    idx, vals, cats = make_stream(n_tokens=200)

    def make():
        return FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=10)

    a = capability_density(feed(make(), idx, vals, cats, 7), SAMPLED)
    b = capability_density(feed(make(), idx, vals, cats, 200), SAMPLED)
    per_layer = make()
    for ell in range(L):
        sl = slice(ell * H, (ell + 1) * H)
        for s in range(0, 200, 33):
            per_layer.update(
                cats[s : s + 33],
                indices=idx[s : s + 33, sl],
                values=vals[s : s + 33, sl],
                layer=ell,
            )
    c = capability_density(per_layer, SAMPLED)
    for other in (b, c):
        np.testing.assert_array_equal(a.density, other.density)
        np.testing.assert_array_equal(a.pairs, other.pairs)
    # the same tokens are sampled for every layer, and the same pairs drawn
    np.testing.assert_array_equal(a.pairs[0], a.pairs[1])
    d = capability_density(
        feed(make(), idx, vals, cats, 50), DensityConfig(seed=9, all_pairs_max_bytes=0)
    )
    assert not np.array_equal(a.pairs, d.pairs)


def test_merged_shards_equal_one_pass():
    idx, vals, cats = make_stream(n_tokens=200)

    def make(offset=0):
        return FeatureAccumulator(
            n_layers=L, n_heads=H, d_sae=F, sample_per_category=10, token_offset=offset
        )

    whole = capability_density(feed(make(), idx, vals, cats, 64), SAMPLED)
    a = feed(make(), idx[:120], vals[:120], cats[:120], 64)
    b = feed(make(120), idx[120:], vals[120:], cats[120:], 64)
    merged = capability_density(a.merge(b), SAMPLED)
    np.testing.assert_array_equal(merged.density, whole.density)
    np.testing.assert_array_equal(merged.pairs, whole.pairs)
    clash = feed(make(), idx[120:], vals[120:], cats[120:], 64)
    with pytest.raises(CgcLensError, match="token_offset"):
        feed(make(), idx[:120], vals[:120], cats[:120], 64).merge(clash)
    with pytest.raises(CgcLensError, match="same"):
        make().merge(FeatureAccumulator(n_layers=L, n_heads=H, d_sae=8))


def test_sample_is_bounded_and_skips_unlabelled():
    idx, vals, cats = make_stream(n_tokens=300, n_cats=3)
    cats = cats.clone()
    cats[:50] = -1
    acc = feed(
        FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=8),
        idx,
        vals,
        cats,
        64,
    )
    st = acc.stats()
    assert st.sample_bits[0].shape == (24, H, 2)
    assert np.all(st.sample_tokens[0] >= 50)
    assert sum(st.category_counts[0].values()) == 250
    assert st.n_tokens.tolist() == [300, 300]


def test_pair_weighting_follows_category_sizes():
    n = 240
    cats = torch.tensor([0] * 160 + [1] * 40 + [2] * 40)
    idx = torch.zeros(n, L * H, 1, dtype=torch.long)
    acc = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=40)
    acc.update(cats, indices=idx, values=torch.ones(n, L * H, 1))
    for weighting, expected_01 in (
        ("tokens", 160 * 40 / (160 * 40 * 2 + 40 * 40)),
        ("balanced", 1 / 3),
    ):
        res = capability_density(
            acc, DensityConfig(n_pairs=6000, pair_weighting=weighting, all_pairs_max_bytes=0)
        )
        pc = np.sort(cats.numpy()[res.pairs[0]], axis=1)
        frac_01 = np.mean((pc[:, 0] == 0) & (pc[:, 1] == 1))
        assert frac_01 == pytest.approx(expected_01, abs=0.03)
        assert res.consistency[0, 0] == 1.0  # every token fires feature 0 only


def test_dead_head_and_single_feature_give_zero_not_nan():
    idx, vals, cats = make_stream()
    vals = vals.clone()
    vals[:, 4] = 0.0  # head L1H1 never fires
    res = capability_density(
        feed(FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F), idx, vals, cats, 64)
    )
    assert (res.breadth[1, 1], res.entropy[1, 1], res.consistency[1, 1], res.density[1, 1]) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )
    assert np.isfinite(res.density).all()
    acc = FeatureAccumulator(n_layers=1, n_heads=2, d_sae=1)
    acc.update(torch.tensor([0, 1, 0, 1]), indices=torch.zeros(4, 2, 1, dtype=torch.long))
    one = capability_density(acc)
    assert one.entropy.tolist() == [[0.0, 0.0]] and one.density.tolist() == [[0.0, 0.0]]
    assert one.breadth.tolist() == [[1.0, 1.0]] and one.consistency.tolist() == [[1.0, 1.0]]


def test_one_category_raises():
    idx, vals, _ = make_stream()
    acc = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F)
    acc.update(torch.zeros(len(idx), dtype=torch.long), indices=idx, values=vals)
    with pytest.raises(CgcLensError, match="at least 2 categories"):
        capability_density(acc)
    with pytest.raises(CgcLensError, match="calibration tokens"):
        capability_density(FeatureAccumulator(n_layers=1, n_heads=1, d_sae=4))


def test_bad_input_raises(unchecked):
    # our own checks, which users meet (the type checker under pytest would pre-empt some)
    idx, vals, cats = make_stream(n_tokens=10)
    acc = FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F)
    with pytest.raises(CgcLensError, match="exactly one"):
        acc.update(cats)
    with pytest.raises(CgcLensError, match="shape"):
        acc.update(cats, indices=idx[:, :H], values=vals[:, :H])
    with pytest.raises(CgcLensError, match=r"\[0, d_sae=16\)"):
        acc.update(cats, indices=idx + F, values=vals)
    with pytest.raises(CgcLensError, match=r"values must match .*\(10, 6, 4\), got \(10, 6, 2\)"):
        acc.update(cats, indices=idx, values=vals[..., :2])
    with pytest.raises(CgcLensError, match="layer must lie"):
        acc.update(cats, indices=idx[:, :H], values=vals[:, :H], layer=5)
    with pytest.raises(CgcLensError, match="positive int"):
        FeatureAccumulator(n_layers=0, n_heads=1, d_sae=1)
    for kwargs, msg in (
        ({"tau_min": 2.0}, r"tau_min must lie in \[0, 1\], got 2\.0"),
        ({"alpha": (0.0, 0.0, 0.0)}, r"alpha .*got \(0\.0, 0\.0, 0\.0\)"),
        ({"gamma": 0.0}, r"gamma must be > 0 .*got 0\.0"),
        ({"n_pairs": 0}, "n_pairs must be >= 1, got 0"),
        ({"pair_weighting": "x"}, "pair_weighting must be 'tokens' or 'balanced', got 'x'"),
    ):
        with pytest.raises(CgcLensError, match=msg):
            DensityConfig(**kwargs)
