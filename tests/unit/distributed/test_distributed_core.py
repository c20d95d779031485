"""cgc_lens.distributed: shares of work, and exact merges across 2 gloo ranks on 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import torch

from cgc_lens.analysis import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.analysis.accumulators import merge_all
from cgc_lens.distributed import (
    World,
    all_reduce_max_,
    all_reduce_sum_,
    broadcast_object,
    device_for,
    gather_objects,
    reduce_accumulator_,
    reduce_accumulators_,
    run_local,
    shard_range,
    world,
)
from cgc_lens.errors import CgcLensError


def _w(rank: int, size: int) -> World:
    return World(rank=rank, size=size, local_rank=rank, backend="gloo")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 17])
def test_shard_range_concatenates_to_range_and_is_balanced(n, size):
    shards = [shard_range(n, _w(r, size)) for r in range(size)]
    assert [i for s in shards for i in s] == list(range(n))
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the first ranks take the extra items
    if n < size:
        assert lengths[n:] == [0] * (size - n)  # a rank with nothing is fine


def test_shard_range_refuses_bad_input():
    with pytest.raises(CgcLensError, match="non-negative int"):
        shard_range(-1, _w(0, 2))
    with pytest.raises(CgcLensError, match="outside a world"):
        shard_range(4, _w(2, 2))


def test_single_process_is_the_identity():
    w = world()
    assert (w.rank, w.size, w.local_rank, w.backend, w.is_main) == (0, 1, 0, None, True)
    assert shard_range(5) == range(5)
    t = torch.arange(3, dtype=torch.float64)
    all_reduce_sum_([t])
    all_reduce_max_([t])
    assert t.tolist() == [0.0, 1.0, 2.0]
    assert gather_objects("x") == ["x"] and broadcast_object(7) == 7
    assert device_for(w, "cpu") == torch.device("cpu")
    assert device_for(World(rank=1, size=2, local_rank=1, backend="nccl"), "cpu") == torch.device(
        "cuda", 1
    )
    with pytest.raises(CgcLensError, match="float64 or int64"):
        all_reduce_sum_([torch.ones(2)])


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(37, 6, generator=g, dtype=torch.float64))
    y = x + 0.1 * torch.randn(37, 6, generator=g, dtype=torch.float64)
    return x, y


def _merge_worker() -> dict:
    """Runs on every rank: collectives on known tensors, accumulators over this rank's rows."""
    w = world()
    s = torch.tensor([1.5 * (w.rank + 1), 2.0**-40], dtype=torch.float64)
    i = torch.tensor([w.rank + 3, 10], dtype=torch.int64)
    m = torch.tensor([float(w.rank), -float(w.rank)], dtype=torch.float32)
    all_reduce_sum_([s, i])
    all_reduce_max_([m])
    x, y = _data()
    rows = shard_range(x.shape[0])
    ref, pear = ReferenceAccumulator(6), PearsonAccumulator(6)
    if len(rows):
        ref.update(x[rows.start : rows.stop])
        pear.update(x[rows.start : rows.stop], y[rows.start : rows.stop])
    reduce_accumulators_([ref, pear])
    # rank 1 sees no rows at all: its accumulator joins the merge unallocated
    empty = ReferenceAccumulator(6)
    if w.rank == 0:
        empty.update(x[:5])
    reduce_accumulator_(empty)
    return {
        "rank": w.rank,
        "size": w.size,
        "backend": w.backend,
        "sum": s,
        "int": i,
        "max": m,
        "rows": rows,
        "ref": ref.state_dict(),
        "pear": pear.state_dict(),
        "empty": empty.state_dict(),
        "gathered": gather_objects({"r": w.rank}),
        "bcast": broadcast_object(f"from {w.rank}", src=1),
    }


def _fail_worker() -> None:
    if world().rank == 1:
        raise CgcLensError("injected failure on rank 1")
    time.sleep(0.5)
    gather_objects("waits for rank 1")  # rank 1 never arrives


def test_two_gloo_ranks_merge_exactly():
    out = run_local(_merge_worker, 2, timeout_s=60)
    x, y = _data()
    assert [o["rank"] for o in out] == [0, 1] and {o["backend"] for o in out} == {"gloo"}
    assert [o["rows"] for o in out] == [range(0, 19), range(19, 37)]
    for o in out:
        assert o["sum"].tolist() == [1.5 + 3.0, 2 * 2.0**-40]
        assert o["int"].tolist() == [3 + 4, 20]
        assert o["max"].tolist() == [1.0, 0.0]
        assert o["gathered"] == [{"r": 0}, {"r": 1}] and o["bcast"] == "from 1"
    # independent: one process over the same two halves, merged with merge() (a + b)
    halves = [ReferenceAccumulator(6).update(x[:19]), ReferenceAccumulator(6).update(x[19:])]
    pears = [
        PearsonAccumulator(6).update(x[:19], y[:19]),
        PearsonAccumulator(6).update(x[19:], y[19:]),
    ]
    want_ref, want_pear = merge_all(halves).state_dict(), merge_all(pears).state_dict()
    whole = ReferenceAccumulator(6).update(x).state_dict()  # and one pass, to float64 rounding
    for o in out:
        for k, v in want_ref.items():
            assert torch.equal(o["ref"][k], v), k
            torch.testing.assert_close(o["ref"][k], whole[k], rtol=1e-12, atol=1e-12)
        for k, v in want_pear.items():
            assert torch.equal(o["pear"][k], v), k
        assert int(o["ref"]["n_tokens"]) == 37 and float(o["ref"]["max_act"].max()) == float(
            x.max()
        )
        lone = ReferenceAccumulator(6).update(x[:5]).state_dict()
        for k, v in lone.items():
            assert torch.equal(o["empty"][k], v), k


def test_a_failing_rank_ends_both_with_its_message():
    t0 = time.monotonic()
    with pytest.raises(CgcLensError, match=r"rank 1 of 2 failed: CgcLensError: injected failure"):
        run_local(_fail_worker, 2, timeout_s=30)
    assert time.monotonic() - t0 < 45
