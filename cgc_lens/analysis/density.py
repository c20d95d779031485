"""Capability density of attention heads from their SAE features (Gupta 2026, §3.4, Defs 1-4).

Two halves. :class:`FeatureAccumulator` (in :mod:`cgc_lens.analysis.feature_accumulator`)
streams per-head SAE outputs batch by batch and keeps only what the measures need: firing counts
per (head, feature) and the active-feature sets of a seeded, bounded sample of tokens per
category. :func:`capability_density` is the pure function that turns those statistics into
breadth β̃, entropy H̃, cross-input consistency Ψ (:mod:`cgc_lens.analysis.consistency`) and
density δ. The accumulator, its :class:`FeatureStats` and :func:`jaccard_packed` are re-exported
here.

Readings of the paper (written out in docs/methods_capability.md):

- a feature fires on a token when its activation is ``> threshold`` (0, as in Def 1);
- H is the entropy of the firing frequencies *normalised to sum to one* (Def 2's p_f sum to the
  mean L0, not to 1), divided by log F; with F = 1 it is 0;
- Ψ averages the Jaccard similarity over every pair of sampled tokens whose two tokens have
  different categories (one matrix product per head), or, when the sample is too large for
  ``all_pairs_max_bytes``, over ``n_pairs`` such pairs drawn with replacement; J(∅, ∅) = 0;
- δ = Π x_i^(α_i / (γ Σα)): the concave transfer x^(1/γ) on each sub-measure of a weighted
  geometric mean, which for a power transfer equals applying it to the mean.

Standard errors: a delete-one-group jackknife over groups of calibration blocks
(:class:`GroupCounts`, :mod:`cgc_lens.analysis.uncertainty`). Each replicate recomputes β̃, H̃
(from the firing counts without the group's tokens), Ψ (without the group's sampled tokens) and
so δ; the spread of the replicates gives δ's standard error from resampling the calibration
tokens. Without group counts only Ψ's standard error is known.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from cgc_lens.analysis.consistency import cross_input_consistency, jaccard_packed
from cgc_lens.analysis.feature_accumulator import FeatureAccumulator, FeatureStats
from cgc_lens.analysis.uncertainty import jackknife_se
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head

__all__ = [
    "DensityConfig",
    "DensityResult",
    "FeatureAccumulator",
    "FeatureStats",
    "GroupCounts",
    "capability_density",
    "feature_breadth",
    "feature_entropy",
    "jaccard_packed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DensityConfig:
    """How :func:`capability_density` reads Defs 1-4."""

    tau_min: float = 1e-3
    """Def 1's minimum firing frequency (fraction of calibration tokens) for a feature to count
    towards breadth. Pass ``1 / d_sae`` for the dictionary-relative reading."""
    alpha: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)
    """Weights of (breadth, entropy, consistency) in the geometric mean; normalised to sum 1."""
    gamma: float = 2.0
    """Concave transfer x ↦ x^(1/γ) applied to each sub-measure (Def 4). 1 turns it off."""
    n_pairs: int = 2000
    """Cross-category token pairs drawn for Ψ (Def 3) when the sample is too large to average
    all of its pairs (see ``all_pairs_max_bytes``)."""
    all_pairs_max_bytes: int = 1 << 30
    """Ψ averages every cross-category pair of the sampled tokens while one head's m × m
    matrices take at most this many bytes (40 m², m sampled tokens of a layer: 1 GiB holds
    m ≈ 5,000); above it, ``n_pairs`` drawn pairs. 0: always draw pairs."""
    n_groups: int = 20
    """Groups of calibration blocks of the jackknife standard errors (fewer if fewer blocks)."""
    pair_weighting: Literal["tokens", "balanced"] = "tokens"
    """``tokens``: pairs uniform over all cross-category token pairs of the stream (category pair
    (a, b) drawn ∝ N_a N_b). ``balanced``: every category pair equally likely."""
    seed: int = 0
    """Seed of the pair draw; the same pairs are used for every layer."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau_min <= 1.0:
            raise CgcLensError(f"tau_min must lie in [0, 1], got {self.tau_min!r}.")
        if len(self.alpha) != 3 or min(self.alpha) < 0 or sum(self.alpha) <= 0:
            raise CgcLensError(
                f"alpha must be three non-negative weights with a positive sum, got {self.alpha!r}."
            )
        if not self.gamma > 0:
            raise CgcLensError(f"gamma must be > 0 (2 = square root), got {self.gamma!r}.")
        if self.n_pairs < 1:
            raise CgcLensError(f"n_pairs must be >= 1, got {self.n_pairs!r}.")
        if not isinstance(self.all_pairs_max_bytes, int) or self.all_pairs_max_bytes < 0:
            raise CgcLensError(
                f"all_pairs_max_bytes must be an int >= 0 (0: always sample pairs), got "
                f"{self.all_pairs_max_bytes!r}."
            )
        if not isinstance(self.n_groups, int) or self.n_groups < 2:
            raise CgcLensError(f"n_groups must be an int >= 2, got {self.n_groups!r}.")
        if self.pair_weighting not in ("tokens", "balanced"):
            raise CgcLensError(
                f"pair_weighting must be 'tokens' or 'balanced', got {self.pair_weighting!r}."
            )


def feature_breadth(
    freq: Float[np.ndarray, "*heads d_sae"], tau_min: float
) -> Float[np.ndarray, "*heads"]:
    """Normalised breadth β̃ = |{f : p_f ≥ τ_min and p_f > 0}| / F (Defs 1 and 4).

    ``freq`` holds the firing frequencies p_f = (1/T) Σ_t 1[a_tf > 0]. A feature that never fires
    never counts, also at ``tau_min = 0``.

    Example:
        >>> float(feature_breadth(np.array([0.5, 0.01, 0.0, 0.0]), tau_min=0.02))
        0.25
    """
    fires = (freq > 0) & (freq >= tau_min * (1 - 1e-12))  # tolerance: p = c/T rounds
    return np.asarray(fires.sum(-1) / freq.shape[-1], dtype=np.float64)


def feature_entropy(
    counts: Float[np.ndarray, "*heads d_sae"] | Int[np.ndarray, "*heads d_sae"],
) -> Float[np.ndarray, "*heads"]:
    """Normalised entropy H̃ = H(p) / log F of the firing frequencies normalised to sum 1 (Def 2).

    A head whose features never fire, and any head with F = 1, has H̃ = 0.

    Example:
        >>> float(feature_entropy(np.array([3, 3, 3, 3])))
        1.0
        >>> float(feature_entropy(np.array([5, 0, 0, 0])))
        0.0
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(-1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    n_features = counts.shape[-1]
    if n_features == 1:
        return np.zeros(counts.shape[:-1])
    return np.asarray((0.0 - plogp.sum(-1)) / np.log(n_features))  # 0.0 -: never print -0.0


@dataclass(frozen=True, kw_only=True, eq=False)
class DensityResult:
    """Capability density and every sub-measure, per head (arrays are ``[n_layers, n_heads]``)."""

    breadth: Float[np.ndarray, "n_layers n_heads"]
    """β̃ = β / F (Def 1)."""
    entropy: Float[np.ndarray, "n_layers n_heads"]
    """H̃ = H / log F (Def 2)."""
    consistency: Float[np.ndarray, "n_layers n_heads"]
    """Ψ, mean cross-category Jaccard of active sets (Def 3)."""
    density: Float[np.ndarray, "n_layers n_heads"]
    """δ = Π x_i^(α_i / γ) with Σα = 1 (Def 4)."""
    breadth_count: Int[np.ndarray, "n_layers n_heads"]
    """β, the number of features with firing frequency ≥ τ_min."""
    entropy_nats: Float[np.ndarray, "n_layers n_heads"]
    """H in nats, before dividing by log F."""
    n_tokens: Int[np.ndarray, " n_layers"]
    """Calibration tokens per layer."""
    pairs: Int[np.ndarray, "n_layers n_pairs 2"]
    """Stream positions of the two tokens of every drawn pair used for Ψ, per layer; empty
    (``[n_layers, 0, 2]``) when Ψ averaged all pairs."""
    d_sae: int
    """Dictionary size F."""
    config: DensityConfig = field(default_factory=DensityConfig)
    """The readings used."""
    consistency_method: str = "sampled"
    """``all-pairs`` or ``sampled``: how Ψ was averaged (:mod:`cgc_lens.analysis.consistency`)."""
    consistency_se: Float[np.ndarray, "n_layers n_heads"] | None = None
    """Jackknife standard error of Ψ over groups of calibration tokens."""
    density_se: Float[np.ndarray, "n_layers n_heads"] | None = None
    """Jackknife standard error of δ over groups of calibration blocks (None: no group counts)."""
    density_replicates: Float[np.ndarray, "n_groups n_layers n_heads"] | None = None
    """δ without each group of blocks (the jackknife replicates; None: no group counts)."""

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head and every measure."""
        n_layers, n_heads = self.density.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        cols = ("breadth", "entropy", "consistency", "density", "breadth_count", "entropy_nats")
        return pd.DataFrame(
            {"layer": layer, "head": head} | {c: getattr(self, c).ravel() for c in cols}
        )

    def se_frame(self) -> pd.DataFrame:
        """One row per head: δ with its standard error and 95% interval (normal, δ ± 1.96 SE),
        and Ψ with its standard error; NaN where no standard error was computed."""
        nan = np.full(self.density.shape, np.nan)
        se = nan if self.density_se is None else self.density_se
        cse = nan if self.consistency_se is None else self.consistency_se
        return pd.DataFrame({
            "density_se": se.ravel(), "density_ci_low": (self.density - 1.96 * se).ravel(),
            "density_ci_high": (self.density + 1.96 * se).ravel(), "consistency_se": cse.ravel(),
        })  # fmt: skip

    def by_head(self) -> dict[Head, float]:
        """``{Head(l, h): δ}``."""
        return {Head(int(ell), int(h)): float(d) for (ell, h), d in np.ndenumerate(self.density)}


@dataclass(frozen=True, kw_only=True, eq=False)
class GroupCounts:
    """Firing counts per group of calibration blocks, for the jackknife of δ.

    Token at stream position p lies in block ``p // block_len``; blocks are dealt into
    contiguous groups by :func:`~cgc_lens.analysis.uncertainty.token_groups` with
    ``n_groups = counts.shape[0]``. The groups' counts sum to :class:`FeatureStats`'s.
    """

    counts: Int[np.ndarray, "n_groups n_layers n_heads d_sae"]
    """Tokens of each group on which each (head, feature) fired."""
    n_tokens: Int[np.ndarray, "n_groups n_layers"]
    """Tokens per group and layer."""
    block_len: int
    """Tokens per block."""


def _combine(subs: np.ndarray, config: DensityConfig) -> np.ndarray:
    """δ = Π x_i^(α_i / (γ Σα)) over the first axis of ``subs`` (β̃, H̃, Ψ)."""
    alpha = np.asarray(config.alpha, dtype=np.float64) / sum(config.alpha)
    power = (alpha / config.gamma).reshape(3, *([1] * (subs.ndim - 1)))
    return np.prod(np.clip(subs, 0.0, 1.0) ** power, axis=0)


def _density_replicates(
    stats: FeatureStats, groups: GroupCounts, psi_reps: np.ndarray, config: DensityConfig
) -> np.ndarray:
    """δ without each group: β̃ and H̃ from the counts less the group's, Ψ's replicate."""
    if (
        psi_reps.shape[0] != groups.counts.shape[0]
        or groups.counts.shape[1:] != stats.counts.shape
        or groups.n_tokens.shape
        != (
            groups.counts.shape[0],
            stats.n_layers,
        )
    ):
        raise CgcLensError(
            f"Group counts must be [n_groups, {', '.join(map(str, stats.counts.shape))}] with "
            f"n_tokens [n_groups, {stats.n_layers}]; got {groups.counts.shape} and "
            f"{groups.n_tokens.shape}."
        )
    reps = np.empty(psi_reps.shape)
    for g in range(psi_reps.shape[0]):
        counts = stats.counts - groups.counts[g]
        n_tok = stats.n_tokens - groups.n_tokens[g]
        freq = counts / np.maximum(n_tok, 1)[:, None, None]
        subs = np.stack([feature_breadth(freq, config.tau_min), feature_entropy(counts),
                         psi_reps[g]])  # fmt: skip
        reps[g] = np.where((n_tok > 0)[:, None], _combine(subs, config), np.nan)
    return reps


def capability_density(
    stats: FeatureStats | FeatureAccumulator,
    config: DensityConfig | None = None,
    *,
    groups: GroupCounts | None = None,
) -> DensityResult:
    """Capability density δ of every head (Def 4) from accumulated SAE feature statistics.

    Args:
        stats: a :class:`FeatureStats` (or the accumulator itself, whose snapshot is taken).
        config: the readings; defaults to :class:`DensityConfig` ``()``.
        groups: firing counts per group of blocks: δ then gets a jackknife standard error, and
            Ψ's jackknife uses the same groups. None: Ψ's standard error only, over
            ``config.n_groups`` contiguous stretches of the token stream.

    Raises:
        CgcLensError: a layer saw no tokens, or its sample holds fewer than 2 categories.

    Example:
        >>> import torch
        >>> acc = FeatureAccumulator(n_layers=1, n_heads=1, d_sae=4)
        >>> idx = torch.tensor([[[0, 1]], [[1, 2]], [[2, 3]], [[3, 0]]])
        >>> _ = acc.update(torch.tensor([0, 0, 1, 1]), indices=idx, values=torch.ones(4, 1, 2))
        >>> res = capability_density(acc, DensityConfig(n_pairs=50))
        >>> float(res.breadth[0, 0]), float(res.entropy[0, 0]), res.consistency_method
        (1.0, 1.0, 'all-pairs')
    """
    # Over 60 lines: the docstring (Args, doctest) is half; the body is the four measures in order
    config = config or DensityConfig()
    if isinstance(stats, FeatureAccumulator):
        stats = stats.stats()
    if (stats.n_tokens <= 0).any():
        raise CgcLensError(
            f"Every layer needs calibration tokens; tokens per layer: {stats.n_tokens.tolist()}."
        )
    if config.tau_min > 0 and config.tau_min * stats.n_tokens.min() < 1:
        logger.warning(
            "tau_min=%g is below 1/T (T=%d): a single firing counts towards breadth.",
            config.tau_min,
            stats.n_tokens.min(),
        )
    freq = stats.counts / stats.n_tokens[:, None, None]
    breadth = feature_breadth(freq, config.tau_min)
    entropy = feature_entropy(stats.counts)
    psi = cross_input_consistency(
        stats,
        n_pairs=config.n_pairs,
        pair_weighting=config.pair_weighting,
        seed=config.seed,
        max_bytes=config.all_pairs_max_bytes,
        groups=(1, config.n_groups)
        if groups is None
        else (groups.block_len, groups.counts.shape[0]),
    )
    density = _combine(np.stack([breadth, entropy, psi.value]), config)
    reps = None if groups is None else _density_replicates(stats, groups, psi.replicates, config)
    return DensityResult(
        breadth=breadth,
        entropy=entropy,
        consistency=psi.value,
        density=density,
        breadth_count=np.rint(breadth * stats.d_sae).astype(np.int64),
        entropy_nats=entropy * (np.log(stats.d_sae) if stats.d_sae > 1 else 0.0),
        n_tokens=stats.n_tokens.copy(),
        pairs=psi.pairs,
        d_sae=stats.d_sae,
        config=config,
        consistency_method=psi.method,
        consistency_se=psi.se,
        density_se=None if reps is None else jackknife_se(reps),
        density_replicates=reps,
    )
