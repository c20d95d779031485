"""Stability checks of the survival audit (QDM paper §3.8, App. B, Table 5).

The null check (the reference against itself), token-budget sensitivity, random-subset
stability and the threshold grid. The budget and subset checks take per-shard accumulators
(:mod:`cgc_lens.analysis.accumulators`), so no check needs the activations again; every
summary is :func:`~cgc_lens.analysis.survival.summarize_condition`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float

from cgc_lens.analysis.accumulators import (
    PearsonAccumulator,
    ReferenceAccumulator,
    merge_all,
)
from cgc_lens.analysis.survival import (
    ConditionSummary,
    SurvivalThresholds,
    active_features,
    summarize_condition,
)
from cgc_lens.errors import CgcLensError

__all__ = [
    "NullCheck",
    "budget_sensitivity",
    "null_check",
    "subset_stability",
    "threshold_grid",
]

_THRESHOLDS = SurvivalThresholds()
"""The paper's thresholds (a frozen default shared by the checks)."""


def threshold_grid(
    r: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: Sequence[float] = (0.80, 0.85, 0.90, 0.95),
    damaged: Sequence[float] = (0.30, 0.40, 0.50, 0.60, 0.70),
) -> pd.DataFrame:
    """App. B threshold sensitivity: survived / degraded / damaged % for every (τ_s, τ_d) pair.

    Columns: survived_threshold, damaged_threshold, survived_pct, degraded_pct, damaged_pct.

    Example:
        >>> grid = threshold_grid(np.array([0.95, 0.85, 0.45]), np.ones(3, bool))
        >>> grid.shape
        (20, 5)
    """
    rows = []
    for s in survived:
        for d in damaged:
            row = summarize_condition(
                "", r, active_mask, tokens=0,
                thresholds=SurvivalThresholds(survived=float(s), damaged=float(d)),
            )  # fmt: skip
            rows.append({
                "survived_threshold": float(s), "damaged_threshold": float(d),
                "survived_pct": row.survived_pct, "degraded_pct": row.degraded_pct,
                "damaged_pct": row.damaged_pct,
            })  # fmt: skip
    return pd.DataFrame(rows)


@dataclass(frozen=True, kw_only=True)
class NullCheck:
    """The reference-against-itself check of §3.8 / App. B (Table 5)."""

    passed: bool
    """Mean r within ``atol`` of 1, survival 100%, no undefined active feature."""
    mean_corr: float
    """Mean r over classified active features."""
    min_corr: float
    """Smallest r over classified active features."""
    survived_pct: float
    """Percent survived."""
    n_active: int
    """Active features."""
    n_undefined: int
    """Active features with undefined r (any makes the check fail)."""


def null_check(
    r: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    atol: float = 1e-6,
    survived: float = 0.9,
) -> NullCheck:
    """Check a null condition (the reference against itself): mean r = 1 to ``atol``, 100% survive.

    Example:
        >>> null_check(np.ones(5), np.ones(5, bool)).passed
        True
    """
    row = summarize_condition(
        "null", r, active_mask, tokens=0, thresholds=SurvivalThresholds(survived=survived)
    )
    r_ok = np.asarray(r, dtype=np.float64)[np.asarray(active_mask) & ~np.isnan(r)]
    passed = abs(row.mean_corr - 1) <= atol and row.survived_pct == 100 and row.n_undefined == 0
    return NullCheck(
        passed=bool(passed), mean_corr=row.mean_corr, min_corr=float(r_ok.min()),
        survived_pct=row.survived_pct, n_active=row.n_active, n_undefined=row.n_undefined,
    )  # fmt: skip


def _check_shards(
    ref_shards: Sequence[ReferenceAccumulator], cond_shards: Sequence[PearsonAccumulator]
) -> None:
    if not ref_shards or len(ref_shards) != len(cond_shards):
        raise CgcLensError(
            "Expected one ReferenceAccumulator and one PearsonAccumulator per shard; got "
            f"{len(ref_shards)} and {len(cond_shards)}."
        )
    for i, (ref, cond) in enumerate(zip(ref_shards, cond_shards, strict=True)):
        if ref.n_tokens != cond.n_tokens:
            raise CgcLensError(
                f"Shard {i}: the reference saw {ref.n_tokens} tokens but the condition "
                f"{cond.n_tokens}; shards must cover identical positions."
            )


def _summarize_shards(
    ref_shards: Sequence[ReferenceAccumulator],
    cond_shards: Sequence[PearsonAccumulator],
    thresholds: SurvivalThresholds,
    flat_other: Literal["damaged", "undefined"],
) -> ConditionSummary:
    ref, cond = merge_all(list(ref_shards)), merge_all(list(cond_shards))
    active = active_features(ref.stats().firing_rate, thresholds.active_rate)
    r = cond.pearson(flat_other=flat_other)  # type: ignore[attr-defined]
    return summarize_condition("", r, active, tokens=cond.n_tokens, thresholds=thresholds)


def _stability_row(key: str, value: object, row: ConditionSummary) -> dict[str, object]:
    return {
        key: value, "tokens": row.tokens, "n_active": row.n_active, "mean_corr": row.mean_corr,
        "median_corr": row.median_corr, "survived_pct": row.survived_pct,
        "degraded_pct": row.degraded_pct, "damaged_pct": row.damaged_pct,
    }  # fmt: skip


def budget_sensitivity(
    ref_shards: Sequence[ReferenceAccumulator],
    cond_shards: Sequence[PearsonAccumulator],
    budgets: Sequence[int],
    *,
    thresholds: SurvivalThresholds = _THRESHOLDS,
    flat_other: Literal["damaged", "undefined"] = "damaged",
) -> pd.DataFrame:
    """Token-budget sensitivity (App. B): the audit on the first shards that fit each budget.

    ``ref_shards[i]`` and ``cond_shards[i]`` hold shard i (a batch or a group of batches) in run
    order. For each budget the longest prefix of shards with at most that many tokens is merged
    and re-summarised, active set included. Columns: budget, tokens, n_active, mean_corr,
    median_corr, survived_pct, degraded_pct, damaged_pct.
    """
    _check_shards(ref_shards, cond_shards)
    cumulative = np.cumsum([shard.n_tokens for shard in cond_shards])
    rows = []
    for budget in budgets:
        n_shards = int(np.searchsorted(cumulative, budget, side="right"))
        if n_shards == 0:
            raise CgcLensError(
                f"Budget {budget} is smaller than the first shard ({cumulative[0]} tokens)."
            )
        row = _summarize_shards(
            ref_shards[:n_shards], cond_shards[:n_shards], thresholds, flat_other
        )
        rows.append(_stability_row("budget", int(budget), row))
    return pd.DataFrame(rows)


def subset_stability(
    ref_shards: Sequence[ReferenceAccumulator],
    cond_shards: Sequence[PearsonAccumulator],
    n_tokens: int,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    thresholds: SurvivalThresholds = _THRESHOLDS,
    flat_other: Literal["damaged", "undefined"] = "damaged",
) -> pd.DataFrame:
    """Random-subset stability (App. B): per seed, random shards up to ``n_tokens`` tokens.

    Shards are drawn without replacement in the order of ``numpy.random.default_rng(seed)
    .permutation`` and kept while the total stays within ``n_tokens``. Columns: seed, tokens,
    n_active, mean_corr, median_corr, survived_pct, degraded_pct, damaged_pct.
    """
    _check_shards(ref_shards, cond_shards)
    rows = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(cond_shards))
        sizes = np.cumsum([cond_shards[i].n_tokens for i in order])
        chosen = order[sizes <= n_tokens]
        if chosen.size == 0:
            raise CgcLensError(f"n_tokens={n_tokens} is below the first shard drawn (seed {seed}).")
        row = _summarize_shards(
            [ref_shards[i] for i in chosen], [cond_shards[i] for i in chosen],
            thresholds, flat_other,
        )  # fmt: skip
        rows.append(_stability_row("seed", int(seed), row))
    return pd.DataFrame(rows)
