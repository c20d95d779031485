"""Exact merges across ranks: sums, maxima, gathered objects and accumulator states.

Sums are exact where they must be: float64 and int64 tensors only (a float32 sum would round
differently with the rank count). Tensors of one dtype travel packed in one flat buffer, so a
merge of many statistics is one collective per dtype, not one per tensor. Under NCCL the
buffers go through the rank's CUDA device, under gloo through the CPU; each tensor is written
back in place on its own device. In a single process every function returns at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from cgc_lens.analysis.accumulator_state import allocated, max_fields
from cgc_lens.distributed.group import world
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from cgc_lens.analysis.accumulator_base import SumAccumulator

__all__ = [
    "all_reduce_max_",
    "all_reduce_sum_",
    "broadcast_object",
    "gather_objects",
    "reduce_accumulator_",
    "reduce_accumulators_",
]

_EXACT_SUM = (torch.float64, torch.int64)


def _comm_device() -> torch.device:
    """Where collective buffers live: the rank's CUDA device under NCCL, else the CPU."""
    if world().backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reduce_packed(tensors: Sequence[Tensor], op: dist.ReduceOp) -> None:
    """All-reduce ``tensors`` in place with ``op``: one flat buffer per dtype."""
    for t in tensors:
        if not isinstance(t, Tensor):
            raise CgcLensError(f"Expected torch tensors to reduce, got {type(t).__name__}.")
    if world().size == 1:
        return
    device = _comm_device()
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for dtype in sorted(by_dtype, key=str):  # every rank issues the collectives in one order
        group = by_dtype[dtype]
        flat = torch.cat([t.detach().reshape(-1).to(device) for t in group])
        dist.all_reduce(flat, op=op)
        start = 0
        for t in group:
            n = t.numel()
            t.copy_(flat[start : start + n].view(t.shape))
            start += n


def all_reduce_sum_(tensors: Sequence[Tensor]) -> None:
    """Sum ``tensors`` over ranks, in place (float64 or int64 only, so the sum is exact to
    float64 rounding whatever the rank count); a no-op in a single process.

    Example:
        >>> t = torch.ones(3, dtype=torch.float64)
        >>> all_reduce_sum_([t]); t.tolist()  # one process: unchanged
        [1.0, 1.0, 1.0]
    """
    bad = [t.dtype for t in tensors if isinstance(t, Tensor) and t.dtype not in _EXACT_SUM]
    if bad:
        raise CgcLensError(
            f"all_reduce_sum_ sums float64 or int64 tensors only, got {bad}; "
            "accumulate in float64 (t.double()) before merging."
        )
    _reduce_packed(tensors, dist.ReduceOp.SUM)


def all_reduce_max_(tensors: Sequence[Tensor]) -> None:
    """Element-wise maximum of ``tensors`` over ranks, in place; a no-op in one process."""
    _reduce_packed(tensors, dist.ReduceOp.MAX)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` alone.

    Example:
        >>> gather_objects({"rank": 0})
        [{'rank': 0}]
    """
    w = world()
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself in one process."""
    w = world()
    if not 0 <= src < w.size:
        raise CgcLensError(f"src={src} is outside a world of size {w.size}.")
    if w.size == 1:
        return obj
    box = [obj if w.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_accumulators_(accumulators: Sequence[SumAccumulator]) -> None:
    """Merge each accumulator's state over ranks in place: its SUM fields summed, its
    ``max_fields()`` maxed, ``n_tokens`` summed, whatever fields its class defines.

    Every rank passes the same accumulators in the same order (an accumulator that saw no
    tokens on a rank takes part with zero sums). All of them travel in one collective per
    dtype and operation. Afterwards every rank holds the accumulators of all tokens.
    """
    if world().size == 1 or not accumulators:
        return
    device = _comm_device()
    states = []
    for acc in accumulators:
        states.append(allocated(acc, device).state_dict())
    maxed = [
        (s, k)
        for acc, s in zip(accumulators, states, strict=True)
        for k in s
        if k in max_fields(acc)
    ]
    summed = [
        (s, k)
        for acc, s in zip(accumulators, states, strict=True)
        for k in s
        if k not in max_fields(acc)
    ]
    _checked_sum([s[k] for s, k in summed], names=[k for _, k in summed])
    _reduce_packed([s[k] for s, k in summed], dist.ReduceOp.SUM)
    _reduce_packed([s[k] for s, k in maxed], dist.ReduceOp.MAX)
    for acc, s in zip(accumulators, states, strict=True):
        acc.load_state_dict(s)


def reduce_accumulator_(acc: SumAccumulator) -> None:
    """:func:`reduce_accumulators_` of one accumulator."""
    reduce_accumulators_([acc])


def _checked_sum(tensors: list[Tensor], *, names: list[str]) -> None:
    bad = {n: t.dtype for t, n in zip(tensors, names, strict=True) if t.dtype not in _EXACT_SUM}
    if bad:
        raise CgcLensError(
            f"Accumulator fields {bad} are not float64/int64: their sums would not "
            "be exact across ranks."
        )
