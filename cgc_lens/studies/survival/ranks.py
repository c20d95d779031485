"""The survival audit over ``torch.distributed`` ranks: the same sums as one process.

Under an initialised process group (``torchrun --nproc-per-node N -m cgc_lens survival ...``,
or a caller's own ``init_process_group``) :func:`sweep` and :func:`perplexities` share the work
out; in a single process they are :func:`~cgc_lens.studies.survival.passes.stream_conditions`
and :func:`~cgc_lens.studies.survival.conditions.condition_perplexities` themselves.

``split_by="tokens"`` (the default): the sweep's shards (consecutive batches of feature blocks,
``n_shards`` of them) are dealt out in contiguous runs (:func:`~cgc_lens.distributed.
shard_range`); each rank streams the reference and every condition over its own batches, each
batch in the shard (and the jackknife group, by its global block index) it has in one process.
Every shard's sums are therefore formed wholly on one rank, in one process's order, and the
merge adds zeros from the other ranks: the merged float64 sums are the single process's bit
for bit, not merely to 1e-10. The merge walks the sums generically (every float64 / int64
tensor summed, every accumulator's state merged field by field with its maxima, every list of
counts summed; nested sums such as the jackknife groups' included), one all-reduce per dtype.
A rank with no batches (fewer shards than ranks) takes part with zeros. Perplexities: each rank
scores its share of the evaluation batches under every condition; the per-batch summed NLL and
token counts are gathered and added in batch order, so the perplexity is also the single
process's bit for bit.

``split_by="conditions"``: each rank compresses its own copy for its share of the conditions
and streams them (and the reference) over all the feature tokens; the conditions' sums and
perplexities are gathered in condition order. Useful when the model is small and the
conditions many.

Every rank resolves the conditions itself (the matched search and GPTQ / AWQ calibration run on
the same tokens everywhere, deterministic on CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cgc_lens.analysis.accumulator_base import SumAccumulator
from cgc_lens.analysis.accumulator_state import max_fields
from cgc_lens.distributed import (
    all_reduce_sum_,
    broadcast_object,
    gather_objects,
    reduce_accumulators_,
    shard_range,
    world,
)
from cgc_lens.forward.metrics import perplexity_result
from cgc_lens.studies.survival.conditions import Condition, condition_perplexities, edited
from cgc_lens.studies.survival.config import NULL_NAME, SurvivalConfig
from cgc_lens.studies.survival.passes import SweepSums, stream_conditions

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from cgc_lens.saes.attach import SAETarget

__all__ = ["merge_sums_", "perplexities", "sweep"]

log = logging.getLogger(__name__)


def sweep(
    config: SurvivalConfig,
    model: HookedTransformer,
    tokens: Tensor,
    targets: Sequence[SAETarget],
    conds: Sequence[Condition],
    *,
    bos: int | None,
) -> tuple[SweepSums, dict[str, Any]]:
    """The sweep's sums over all the feature tokens and conditions, on every rank; and what
    the ranks did (``world_size``, ``split_by``, each rank's seconds, the merge's seconds)."""
    w = world()
    pairs = [(c.name, c.plan) for c in conds]
    kw: dict[str, Any] = {
        "batch_size": config.batch_size,
        "n_shards": config.n_shards,
        "bos": bos,
        "cache_bytes": int(config.cache_mb * 2**20),
        "n_groups": config.n_groups,
        "progress": config.progress and w.is_main,
    }
    facts: dict[str, Any] = {"world_size": w.size, "split_by": config.split_by}
    if w.size == 1:
        return stream_conditions(model, tokens, targets, pairs, **kw), facts
    t0 = time.perf_counter()
    if config.split_by == "conditions":
        mine = shard_range(len(pairs), w)
        local = stream_conditions(model, tokens, targets, pairs[mine.start : mine.stop], **kw)
        gather_objects(None)  # the slowest rank's end: what follows is the merge alone
        t1 = time.perf_counter()
        sums = _gather_conditions(local, tuple(name for name, _ in pairs))
        cache = max(gather_objects(local.cache_peak_bytes))
    else:
        local = _token_share(model, tokens, targets, pairs, config=config, kw=kw)
        gather_objects(None)
        t1 = time.perf_counter()
        sums = merge_sums_(local)
        cache = sum(gather_objects(sums.cache_peak_bytes))
    t2 = time.perf_counter()
    seconds = gather_objects(t1 - t0)
    sums.n_chunks = max(gather_objects(sums.n_chunks))
    sums.cache_peak_bytes = cache
    sums.seconds = time.perf_counter() - t0
    facts.update(
        {"rank_sweep_seconds": [round(s, 3) for s in seconds], "merge_seconds": round(t2 - t1, 4)}
    )
    log.info(
        "rank %d of %d: sweep %.2f s, merge %.3f s (split by %s)",
        w.rank,
        w.size,
        t1 - t0,
        t2 - t1,
        config.split_by,
    )
    return sums, facts


def _token_share(
    model: HookedTransformer,
    tokens: Tensor,
    targets: Sequence[SAETarget],
    pairs: list[tuple[str, Any]],
    *,
    config: SurvivalConfig,
    kw: dict[str, Any],
) -> SweepSums | None:
    """This rank's sweep over the batches of its shards (None when it has none)."""
    w = world()
    n_blocks, size = int(tokens.shape[0]), config.batch_size
    n_batches = -(-n_blocks // size)
    n_shards = min(config.n_shards, n_batches)
    if n_shards < w.size and w.is_main:
        log.warning(
            "%d shard(s) of batches for %d ranks: %d rank(s) stream nothing; raise "
            "n_shards (or the tokens) to use them all.",
            n_shards,
            w.size,
            w.size - n_shards,
        )
    mine = shard_range(n_shards, w)
    batches = [i for i in range(n_batches) if i * n_shards // n_batches in mine]
    if not batches:
        return None
    lo, hi = batches[0] * size, min((batches[-1] + 1) * size, n_blocks)
    return stream_conditions(
        model,
        tokens[lo:hi],
        targets,
        pairs,
        **kw,
        block_index=torch.arange(lo, hi),
        total_blocks=n_blocks,
        batch_offset=batches[0],
        total_batches=n_batches,
    )


def merge_sums_(local: SweepSums | None) -> SweepSums:
    """``local`` summed over ranks in place (a rank with None takes zeros shaped like the
    others'); every rank gets the sums of all of them. See the module docstring."""
    have = gather_objects(local is not None)
    if not all(have):
        src = have.index(True)
        template = broadcast_object(_zeroed(local) if world().rank == src else None, src=src)
        local = template if local is None else local
    assert local is not None
    tensors: list[Tensor] = []
    accs: list[SumAccumulator] = []
    counts: list[tuple[Any, str]] = []
    _parts(local, tensors, accs, counts)
    packed = [torch.tensor(getattr(o, name), dtype=torch.int64) for o, name in counts]
    all_reduce_sum_([*tensors, *packed])
    for (o, name), total in zip(counts, packed, strict=True):
        setattr(o, name, [int(v) for v in total.tolist()])
    reduce_accumulators_(accs)
    return local


def _parts(
    obj: Any, tensors: list[Tensor], accs: list[SumAccumulator], counts: list[tuple[Any, str]]
) -> None:
    """The summed parts of a sweep's sums, in one order on every rank: tensors, accumulators,
    lists of counts, nested sums (a dataclass field) walked the same way."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            tensors.append(value)
        elif dataclasses.is_dataclass(value):
            _parts(value, tensors, accs, counts)
        elif isinstance(value, dict):
            for key in sorted(value):
                item = value[key]
                if isinstance(item, Tensor):
                    tensors.append(item)
                elif isinstance(item, list) and all(isinstance(a, SumAccumulator) for a in item):
                    accs.extend(item)
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            counts.append((obj, f.name))


def _zeroed(sums: SweepSums) -> SweepSums:
    """``sums`` on the CPU with every summed part zero (maxima −inf): what a rank that streamed
    nothing contributes."""
    out = copy.deepcopy(sums)
    out.seconds, out.n_chunks, out.cache_peak_bytes = 0.0, 0, 0
    _zero(out)
    return out


def _zero(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _zero(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, Tensor):
                    value[key] = torch.zeros_like(item, device="cpu")
                elif isinstance(item, list) and all(isinstance(a, SumAccumulator) for a in item):
                    value[key] = [_empty(a) for a in item]
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            setattr(obj, f.name, [0] * len(value))


def _empty(acc: SumAccumulator) -> SumAccumulator:
    """A CPU copy of ``acc`` (same settings) holding no tokens."""
    state = {
        k: torch.full_like(v, -math.inf, device="cpu")
        if k in max_fields(acc)
        else torch.zeros_like(v, device="cpu")
        for k, v in acc.state_dict().items()
    }
    return acc.copy().to("cpu").load_state_dict(state)


def _gather_conditions(local: SweepSums, names: tuple[str, ...]) -> SweepSums:
    """Each rank's conditions' sums gathered in condition order beside this rank's reference
    (every rank streamed the reference over the same tokens)."""
    part = {
        "cond": {k: v.cpu() for k, v in local.cond_sums.items()},
        "groups": None
        if local.groups is None
        else {k: v.cpu() for k, v in local.groups.cond_sums.items()},
    }
    parts = gather_objects(part)
    for key, value in local.cond_sums.items():
        local.cond_sums[key] = torch.cat([p["cond"][key] for p in parts]).to(value.device)
    if local.groups is not None:
        for key, value in local.groups.cond_sums.items():
            local.groups.cond_sums[key] = torch.cat([p["groups"][key] for p in parts]).to(
                value.device
            )
        local.groups.n_conditions = len(names)
    local.conditions = names
    return local


def perplexities(
    config: SurvivalConfig,
    model: HookedTransformer,
    conds: Sequence[Condition],
    eval_tokens: Tensor | None,
) -> dict[str, tuple[float | None, float | None]]:
    """Each condition's perplexity (the reference under ``reference``), as
    :func:`~cgc_lens.studies.survival.conditions.condition_perplexities` gives it in one
    process, on every rank. Split by evaluation batches (summed NLL and token counts, added in
    batch order), or by conditions with ``split_by="conditions"`` or a sliding window."""
    w = world()
    if w.size == 1:
        return condition_perplexities(config, model, list(conds), eval_tokens)
    quiet = dataclasses.replace(config, progress=config.progress and w.is_main)
    if config.split_by == "conditions" or config.ppl_window is not None:
        mine = shard_range(len(conds), w)
        parts = gather_objects(
            condition_perplexities(quiet, model, list(conds[mine.start : mine.stop]), eval_tokens)
        )
        merged = {k: v for p in parts for k, v in p.items()}
    else:
        merged = _batch_share(config, model, conds, eval_tokens)
    order = [NULL_NAME, *(c.name for c in conds)]
    return {k: merged[k] for k in dict.fromkeys(order) if k in merged}


def _batch_share(
    config: SurvivalConfig,
    model: HookedTransformer,
    conds: Sequence[Condition],
    eval_tokens: Tensor | None,
) -> dict[str, tuple[float | None, float | None]]:
    """Chunked perplexities from this rank's evaluation batches, merged over ranks."""
    if eval_tokens is None:
        return {}
    todo = [
        (n, p)
        for n, p in [(None, None), *[(c.name, c.plan) for c in conds]]
        if not (n is None and config.null)
    ]
    batches = list(eval_tokens.split(config.batch_size))
    mine = shard_range(len(batches))
    local: dict[str, list[tuple[float, int]]] = {}
    for name, plan in todo:
        with edited(model, plan):
            local[NULL_NAME if name is None else name] = [
                (r.nll_sum, r.n_tokens)
                for r in (
                    perplexity_result(
                        model,
                        b,
                        batch_size=config.batch_size,
                        prepend_bos=config.prepend_bos,
                        progress=False,
                    )
                    for b in batches[mine.start : mine.stop]
                )
            ]
    parts = gather_objects(local)
    out: dict[str, tuple[float | None, float | None]] = {}
    for name in local:
        nll, n = 0.0, 0
        for part in parts:  # rank order is batch order: the one process's float64 sum
            for batch_nll, batch_n in part[name]:
                nll += batch_nll
                n += batch_n
        out[name] = (math.exp(nll / n), None)
    return out
