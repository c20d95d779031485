"""The forward passes of the capability study: what it reads from the model and how it scores it.

- :func:`calibration_pass`: one streamed pass over the calibration tokens reading ``hook_z`` of
  every layer, feeding per-head SAE features to the density accumulator, the sums of ``z²``
  (Wanda's ‖z_j‖₂) and of ``z`` (mean-ablation values), and, for the Theorem 1 test, the Pearson
  sums between each head's features on its dense ``z`` and on its *effective* ``z`` after
  pruning its ``W_O`` slice (:func:`effective_z_maps`).
- :class:`KLFitness`: CGC-F's fitness, KL(dense ‖ compressed) on calibration tokens, with the
  dense log-probabilities cached once.
- :func:`evaluate_allocations`: perplexity, KL and probes of each allocation on held-out tokens.
- :func:`head_density`: the capability density of every head from token blocks in one call
  (the calibration pass and :func:`~cgc_lens.analysis.capability_density`).

Over 400 lines: the block labels of Def 3 live beside :func:`head_density`, which needs them,
and :mod:`.steps` imports this module, so they cannot move there without an import circle.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from cgc_lens.analysis.accumulators import PearsonAccumulator
from cgc_lens.analysis.density import (
    DensityConfig,
    DensityResult,
    FeatureAccumulator,
    GroupCounts,
    capability_density,
)
from cgc_lens.analysis.uncertainty import token_groups
from cgc_lens.compress import HeadPrune, compressed, head_prune_
from cgc_lens.data import TokenBlocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.metrics import log_probs, nll_kl_sums
from cgc_lens.forward.probes import get_probe, run_probes
from cgc_lens.forward.streaming import iter_batches, run_sites
from cgc_lens.progress import progress_bar
from cgc_lens.saes.per_head import BatchedTopKSAE
from cgc_lens.sites import Head, hook_name

__all__ = [
    "CalibrationStats",
    "KLFitness",
    "block_labels",
    "calibration_pass",
    "consistency_mode",
    "default_sample",
    "effective_z_maps",
    "evaluate_allocations",
    "head_density",
    "sae_order",
]

logger = logging.getLogger(__name__)


def sae_order(model: HookedTransformer, sae: BatchedTopKSAE) -> list[int]:
    """Position in ``sae`` of every head's SAE, layer-major; raises if a head has none."""
    if sae.cfg.d_in != model.cfg.d_head:
        raise CgcLensError(f"Per-head SAEs need d_in = d_head = {model.cfg.d_head}, got "
                           f"{sae.cfg.d_in}.")
    return [sae.index(Head(ell, h)) for ell in range(model.cfg.n_layers)
            for h in range(model.cfg.n_heads)]


def effective_z_maps(
    W_O: Float[Tensor, "n_layers n_heads d_head d_model"],
    retentions: Sequence[float],
    *,
    pruning: str = "magnitude",
    seed: int = 0,
) -> Float[Tensor, "n_layers n_heads n_levels d_head d_head"]:
    """``M = W' W⁺`` per head and level: ``z M`` is the head's effective ``z`` after pruning.

    Pruning ``W_O[h]`` to ``W'`` leaves ``hook_z`` unchanged and changes what the head writes,
    ``z W'``. ``z M`` is the least-squares ``z`` whose *dense* output ``(z M) W`` is closest to
    ``z W'`` (the projection of the pruned output onto the head's writing subspace), read in
    the head's own ``z`` coordinates, where its SAE lives. With ``W`` of full row rank,
    ``M = I`` at retention 1. ``pruning``: ``magnitude`` (what :class:`HeadPrune` does) or
    ``random`` (Theorem 1's uniform-at-random removal, seeded).

    Example:
        >>> W = torch.randn(1, 2, 3, 8, dtype=torch.float64)
        >>> M = effective_z_maps(W, [1.0, 0.0])
        >>> bool(torch.allclose(M[..., 0, :, :], torch.eye(3, dtype=torch.float64)))
        True
        >>> float(M[..., 1, :, :].abs().max())
        0.0
    """
    if pruning not in ("magnitude", "random"):
        raise CgcLensError(f"pruning must be 'magnitude' or 'random', got {pruning!r}.")
    w = W_O.detach().double().cpu()
    pinv = torch.linalg.pinv(w)  # [L, H, d_model, d_head]
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for r in retentions:
        if pruning == "magnitude":
            pruned = torch.stack([head_prune_(layer.clone(), [r] * w.shape[1]) for layer in w])
        else:
            n = w.shape[-2] * w.shape[-1]
            keep = torch.rand(*w.shape[:2], n, generator=gen).argsort(-1) < round(r * n)
            pruned = w * keep.view(w.shape)
        maps.append(pruned @ pinv)
    return torch.stack(maps, dim=2)


@dataclass(kw_only=True, eq=False)
class CalibrationStats:
    """What :func:`calibration_pass` accumulated."""

    features: FeatureAccumulator
    """Per-head SAE firing counts and the per-category token sample (Defs 1-4)."""
    z_sum_sq: Float[Tensor, "n_layers n_heads d_head"]
    """Σ_t z_tj² per head and coordinate (float64): Wanda's ‖z_j‖₂ is its square root."""
    z_sum: Float[Tensor, "n_layers n_heads d_head"]
    """Σ_t z_tj (float64): divided by ``n_tokens``, the mean-ablation values."""
    n_tokens: int
    """Calibration tokens read."""
    survival: list[list[PearsonAccumulator]] | None
    """Per layer and level, Pearson sums over ``n_heads × d_sae`` features (dense vs effective)."""
    survival_counts: Int[Tensor, "n_layers n_heads d_sae"] | None
    """Firing counts of each head's features on the survival tokens."""
    survival_tokens: int
    """Tokens the survival test read (the first ones of the calibration stream)."""
    groups: GroupCounts | None = None
    """Firing counts per group of calibration blocks (δ's jackknife); None: not kept."""


def _survival_update(
    sae: BatchedTopKSAE, z: Tensor, *, sub: list[int], values: Tensor, indices: Tensor,
    maps: Float[Tensor, "n_heads n_levels d_head d_head"], sums: list[PearsonAccumulator],
) -> Tensor:
    """Add one layer's batch to the Pearson sums of its features on the dense ``z`` against the
    effective ``z`` at each level; return the features' firing counts in the batch."""
    ref = torch.zeros(*values.shape[:2], sae.cfg.d_sae, dtype=values.dtype, device=z.device)
    ref.scatter_(-1, indices, values)
    m = maps.to(device=z.device, dtype=z.dtype)
    for j, acc in enumerate(sums):
        z_eff = einsum(z, m[:, j], "t h d, h d e -> t h e")
        other = sae.encode(z_eff, subset=sub)
        acc.update(ref.flatten(1), other.flatten(1))
    return (ref > 0).sum(0).cpu()


def _group_update(counts: Tensor, groups: Tensor, indices: Tensor, values: Tensor,
                  d_sae: int) -> None:
    """Add one layer's firings (value > 0, as the density accumulator counts them) of a batch to
    ``counts`` ``[n_groups, n_heads * d_sae]``, each token's to its group's row."""
    n_heads = indices.shape[1]
    flat = (groups.to(indices.device)[:, None, None] * (n_heads * d_sae)
            + torch.arange(n_heads, device=indices.device)[None, :, None] * d_sae + indices)
    fired = flat[values > 0].long().cpu()
    counts.view(-1).add_(torch.bincount(fired, minlength=counts.numel()))


@torch.no_grad()
def calibration_pass(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    block_categories: Int[Tensor, " n_blocks"],
    sae: BatchedTopKSAE,
    *,
    sample_per_category: int,
    seed: int,
    maps: Float[Tensor, "n_layers n_heads n_levels d_head d_head"] | None = None,
    survival_tokens: int | None = None,
    n_groups: int = 20,
    batch_size: int = 8,
    progress: bool = True,
    blocks: range | None = None,
) -> CalibrationStats:
    """One streamed pass over ``tokens`` (``hook_z`` of every layer) feeding every accumulator.

    Each token carries its block's category. The survival sums (when ``maps`` is given) use the
    first ``survival_tokens`` tokens (``None``: all), rounded up to whole batches. Firing
    counts are also kept per group of blocks (``n_groups`` contiguous runs,
    :func:`~cgc_lens.analysis.uncertainty.token_groups`) for δ's jackknife.

    ``blocks`` (a rank's shard, :func:`~cgc_lens.studies.capability.sharding.token_shard`):
    read only these blocks, a run of whole batches from the start of one, with every token at
    its place in the full stream (categories, groups, the Def 3 sample, the survival tokens);
    the shards' statistics merge into those of one pass
    (:func:`~cgc_lens.studies.capability.sharding.merge_calibration`). None: all the blocks.
    """
    # Over 60 lines: one streamed pass feeds six accumulators through one callback
    cfg = model.cfg
    order = sae_order(model, sae)
    n_layers, n_heads, d_sae = cfg.n_layers, cfg.n_heads, sae.cfg.d_sae
    blocks = range(tokens.shape[0]) if blocks is None else blocks
    offset = blocks.start * tokens.shape[1]
    acc = FeatureAccumulator(n_layers=n_layers, n_heads=n_heads, d_sae=d_sae,
                             sample_per_category=sample_per_category, seed=seed,
                             token_offset=offset)
    z_sq = torch.zeros(n_layers, n_heads, cfg.d_head, dtype=torch.float64)
    z_sum = torch.zeros_like(z_sq)
    surv = None if maps is None else [[PearsonAccumulator(n_heads * d_sae) for _ in
                                       range(maps.shape[2])] for _ in range(n_layers)]
    counts = torch.zeros(n_layers, n_heads, d_sae, dtype=torch.int64) if maps is not None else None
    limit = tokens.numel() if survival_tokens is None else survival_tokens
    group_of = token_groups(torch.arange(tokens.numel()).numpy(), n_tokens=tokens.numel(),
                            block_len=tokens.shape[1], n_groups=n_groups)
    n_g = int(group_of.max()) + 1
    g_counts = torch.zeros(n_layers, n_g, n_heads * d_sae, dtype=torch.int64)
    g_tokens = torch.zeros(n_g, dtype=torch.int64)
    state = {"tokens": offset, "survival": 0}
    hooks = [hook_name("z", layer=ell) for ell in range(n_layers)]

    def update(acts: Mapping[str, Tensor], i: int) -> None:
        lo = blocks.start + i * batch_size
        rows = block_categories[lo:lo + batch_size]
        cats = rows.repeat_interleave(acts[hooks[0]].shape[1])
        start = state["tokens"]
        groups = torch.from_numpy(group_of[start:start + cats.numel()])
        g_tokens.add_(torch.bincount(groups, minlength=n_g))
        in_survival = maps is not None and start < limit
        for ell, name in enumerate(hooks):
            z = rearrange(acts[name], "b p h d -> (b p) h d").to(sae.W_enc.device)
            z64 = z.double()
            z_sq[ell] += z64.square().sum(0).cpu()
            z_sum[ell] += z64.sum(0).cpu()
            sub = order[ell * n_heads:(ell + 1) * n_heads]
            values, indices = sae.encode_topk(z, subset=sub)
            acc.update(cats, indices=indices, values=values, layer=ell)
            _group_update(g_counts[ell], groups, indices, values, d_sae)
            if in_survival:
                counts[ell] += _survival_update(sae, z, sub=sub, values=values,
                                                indices=indices, maps=maps[ell], sums=surv[ell])
        state["tokens"] += cats.numel()
        if in_survival:
            state["survival"] += cats.numel()

    run_sites(model, tokens[blocks.start:blocks.stop], hooks, batch_size=batch_size,
              callback=update, progress=progress, desc="calibration")
    groups = GroupCounts(counts=g_counts.view(n_layers, n_g, n_heads, d_sae).transpose(0, 1)
                         .numpy(), n_tokens=g_tokens[:, None].repeat(1, n_layers).numpy(),
                         block_len=int(tokens.shape[1]))
    return CalibrationStats(features=acc, z_sum_sq=z_sq, z_sum=z_sum,
                            n_tokens=state["tokens"] - offset,
                            survival=surv, survival_counts=counts,
                            survival_tokens=state["survival"], groups=groups)


def block_labels(
    blocks: TokenBlocks, mode: Literal["auto", "corpus", "block"] = "auto"
) -> tuple[Int[Tensor, " n_blocks"], str]:
    """The category of each block for Def 3's cross-input pairs, and the mode used.

    ``corpus``: the corpus's categories (needs >= 2); ``block``: every block its own category
    (a corpus without categories, such as WikiText); ``auto``: ``corpus`` when there are >= 2.
    ``block`` measures cross-*sequence* consistency, not Def 3's cross-category consistency, and
    warns so (:func:`consistency_mode` names it in results).
    """
    names = list(dict.fromkeys(blocks.categories))
    if mode == "auto":
        mode = "corpus" if len(names) >= 2 else "block"
    if mode == "corpus":
        if len(names) < 2:
            raise CgcLensError(f"consistency_categories='corpus' needs calibration blocks of >= 2 "
                               f"categories, got {names}; use 'block' or 'auto'.")
        return torch.tensor([names.index(c) for c in blocks.categories]), mode
    if mode != "block":
        raise CgcLensError(f"Expected mode 'auto', 'corpus' or 'block', got {mode!r}.")
    warnings.warn(
        f"Consistency Psi is measured cross-sequence, not cross-category (Def 3): the "
        f"calibration blocks have {len(names)} categor{'y' if len(names) == 1 else 'ies'} "
        f"({', '.join(map(str, names[:3]))}), so every block is its own category. For Def 3 "
        "proper, give a corpus with >= 2 categories: a local .jsonl/.parquet file or a hub "
        "dataset with a label column named by --category-field (CapabilityConfig."
        "category_field).", UserWarning, stacklevel=2)
    return torch.arange(len(blocks)), mode


def consistency_mode(categories: str) -> str:
    """``cross-category`` (Def 3, the corpus's categories) or ``cross-sequence`` (every block
    its own category) for :func:`block_labels`'s ``corpus`` / ``block``."""
    return {"corpus": "cross-category", "block": "cross-sequence"}[categories]


def default_sample(mode: str, n_blocks: int) -> int:
    """Def 3's tokens sampled per category: 256 per corpus category; per-block categories
    share ~4,096 tokens (at least 16 each)."""
    return 256 if mode == "corpus" else max(16, 4096 // n_blocks)


def head_density(
    model: HookedTransformer,
    blocks: TokenBlocks,
    sae: BatchedTopKSAE,
    *,
    categories: Literal["auto", "corpus", "block"] = "auto",
    config: DensityConfig | None = None,
    sample_per_category: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> DensityResult:
    """Capability density of every head (Def 4) from calibration blocks and per-head SAEs.

    One streamed pass reads ``hook_z`` of every layer, encodes each head with its SAE and
    accumulates breadth, entropy and the cross-input consistency sample (``sample_per_category``
    tokens per category, drawn by ``seed``; None: the study's rule, :func:`default_sample`;
    categories as in :func:`block_labels`). Same readings as the capability study's density.

    Example:
        >>> from cgc_lens import load_model, token_blocks
        >>> from cgc_lens.saes import load_batched_sae
        >>> model = load_model("cgc-tiny", device="cpu")
        >>> blocks = token_blocks("cgc-tiny", model, block_len=64, n_blocks=8, split="calibration")
        >>> res = head_density(model, blocks, load_batched_sae("cgc-tiny"), progress=False)
        >>> tuple(res.density.shape)
        (4, 4)
    """
    labels, mode = block_labels(blocks, categories)
    sample = sample_per_category or default_sample(mode, len(blocks))
    config = config or DensityConfig()
    stats = calibration_pass(model, blocks.tokens, labels, sae, sample_per_category=sample,
                             seed=seed, n_groups=config.n_groups, batch_size=batch_size,
                             progress=progress)
    return capability_density(stats.features, config, groups=stats.groups)


class KLFitness:
    """CGC-F's fitness: mean KL(dense ‖ compressed) over the first ``n_tokens`` calibration tokens.

    Token counts are rounded up to whole blocks, so every stage scores complete blocks; the dense
    log-probabilities of the largest stage are computed once and kept (memory: tokens × d_vocab
    floats). Compression is :class:`HeadPrune` on ``W_O`` slices inside :func:`compressed`, so
    the model is restored after every call.
    """

    def __init__(self, model: HookedTransformer, tokens: Int[Tensor, "n_blocks pos"], *,
                 max_tokens: int, batch_size: int = 8) -> None:
        self.model, self.batch_size = model, batch_size
        pos = tokens.shape[1]
        rows = min(math.ceil(max_tokens / pos), tokens.shape[0])
        if rows * pos < max_tokens:
            logger.warning("CGC-F asks for %d fitness tokens; only %d calibration tokens exist.",
                           max_tokens, rows * pos)
        self.tokens = tokens[:rows].to(model.cfg.device)
        self.calls = 0
        # KL sum of each whole batch already scored, by retention map: elitism re-scores the
        # parent and a later stage the blocks an earlier one scored; those values are known.
        self._known: dict[tuple[tuple[int, int, float], ...], list[float]] = {}
        with torch.no_grad():
            self._ref = [log_probs(model(b, return_type="logits")) for b in
                         self.tokens.split(batch_size)]

    def rows(self, n_tokens: int) -> int:
        """Blocks scored for ``n_tokens``."""
        return max(1, min(math.ceil(n_tokens / self.tokens.shape[1]), self.tokens.shape[0]))

    @torch.no_grad()
    def kl(self, n_tokens: int, known: list[float] | None = None) -> float:
        """Mean KL of the model as it is now against the cached dense model.

        ``known``: the KL sums of this model's first whole batches, already scored; the batches
        after them are scored and the whole ones appended."""
        rows, total, count = self.rows(n_tokens), 0.0, 0
        known = [] if known is None else known
        for i, (batch, ref) in enumerate(zip(self.tokens.split(self.batch_size), self._ref,
                                             strict=True)):
            if count >= rows:
                break
            take = min(rows - count, batch.shape[0])
            if take == batch.shape[0] and i < len(known):
                total += known[i]
                count += take
                continue
            b, r = batch[:take], ref[:take]
            logp = log_probs(self.model(b, return_type="logits"))
            value = float(nll_kl_sums(logp, b, r, r.exp())[1])
            if take == batch.shape[0] and i == len(known):
                known.append(value)
            total += value
            count += take
        return total / (rows * self.tokens.shape[1])

    def _needs_forward(self, known: list[float], n_tokens: int) -> bool:
        """Whether scoring ``n_tokens`` needs a batch that ``known`` does not hold."""
        rows, count = self.rows(n_tokens), 0
        for i, batch in enumerate(self.tokens.split(self.batch_size)):
            if count >= rows:
                return False
            if i >= len(known) or rows - count < batch.shape[0]:
                return True
            count += batch.shape[0]
        return False

    def __call__(self, retention: Mapping[Head, float], n_tokens: int) -> float:
        self.calls += 1
        key = tuple(sorted((int(h.layer), int(h.head), float(r)) for h, r in retention.items()))
        known = self._known.setdefault(key, [])
        if not self._needs_forward(known, n_tokens):
            return self.kl(n_tokens, known)
        with compressed(self.model, HeadPrune(dict(retention))):
            return self.kl(n_tokens, known)


def _reduce_scores(
    reduce: Callable[[Tensor], Tensor] | None, nll: dict[str, float], kl: dict[str, float],
    n_scored: int, n_pos: int,
) -> tuple[dict[str, float], dict[str, float], int, int]:
    """The summed NLL and KL of each allocation and the token counts through ``reduce`` as one
    float64 vector (a sum over ranks); as they are when None."""
    if reduce is None:
        return nll, kl, n_scored, n_pos
    names = list(nll)
    flat = reduce(torch.tensor([*nll.values(), *kl.values(), n_scored, n_pos],
                               dtype=torch.float64)).tolist()
    return (dict(zip(names, flat[:len(names)], strict=True)),
            dict(zip(names, flat[len(names):2 * len(names)], strict=True)),
            int(flat[-2]), int(flat[-1]))


@torch.no_grad()
def evaluate_allocations(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    allocations: Mapping[str, Mapping[Head, float]],
    *,
    probes: Sequence[str] = (),
    batch_size: int = 8,
    progress: bool = True,
    reduce: Callable[[Tensor], Tensor] | None = None,
    dense: DensePass | None = None,
) -> dict[str, dict[str, object]]:
    """Perplexity, mean KL(dense ‖ compressed) and probe results of each allocation.

    Per batch the dense logits are computed once and each allocation is applied in turn with
    :func:`compressed` (restored after each), so no dense logits are stored. Perplexity is the
    chunked protocol of :func:`cgc_lens.forward.metrics.perplexity`. ``reduce`` is applied to
    the summed NLL, KL and token counts (one float64 vector) before they become perplexities:
    a sum over ranks each given its own blocks (:class:`~cgc_lens.studies.capability.sharding.
    TokenShard`); probes read their own prompts, the same on every rank.

    ``dense``: the study's dense pass (:class:`~cgc_lens.forward.dense.DensePass`), read instead
    of running the dense model on a batch it already ran. An allocation that keeps every weight
    (every retention 1) is scored on the dense log-probabilities, without a forward of its own.
    Each probe is made once (its prompts built once) and run on every allocation; allocations
    with the same retention map (CGC-F's answer may be its start) are scored once.
    """
    same = _first_equal(allocations)
    names = [name for name in allocations if same[name] == name]  # each distinct map once
    nll, kl = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    n_scored = n_pos = 0
    batches, n_batches = iter_batches(tokens, batch_size)
    device = model.cfg.device
    for rows in progress_bar(batches, total=n_batches, desc="evaluate allocations",
                             enabled=progress):
        batch = rows.to(device)
        ref = (log_probs(model(batch, return_type="logits")) if dense is None
               else dense(batch).log_probs)
        ref_p = ref.exp()
        for name in names:
            a, k = _allocation_sums(model, allocations[name], batch, ref, ref_p)
            nll[name] += float(a)
            kl[name] += float(k)
        n_scored += batch.shape[0] * (batch.shape[1] - 1)
        n_pos += batch.numel()
    nll, kl, n_scored, n_pos = _reduce_scores(reduce, nll, kl, n_scored, n_pos)
    out: dict[str, dict[str, object]] = {}
    made = {p: get_probe(p) for p in probes}
    for name in names:
        results: dict[str, float] = {}
        if probes:
            with compressed(model, HeadPrune(dict(allocations[name]))):
                results = run_probes(model, list(probes), progress=progress,
                                     desc=f"probes {name}", instances=made)
        out[name] = {"ppl": math.exp(nll[name] / n_scored), "kl": kl[name] / n_pos,
                     "probes": results}
    return {name: {**out[same[name]], "probes": dict(out[same[name]]["probes"])}
            for name in allocations}


def _allocation_sums(model: HookedTransformer, retention: Mapping[Head, float], batch: Tensor,
                     ref: Tensor, ref_p: Tensor) -> tuple[Tensor, Tensor]:
    """Summed NLL and KL(dense ‖ pruned) of one batch under one retention map."""
    if all(r == 1.0 for r in retention.values()):
        return nll_kl_sums(ref, batch, ref, ref_p)  # HeadPrune at 1 changes no weight
    with compressed(model, HeadPrune(dict(retention))):
        return nll_kl_sums(log_probs(model(batch, return_type="logits")), batch, ref, ref_p)


def _first_equal(allocations: Mapping[str, Mapping[Head, float]]) -> dict[str, str]:
    """Each allocation's name → the first name with the same retention map (itself if none)."""
    first: dict[tuple[tuple[int, int, float], ...], str] = {}
    return {name: first.setdefault(tuple(sorted((h.layer, h.head, float(r))
                                                for h, r in a.items())), name)
            for name, a in allocations.items()}

