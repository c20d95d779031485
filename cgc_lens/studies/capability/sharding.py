"""The capability study on several ranks of a ``torch.distributed`` process group.

Under an initialised process group (``torchrun --nproc-per-node N -m cgc_lens cgc …``, or
:func:`~cgc_lens.distributed.group.init_world` before :func:`run_capability`), every rank runs
the same study and splits its work three ways, each giving the numbers of one process:

- **SAEs by heads** (:func:`fit_head_saes`): every rank draws the initial weights of *all* heads
  from the config's seed (as one process does), keeps its contiguous run of heads
  (:func:`~cgc_lens.distributed.group.shard_range`), reads only their ``hook_z`` slices over
  the calibration tokens and trains them on the token order of the same seed; the trained
  weights are gathered in rank order. Each SAE's loss is its own and Adam is elementwise, so a
  head's SAE does not depend on which heads share its rank (tested to 1e-10).
- **Token passes by whole batches** (:func:`token_shard`): the calibration pass, the head
  ablation, the Theorem 1 prune sweep and the allocations' evaluation read a contiguous run of
  whole batches of ``batch_size`` blocks (the batches one process forms, so every forward sees
  the same rows; uneven shards and ranks without blocks are fine). Their float64 sums, counts
  and token totals are summed over ranks (:func:`sum_over_ranks`, :func:`merge_calibration`);
  the Pearson sums of the survival test merge with
  :func:`~cgc_lens.distributed.reduce.reduce_accumulators_`, and the density accumulator's
  counts and bottom-k token sample with its own ``merge`` in rank order.
- **CGC-F by candidates** (:class:`SplitFitness`): each generation's candidates are scored on
  the full fitness tokens, a contiguous run per rank, and the values gathered in candidate
  order, so every rank selects the same survivors.

With one process (no process group) every function here is the identity or a plain call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from cgc_lens.distributed.group import World, shard_range, world
from cgc_lens.distributed.reduce import all_reduce_sum_, gather_objects, reduce_accumulators_
from cgc_lens.saes import BatchedTopKSAE, TrainConfig, fit_sae
from cgc_lens.saes.per_head import BatchedSAEConfig
from cgc_lens.saes.train import TrainResult, site_activations, train_batched
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from cgc_lens.studies.capability.passes import CalibrationStats

__all__ = [
    "SplitFitness",
    "TokenShard",
    "fit_head_saes",
    "merge_calibration",
    "sum_over_ranks",
    "token_shard",
]


@dataclass(frozen=True, kw_only=True)
class TokenShard:
    """The blocks one rank reads: a contiguous run of whole batches of the full token set."""

    world: World
    """The process group's shape (size 1: one process)."""
    blocks: range
    """Global indices of this rank's blocks (empty on a rank without a batch)."""

    def take(self, tokens: Tensor) -> Tensor:
        """This rank's rows of ``tokens`` ``[n_blocks, pos]`` (possibly none)."""
        return tokens[self.blocks.start : self.blocks.stop]

    def reduce(self, values: Tensor) -> Tensor:
        """``values`` (float64 or int64) summed over ranks, in place; returned."""
        return sum_over_ranks(values, self.world)


def token_shard(n_blocks: int, batch_size: int, group: World | None = None) -> TokenShard:
    """This rank's whole batches of ``batch_size`` blocks out of ``n_blocks``.

    Example:
        >>> token_shard(10, 4).blocks    # one process reads every block
        range(0, 10)
    """
    group = group or world()
    n_batches = math.ceil(n_blocks / batch_size)
    mine = shard_range(n_batches, group)
    lo, hi = min(mine.start * batch_size, n_blocks), min(mine.stop * batch_size, n_blocks)
    return TokenShard(world=group, blocks=range(lo, hi))


def sum_over_ranks(values: Tensor, group: World | None = None) -> Tensor:
    """``values`` summed over every rank in place (a no-op on one process); returned."""
    group = group or world()
    if group.size > 1:
        all_reduce_sum_([values])
    return values


def merge_calibration(stats: CalibrationStats, group: World | None = None) -> CalibrationStats:
    """Every rank's :class:`~cgc_lens.studies.capability.passes.CalibrationStats` of its token
    shard merged into the statistics of all the tokens (the same object on every rank).

    Sums of ``z`` and ``z²`` (float64), firing counts, token totals and the survival test's
    Pearson sums are summed over ranks; the density accumulators are gathered and merged in
    rank order (their ``merge``: counts summed, bottom-k samples merged by key).
    """
    group = group or world()
    if group.size == 1:
        return stats
    g = stats.groups
    ints = [torch.tensor([stats.n_tokens, stats.survival_tokens], dtype=torch.int64)]
    if g is not None:
        ints += [
            torch.from_numpy(np.ascontiguousarray(g.counts)),
            torch.from_numpy(np.ascontiguousarray(g.n_tokens)),
        ]
    if stats.survival_counts is not None:
        ints.append(stats.survival_counts)
    all_reduce_sum_([stats.z_sum_sq, stats.z_sum, *ints])
    features, *others = gather_objects(stats.features)
    for other in others:
        features.merge(other)
    if stats.survival is not None:
        reduce_accumulators_([acc for layer in stats.survival for acc in layer])
    n_tokens, survival_tokens = (int(v) for v in ints[0])
    groups = None if g is None else replace(g, counts=ints[1].numpy(), n_tokens=ints[2].numpy())
    return replace(
        stats, features=features, n_tokens=n_tokens, survival_tokens=survival_tokens, groups=groups
    )


def fit_head_saes(
    model: HookedTransformer,
    tokens: Tensor,
    sae_cfg: BatchedSAEConfig,
    train: TrainConfig,
    *,
    batch_size: int,
    progress: bool,
    group: World | None = None,
) -> tuple[BatchedTopKSAE, TrainResult]:
    """Fresh per-head SAEs trained on ``tokens``, the heads split over the ranks.

    One process: :func:`~cgc_lens.saes.fit_sae`. Several: every rank draws the initial weights
    of all SAEs from ``train.seed`` (as one process does), trains its contiguous run of heads
    on their activations and the seed's token order, and the trained weights are gathered, so
    every rank returns the SAEs one process trains. The result's steps and tokens are per SAE
    (the same on every rank); its losses are the mean over this rank's SAEs.
    """
    group = group or world()
    if group.size == 1:
        return fit_sae(model, tokens, sae_cfg, train, batch_size=batch_size, progress=progress)
    device = next(model.parameters()).device
    full = BatchedTopKSAE(sae_cfg, seed=train.seed).to(device)
    mine = list(shard_range(sae_cfg.n, group))
    result, local = TrainResult(steps=0, tokens=0, seconds=0.0), None
    if mine:
        sub = full.select(mine)
        acts = site_activations(model, tokens, sub.sites, batch_size=batch_size, progress=progress)
        result = train_batched(sub, acts, train, progress=progress)
        del acts
        local = (
            mine,
            [p.detach().cpu() for p in (sub.W_enc, sub.b_enc, sub.W_dec, sub.b_dec)],
            result.steps,
            result.tokens,
        )
    parts = [p for p in gather_objects(local) if p is not None]
    with torch.no_grad():
        for idx, params, _, _ in parts:
            for name, value in zip(("W_enc", "b_enc", "W_dec", "b_dec"), params, strict=True):
                getattr(full, name)[idx] = value.to(device)
    return full, replace(result, steps=parts[0][2], tokens=parts[0][3])


class SplitFitness:
    """CGC-F's fitness with :meth:`many`: a generation's candidates split over the ranks.

    Calls one at a time go to ``fitness`` unchanged; :meth:`many` scores a contiguous run of the
    candidates on each rank and gathers the values in candidate order, so every rank sees
    every value (the same ones one process computes: each candidate is scored on all the
    fitness tokens by one rank).
    """

    def __init__(
        self, fitness: Callable[[dict[Head, float], int], float], group: World | None = None
    ) -> None:
        self.fitness, self.world = fitness, group or world()

    def __call__(self, retention: dict[Head, float], n_tokens: int) -> float:
        return self.fitness(retention, n_tokens)

    def many(self, retentions: Sequence[Mapping[Head, float]], n_tokens: int) -> list[float]:
        """The fitness of each retention map on ``n_tokens`` tokens, in order."""
        if self.world.size == 1:
            return [self.fitness(dict(r), n_tokens) for r in retentions]
        mine = shard_range(len(retentions), self.world)
        local = [float(self.fitness(dict(retentions[i]), n_tokens)) for i in mine]
        return [v for part in gather_objects(local) for v in part]
