"""A feature constant in the reference is its own band (``CONSTANT``), never counted SURVIVED
with r = 1; every number of the non-constant features stays as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.analysis.survival import (
    Outcome,
    classify,
    feature_table,
    summarize_condition,
)
from cgc_lens.errors import CgcLensError


def _codes(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference and condition codes: feature 0 constant in both (equal), 1 constant in the
    reference only, 2 switched off by the condition, the rest vary."""
    gen = torch.Generator().manual_seed(seed)
    fires = torch.rand(n, 8, generator=gen) > 0.3
    x = torch.rand(n, 8, generator=gen, dtype=torch.float64) * fires
    y = x + 0.05 * torch.randn(n, 8, generator=gen, dtype=torch.float64)
    x[:, 0], y[:, 0] = 2.0, 2.0
    x[:, 1] = 1.5
    y[:, 2] = 0.0
    return x, y


@pytest.fixture
def sums():
    x, y = _codes()
    ref = ReferenceAccumulator(8).update(x).stats()
    return ref, PearsonAccumulator(8).update(x, y).pearson()


def test_reference_constant_mask(sums):
    ref, _ = sums
    assert ref.constant.tolist() == [True, True] + [False] * 6


def test_constant_features_are_their_own_band(sums):
    ref, r = sums
    active = ref.firing_rate > 1e-3
    codes = classify(r, active, constant=ref.constant)
    assert [Outcome(c).name for c in codes[:3]] == ["CONSTANT", "CONSTANT", "DAMAGED"]
    assert r[0] == 1.0 and Outcome(classify(r, active)[0]) is Outcome.SURVIVED  # without the mask


def test_condition_row_counts_constant_apart_and_keeps_the_other_numbers(sums):
    ref, r = sums
    active = ref.firing_rate > 1e-3
    row = summarize_condition("c", r, active, tokens=400, constant=ref.constant)
    varying = active & ~ref.constant
    same = summarize_condition("c", np.where(varying, r, np.nan), varying, tokens=400)
    assert (row.n_active, row.n_constant, row.n_undefined) == (8, 2, 0)
    for field in ("mean_corr", "median_corr", "survived_pct", "degraded_pct", "damaged_pct"):
        assert getattr(row, field) == getattr(same, field), field


def test_feature_table_reports_constant(sums):
    ref, r = sums
    table = feature_table(ref.firing_rate, {"c": r}, ref.firing_rate > 1e-3, constant=ref.constant)
    assert table["constant"].tolist()[:3] == [True, True, False]
    assert table["outcome[c]"].tolist()[:3] == ["CONSTANT", "CONSTANT", "DAMAGED"]


def test_only_constant_features_is_refused_with_the_count(sums):
    ref, r = sums
    only = ref.constant.copy()
    with pytest.raises(CgcLensError, match=r"no active feature with a defined r \(2 active"):
        summarize_condition("c", r, only, tokens=400, constant=ref.constant)


@pytest.mark.parametrize("bad", [np.zeros(7, bool), np.zeros(8, int)])
def test_constant_mask_of_the_wrong_shape_or_dtype_is_refused(sums, bad, unchecked):
    ref, r = sums
    with pytest.raises(CgcLensError, match=r"constant must be a bool array of shape \(8,\)"):
        classify(r, ref.firing_rate > 1e-3, constant=bad)
