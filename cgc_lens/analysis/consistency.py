"""Cross-input consistency Ψ of a head's SAE features (Gupta 2026, §3.4, Def 3).

Ψ is the mean Jaccard similarity of the active-feature sets of token pairs whose two tokens have
different categories. The sets come packed as bits (``np.packbits``) from the per-category token
sample of :class:`~cgc_lens.analysis.feature_accumulator.FeatureAccumulator`; the pairs are drawn
with replacement, uniformly among cross-category pairs, from a seeded generator, so the same
pairs serve every head of a layer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from jaxtyping import Float, Int, UInt8

from cgc_lens.analysis.feature_accumulator import FeatureStats
from cgc_lens.errors import CgcLensError

__all__ = ["cross_input_consistency", "jaccard_packed"]

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def jaccard_packed(
    a: UInt8[np.ndarray, "*batch n_bytes"], b: UInt8[np.ndarray, "*batch n_bytes"]
) -> Float[np.ndarray, "*batch"]:
    """Jaccard similarity |A ∩ B| / |A ∪ B| of sets stored as ``np.packbits`` rows; J(∅, ∅) = 0.

    Example:
        >>> a = np.packbits(np.array([1, 1, 0, 0], bool))
        >>> b = np.packbits(np.array([0, 1, 1, 0], bool))
        >>> round(float(jaccard_packed(a, b)), 4)
        0.3333
    """
    inter = _POPCOUNT[np.bitwise_and(a, b)].sum(-1)
    union = _POPCOUNT[np.bitwise_or(a, b)].sum(-1)
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def _draw_pairs(
    categories: np.ndarray, category_counts: dict[int, int], *, n_pairs: int,
    pair_weighting: Literal["tokens", "balanced"], seed: int, layer: int,
) -> np.ndarray:
    """``[n_pairs, 2]`` positions in the sample; the two tokens of a pair differ in category.

    The category pair (a, b), a ≠ b, is drawn ∝ N_a N_b (``tokens``) or uniformly (``balanced``);
    each token is then drawn uniformly from its category's sample, itself a uniform sample.
    """
    present = np.unique(categories)
    if present.size < 2:
        raise CgcLensError(
            f"Cross-input consistency (Def 3) needs sampled tokens from at least 2 categories; "
            f"layer {layer} has {present.tolist()}. Label the calibration tokens with >= 2 "
            "categories (labels < 0 are unlabelled and never sampled)."
        )
    if pair_weighting == "tokens":
        w = np.array([category_counts[int(c)] for c in present], dtype=np.float64)
    else:
        w = np.ones(present.size)
    pair_w = np.outer(w, w)
    np.fill_diagonal(pair_w, 0.0)
    rng = np.random.default_rng(seed)
    ab = rng.choice(pair_w.size, size=n_pairs, p=(pair_w / pair_w.sum()).ravel())
    order = np.argsort(categories, kind="stable")
    starts = np.searchsorted(categories[order], present)
    sizes = np.bincount(np.searchsorted(present, categories), minlength=present.size)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for col, cat in enumerate((ab // present.size, ab % present.size)):
        out[:, col] = order[starts[cat] + rng.integers(0, sizes[cat])]
    return out


def cross_input_consistency(
    stats: FeatureStats, *, n_pairs: int, pair_weighting: Literal["tokens", "balanced"], seed: int
) -> tuple[Float[np.ndarray, "n_layers n_heads"], Int[np.ndarray, "n_layers n_pairs 2"]]:
    """Ψ of every head (Def 3) and, per layer, the stream positions of the pairs it averaged.

    Args:
        stats: the accumulated statistics (their per-category token sample is used).
        n_pairs: cross-category token pairs drawn per layer.
        pair_weighting: ``tokens``: category pair (a, b) drawn ∝ N_a N_b; ``balanced``: every
            category pair equally likely (see :class:`~cgc_lens.analysis.DensityConfig`).
        seed: seed of the pair draw (the same for every layer).

    Raises:
        CgcLensError: a layer's sample holds fewer than 2 categories.
    """
    consistency = np.zeros((stats.n_layers, stats.n_heads))
    pairs = np.zeros((stats.n_layers, n_pairs, 2), dtype=np.int64)
    for ell in range(stats.n_layers):
        cats, bits = stats.sample_categories[ell], stats.sample_bits[ell]
        idx = _draw_pairs(cats, stats.category_counts[ell], n_pairs=n_pairs,
                          pair_weighting=pair_weighting, seed=seed, layer=ell)
        consistency[ell] = jaccard_packed(bits[idx[:, 0]], bits[idx[:, 1]]).mean(0)
        pairs[ell] = stats.sample_tokens[ell][idx]
    return consistency, pairs
