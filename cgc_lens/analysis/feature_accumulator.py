"""Streaming per-head SAE feature statistics for capability density (Gupta 2026, §3.4).

:class:`FeatureAccumulator` streams per-head SAE outputs batch by batch and keeps only what Defs
1-4 need, never tokens × features: firing counts per (head, feature) and the active-feature sets
of a seeded, bounded sample of tokens per category. :class:`FeatureStats` is a snapshot of
those statistics; :func:`~cgc_lens.analysis.density.capability_density` finishes it into β̃, H̃,
Ψ and δ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["FeatureAccumulator", "FeatureStats"]

_M64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a seeded, batch-independent random key per token."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


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

    @classmethod
    def from_sums(
        cls,
        *,
        counts: Int[np.ndarray, "n_layers n_heads d_sae"],
        n_tokens: Int[np.ndarray, " n_layers"],
        category_counts: Sequence[Mapping[int, int]],
        sample_tokens: Sequence[np.ndarray],
        sample_categories: Sequence[np.ndarray],
        sample_bits: Sequence[np.ndarray],
        sample_per_category: int = 256,
        seed: int = 0,
        threshold: float = 0.0,
        token_offset: int = 0,
    ) -> FeatureAccumulator:
        """An accumulator holding given statistics, as if it had streamed the tokens they cover.

        The statistics are the fields of :class:`FeatureStats` (so
        ``from_sums(**vars(acc.stats()), seed=acc.seed, ...)`` round-trips ``acc``); the
        sample's hash keys are recomputed from ``seed`` and the token positions. Updating or
        merging the result continues exactly as the accumulator that produced them would.

        Args:
            counts: ``int64 [n_layers, n_heads, d_sae]``, tokens on which each (head, feature)
                fired; fixes ``n_layers``, ``n_heads`` and ``d_sae``.
            n_tokens: ``int64 [n_layers]``, tokens seen per layer.
            category_counts: per layer, tokens seen per category (labels >= 0).
            sample_tokens: per layer, ``int64 [m]`` stream positions of the sampled tokens.
            sample_categories: per layer, ``int64 [m]`` category of each sampled token.
            sample_bits: per layer, ``uint8 [m, n_heads, ceil(d_sae / 8)]`` packed active sets.
            sample_per_category: tokens kept per category (at least each category's sample).
            seed: seed of the token sample the positions were drawn with.
            threshold: the firing threshold the counts were taken at.
            token_offset: stream position of the first token (see the class docstring).

        Raises:
            CgcLensError: shapes that disagree, or a category sample over the sample size.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.ndim != 3:
            raise CgcLensError(f"counts must be [n_layers, n_heads, d_sae], got {counts.shape}.")
        n_layers, n_heads, d_sae = (int(n) for n in counts.shape)
        acc = cls(n_layers=n_layers, n_heads=n_heads, d_sae=d_sae,
                  sample_per_category=sample_per_category, seed=seed, threshold=threshold,
                  token_offset=token_offset)
        n_tokens = np.asarray(n_tokens, dtype=np.int64)
        per_layer = (category_counts, sample_tokens, sample_categories, sample_bits)
        if n_tokens.shape != (n_layers,) or any(len(x) != n_layers for x in per_layer):
            raise CgcLensError(
                f"Expected n_tokens and every per-layer sequence of length n_layers={n_layers}; "
                f"got {n_tokens.shape} and {[len(x) for x in per_layer]}.")
        acc.counts_ += counts
        acc.n_tokens_ += n_tokens
        for ell in range(n_layers):
            acc._cat_counts[ell] = {int(c): int(n) for c, n in category_counts[ell].items()}
            acc._res[ell] = acc._sample_of(
                np.asarray(sample_tokens[ell], dtype=np.int64),
                np.asarray(sample_categories[ell], dtype=np.int64),
                np.asarray(sample_bits[ell], dtype=np.uint8),
            )
        return acc

    def _sample_of(
        self, toks: np.ndarray, cats: np.ndarray, bits: np.ndarray
    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One layer's per-category bottom-k samples from the rows of a :class:`FeatureStats`."""
        nb = (self.d_sae + 7) // 8
        if toks.shape != cats.shape or toks.ndim != 1 or bits.shape != (
            toks.size, self.n_heads, nb
        ):
            raise CgcLensError(
                f"Expected sample_tokens and sample_categories [m] and sample_bits "
                f"[m, n_heads={self.n_heads}, {nb}]; got {toks.shape}, {cats.shape}, "
                f"{bits.shape}."
            )
        out = {}
        for c in np.unique(cats).tolist():
            rows = np.flatnonzero(cats == c)
            if rows.size > self.sample_per_category:
                raise CgcLensError(
                    f"Category {c} has {rows.size} sampled tokens, over "
                    f"sample_per_category={self.sample_per_category}."
                )
            keys = _splitmix64(toks[rows].astype(np.uint64) ^ self._seed_key)
            order = np.argsort(keys, kind="stable")
            out[c] = (keys[order], toks[rows][order], bits[rows][order])
        return out

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
