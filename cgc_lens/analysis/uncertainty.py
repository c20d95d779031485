"""How sure a per-head statistic is: bootstrap intervals, permutation p-values, jackknife errors.

- :func:`correlation_interval`: a Spearman ρ or Pearson r over heads with a paired bootstrap
  interval (``scipy.stats.bootstrap``, percentile method, heads resampled with their pairs
  kept) and a two-sided permutation p-value (``scipy.stats.permutation_test``,
  ``permutation_type="pairings"``: one signal shuffled against the other), both from a fixed
  seed. The percentile method is used, not BCa: it is what a naive resampling loop computes, so
  the interval can be checked against one, and it needs no jackknife of a statistic that is
  undefined on constant resamples.
- :func:`jackknife_se`: the delete-one-group jackknife standard error
  sqrt((G-1)/G Σ (θ₋g − θ̄)²) from G leave-one-group-out replicates.
- :func:`token_groups`: the group of each token of a stream cut into blocks: blocks are dealt
  into ``n_groups`` contiguous runs, so tokens of one block (correlated neighbours) always share
  a group and the jackknife deletes them together.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float, Int
from scipy import stats

from cgc_lens.errors import CgcLensError

__all__ = ["CorrelationInterval", "correlation_interval", "jackknife_se", "token_groups"]


@dataclass(frozen=True, kw_only=True)
class CorrelationInterval:
    """A correlation over heads with its bootstrap interval and permutation p-value."""

    statistic: float
    """ρ (Spearman) or r (Pearson) over the finite pairs."""
    ci_low: float
    """Lower end of the bootstrap interval (NaN when undefined: < 3 pairs, a flat signal, or
    resamples too often flat)."""
    ci_high: float
    """Upper end of the bootstrap interval."""
    p: float
    """Two-sided permutation p-value (``pairings``): the chance of |statistic| at least this
    large when the pairing of the two signals is random."""
    n: int
    """Pairs (heads) used."""
    kind: str
    """``spearman`` or ``pearson``."""
    confidence: float
    """Confidence level of the interval."""
    n_resamples: int
    """Bootstrap resamples and permutations."""

    def sentence(self, name: str = "") -> str:
        """``ρ = −0.81 [−0.93, −0.52], p = 0.0004, 16 heads``: the number, how sure it is.

        Example:
            >>> CorrelationInterval(statistic=-0.81, ci_low=-0.93, ci_high=-0.52, p=4e-4, n=16,
            ...     kind="spearman", confidence=0.95, n_resamples=9999).sentence()
            'ρ = -0.81 [-0.93, -0.52], p = 0.0004, 16 heads'
        """
        sym = "ρ" if self.kind == "spearman" else "r"
        if not math.isfinite(self.statistic):
            return f"{name}{sym} undefined ({self.n} heads with finite values, or a flat signal)"
        ci = (
            f" [{self.ci_low:.2f}, {self.ci_high:.2f}]"
            if math.isfinite(self.ci_low) and math.isfinite(self.ci_high)
            else " [interval undefined]"
        )
        return f"{name}{sym} = {self.statistic:.2f}{ci}, p = {self.p:.2g}, {self.n} heads"


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ along ``axis`` (vectorized for scipy's resampling): Pearson r of the ranks."""
    return _pearson(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis), axis=axis)


def _pearson(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r along ``axis``; NaN where either signal is flat."""
    xc = x - x.mean(axis=axis, keepdims=True)
    yc = y - y.mean(axis=axis, keepdims=True)
    den = np.sqrt((xc**2).sum(axis=axis) * (yc**2).sum(axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=axis) / np.where(den > 0, den, 1.0), np.nan)


def correlation_interval(
    x: Float[np.ndarray, "*dims"],
    y: Float[np.ndarray, "*dims"],
    *,
    kind: Literal["spearman", "pearson"] = "spearman",
    seed: int = 0,
    n_resamples: int = 9999,
    confidence: float = 0.95,
) -> CorrelationInterval:
    """ρ or r of two per-head signals over their finite pairs, with interval and p-value.

    Args:
        x, y: the signals, any equal shapes (flattened; pairs where either is not finite are
            left out).
        kind: ``spearman`` or ``pearson``.
        seed: seed of the resampling (``numpy.random.default_rng(seed)``; the permutation test
            draws from ``default_rng(seed + 1)``).
        n_resamples: bootstrap resamples, and permutations (the test is exact when the
            number of distinct pairings is smaller).
        confidence: level of the percentile interval.

    Raises:
        CgcLensError: shapes differ, a bad ``kind``, ``n_resamples < 1`` or ``confidence``
            outside (0, 1).

    Example:
        >>> x = np.arange(12.0)
        >>> c = correlation_interval(x, x**3, n_resamples=999)
        >>> c.statistic, c.ci_low, c.ci_high, c.p <= 0.002
        (1.0, 1.0, 1.0, True)
    """
    # Over 60 lines: the docstring and the input checks are two thirds; two scipy calls remain
    xa, ya = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    if np.shape(x) != np.shape(y):
        raise CgcLensError(
            f"Expected two signals of one shape, got {np.shape(x)} and {np.shape(y)}."
        )
    if kind not in ("spearman", "pearson"):
        raise CgcLensError(f"kind must be 'spearman' or 'pearson', got {kind!r}.")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise CgcLensError(f"n_resamples must be a positive int, got {n_resamples!r}.")
    if not 0 < confidence < 1:
        raise CgcLensError(f"confidence must lie in (0, 1), e.g. 0.95; got {confidence!r}.")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    fn = _spearman if kind == "spearman" else _pearson
    nan = float("nan")
    out = {"n": int(xa.size), "kind": kind, "confidence": confidence, "n_resamples": n_resamples}
    if xa.size < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return CorrelationInterval(statistic=nan, ci_low=nan, ci_high=nan, p=nan, **out)
    with warnings.catch_warnings():
        # a resample of tied heads can be flat (NaN): scipy warns and the interval is NaN
        warnings.simplefilter("ignore")
        boot = stats.bootstrap(
            (xa, ya),
            fn,
            paired=True,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        perm = stats.permutation_test(
            (xa, ya),
            fn,
            permutation_type="pairings",
            vectorized=True,
            n_resamples=n_resamples,
            alternative="two-sided",
            rng=np.random.default_rng(seed + 1),
        )
    return CorrelationInterval(
        statistic=float(fn(xa, ya)),
        ci_low=float(boot.confidence_interval.low),
        ci_high=float(boot.confidence_interval.high),
        p=float(perm.pvalue),
        **out,
    )


def jackknife_se(
    replicates: Float[np.ndarray, "n_groups ..."],
) -> Float[np.ndarray, "*rest"]:
    """Delete-one-group jackknife standard error sqrt((G-1)/G Σ_g (θ₋g − θ̄)²) over axis 0.

    ``replicates[g]`` is the statistic recomputed without group g. NaN where a replicate is
    NaN (the statistic is undefined without some group) or G < 2.

    Example:
        >>> x = np.array([1.0, 2.0, 4.0, 7.0])
        >>> reps = np.array([np.delete(x, g).mean() for g in range(4)])
        >>> bool(np.isclose(jackknife_se(reps), x.std(ddof=1) / 2))  # the mean's SE
        True
    """
    reps = np.asarray(replicates, dtype=np.float64)
    g = reps.shape[0]
    if g < 2:
        return np.full(reps.shape[1:], np.nan)
    dev = reps - reps.mean(axis=0)
    return np.asarray(np.sqrt((g - 1) / g * (dev**2).sum(axis=0)))


def token_groups(
    positions: Int[np.ndarray, "*tokens"], *, n_tokens: int, block_len: int, n_groups: int
) -> Int[np.ndarray, "*tokens"]:
    """Group of each stream position: block ``p // block_len`` of ``ceil(n_tokens / block_len)``
    blocks, dealt into ``n_groups`` contiguous runs of blocks (fewer groups if fewer blocks).

    Example:
        >>> token_groups(np.arange(8), n_tokens=8, block_len=2, n_groups=2).tolist()
        [0, 0, 0, 0, 1, 1, 1, 1]
    """
    if block_len < 1 or n_groups < 1 or n_tokens < 1:
        raise CgcLensError(
            f"Expected block_len, n_groups and n_tokens >= 1, got {block_len}, "
            f"{n_groups} and {n_tokens}."
        )
    n_blocks = -(-n_tokens // block_len)
    g = min(n_groups, n_blocks)
    return (np.asarray(positions, dtype=np.int64) // block_len) * g // n_blocks
