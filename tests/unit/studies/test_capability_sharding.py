"""The capability study's split over ranks, one process: shards of whole batches, CGC-F's
batched fitness, empty shards and summed sweep sums (the 2-rank run is
tests/integration/test_capability_distributed.py)."""

from __future__ import annotations

import numpy as np
import torch

from cgc_lens.analysis.allocation import uniform
from cgc_lens.analysis.evolution import EvoConfig, cgc_f_from_starts
from cgc_lens.distributed.group import World
from cgc_lens.forward.head_edits import reduce_edit_sums
from cgc_lens.forward.streaming import iter_batches
from cgc_lens.sites import Head
from cgc_lens.studies.capability.sharding import SplitFitness, token_shard


def _world(rank: int, size: int) -> World:
    return World(rank=rank, size=size, local_rank=rank, backend="gloo")


def test_shards_are_whole_batches_in_order_uneven_and_possibly_empty():
    for n_blocks, batch, size in [(5, 2, 2), (2, 2, 2), (17, 4, 3), (0, 3, 2), (9, 1, 4)]:
        shards = [token_shard(n_blocks, batch, _world(r, size)).blocks for r in range(size)]
        assert [i for s in shards for i in s] == list(range(n_blocks))
        assert all(s.start % batch == 0 for s in shards if len(s))
    assert token_shard(2, 2, _world(1, 2)).blocks == range(2, 2)  # rank 1 reads nothing
    tokens = torch.arange(10).view(5, 2)
    assert token_shard(5, 2, _world(1, 2)).take(tokens).tolist() == [[8, 9]]


def test_an_empty_token_tensor_makes_no_batch():
    batches, n = iter_batches(torch.zeros(0, 4, dtype=torch.long), 3)
    assert n == 0 and list(batches) == []


def test_reduce_edit_sums_round_trips_and_sums():
    sums = (np.array([1.5, 2.0]), np.array([0.25, 0.5]), 3.0, 7, 8)
    out = reduce_edit_sums(sums, lambda v: v + v)
    np.testing.assert_array_equal(out[0], [3.0, 4.0])
    np.testing.assert_array_equal(out[1], [0.5, 1.0])
    assert out[2:] == (6.0, 14, 16) and reduce_edit_sums(sums, None) is sums


class _Counting:
    """A fitness with ``many``: records the size of each batch it is given."""

    def __init__(self, target: np.ndarray) -> None:
        self.target, self.batches = target, []

    def __call__(self, ret, n_tokens):
        return float(sum((ret[Head(0, h)] - self.target[h]) ** 2 for h in range(4)) + n_tokens)

    def many(self, rets, n_tokens):
        self.batches.append(len(rets))
        return [self(r, n_tokens) for r in rets]


def test_cgc_f_scores_each_stage_at_once_with_the_same_answer():
    target = np.array([0.2, 0.8, 0.4, 0.6])
    cfg = EvoConfig(
        generations=5,
        offspring=4,
        survivors_per_stage=(2, 1),
        tokens_per_stage=(1, 2),
        level_step=0.1,
        progress=False,
    )
    starts = {"uniform": uniform((1, 4), 0.5)}
    batched = _Counting(target)
    a = cgc_f_from_starts(starts, batched, cfg)
    b = cgc_f_from_starts(starts, batched.__call__, cfg)  # no many: one call each
    np.testing.assert_array_equal(a.allocation.retention, b.allocation.retention)
    np.testing.assert_array_equal(a.search.history, b.search.history)
    assert a.search.n_evaluations == b.search.n_evaluations
    assert max(batched.batches) == 4 and len(batched.batches) >= 2 * cfg.generations
    split = SplitFitness(_Counting(target))  # one process: many = one call each, in order
    c = cgc_f_from_starts(starts, split, cfg)
    np.testing.assert_array_equal(c.search.history, a.search.history)
