"""Feature-survival taxonomy, per-condition tables and overlaps (QDM paper §3.3-3.6, Apps. B, E).

Everything here is a pure function of per-feature arrays: Pearson r from
:meth:`~cgc_lens.analysis.accumulators.PearsonAccumulator.pearson` and reference firing rates
from :class:`~cgc_lens.analysis.accumulators.ReferenceStats`. Survival statistics are taken
over *active* features (Eq. 4). An active feature whose r is undefined (NaN: constant reference)
is classified :attr:`Outcome.UNDEFINED`, counted in ``n_undefined`` and left out of every mean,
median and percentage, which are over the ``n_active - n_undefined`` classified features.
The stability checks of §3.8 / App. B (null, token budget, random subsets, thresholds) are in
:mod:`cgc_lens.analysis.stability`; :func:`destruction` is the taxonomy per head and pruning level
that the capability study's Theorem 1 test reads.

Over 400 lines: the taxonomy (with its constant band), Table 1 rows, the per-feature table,
overlaps, deciles and per-head destruction all classify through :func:`classify`; splitting the
tables off would make a second module that every caller imports for one concept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import IntEnum

import numpy as np
import pandas as pd
import scipy.stats
from jaxtyping import Bool, Float

from cgc_lens.errors import CgcLensError

__all__ = [
    "ConditionSummary", "Outcome", "OverlapResult", "SurvivalThresholds", "active_features",
    "classify", "decile_table", "destruction", "equal_count_bins", "feature_table", "overlap",
    "summarize_condition", "summary_table",
]  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SurvivalThresholds:
    """Thresholds of the activity filter (Eq. 4) and the survival taxonomy (Eq. 5)."""

    active_rate: float = 1e-3
    """A feature is active when its reference firing rate is strictly above this. The value is
    lost from our copy of the paper; 1e-3 is our reading (docs/methods_survival.md)."""
    survived: float = 0.9
    """Survived: r ≥ this (τ_s, §3.4)."""
    damaged: float = 0.5
    """Damaged: r < this (τ_d, §3.4); degraded in between."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.active_rate < 1.0:
            raise CgcLensError(f"active_rate must be in [0, 1), got {self.active_rate!r}.")
        if not -1.0 <= self.damaged <= self.survived <= 1.0:
            raise CgcLensError(
                "Expected -1 <= damaged <= survived <= 1, got "
                f"damaged={self.damaged!r}, survived={self.survived!r}."
            )


class Outcome(IntEnum):
    """Per-feature outcome codes returned by :func:`classify`."""

    SURVIVED = 0
    DEGRADED = 1
    DAMAGED = 2
    UNDEFINED = 3
    """Active but r is NaN (zero variance, see ``ZeroVariance``): counted apart, never averaged."""
    INACTIVE = 4
    """Not active in the reference (Eq. 4): outside every survival statistic."""
    CONSTANT = 5
    """Active but constant in the reference (it fires at one value on every position, see
    ``ReferenceStats.constant``): r is no correlation (1 when the condition keeps the value, NaN
    otherwise), so it is counted apart (``n_constant``), never averaged or called survived."""


def _as_r(r: object, name: str = "r") -> np.ndarray:
    arr = np.asarray(r, dtype=np.float64)
    if arr.ndim != 1:
        raise CgcLensError(f"{name} must be 1-D [d_sae], got shape {arr.shape}.")
    if np.isinf(arr).any() or (np.abs(arr[np.isfinite(arr)]) > 1 + 1e-9).any():
        raise CgcLensError(f"{name} must hold correlations in [-1, 1] or NaN.")
    return arr


def _as_mask(mask: object, d_sae: int, name: str = "active_mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != bool or arr.shape != (d_sae,):
        raise CgcLensError(
            f"{name} must be a bool array of shape ({d_sae},), got {arr.dtype} {arr.shape}."
        )
    return arr


def active_features(
    firing_rate: Float[np.ndarray, " d_sae"], threshold: float = 1e-3
) -> Bool[np.ndarray, " d_sae"]:
    """Eq. 4: features whose reference firing rate is strictly above ``threshold``.

    Example:
        >>> active_features(np.array([0.0, 1e-3, 0.01])).tolist()
        [False, False, True]
    """
    SurvivalThresholds(active_rate=threshold)
    return np.asarray(firing_rate, dtype=np.float64) > threshold


def classify(
    r: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: float = 0.9,
    damaged: float = 0.5,
    constant: Bool[np.ndarray, " d_sae"] | None = None,
) -> np.ndarray:
    """Eq. 5: per-feature :class:`Outcome` codes (int8) from r and the active mask.

    ``constant`` (``ReferenceStats.constant``) marks features constant in the reference: active
    ones are :attr:`Outcome.CONSTANT` whatever their r.

    Example:
        >>> r = np.array([0.95, 0.7, 0.2, np.nan, 0.99, 1.0])
        >>> active, flat = np.array([True] * 4 + [False, True]), np.arange(6) == 5
        >>> [Outcome(c).name for c in classify(r, active, constant=flat)]
        ['SURVIVED', 'DEGRADED', 'DAMAGED', 'UNDEFINED', 'INACTIVE', 'CONSTANT']
    """
    SurvivalThresholds(survived=survived, damaged=damaged)
    r = _as_r(r)
    active = _as_mask(active_mask, r.size)
    out = np.full(r.size, Outcome.INACTIVE, dtype=np.int8)
    defined = active & ~np.isnan(r)
    out[active & np.isnan(r)] = Outcome.UNDEFINED
    out[defined & (r >= survived)] = Outcome.SURVIVED
    out[defined & (r < survived) & (r >= damaged)] = Outcome.DEGRADED
    out[defined & (r < damaged)] = Outcome.DAMAGED
    if constant is not None:
        out[active & _as_mask(constant, r.size, "constant")] = Outcome.CONSTANT
    return out


@dataclass(frozen=True, kw_only=True)
class ConditionSummary:
    """One row of Table 1: a compression condition against the reference. Percentages are over
    the classified active features (``n_active - n_undefined``)."""

    name: str
    """Condition label, e.g. ``"RTN INT6"``."""
    bits: float | None
    """Weight bit-width (16 for the reference / pruning), ``None`` if not meaningful."""
    sparsity: float | None
    """Fraction of weights pruned, ``None`` for none."""
    ppl: float | None
    """Perplexity of the condition."""
    ppl_delta_pct: float | None
    """Eq. 6: ``100 · (ppl − ppl_ref) / ppl_ref``."""
    mean_corr: float
    """Mean r over classified active features."""
    median_corr: float
    """Median r over classified active features."""
    survived_pct: float
    """Percent with r ≥ τ_s."""
    degraded_pct: float
    """Percent with τ_d ≤ r < τ_s."""
    damaged_pct: float
    """Percent with r < τ_d."""
    n_active: int
    """Active features (Eq. 4), including undefined ones."""
    tokens: int
    """Token positions the correlations were computed on."""
    n_undefined: int = 0
    """Active features with undefined r, left out of the statistics above."""
    n_constant: int = 0
    """Active features constant in the reference (:attr:`Outcome.CONSTANT`), left out of the
    statistics above (0 when no constant mask was given)."""
    layer: int | None = None
    """Read-out layer, for the second-layer check."""
    n_features: int | None = None
    """d_sae."""
    spec: str | None = None
    """The condition's spec (``int4-g128``, ``nf4`` ...; :mod:`cgc_lens.compress.specs`)."""
    format: str | None = None
    """Format family (``rtn``, ``gptq``, ``nf4``, ``fp8``, ``semi_structured`` ..., ``dense``
    for the reference, a checkpoint's format for a compared one)."""
    group_size: int | None = None
    """Inputs per quantization group (m of n:m), None per channel or without groups."""
    bits_per_weight: float | None = None
    """Effective storage bits per weight, scales and zero points included, averaged over the
    edited weights by parameter count."""
    mean_corr_se: float | None = None
    """Blocked-jackknife standard error of the mean r (None: no groups)."""
    mean_corr_ci_low: float | None = None
    """Lower end of its 95% jackknife interval."""
    mean_corr_ci_high: float | None = None
    """Upper end of its 95% jackknife interval."""
    median_corr_se: float | None = None
    """Blocked-jackknife standard error of the median r (None: no groups)."""
    median_corr_ci_low: float | None = None
    """Lower end of its 95% jackknife interval."""
    median_corr_ci_high: float | None = None
    """Upper end of its 95% jackknife interval."""
    survived_pct_se: float | None = None
    """Blocked-jackknife standard error of the survived % (None: no groups)."""
    survived_pct_ci_low: float | None = None
    """Lower end of its 95% jackknife interval."""
    survived_pct_ci_high: float | None = None
    """Upper end of its 95% jackknife interval."""
    degraded_pct_se: float | None = None
    """Blocked-jackknife standard error of the degraded % (None: no groups)."""
    degraded_pct_ci_low: float | None = None
    """Lower end of its 95% jackknife interval."""
    degraded_pct_ci_high: float | None = None
    """Upper end of its 95% jackknife interval."""
    damaged_pct_se: float | None = None
    """Blocked-jackknife standard error of the damaged % (None: no groups)."""
    damaged_pct_ci_low: float | None = None
    """Lower end of its 95% jackknife interval."""
    damaged_pct_ci_high: float | None = None
    """Upper end of its 95% jackknife interval."""
    n_groups: int | None = None
    """Groups of token blocks the jackknife left out one at a time (None: no intervals)."""

    def to_dict(self) -> dict[str, object]:
        """The row as a dict, Table 1 columns first."""
        return asdict(self)


def summarize_condition(
    name: str,
    r: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    tokens: int,
    bits: float | None = None,
    sparsity: float | None = None,
    ppl: float | None = None,
    ppl_reference: float | None = None,
    layer: int | None = None,
    thresholds: SurvivalThresholds = SurvivalThresholds(),
    constant: Bool[np.ndarray, " d_sae"] | None = None,
) -> ConditionSummary:
    """One Table 1 row from per-feature r (the survival columns) and perplexities (Eq. 6).

    ``constant`` (``ReferenceStats.constant``): active features constant in the reference are
    counted in ``n_constant`` and left out of the percentages and means.

    Example:
        >>> r = np.array([1.0, 0.95, 0.7, 0.1])
        >>> active = np.ones(4, bool)
        >>> row = summarize_condition("int6", r, active, tokens=100, ppl=11, ppl_reference=10)
        >>> row.survived_pct, row.degraded_pct, row.damaged_pct, round(row.ppl_delta_pct, 6)
        (50.0, 25.0, 25.0, 10.0)
    """
    codes = classify(r, active_mask, survived=thresholds.survived, damaged=thresholds.damaged,
                     constant=constant)
    n_active = int(np.asarray(active_mask).sum())
    n_constant = int((codes == Outcome.CONSTANT).sum())
    classified = codes <= Outcome.DAMAGED
    n = int(classified.sum())
    if n == 0:
        raise CgcLensError(
            f"Condition {name!r}: no active feature with a defined r ({n_active} active, "
            f"active_rate={thresholds.active_rate}); lower the threshold or use more tokens."
        )
    if ppl_reference is not None and not ppl_reference > 0:
        raise CgcLensError(f"ppl_reference must be > 0, got {ppl_reference!r}.")
    delta = None if ppl is None or ppl_reference is None else 100 * (ppl / ppl_reference - 1)
    r_ok = np.asarray(r, dtype=np.float64)[classified]
    return ConditionSummary(
        name=name, bits=bits, sparsity=sparsity, ppl=ppl, ppl_delta_pct=delta,
        mean_corr=float(r_ok.mean()), median_corr=float(np.median(r_ok)),
        survived_pct=100 * float((codes == Outcome.SURVIVED).sum()) / n,
        degraded_pct=100 * float((codes == Outcome.DEGRADED).sum()) / n,
        damaged_pct=100 * float((codes == Outcome.DAMAGED).sum()) / n,
        n_active=n_active, tokens=int(tokens), n_undefined=n_active - n - n_constant,
        n_constant=n_constant,
        layer=layer, n_features=int(codes.size),
    )  # fmt: skip


def summary_table(rows: Sequence[ConditionSummary]) -> pd.DataFrame:
    """Table 1 as a DataFrame, one row per condition (``None`` becomes NaN)."""
    if not rows:
        raise CgcLensError("summary_table needs at least one ConditionSummary, got none.")
    return pd.DataFrame([row.to_dict() for row in rows]).astype({"bits": float, "sparsity": float})


def feature_table(
    firing_rate: Float[np.ndarray, " d_sae"],
    r_by_condition: Mapping[str, np.ndarray],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: float = 0.9,
    damaged: float = 0.5,
    constant: Bool[np.ndarray, " d_sae"] | None = None,
) -> pd.DataFrame:
    """Per-feature results, one row per feature: ``firing_rate``, ``active``, and for each
    condition ``r[<name>]`` and ``outcome[<name>]`` (the :class:`Outcome` name; ``CONSTANT``
    for active features that ``constant`` marks, with a ``constant`` column).

    Example:
        >>> t = feature_table(np.array([0.1, 0.0]), {"int6": np.array([0.95, np.nan])},
        ...                   np.array([True, False]))
        >>> t["outcome[int6]"].tolist()
        ['SURVIVED', 'INACTIVE']
    """
    rate = np.asarray(firing_rate, dtype=np.float64)
    table = pd.DataFrame({"firing_rate": rate, "active": _as_mask(active_mask, rate.size)})
    table.index.name = "feature"
    if constant is not None:
        table["constant"] = _as_mask(constant, rate.size, "constant")
    names = np.array([o.name for o in Outcome])
    for name, r in r_by_condition.items():
        codes = classify(r, active_mask, survived=survived, damaged=damaged, constant=constant)
        table[f"r[{name}]"] = np.asarray(r, dtype=np.float64)
        table[f"outcome[{name}]"] = names[codes]
    return table


@dataclass(frozen=True, kw_only=True)
class OverlapResult:
    """How similarly two conditions damage features (§3.6, Table 4)."""

    name_a: str
    """First condition (e.g. RTN INT6)."""
    name_b: str
    """Second condition (e.g. matched pruning)."""
    n_features: int
    """Active features with r defined under both conditions: the population compared."""
    nonsurvived_pct_a: float
    """Percent not survived under A."""
    nonsurvived_pct_b: float
    """Percent not survived under B."""
    n_intersection: int
    """Features not survived under both."""
    n_union: int
    """Features not survived under either."""
    jaccard: float
    """``|A ∩ B| / |A ∪ B|`` of the non-survived sets; 1.0 when both are empty (equal sets)."""
    damage_pearson: float
    """Pearson correlation of damage scores 1 − r; NaN when either is constant."""
    damage_spearman: float
    """Spearman correlation of damage scores 1 − r; NaN when either is constant."""


def overlap(
    r_a: Float[np.ndarray, " d_sae"],
    r_b: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: float = 0.9,
    names: tuple[str, str] = ("a", "b"),
) -> OverlapResult:
    """Jaccard of non-survived sets and damage-score correlations between two conditions.

    Example:
        >>> r_a, r_b = np.array([0.95, 0.8, 0.3, 0.99]), np.array([0.97, 0.85, 0.6, 0.8])
        >>> res = overlap(r_a, r_b, np.ones(4, bool))
        >>> round(res.jaccard, 4), round(res.damage_spearman, 4)
        (0.6667, 0.4)
    """
    if not -1.0 <= survived <= 1.0:
        raise CgcLensError(f"survived must be in [-1, 1], got {survived!r}.")
    a, b = _as_r(r_a, "r_a"), _as_r(r_b, "r_b")
    if a.shape != b.shape:
        raise CgcLensError(f"r_a and r_b must have the same shape, got {a.shape} and {b.shape}.")
    keep = _as_mask(active_mask, a.size) & ~np.isnan(a) & ~np.isnan(b)
    a, b = a[keep], b[keep]
    if a.size < 2:
        raise CgcLensError(f"overlap needs >= 2 active features defined in both, got {a.size}.")
    lost_a, lost_b = a < survived, b < survived
    inter, union = int((lost_a & lost_b).sum()), int((lost_a | lost_b).sum())
    damage_a, damage_b = 1 - a, 1 - b
    constant = np.ptp(damage_a) == 0 or np.ptp(damage_b) == 0
    pearson = math.nan if constant else float(scipy.stats.pearsonr(damage_a, damage_b)[0])
    spearman = math.nan if constant else float(scipy.stats.spearmanr(damage_a, damage_b)[0])
    return OverlapResult(
        name_a=names[0], name_b=names[1], n_features=int(a.size),
        nonsurvived_pct_a=100 * float(lost_a.mean()), nonsurvived_pct_b=100 * float(lost_b.mean()),
        n_intersection=inter, n_union=union, jaccard=inter / union if union else 1.0,
        damage_pearson=pearson, damage_spearman=spearman,
    )  # fmt: skip


def equal_count_bins(values: Float[np.ndarray, " n"], n_bins: int) -> np.ndarray:
    """Bin index 0..n_bins-1 per value, by rank, so bins hold equal counts (±1).

    Ties are broken by position (a stable sort), so tied values may straddle a bin edge; that is
    what keeps the bins equal-sized when many rare features share a firing count.

    Example:
        >>> equal_count_bins(np.array([5.0, 1.0, 3.0, 2.0]), 2).tolist()
        [1, 0, 1, 0]
    """
    values = np.asarray(values, dtype=np.float64)
    if not isinstance(n_bins, int) or n_bins < 1 or values.size < n_bins:
        raise CgcLensError(
            f"Need 1 <= n_bins <= len(values); got n_bins={n_bins!r}, {values.size} values."
        )
    rank = np.empty(values.size, dtype=np.int64)
    rank[np.argsort(values, kind="stable")] = np.arange(values.size)
    return rank * n_bins // values.size


def decile_table(
    firing_rate: Float[np.ndarray, " d_sae"],
    r_by_condition: Mapping[str, np.ndarray],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: float = 0.9,
    n_bins: int = 10,
) -> pd.DataFrame:
    """Non-survival by reference firing-rate decile (App. E), one row per condition × decile.

    Deciles are equal-count bins (:func:`equal_count_bins`) of the active features' firing rates,
    shared by all conditions; a feature with undefined r under a condition is left out of that
    condition's counts. Columns: condition, decile (1 = rarest), rate_min, rate_max, n_features,
    n_nonsurvived, nonsurvived_pct.
    """
    rate = np.asarray(firing_rate, dtype=np.float64)
    active = _as_mask(active_mask, rate.size)
    bins = equal_count_bins(rate[active], n_bins)
    rows = []
    for name, r in r_by_condition.items():
        r_act = _as_r(r, f"r[{name!r}]")[active] if np.size(r) == rate.size else None
        if r_act is None:
            raise CgcLensError(f"r[{name!r}] must have shape ({rate.size},), got {np.shape(r)}.")
        for k in range(n_bins):
            in_bin = bins == k
            ok = in_bin & ~np.isnan(r_act)
            lost = int((r_act[ok] < survived).sum())
            n = int(ok.sum())
            rows.append({
                "condition": name, "decile": k + 1, "rate_min": float(rate[active][in_bin].min()),
                "rate_max": float(rate[active][in_bin].max()), "n_features": n,
                "n_nonsurvived": lost, "nonsurvived_pct": 100 * lost / n if n else math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def destruction(
    r: Float[np.ndarray, "n_heads n_levels d_sae"],
    active: Bool[np.ndarray, "n_heads d_sae"],
    *,
    survived: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each head's active features with r < ``survived``, per level; and n_active.

    Features with undefined r (NaN) are left out, as in :func:`classify`; a head with no
    classified feature gets NaN.

    Example:
        >>> r = np.array([[[0.95, 0.2], [np.nan, np.nan]]])
        >>> frac, n = destruction(r, np.ones((1, 2), bool), survived=0.9)
        >>> frac.tolist(), n.tolist()
        ([[0.5, nan]], [2])
    """
    n_heads, n_levels, _ = r.shape
    frac = np.full((n_heads, n_levels), np.nan)
    for h in range(n_heads):
        for j in range(n_levels):
            codes = classify(r[h, j], active[h], survived=survived, damaged=min(0.5, survived))
            classified = np.isin(codes, [Outcome.SURVIVED, Outcome.DEGRADED, Outcome.DAMAGED])
            if classified.any():
                frac[h, j] = float(
                    (classified & (codes != Outcome.SURVIVED)).sum() / classified.sum()
                )
    return frac, active.sum(-1)
