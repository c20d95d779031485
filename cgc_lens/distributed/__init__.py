"""Scale-out on ``torch.distributed``: the same study on one process, several CPU ranks, or
one rank per GPU (launched by ``torchrun``; see docs/scaling.md).

- :mod:`~cgc_lens.distributed.group`: who this process is (:class:`World`), starting the
  process group from ``torchrun``'s environment (gloo on CPU, NCCL on CUDA), each rank's
  contiguous shard of a list of items, and its device.
- :mod:`~cgc_lens.distributed.local`: several gloo ranks on this machine without ``torchrun``
  (tests, benchmarks), a failing rank ending them all.
- :mod:`~cgc_lens.distributed.reduce`: exact merges across ranks (float64 / int64 sums,
  maxima, gathered and broadcast objects, a survival accumulator's whole state).

Every function is a no-op (or the identity) in a single process, so a study calls them
unconditionally.
"""

from cgc_lens.distributed.group import World, device_for, init_world, shard_range, world
from cgc_lens.distributed.local import free_port, run_local
from cgc_lens.distributed.reduce import (
    all_reduce_max_,
    all_reduce_sum_,
    broadcast_object,
    gather_objects,
    reduce_accumulator_,
    reduce_accumulators_,
)

__all__ = [
    "World",
    "all_reduce_max_",
    "all_reduce_sum_",
    "broadcast_object",
    "device_for",
    "free_port",
    "gather_objects",
    "init_world",
    "reduce_accumulator_",
    "reduce_accumulators_",
    "run_local",
    "shard_range",
    "world",
]
