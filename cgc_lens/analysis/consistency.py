"""Cross-input consistency Ψ of a head's SAE features (Gupta 2026, §3.4, Def 3).

Ψ is the mean Jaccard similarity of the active-feature sets of token pairs whose two tokens have
different categories. The sets come packed as bits (``np.packbits``) from the per-category token
sample of :class:`~cgc_lens.analysis.feature_accumulator.FeatureAccumulator`.

Two ways to average, one estimand:

- **all pairs** (``all-pairs``): every cross-category pair of the sampled tokens, through one
  matrix product per head: with X the 0/1 matrix of active sets (tokens × features),
  |A∩B| = X Xᵀ and |A∪B| = |A| + |B| − |A∩B|. Category pair (a, b) gets weight w_ab
  (∝ N_a N_b for ``tokens``, equal for ``balanced``) spread evenly over its m_a m_b pairs, so
  Ψ = Σ_{a≠b} w_ab J̄_ab / Σ_{a≠b} w_ab: exactly the expectation of the sampled estimate
  below, without its pair-sampling noise. Used while one head's m × m matrices fit
  ``max_bytes``.
- **sampled** (``sampled``): above that size, ``n_pairs`` pairs drawn with replacement (category
  pair by the same weights, then a token of each uniformly), from a seeded generator, so the
  same pairs serve every head of a layer.

Standard error, either way: a delete-one-group jackknife over the sampled tokens. The tokens are
a sample of the calibration stream, so Ψ moves when another stream is drawn; tokens of one
block are neighbours and not independent, so the study groups them by block
(:func:`~cgc_lens.analysis.uncertainty.token_groups`) and each replicate leaves out every
sampled token of one group (and, sampled, every pair touching it). Ψ is a two-sample
U-statistic of the tokens, for which the jackknife variance is consistent; in the sampled mode
the replicates also carry the pair-sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float, Int, UInt8

from cgc_lens.analysis.feature_accumulator import FeatureStats
from cgc_lens.analysis.uncertainty import jackknife_se, token_groups
from cgc_lens.errors import CgcLensError

__all__ = [
    "Consistency",
    "all_pairs_bytes",
    "cross_input_consistency",
    "jaccard_packed",
    "pair_weights",
]

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
    categories: np.ndarray,
    category_counts: dict[int, int],
    *,
    n_pairs: int,
    pair_weighting: Literal["tokens", "balanced"],
    seed: int,
    layer: int,
) -> np.ndarray:
    """``[n_pairs, 2]`` positions in the sample; the two tokens of a pair differ in category.

    The category pair (a, b), a ≠ b, is drawn ∝ N_a N_b (``tokens``) or uniformly (``balanced``);
    each token is then drawn uniformly from its category's sample, itself a uniform sample.
    """
    present = np.unique(categories)
    pair_w = pair_weights(present, category_counts, pair_weighting, layer=layer)
    rng = np.random.default_rng(seed)
    ab = rng.choice(pair_w.size, size=n_pairs, p=(pair_w / pair_w.sum()).ravel())
    order = np.argsort(categories, kind="stable")
    starts = np.searchsorted(categories[order], present)
    sizes = np.bincount(np.searchsorted(present, categories), minlength=present.size)
    out = np.empty((n_pairs, 2), dtype=np.int64)
    for col, cat in enumerate((ab // present.size, ab % present.size)):
        out[:, col] = order[starts[cat] + rng.integers(0, sizes[cat])]
    return out


def pair_weights(
    present: np.ndarray,
    category_counts: dict[int, int],
    pair_weighting: Literal["tokens", "balanced"],
    *,
    layer: int,
) -> Float[np.ndarray, "n_categories n_categories"]:
    """Weight of each ordered category pair (a, b): N_a N_b (``tokens``) or 1 (``balanced``),
    0 on the diagonal; raises when fewer than 2 categories are present."""
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
    return pair_w


@dataclass(frozen=True, kw_only=True, eq=False)
class Consistency:
    """Ψ of every head, how it was averaged, and its jackknife replicates and standard error."""

    value: Float[np.ndarray, "n_layers n_heads"]
    """Ψ per head (Def 3)."""
    method: str
    """``all-pairs`` (every cross-category pair of the sample) or ``sampled`` (``n_pairs``
    drawn pairs, the sample too large for ``max_bytes``)."""
    n_pairs: Int[np.ndarray, " n_layers"]
    """Pairs averaged per layer (ordered pairs in ``all-pairs``; drawn pairs in ``sampled``)."""
    pairs: Int[np.ndarray, "n_layers n_drawn 2"]
    """``sampled``: stream positions of the two tokens of each drawn pair; ``all-pairs``:
    empty (``[n_layers, 0, 2]``)."""
    replicates: Float[np.ndarray, "n_groups n_layers n_heads"]
    """Ψ without the sampled tokens of each group (the jackknife replicates)."""
    se: Float[np.ndarray, "n_layers n_heads"]
    """Jackknife standard error of Ψ (NaN where a replicate is undefined)."""


def _group_sums(values: np.ndarray, group: np.ndarray, cat: np.ndarray, shape: tuple) -> np.ndarray:
    """Σ of the rows of ``values`` [m, C] by (group, category) of the row → ``shape`` [G, C, C]."""
    out = np.zeros(shape)
    np.add.at(out, (group, cat), values)
    return out


def _all_pairs_layer(
    bits: np.ndarray,
    cat: np.ndarray,
    group: np.ndarray,
    pair_w: np.ndarray,
    *,
    d_sae: int,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Ψ of every head of one layer over all cross-category pairs, and its ``[G, n_heads]``
    leave-one-group-out replicates (block sums S_ab of J, corrected per group)."""
    n_cat = pair_w.shape[0]
    onehot = np.eye(n_cat)[cat]  # [m, C]
    m_c = onehot.sum(0)
    n_gc = np.zeros((n_groups, n_cat))
    np.add.at(n_gc, (group, cat), 1.0)
    same = group[:, None] == group[None, :]
    n_heads = bits.shape[1]
    value, reps = np.zeros(n_heads), np.zeros((n_groups, n_heads))
    for h in range(n_heads):
        # float32 sums of 0/1 stay exact integers below 2^24 features
        x = np.unpackbits(bits[:, h], axis=-1, count=d_sae).astype(np.float32)
        inter = (x @ x.T).astype(np.float64)
        size = x.sum(1, dtype=np.float64)
        union = size[:, None] + size[None, :] - inter
        jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        jo = jac @ onehot  # [m, C]: Σ_{j in b} J_ij
        s_ab = onehot.T @ jo
        r = _group_sums(jo, group, cat, (n_groups, n_cat, n_cat))
        d = _group_sums(np.where(same, jac, 0.0) @ onehot, group, cat, (n_groups, n_cat, n_cat))
        value[h] = _weighted(s_ab[None], m_c[None], pair_w)[0]
        reps[:, h] = _weighted(s_ab[None] - r - r.transpose(0, 2, 1) + d, m_c[None] - n_gc, pair_w)
    return value, reps


def _weighted(s: np.ndarray, m: np.ndarray, pair_w: np.ndarray) -> np.ndarray:
    """Σ_{a≠b} w_ab S_ab / (m_a m_b) / Σ w_ab over the categories left (m > 0); NaN when fewer
    than 2 remain. ``s`` [G, C, C], ``m`` [G, C]."""
    mm = m[:, :, None] * m[:, None, :]
    w = np.where(mm > 0, pair_w[None], 0.0)
    total = w.sum((1, 2))
    num = (w * np.divide(s, mm, out=np.zeros_like(s), where=mm > 0)).sum((1, 2))
    return np.divide(num, total, out=np.full(total.shape, np.nan), where=total > 0)


def _sampled_layer(
    bits: np.ndarray, idx: np.ndarray, group: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ψ over drawn pairs and the replicates without the pairs that touch each group."""
    jac = jaccard_packed(bits[idx[:, 0]], bits[idx[:, 1]])  # [n_pairs, n_heads]
    g1, g2 = group[idx[:, 0]], group[idx[:, 1]]
    touch = np.zeros((n_groups, idx.shape[0]), dtype=bool)
    touch[g1, np.arange(idx.shape[0])] = True
    touch[g2, np.arange(idx.shape[0])] = True
    left = (~touch).sum(1)[:, None]
    rest = jac.sum(0)[None] - touch.astype(np.float64) @ jac
    reps = np.divide(rest, left, out=np.full(rest.shape, np.nan), where=left > 0)
    return jac.mean(0), reps


def all_pairs_bytes(m: int) -> int:
    """Working memory of one head's all-pairs product over ``m`` sampled tokens (five m × m
    float64 matrices: intersections, unions, Jaccard, its within-group part, a temporary)."""
    return 40 * m * m


def cross_input_consistency(
    stats: FeatureStats,
    *,
    n_pairs: int,
    pair_weighting: Literal["tokens", "balanced"],
    seed: int,
    max_bytes: int = 1 << 30,
    groups: tuple[int, int] | None = None,
) -> Consistency:
    """Ψ of every head (Def 3) over all cross-category pairs of the sample, or over drawn pairs
    when the sample is too large, with jackknife replicates and standard errors.

    Args:
        stats: the accumulated statistics (their per-category token sample is used).
        n_pairs: cross-category token pairs drawn per layer when sampling.
        pair_weighting: ``tokens``: category pair (a, b) weighted ∝ N_a N_b; ``balanced``:
            every category pair alike (see :class:`~cgc_lens.analysis.DensityConfig`).
        seed: seed of the pair draw (the same for every layer).
        max_bytes: all pairs while :func:`all_pairs_bytes` of a layer's sample fits; 0 always
            samples.
        groups: ``(block_len, n_groups)`` of the jackknife: a sampled token at stream position
            p belongs to :func:`~cgc_lens.analysis.uncertainty.token_groups` of p. None:
            ``(1, 20)``, 20 contiguous stretches of the stream.

    Raises:
        CgcLensError: a layer's sample holds fewer than 2 categories.
    """
    # Over 60 lines: half is the Args docstring; the body is one loop over layers, two branches
    block_len, n_groups = groups or (1, 20)
    n_groups = min(n_groups, -(-int(stats.n_tokens.min()) // block_len))
    value = np.zeros((stats.n_layers, stats.n_heads))
    reps = np.zeros((n_groups, stats.n_layers, stats.n_heads))
    sizes = [c.size for c in stats.sample_categories]
    use_all = all_pairs_bytes(max(sizes)) <= max_bytes
    n_used = np.zeros(stats.n_layers, dtype=np.int64)
    pairs = np.zeros((stats.n_layers, 0 if use_all else n_pairs, 2), dtype=np.int64)
    for ell in range(stats.n_layers):
        cats, bits = stats.sample_categories[ell], stats.sample_bits[ell]
        group = token_groups(
            stats.sample_tokens[ell],
            n_tokens=int(stats.n_tokens[ell]),
            block_len=block_len,
            n_groups=n_groups,
        )
        if use_all:
            present = np.unique(cats)
            pair_w = pair_weights(present, stats.category_counts[ell], pair_weighting, layer=ell)
            cat = np.searchsorted(present, cats)
            m_c = np.bincount(cat, minlength=present.size)
            n_used[ell] = m_c.sum() ** 2 - (m_c**2).sum()
            value[ell], reps[:, ell] = _all_pairs_layer(
                bits, cat, group, pair_w, d_sae=stats.d_sae, n_groups=n_groups
            )
        else:
            idx = _draw_pairs(
                cats,
                stats.category_counts[ell],
                n_pairs=n_pairs,
                pair_weighting=pair_weighting,
                seed=seed,
                layer=ell,
            )
            value[ell], reps[:, ell] = _sampled_layer(bits, idx, group, n_groups)
            pairs[ell], n_used[ell] = stats.sample_tokens[ell][idx], n_pairs
    return Consistency(
        value=value,
        method="all-pairs" if use_all else "sampled",
        n_pairs=n_used,
        pairs=pairs,
        replicates=reps,
        se=jackknife_se(reps),
    )
