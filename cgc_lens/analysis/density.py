"""Capability density of attention heads from their SAE features (Gupta 2026, §3.4, Defs 1-4).

Two halves. :class:`FeatureAccumulator` streams per-head SAE outputs batch by batch and keeps only
what the measures need: firing counts per (head, feature) and the active-feature sets of a seeded,
bounded sample of tokens per category. :func:`capability_density` is the pure function that turns
those statistics into breadth β̃, entropy H̃, cross-input consistency Ψ and density δ.

Readings of the paper (written out in docs/methods_capability.md):

- a feature fires on a token when its activation is ``> threshold`` (0, as in Def 1);
- H is the entropy of the firing frequencies *normalised to sum to one* (Def 2's p_f sum to the
  mean L0, not to 1), divided by log F; with F = 1 it is 0;
- Ψ averages the Jaccard similarity over ``n_pairs`` token pairs drawn with replacement, uniformly
  among pairs whose two tokens have different categories; J(∅, ∅) = 0;
- δ = Π x_i^(α_i / (γ Σα)): the concave transfer x^(1/γ) on each sub-measure of a weighted
  geometric mean, which for a power transfer equals applying it to the mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int, UInt8
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head

__all__ = [
    "DensityConfig",
    "DensityResult",
    "FeatureAccumulator",
    "FeatureStats",
    "capability_density",
    "feature_breadth",
    "feature_entropy",
    "jaccard_packed",
]

logger = logging.getLogger(__name__)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a seeded, batch-independent random key per token."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


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
    """Number of cross-category token pairs averaged for Ψ (Def 3)."""
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
        if self.pair_weighting not in ("tokens", "balanced"):
            raise CgcLensError(
                f"pair_weighting must be 'tokens' or 'balanced', got {self.pair_weighting!r}."
            )


@dataclass(frozen=True, kw_only=True, eq=False)
class FeatureStats:
    """What :class:`FeatureAccumulator` kept: enough for Defs 1-4, never tokens × features."""

    counts: Int[np.ndarray, "n_layers n_heads d_sae"]
    """Number of tokens on which each (head, feature) fired."""
    n_tokens: Int[np.ndarray, " n_layers"]
    """Tokens seen per layer."""
    sample_bits: tuple[np.ndarray, ...]
    """Per layer, ``uint8 [m, n_heads, ceil(d_sae / 8)]``: packed active sets of sampled tokens."""
    sample_categories: tuple[np.ndarray, ...]
    """Per layer, ``int64 [m]``: category of each sampled token."""
    sample_tokens: tuple[np.ndarray, ...]
    """Per layer, ``int64 [m]``: position of each sampled token in that layer's token stream."""
    category_counts: tuple[dict[int, int], ...]
    """Per layer, tokens seen per category (labels < 0 are not counted)."""

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return self.counts.shape[0]

    @property
    def n_heads(self) -> int:
        """Heads per layer."""
        return self.counts.shape[1]

    @property
    def d_sae(self) -> int:
        """Dictionary size F."""
        return self.counts.shape[2]


class FeatureAccumulator:
    """Streams per-head SAE outputs into firing counts and a per-category token sample.

    Heads are flattened layer-major (``layer * n_heads + head``) when a batch covers every layer;
    pass ``layer=`` to feed one layer at a time. Tokens are sampled per category by bottom-k on a
    seeded hash of their position in the stream, so the sample is a uniform draw without
    replacement that does not depend on batch sizes and is the same tokens for every layer.
    Category labels < 0 count towards breadth and entropy but are never sampled for Ψ.

    Args:
        n_layers: layers covered.
        n_heads: heads per layer.
        d_sae: SAE dictionary size F (the same for every head).
        sample_per_category: tokens kept per category for the consistency pairs.
        seed: seed of the token sample.
        threshold: a feature fires when its activation is ``> threshold``.
        token_offset: stream position of this accumulator's first token. Shards of one
            calibration set accumulated apart and combined with :meth:`merge` need distinct,
            non-overlapping offsets (e.g. the shard's start in the full token stream).

    Example:
        >>> acc = FeatureAccumulator(n_layers=1, n_heads=2, d_sae=4, sample_per_category=8)
        >>> idx = torch.tensor([[[0], [1]], [[2], [1]]])  # 2 tokens, 2 heads, k = 1
        >>> acc = acc.update(torch.tensor([0, 1]), indices=idx, values=torch.ones(2, 2, 1))
        >>> acc.stats().counts[0].tolist()
        [[1, 0, 1, 0], [0, 2, 0, 0]]
    """

    def __init__(
        self,
        *,
        n_layers: int,
        n_heads: int,
        d_sae: int,
        sample_per_category: int = 256,
        seed: int = 0,
        threshold: float = 0.0,
        token_offset: int = 0,
    ) -> None:
        for name, value in (
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("d_sae", d_sae),
            ("sample_per_category", sample_per_category),
        ):
            if not isinstance(value, int) or value < 1:
                raise CgcLensError(f"{name} must be a positive int, got {value!r}.")
        self.n_layers, self.n_heads, self.d_sae = n_layers, n_heads, d_sae
        self.sample_per_category, self.seed, self.threshold = sample_per_category, seed, threshold
        self.token_offset = token_offset
        self._seed_key = _splitmix64(np.array([seed & _M64], dtype=np.uint64))[0]
        self.counts_ = np.zeros((n_layers, n_heads, d_sae), dtype=np.int64)
        self.n_tokens_ = np.zeros(n_layers, dtype=np.int64)
        self._cat_counts: list[dict[int, int]] = [{} for _ in range(n_layers)]
        # per layer: category -> (keys uint64 [m], token ids int64 [m], packed bits [m, H, nb])
        self._res: list[dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = [
            {} for _ in range(n_layers)
        ]

    def update(
        self,
        categories: Int[Tensor, " tokens"] | Int[np.ndarray, " tokens"],
        *,
        indices: Int[Tensor, "tokens heads k"] | Int[np.ndarray, "tokens heads k"] | None = None,
        values: Float[Tensor, "tokens heads k"] | Float[np.ndarray, "tokens heads k"] | None = None,
        acts: Float[Tensor, "tokens heads d_sae"]
        | Float[np.ndarray, "tokens heads d_sae"]
        | None = None,
        layer: int | None = None,
    ) -> FeatureAccumulator:
        """Add one batch: TopK ``indices`` (+ ``values``; ``None`` = all fired) or dense ``acts``.

        ``heads`` is ``n_layers * n_heads`` when ``layer`` is ``None``, else ``n_heads``.
        """
        if (indices is None) == (acts is None):
            raise CgcLensError("Pass exactly one of indices= (TopK) or acts= (dense) to update().")
        x = torch.as_tensor(indices if acts is None else acts)
        v = None if values is None else torch.as_tensor(values)
        cats = torch.as_tensor(categories).detach().cpu().numpy().astype(np.int64)
        n_expected = self.n_heads if layer is not None else self.n_layers * self.n_heads
        if x.ndim != 3 or x.shape[1] != n_expected or x.shape[0] != cats.shape[0]:
            raise CgcLensError(
                f"Expected {'indices' if acts is None else 'acts'} of shape "
                f"[tokens={cats.shape[0]}, heads={n_expected}, ·] (layer={layer}), "
                f"got {tuple(x.shape)}."
            )
        if v is not None and (acts is not None or v.shape != x.shape):
            raise CgcLensError(
                f"values must match indices' shape {tuple(x.shape)}, got {tuple(v.shape)}; "
                "dense acts take no values."
            )
        if acts is None and x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.d_sae):
            raise CgcLensError(
                f"indices must lie in [0, d_sae={self.d_sae}), got "
                f"[{int(x.min())}, {int(x.max())}]."
            )
        if acts is not None and x.shape[2] != self.d_sae:
            raise CgcLensError(f"acts' last dim must be d_sae={self.d_sae}, got {x.shape[2]}.")
        if layer is not None and not 0 <= layer < self.n_layers:
            raise CgcLensError(f"layer must lie in [0, {self.n_layers}), got {layer!r}.")
        layers = [layer] if layer is not None else list(range(self.n_layers))
        for i, ell in enumerate(layers):
            sl = (
                slice(0, None)
                if layer is not None
                else slice(i * self.n_heads, (i + 1) * self.n_heads)
            )
            self._update_layer(ell, cats, x[:, sl], None if v is None else v[:, sl], acts is None)
        return self

    def _update_layer(
        self, ell: int, cats: np.ndarray, x: Tensor, v: Tensor | None, topk: bool
    ) -> None:
        n, n_heads, f = x.shape[0], self.n_heads, self.d_sae
        if topk:
            fired = torch.ones_like(x, dtype=torch.bool) if v is None else v > self.threshold
            flat = (x + torch.arange(n_heads, device=x.device)[None, :, None] * f)[fired]
            counts = torch.bincount(flat.long().flatten(), minlength=n_heads * f)
            self.counts_[ell] += counts.view(n_heads, f).cpu().numpy()
        else:
            self.counts_[ell] += (x > self.threshold).sum(0).cpu().numpy().astype(np.int64)
        start = self.token_offset + int(self.n_tokens_[ell])
        self.n_tokens_[ell] += n
        tok = np.arange(start, start + n, dtype=np.int64)
        keys = _splitmix64(tok.astype(np.uint64) ^ self._seed_key)
        for c in np.unique(cats[cats >= 0]).tolist():
            rows = np.flatnonzero(cats == c)
            self._cat_counts[ell][c] = self._cat_counts[ell].get(c, 0) + rows.size
            old = self._res[ell].get(c)
            if old is not None and old[0].size >= self.sample_per_category:
                rows = rows[keys[rows] < old[0].max()]  # cannot enter a full bottom-k sample
            if rows.size == 0:
                continue
            bits = self._pack(x[rows], None if v is None else v[rows], topk)
            self._keep_bottom_k(ell, c, (keys[rows], tok[rows], bits))

    def _keep_bottom_k(self, ell: int, c: int, new: tuple[np.ndarray, ...]) -> None:
        """Merge ``(keys, token positions, packed bits)`` into category ``c``'s sample of layer
        ``ell``, keeping the ``sample_per_category`` smallest keys (ties: earlier first)."""
        old = self._res[ell].get(c)
        merged = new if old is None else tuple(
            np.concatenate([a, b]) for a, b in zip(old, new, strict=True))
        keep = np.argsort(merged[0], kind="stable")[: self.sample_per_category]
        self._res[ell][c] = tuple(a[keep] for a in merged)

    def _pack(self, x: Tensor, v: Tensor | None, topk: bool) -> np.ndarray:
        """Active sets of a few tokens as packed bits ``[m, n_heads, ceil(F / 8)]``."""
        if topk:
            active = torch.zeros(*x.shape[:2], self.d_sae, dtype=torch.bool, device=x.device)
            fired = torch.ones_like(x, dtype=torch.bool) if v is None else v > self.threshold
            # TopK indices are distinct per (token, head), so unfired entries only clear their own
            active.scatter_(2, x.long(), fired)
            active = active.cpu().numpy()
        else:
            active = (x > self.threshold).cpu().numpy()
        return np.packbits(active, axis=-1)

    def merge(self, other: FeatureAccumulator) -> FeatureAccumulator:
        """Add another shard's statistics into this one (counts summed, samples bottom-k merged).

        The merged sample is the one a single accumulator over both shards would have kept.
        """
        same = ("n_layers", "n_heads", "d_sae", "sample_per_category", "seed", "threshold")
        if any(getattr(self, a) != getattr(other, a) for a in same):
            raise CgcLensError(f"Can only merge accumulators with the same {same}.")
        for ell in range(self.n_layers):
            for c, (keys, toks, bits) in other._res[ell].items():
                old = self._res[ell].get(c)
                if old is not None and np.intersect1d(old[1], toks).size:
                    raise CgcLensError(
                        "The shards share token positions; give each a distinct token_offset."
                    )
                self._keep_bottom_k(ell, c, (keys, toks, bits))
            for c, n in other._cat_counts[ell].items():
                self._cat_counts[ell][c] = self._cat_counts[ell].get(c, 0) + n
        self.counts_ += other.counts_
        self.n_tokens_ += other.n_tokens_
        return self

    def stats(self) -> FeatureStats:
        """A snapshot of everything accumulated so far."""
        bits, cats, toks = [], [], []
        nb = (self.d_sae + 7) // 8
        for ell in range(self.n_layers):
            res = self._res[ell]
            order = sorted(res)
            cats.append(
                np.concatenate([np.full(res[c][0].size, c, np.int64) for c in order])
                if order
                else np.zeros(0, np.int64)
            )
            toks.append(
                np.concatenate([res[c][1] for c in order]) if order else np.zeros(0, np.int64)
            )
            bits.append(
                np.concatenate([res[c][2] for c in order])
                if order
                else np.zeros((0, self.n_heads, nb), np.uint8)
            )
        return FeatureStats(
            counts=self.counts_.copy(),
            n_tokens=self.n_tokens_.copy(),
            sample_bits=tuple(bits),
            sample_categories=tuple(cats),
            sample_tokens=tuple(toks),
            category_counts=tuple(dict(d) for d in self._cat_counts),
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
    categories: np.ndarray, category_counts: dict[int, int], config: DensityConfig, layer: int
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
    if config.pair_weighting == "tokens":
        w = np.array([category_counts[int(c)] for c in present], dtype=np.float64)
    else:
        w = np.ones(present.size)
    pair_w = np.outer(w, w)
    np.fill_diagonal(pair_w, 0.0)
    rng = np.random.default_rng(config.seed)
    ab = rng.choice(pair_w.size, size=config.n_pairs, p=(pair_w / pair_w.sum()).ravel())
    order = np.argsort(categories, kind="stable")
    starts = np.searchsorted(categories[order], present)
    sizes = np.bincount(np.searchsorted(present, categories), minlength=present.size)
    out = np.empty((config.n_pairs, 2), dtype=np.int64)
    for col, cat in enumerate((ab // present.size, ab % present.size)):
        out[:, col] = order[starts[cat] + rng.integers(0, sizes[cat])]
    return out


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
    """Stream positions of the two tokens of every pair used for Ψ, per layer."""
    d_sae: int
    """Dictionary size F."""
    config: DensityConfig = field(default_factory=DensityConfig)
    """The readings used."""

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head and every measure."""
        n_layers, n_heads = self.density.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        cols = ("breadth", "entropy", "consistency", "density", "breadth_count", "entropy_nats")
        return pd.DataFrame(
            {"layer": layer, "head": head} | {c: getattr(self, c).ravel() for c in cols}
        )

    def by_head(self) -> dict[Head, float]:
        """``{Head(l, h): δ}``."""
        return {Head(int(ell), int(h)): float(d) for (ell, h), d in np.ndenumerate(self.density)}


def capability_density(
    stats: FeatureStats | FeatureAccumulator, config: DensityConfig | None = None
) -> DensityResult:
    """Capability density δ of every head (Def 4) from accumulated SAE feature statistics.

    Args:
        stats: a :class:`FeatureStats` (or the accumulator itself, whose snapshot is taken).
        config: the readings; defaults to :class:`DensityConfig` ``()``.

    Raises:
        CgcLensError: a layer saw no tokens, or its sample holds fewer than 2 categories.

    Example:
        >>> acc = FeatureAccumulator(n_layers=1, n_heads=1, d_sae=4)
        >>> idx = torch.tensor([[[0, 1]], [[1, 2]], [[2, 3]], [[3, 0]]])
        >>> _ = acc.update(torch.tensor([0, 0, 1, 1]), indices=idx, values=torch.ones(4, 1, 2))
        >>> res = capability_density(acc, DensityConfig(n_pairs=50))
        >>> float(res.breadth[0, 0]), float(res.entropy[0, 0])
        (1.0, 1.0)
    """
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
    consistency = np.zeros_like(breadth)
    pairs = np.zeros((stats.n_layers, config.n_pairs, 2), dtype=np.int64)
    for ell in range(stats.n_layers):
        cats, bits = stats.sample_categories[ell], stats.sample_bits[ell]
        idx = _draw_pairs(cats, stats.category_counts[ell], config, ell)
        consistency[ell] = jaccard_packed(bits[idx[:, 0]], bits[idx[:, 1]]).mean(0)
        pairs[ell] = stats.sample_tokens[ell][idx]
    alpha = np.asarray(config.alpha, dtype=np.float64) / sum(config.alpha)
    subs = np.stack([breadth, entropy, consistency])
    density = np.prod(np.clip(subs, 0.0, 1.0) ** (alpha / config.gamma)[:, None, None], axis=0)
    return DensityResult(
        breadth=breadth,
        entropy=entropy,
        consistency=consistency,
        density=density,
        breadth_count=np.rint(breadth * stats.d_sae).astype(np.int64),
        entropy_nats=entropy * (np.log(stats.d_sae) if stats.d_sae > 1 else 0.0),
        n_tokens=stats.n_tokens.copy(),
        pairs=pairs,
        d_sae=stats.d_sae,
        config=config,
    )
