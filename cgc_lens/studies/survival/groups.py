"""The survival sweep's sums per group of token blocks, for the blocked jackknife.

Each feature block belongs to one of G groups by its GLOBAL index b among the run's
``total_blocks`` blocks: ``π(b) · G // total_blocks`` for a fixed permutation π (see
:func:`block_groups`: blocks dealt at random, not in contiguous runs), so a block's tokens always
share a group and any split of the blocks across batches, shards or processes gives the same
groups.
:class:`GroupSums` holds, per group, what the sweep holds per shard (Σx, Σx², the reference
accumulator; per condition Σy, Σy², Σxy), all SUMs; a batch that falls inside one group adds the
very tensors the pooled sums got, one that straddles groups is cut into row ranges
(:func:`rows_of`) and each range is summed by the same :class:`~cgc_lens.saes.SparseCodes`
operations. :meth:`GroupSums.pearson` and :meth:`GroupSums.reference` hand the pooled
accumulators back with their ``group_*`` fields (see
:mod:`cgc_lens.analysis.accumulator_base`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.errors import CgcLensError
from cgc_lens.saes.sparse_encoder import SparseCodes
from cgc_lens.studies.survival.codes import add_codes, reference_accumulator

__all__ = ["GROUP_SEED", "GroupSums", "block_groups", "row_runs", "rows_of"]

GROUP_SEED = 20_251_205
"""Seed of the permutation that deals blocks into groups (fixed: groups never depend on the
run's seed, its sharding or its process count)."""

Run = tuple[int, int, int]
"""``(group, first row, end row)`` of a batch's codes."""


def block_groups(block_index: Tensor, *, total_blocks: int, n_groups: int) -> Tensor:
    """The group of each block from its global index: ``π(b) · G // total_blocks``, where π is
    a fixed permutation of the run's ``total_blocks`` indices (seed :data:`GROUP_SEED`) and
    ``G = min(n_groups, total_blocks)``, so that groups are equal in size to one block and
    none is empty.

    Blocks come in stream order, so neighbouring blocks share a document or a category; the
    permutation deals them into groups at random (a block's own tokens always share one), and
    the leave-one-group-out replicates resample blocks as a bootstrap over blocks does. Dealt in
    contiguous runs instead, each group would be one region of the corpus, and the errors would
    measure the spread between regions, which more tokens do not shrink.

    Example:
        >>> block_groups(torch.arange(6), total_blocks=6, n_groups=2).bincount().tolist()
        [3, 3]
    """
    index = torch.as_tensor(block_index, dtype=torch.int64)
    if n_groups < 1 or total_blocks < 1:
        raise CgcLensError(
            f"Expected n_groups and total_blocks >= 1, got {n_groups} and {total_blocks}."
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= total_blocks):
        raise CgcLensError(
            f"Block indices must lie in [0, total_blocks={total_blocks}), got "
            f"[{int(index.min())}, {int(index.max())}]."
        )
    return _dealt(total_blocks)[index] * min(n_groups, total_blocks) // total_blocks


@functools.lru_cache(maxsize=8)
def _dealt(total_blocks: int) -> Tensor:
    """π: a fixed permutation of ``range(total_blocks)`` (the same in every process)."""
    return torch.randperm(total_blocks, generator=torch.Generator().manual_seed(GROUP_SEED))


def row_runs(groups: Tensor, block_len: int) -> list[Run]:
    """The runs of consecutive blocks of one group in a batch, as row ranges of its codes
    (``block_len`` rows per block).

    Example:
        >>> row_runs(torch.tensor([0, 0, 1]), 4)
        [(0, 0, 8), (1, 8, 12)]
    """
    out: list[Run] = []
    for i, g in enumerate(groups.tolist()):
        if out and out[-1][0] == g:
            out[-1] = (g, out[-1][1], (i + 1) * block_len)
        else:
            out.append((g, i * block_len, (i + 1) * block_len))
    return out


def rows_of(codes: SparseCodes, lo: int, hi: int) -> SparseCodes:
    """Rows ``lo:hi`` of ``codes`` (the stored entries kept as they are, re-indexed).

    Example:
        >>> c = SparseCodes.of(torch.tensor([[0.0, 2.0], [1.0, 0.0], [0.0, 3.0]]))
        >>> rows_of(c, 1, 3).to_dense().tolist()
        [[1.0, 0.0], [0.0, 3.0]]
    """
    if codes.dense is not None:
        return SparseCodes(hi - lo, codes.d, dense=codes.dense[lo:hi])
    flat = codes.flat
    keep = (flat >= lo * codes.d) & (flat < hi * codes.d)  # type: ignore[operator]
    return SparseCodes(
        hi - lo,
        codes.d,
        flat=flat[keep] - lo * codes.d,  # type: ignore[index]
        vals=codes.vals[keep],
    )  # type: ignore[index]


@dataclass
class GroupSums:
    """Per-group float64 sums of one sweep, per read-out key (all SUM across processes)."""

    n_groups: int
    """Groups G (at most the number of blocks)."""
    n_conditions: int
    """Conditions, in the order of the sweep's."""
    threshold: float
    """Firing threshold of the reference accumulators."""
    tokens: list[int] = field(default_factory=list)
    """Token positions per group."""
    reference: dict[str, list[ReferenceAccumulator]] = field(default_factory=dict)
    """Per key, one reference accumulator per group."""
    ref_moments: dict[str, Tensor] = field(default_factory=dict)
    """Per key, ``[G, 2, d_sae]``: Σx, Σx²."""
    cond_sums: dict[str, Tensor] = field(default_factory=dict)
    """Per key, ``[n_conditions, G, 3, d_sae]``: Σy, Σy², Σxy."""

    def __post_init__(self) -> None:
        self.tokens = self.tokens or [0] * self.n_groups

    def add_reference(self, key: str, runs: list[Run], x: SparseCodes, moments: Tensor,
                      batch: ReferenceAccumulator | None) -> None:
        """Add one batch's reference codes ``x`` (``moments``: its Σx, Σx², and ``batch``: its
        :func:`reference_accumulator`, already formed)."""
        if key not in self.ref_moments:
            device = moments.device
            self.ref_moments[key] = torch.zeros(
                self.n_groups, 2, x.d, dtype=torch.float64, device=device
            )
            self.cond_sums[key] = torch.zeros(
                self.n_conditions, self.n_groups, 3, x.d, dtype=torch.float64, device=device
            )
            self.reference[key] = [  # allocated now: a group this process never sees is zero
                ReferenceAccumulator(x.d, fire_threshold=self.threshold, device=device)
                for _ in range(self.n_groups)
            ]
        first = key == next(iter(self.ref_moments))
        for g, lo, hi in runs:
            whole = len(runs) == 1
            part = x if whole else rows_of(x, lo, hi)
            self.ref_moments[key][g] += moments if whole else part.moments()
            add_codes(self.reference[key][g], part,
                      batch if whole else reference_accumulator(part, self.threshold))
            if first:
                self.tokens[g] += hi - lo

    def add_condition(
        self,
        c: int,
        key: str,
        runs: list[Run],
        y: SparseCodes,
        *,
        x: SparseCodes,
        sums: Tensor,
        scratch: Tensor | None,
    ) -> None:
        """Add one batch of condition ``c``'s codes ``y`` against the reference's ``x``
        (``sums``: the whole batch's Σy, Σy², Σxy, already formed)."""
        block = self.cond_sums[key][c]
        if len(runs) == 1:
            block[runs[0][0]] += sums
            return
        for g, lo, hi in runs:
            y_part, x_part = rows_of(y, lo, hi), rows_of(x, lo, hi)
            block[g, :2] += y_part.moments()
            block[g, 2] += y_part.cross(x_part, scratch=scratch)

    def pearson(self, key: str, c: int, pooled: PearsonAccumulator) -> PearsonAccumulator:
        """``pooled`` (the condition's sums over every shard) with this sweep's group fields."""
        ref, cond = self.ref_moments[key], self.cond_sums[key][c]
        device = ref.device
        groups = {
            "group_n_tokens": torch.tensor(self.tokens, device=device),
            "group_sum_x": ref[:, 0],
            "group_sum_xx": ref[:, 1],
            "group_sum_y": cond[:, 0],
            "group_sum_yy": cond[:, 1],
            "group_sum_xy": cond[:, 2],
        }
        return PearsonAccumulator.from_sums(**pooled.state_dict(), **groups)

    def reference_sums(self, key: str, pooled: ReferenceAccumulator) -> ReferenceAccumulator:
        """``pooled`` (the reference over every shard) with this sweep's group fields."""
        states = [acc.state_dict() for acc in self.reference[key]]
        groups = {
            f"group_{k}": torch.stack([s[k] for s in states])
            for k in ("fire_count", "sum_act", "sum_act_firing", "sum_sq_firing")
        }
        groups["group_n_tokens"] = torch.tensor(self.tokens)
        return ReferenceAccumulator.from_sums(
            **pooled.state_dict(), **groups, fire_threshold=self.threshold
        )
