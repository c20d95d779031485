"""How sure the survival audit is: blocked-jackknife errors of every survival statistic.

The audit's accumulators keep their sums per group of token blocks (``n_groups``, see
:mod:`cgc_lens.analysis.accumulator_base`); blocks, not tokens, are deleted together, so the
correlation of neighbouring tokens stays inside a group. For each group g the statistic θ is
recomputed without it, θ₋g (the reference side too: the active filter of Eq. 4 and the constant
features are redrawn from the reference sums without g), and

    SE = sqrt((G − 1) / G · Σ_g (θ₋g − θ̄)²),   interval θ̂ ± t_{G−1, (1+c)/2} · SE

(:func:`~cgc_lens.analysis.uncertainty.jackknife_se`; Student's t with G − 1 degrees of freedom,
as the G replicates carry G − 1 degrees of freedom of the spread). θ̂ is the pooled statistic,
exactly the one Table 1 reports. Per-feature r intervals are clipped to [−1, 1]; percentages to
[0, 100].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.analysis.survival import SurvivalThresholds, active_features, summarize_condition
from cgc_lens.analysis.uncertainty import jackknife_se
from cgc_lens.errors import CgcLensError

__all__ = ["SURVIVAL_STATS", "SurvivalIntervals", "jackknife_interval", "survival_intervals"]

SURVIVAL_STATS = ("mean_corr", "median_corr", "survived_pct", "degraded_pct", "damaged_pct")
"""The per-condition statistics that get ``<stat>_se``, ``<stat>_ci_low``, ``<stat>_ci_high``."""

_BOUNDS = {"mean_corr": (-1.0, 1.0), "median_corr": (-1.0, 1.0)}


def jackknife_interval(
    estimate: np.ndarray | float,
    replicates: np.ndarray,
    *,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(se, low, high)``: the jackknife SE of ``replicates`` (axis 0: G leave-one-group-out
    values) and the interval ``estimate ± t_{G-1} · se``, clipped to ``bounds``.

    Example:
        >>> x = np.array([1.0, 2.0, 4.0, 7.0])
        >>> reps = np.array([np.delete(x, g).mean() for g in range(4)])
        >>> se, lo, hi = jackknife_interval(x.mean(), reps)
        >>> bool(np.isclose(se, x.std(ddof=1) / 2)), bool(np.isclose(hi - x.mean(), 3.182 * se,
        ...                                                        rtol=1e-3))
        (True, True)
    """
    if not 0 < confidence < 1:
        raise CgcLensError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}.")
    reps = np.asarray(replicates, dtype=np.float64)
    se = jackknife_se(reps)
    t = stats.t.ppf((1 + confidence) / 2, reps.shape[0] - 1) if reps.shape[0] > 1 else np.nan
    est = np.asarray(estimate, dtype=np.float64)
    low, high = est - t * se, est + t * se
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return np.asarray(se), np.asarray(low), np.asarray(high)


@dataclass(frozen=True, kw_only=True, eq=False)
class SurvivalIntervals:
    """One condition's jackknife errors: per statistic of Table 1, and per feature."""

    n_groups: int
    """Groups of token blocks (G) the replicates leave out one at a time."""
    confidence: float
    """Level of the intervals."""
    stats: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """``stat`` → ``(se, ci_low, ci_high)`` for each of :data:`SURVIVAL_STATS`."""
    r: np.ndarray = field(default_factory=lambda: np.empty((3, 0)))
    """``[3, d_sae]``: per-feature r's SE, interval low and high (NaN where r is undefined in
    the pooled sums or in some replicate)."""

    def row_fields(self) -> dict[str, float]:
        """``<stat>_se``, ``<stat>_ci_low``, ``<stat>_ci_high`` per statistic, and ``n_groups``:
        the fields a Table 1 row carries."""
        out: dict[str, float] = {}
        for name, (se, low, high) in self.stats.items():
            out.update({f"{name}_se": se, f"{name}_ci_low": low, f"{name}_ci_high": high})
        return {**out, "n_groups": self.n_groups}


def survival_intervals(
    pearson: PearsonAccumulator,
    reference: ReferenceAccumulator,
    *,
    thresholds: SurvivalThresholds | None = None,
    flat_other: str = "damaged",
    confidence: float = 0.95,
) -> SurvivalIntervals:
    """Jackknife SEs and intervals of one condition's Table 1 statistics and per-feature r.

    Args:
        pearson: the condition's pooled sums with groups (``n_groups = G >= 2``).
        reference: the reference sums with the same groups.
        thresholds: the active filter and the taxonomy (as Table 1's row; default
            :class:`SurvivalThresholds`'s).
        flat_other: as :meth:`PearsonAccumulator.pearson`.
        confidence: level of the intervals.

    Raises:
        CgcLensError: the accumulators keep fewer than 2 groups, or different groups.

    Example:
        >>> import torch
        >>> g = torch.arange(40) // 10  # 4 groups of 10 positions
        >>> x = torch.rand(40, 3)
        >>> y = x + 0.3 * torch.rand(40, 3)
        >>> p = PearsonAccumulator(3, n_groups=4).update(x, y, groups=g)
        >>> ref = ReferenceAccumulator(3, n_groups=4).update(x, groups=g)
        >>> iv = survival_intervals(p, ref)
        >>> iv.r.shape, bool((iv.r[1] <= p.pearson()).all() & (p.pearson() <= iv.r[2]).all())
        ((3, 3), True)
    """
    thresholds = SurvivalThresholds() if thresholds is None else thresholds
    n = pearson.n_groups
    if n < 2 or reference.n_groups != n:
        raise CgcLensError(
            f"Jackknife intervals need accumulators with the same n_groups >= 2, "
            f"got {n} (pearson) and {reference.n_groups} (reference)."
        )
    pooled = _statistics(pearson, reference, thresholds, flat_other)
    reps = [
        _statistics(pearson.leave_one_out(g), reference.leave_one_out(g), thresholds, flat_other)
        for g in range(n)
    ]
    out = {}
    for name in SURVIVAL_STATS:
        se, low, high = jackknife_interval(
            pooled[name],
            np.array([rep[name] for rep in reps]),
            confidence=confidence,
            bounds=_BOUNDS.get(name, (0.0, 100.0)),
        )
        out[name] = (float(se), float(low), float(high))
    r_reps = np.stack([rep["r"] for rep in reps])
    r_iv = np.stack(
        jackknife_interval(pooled["r"], r_reps, confidence=confidence, bounds=(-1.0, 1.0))
    )
    r_iv[:, ~np.isfinite(pooled["r"]) | ~np.isfinite(r_reps).all(0)] = np.nan
    return SurvivalIntervals(n_groups=n, confidence=confidence, stats=out, r=r_iv)


def _statistics(
    pearson: PearsonAccumulator,
    reference: ReferenceAccumulator,
    thresholds: SurvivalThresholds,
    flat_other: str,
) -> dict[str, object]:
    """r and the Table 1 statistics of one set of sums (NaN where no feature is classified)."""
    r = pearson.pearson(flat_other=flat_other)  # type: ignore[arg-type]
    ref = reference.stats()
    active = active_features(ref.firing_rate, thresholds.active_rate)
    try:
        row = summarize_condition(
            "", r, active, tokens=pearson.n_tokens, thresholds=thresholds, constant=ref.constant
        )
    except CgcLensError:  # no classified feature without this group: the statistic is undefined
        return {"r": r, **dict.fromkeys(SURVIVAL_STATS, np.nan)}
    return {"r": r, **{name: getattr(row, name) for name in SURVIVAL_STATS}}
