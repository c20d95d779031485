"""Exact merges and ``from_sums`` round trips of the three streaming accumulators.

Two halves of random tokens (even, uneven, one of them empty) merged give one pass over all of
them to 1e-12 in float64; ``from_sums`` rebuilds an accumulator from its statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cgc_lens import CgcLensError
from cgc_lens.analysis import (
    DensityConfig,
    FeatureAccumulator,
    PearsonAccumulator,
    ReferenceAccumulator,
    capability_density,
)

N_TOKENS, D_SAE = 500, 24
SPLITS = [0, 1, 37, 250, 499, 500]  # an empty half on either side, uneven and even halves
TOL = dict(rtol=1e-12, atol=1e-12)


def codes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative reference codes and a noisy condition of them, ``[N_TOKENS, D_SAE]``."""
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(N_TOKENS, D_SAE, generator=g) + torch.linspace(-2.0, 0.5, D_SAE)
    ref = torch.relu(pre) * torch.linspace(0.5, 5.0, D_SAE)
    other = torch.relu(pre + 0.3 * torch.randn(N_TOKENS, D_SAE, generator=g))
    return ref, other


def assert_states_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **TOL, msg=name)


@pytest.mark.parametrize("split", SPLITS)
def test_pearson_merge_of_halves_equals_one_pass(split):
    ref, other = codes()
    whole = PearsonAccumulator(D_SAE).update(ref, other)
    first = PearsonAccumulator(D_SAE).update(ref[:split], other[:split])
    second = PearsonAccumulator(D_SAE).update(ref[split:], other[split:])
    merged = first.merge(second)
    assert merged is first and merged.n_tokens == N_TOKENS
    assert_states_close(merged.state_dict(), whole.state_dict())
    np.testing.assert_allclose(merged.pearson(), whole.pearson(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("split", SPLITS)
def test_reference_merge_of_halves_equals_one_pass(split):
    ref, _ = codes(1)
    whole = ReferenceAccumulator(D_SAE, fire_threshold=0.1).update(ref)
    first = ReferenceAccumulator(D_SAE, fire_threshold=0.1).update(ref[:split])
    merged = first.merge(ReferenceAccumulator(D_SAE, fire_threshold=0.1).update(ref[split:]))
    assert_states_close(merged.state_dict(), whole.state_dict())
    got, expected = merged.stats(), whole.stats()
    np.testing.assert_array_equal(got.fire_count, expected.fire_count)
    np.testing.assert_array_equal(got.peak_activation, expected.peak_activation)
    for name in ("sum_activation", "sum_activation_firing", "sum_sq_firing"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), **TOL)


def test_merge_of_a_never_updated_accumulator():
    ref, other = codes(2)
    whole = PearsonAccumulator(D_SAE).update(ref, other)
    assert_states_close(PearsonAccumulator(D_SAE).merge(whole).state_dict(), whole.state_dict())
    assert_states_close(whole.copy().merge(PearsonAccumulator(D_SAE)).state_dict(),
                        whole.state_dict())


def test_merge_rejects_other_settings():
    ref, _ = codes()
    acc = ReferenceAccumulator(D_SAE).update(ref)
    with pytest.raises(CgcLensError, match="different settings"):
        acc.merge(ReferenceAccumulator(D_SAE, fire_threshold=0.5).update(ref))
    with pytest.raises(CgcLensError, match="Cannot merge PearsonAccumulator"):
        acc.merge(PearsonAccumulator(D_SAE))


def test_from_sums_round_trips_the_state():
    ref, other = codes(3)
    pearson = PearsonAccumulator(D_SAE).update(ref, other)
    back = PearsonAccumulator.from_sums(**pearson.state_dict())
    assert back.n_tokens == N_TOKENS and back.d_sae == D_SAE
    assert_states_close(back.state_dict(), pearson.state_dict())
    np.testing.assert_array_equal(back.pearson(), pearson.pearson())

    reference = ReferenceAccumulator(D_SAE, fire_threshold=0.2).update(ref)
    back_ref = ReferenceAccumulator.from_sums(**reference.state_dict(), fire_threshold=0.2)
    assert back_ref.fire_threshold == 0.2
    assert_states_close(back_ref.state_dict(), reference.state_dict())
    # and it merges like the accumulator it came from: sums added, maxima maxed
    twice = reference.copy().merge(reference)
    assert_states_close(back_ref.merge(reference).state_dict(), twice.state_dict())


def test_from_sums_checks_its_input():
    zeros = torch.zeros(D_SAE, dtype=torch.float64)
    sums = dict(sum_x=zeros, sum_y=zeros, sum_xx=zeros, sum_yy=zeros, sum_xy=zeros)
    with pytest.raises(CgcLensError, match=r"expected shape \(24,\)"):
        PearsonAccumulator.from_sums(n_tokens=3, **{**sums, "sum_xy": torch.zeros(5)})
    with pytest.raises(CgcLensError, match=r"sums of shape \[d_sae\]"):
        PearsonAccumulator.from_sums(n_tokens=3, **{**sums, "sum_x": torch.zeros(2, D_SAE)})


# FeatureAccumulator (capability density): counts summed, per-category samples bottom-k merged.
L, H, F, K = 2, 3, 40, 5


def topk_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cats = torch.randint(-1, 4, (n,), generator=g)
    idx = torch.stack([torch.randperm(F, generator=g)[:K] for _ in range(n * L * H)])
    return cats, idx.view(n, L * H, K), torch.randn(n, L * H, K, generator=g)


def feature_acc(**kw) -> FeatureAccumulator:
    return FeatureAccumulator(n_layers=L, n_heads=H, d_sae=F, sample_per_category=9, seed=7, **kw)


def assert_same_stats(got, expected) -> None:
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_array_equal(got.n_tokens, expected.n_tokens)
    assert got.category_counts == expected.category_counts
    for name in ("sample_bits", "sample_categories", "sample_tokens"):
        for a, b in zip(getattr(got, name), getattr(expected, name), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("split", [0, 1, 61, 100, 160])
def test_feature_merge_of_halves_equals_one_pass(split):
    n = 160
    cats, idx, vals = topk_batch(n)
    whole = feature_acc().update(cats, indices=idx, values=vals)
    first = feature_acc().update(cats[:split], indices=idx[:split], values=vals[:split])
    second = feature_acc(token_offset=split).update(cats[split:], indices=idx[split:],
                                                    values=vals[split:])
    merged = first.merge(second)
    assert_same_stats(merged.stats(), whole.stats())
    config = DensityConfig(n_pairs=300, seed=3)
    got, expected = capability_density(merged, config), capability_density(whole, config)
    for name in ("breadth", "entropy", "consistency", "density"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), **TOL)
    np.testing.assert_array_equal(got.pairs, expected.pairs)


def test_feature_from_sums_round_trips_and_continues():
    cats, idx, vals = topk_batch(120, seed=1)
    acc = feature_acc(threshold=0.1).update(cats[:80], indices=idx[:80], values=vals[:80])
    fields = {f.name: getattr(acc.stats(), f.name) for f in dataclasses.fields(acc.stats())}
    back = FeatureAccumulator.from_sums(**fields, sample_per_category=9, seed=7, threshold=0.1)
    assert_same_stats(back.stats(), acc.stats())
    for a in (acc, back):  # the next tokens enter the sample exactly as they would have
        a.update(cats[80:], indices=idx[80:], values=vals[80:])
    assert_same_stats(back.stats(), acc.stats())


def test_feature_from_sums_checks_its_input(unchecked):
    cats, idx, vals = topk_batch(60, seed=2)
    stats = feature_acc().update(cats, indices=idx, values=vals).stats()
    fields = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
    with pytest.raises(CgcLensError, match="over sample_per_category=2"):
        FeatureAccumulator.from_sums(**fields, sample_per_category=2, seed=7)
    with pytest.raises(CgcLensError, match="length n_layers=2"):
        FeatureAccumulator.from_sums(**{**fields, "sample_bits": fields["sample_bits"][:1]},
                                     sample_per_category=9, seed=7)
    with pytest.raises(CgcLensError, match=r"counts must be \[n_layers, n_heads, d_sae\]"):
        FeatureAccumulator.from_sums(**{**fields, "counts": fields["counts"][0]})
