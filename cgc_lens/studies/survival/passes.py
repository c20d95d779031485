"""The streaming pass of the survival audit: reference once, every condition on identical tokens.

Order of work (App. I, and the issue's cost bound of 1.2 × (1 + C) bare forwards):

1. **Reference, once per batch.** One forward to the read-out layer (``stop_at_layer``), the
   frozen SAE encodes straight into sparse codes (:class:`SparseEncoder`: SAELens's values
   bit for bit, never the dense ``[positions, d_sae]`` codes), the reference sums are updated,
   and the batch's codes are cached (flat indices + values of the non-zeros; dense when more
   than a third are non-zero).
2. **Conditions over a chunk.** When the cache holds ``cache_bytes`` (or the tokens run out),
   each condition enters :func:`~cgc_lens.compress.compressed` once, runs the chunk's batches to
   the read-out layer, encodes, updates its sums against the cached reference codes, and leaves
   (restoring the weights bit for bit, also on an exception).

``cache_bytes=0`` is the batch-outer order (one weight edit per batch per condition); a cache
larger than the run is the condition-outer order. Sparse caching makes chunks long for SAE codes
(an L0-64 SAE costs ~0.8 kB per token), so weight edits are rare without holding tokens ×
features; the cache never grows past its budget plus one batch, whatever the token budget.

Sums are float64 and per shard (batches grouped into ``n_shards`` consecutive shards, for the
budget and subset checks). The reference side keeps Σx, Σx² and a
:class:`~cgc_lens.analysis.ReferenceAccumulator` (each batch's firing counts, sums and peaks are
taken from its non-zeros and added by ``merge``); each condition keeps Σy, Σy², Σxy only, summed
over the non-zeros of its codes (the SAE codes are sparse; zeros add nothing). They are finished
into :class:`~cgc_lens.analysis.PearsonAccumulator` objects through ``from_sums``, so r comes
from the one implementation of Eq. I.2 and its zero-variance rules. x·x, y·y and x·y are
formed by the same operations in the same order, so the null condition gives bit-identical
sums and r = 1 exactly. The null condition (``plan=None``) runs no forward of its own: its
codes are the cached reference codes, which a second forward of the unedited model would repeat
bit for bit on CPU (so the null costs sums only, not 1/(1 + C) of the sweep, and its r is exactly
1 on CUDA too, where ``index_add_`` order could differ in the last bit between two forwards).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

from cgc_lens.analysis.accumulators import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.compress import Plan
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.streaming import stop_layer
from cgc_lens.progress import progress_bar
from cgc_lens.saes.attach import SAETarget
from cgc_lens.saes.sparse_encoder import SparseCodes, SparseEncoder
from cgc_lens.studies.survival.codes import add_codes, reference_accumulator
from cgc_lens.studies.survival.compare import deferred_swaps
from cgc_lens.studies.survival.conditions import edited
from cgc_lens.studies.survival.groups import GroupSums, block_groups, row_runs
from cgc_lens.studies.survival.spill import ReferenceSpill

if TYPE_CHECKING:
    from tqdm.auto import tqdm
    from transformer_lens import HookedTransformer

__all__ = ["SweepSums", "stream_conditions"]

log = logging.getLogger(__name__)


@dataclass
class SweepSums:
    """Per-shard float64 sums of one sweep, per read-out key, and how the sweep went."""

    keys: tuple[str, ...]
    """Read-out keys (the SAE's hook, or ``hook[head]``), primary first."""
    conditions: tuple[str, ...]
    """Condition names, in the order of the sums."""
    n_tokens: list[int]
    """Token positions per shard."""
    reference: dict[str, list[ReferenceAccumulator]] = field(default_factory=dict)
    """Per key, one reference accumulator per shard."""
    ref_moments: dict[str, Tensor] = field(default_factory=dict)
    """Per key, ``[n_shards, 2, d_sae]``: Σx, Σx²."""
    cond_sums: dict[str, Tensor] = field(default_factory=dict)
    """Per key, ``[n_conditions, n_shards, 3, d_sae]``: Σy, Σy², Σxy."""
    seconds: float = 0.0
    """Wall time of the sweep."""
    n_chunks: int = 0
    """Chunks run (each condition edits the weights once per chunk)."""
    cache_peak_bytes: int = 0
    """Largest reference cache held."""
    groups: GroupSums | None = None
    """The same sums per group of blocks (by global block index), for the jackknife errors;
    None with ``n_groups=0``."""

    def reference_shards(self, key: str) -> list[ReferenceAccumulator]:
        """The reference accumulators of ``key``, one per shard."""
        return self.reference[key]

    def pearson_shards(self, key: str, condition: str) -> list[PearsonAccumulator]:
        """The condition's :class:`PearsonAccumulator` per shard (sharing these sums' memory)."""
        c = self.conditions.index(condition)
        ref, cond = self.ref_moments[key], self.cond_sums[key][c]
        return [
            PearsonAccumulator.from_sums(n_tokens=n, sum_x=ref[s, 0], sum_xx=ref[s, 1],
                                         sum_y=cond[s, 0], sum_yy=cond[s, 1], sum_xy=cond[s, 2])
            for s, n in enumerate(self.n_tokens)
        ]


class _Reader:
    """Hooks that encode each target's activation into :class:`SparseCodes` during a forward.

    A SAELens ReLU / JumpReLU / TopK SAE goes through :class:`SparseEncoder` (bit-identical
    values, never dense codes); any other SAE through ``target.encode`` and
    :meth:`SparseCodes.of`, as :func:`~cgc_lens.saes.attached` would read it.
    """

    def __init__(self, targets: Sequence[SAETarget], bos: bool) -> None:
        self.targets = list(targets)
        self.encoders = {t.key: SparseEncoder.for_target(t) for t in targets}
        self.bos = bos
        self.codes: dict[str, SparseCodes] = {}

    def hook(self, target: SAETarget):
        encoder = self.encoders[target.key]

        def hook_fn(act: Tensor, hook: object) -> None:
            if encoder is not None:
                x = target.inputs(act)
                self.codes[target.key] = encoder(x[:, 1:] if self.bos else x)
                return
            f = target.encode(act)
            if f.ndim != 3:
                raise CgcLensError(
                    f"Expected SAE codes [batch, pos, d_sae] at {target.key}, got "
                    f"{tuple(f.shape)} (batched per-head SAEs are not supported here).")
            f = f[:, 1:] if self.bos else f
            self.codes[target.key] = SparseCodes.of(f.reshape(-1, f.shape[-1]))

        return hook_fn

    @contextlib.contextmanager
    def attached(self, model: HookedTransformer):
        """The hooks on ``model`` for the ``with`` block (removed in ``model.hooks``'s finally)."""
        with model.hooks(fwd_hooks=[(t.hook, self.hook(t)) for t in self.targets]):
            yield self

    def read(self, model: HookedTransformer, batch: Tensor, stop: int | None, bos: int | None,
             ) -> dict[str, SparseCodes]:
        """One forward to the read-out layer; each SAE's codes of the batch's positions."""
        if bos is not None:
            batch = torch.cat([torch.full_like(batch[:, :1], bos), batch], dim=1)
        self.codes = {}
        model(batch.to(model.cfg.device), stop_at_layer=stop, return_type=None)
        return self.codes


@torch.no_grad()
def stream_conditions(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks block_len"],
    targets: Sequence[SAETarget],
    conditions: Sequence[tuple[str, Plan | Any | None]],
    *,
    batch_size: int = 8,
    n_shards: int = 16,
    cache_bytes: int = 32 << 20,
    bos: int | None = None,
    fire_threshold: float = 0.0,
    progress: bool = True,
    n_groups: int = 20,
    block_index: Tensor | None = None,
    total_blocks: int | None = None,
    batch_offset: int = 0,
    total_batches: int | None = None,
) -> SweepSums:
    """Stream the reference and every condition over ``tokens``; return per-shard sums.

    Args:
        model: the reference model (edited in place per condition, restored exactly).
        tokens: ``[n_blocks, block_len]`` token ids.
        targets: validated SAEs (:func:`cgc_lens.saes.validate_sae`) at their read-out hooks.
        conditions: ``(name, plan)`` pairs; ``plan=None`` is the null (the model as it is), a
            compared checkpoint's weight swap (:mod:`~cgc_lens.studies.survival.compare`) swaps
            its weights in.
        batch_size: blocks per forward pass.
        n_shards: consecutive groups of batches with their own sums (fewer if fewer batches).
        cache_bytes: reference codes held before the conditions run over them (see module doc).
        bos: a token id to prepend to every block (its position is not counted), or None.
        fire_threshold: firing threshold of the reference accumulators.
        progress: show a progress bar.
        n_groups: groups of blocks with their own sums (:mod:`~cgc_lens.studies.survival.groups`;
            fewer if fewer blocks, 0 for none).
        block_index: the global index of each block of ``tokens`` among ``total_blocks``
            (default: ``0..n_blocks-1``), which alone decides its group.
        total_blocks: blocks of the whole run (default: ``n_blocks``).
        batch_offset: global index of the first batch of ``tokens`` when they are one rank's
            share of the run (:mod:`~cgc_lens.studies.survival.ranks`), so that each batch
            goes to the shard it has in one process.
        total_batches: batches of the whole run (default: those of ``tokens``).
    """
    # Over 60 lines: the docstring documents every argument; the body is set-up and one loop
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise CgcLensError(f"Expected tokens [n_blocks, block_len] with at least one block, got "
                           f"shape {tuple(tokens.shape)}.")
    batches = list(tokens.split(batch_size))
    total = len(batches) if total_batches is None else total_batches
    n_shards = min(n_shards, total)
    shard_of = [(batch_offset + i) * n_shards // total for i in range(len(batches))]
    names = tuple(name for name, _ in conditions)
    stop = stop_layer(model, [t.hook for t in targets])
    sums = SweepSums(keys=tuple(t.key for t in targets), conditions=names,
                     n_tokens=[0] * n_shards)
    runs = _group_runs(sums, tokens, batch_size, n_groups=n_groups, block_index=block_index,
                       total_blocks=total_blocks, n_conditions=len(names),
                       threshold=fire_threshold)
    t0 = time.perf_counter()
    bar = progress_bar(total=len(batches) * (1 + len(conditions)), desc="survival: reference",
                       enabled=progress)
    sweep = _Sweep(model=model, batches=batches, shard_of=shard_of, stop=stop, bos=bos,
                   reader=_Reader(targets, bos is not None), sums=sums, bar=bar,
                   threshold=fire_threshold, runs=runs)
    with sweep.reader.attached(model), bar:
        sweep.chunks(conditions, cache_bytes)
    sums.seconds = time.perf_counter() - t0
    log.info("survival sweep: %d batches × (1 + %d conditions) in %.1f s, %d chunk(s), reference "
             "cache peak %.1f MB", len(batches), len(names), sums.seconds, sums.n_chunks,
             sums.cache_peak_bytes / 2**20)
    return sums


@dataclass(kw_only=True)
class _Sweep:
    """What one run of :func:`stream_conditions` works with, and its two stages per chunk."""

    model: HookedTransformer
    batches: list[Tensor]
    shard_of: list[int]
    """Shard of each batch."""
    stop: int | None
    bos: int | None
    reader: _Reader
    sums: SweepSums
    bar: tqdm
    threshold: float
    """Firing threshold of the reference accumulators."""
    runs: list[list[tuple[int, int, int]]]
    """Per batch, its row ranges per group (:func:`~cgc_lens.studies.survival.groups.row_runs`)."""
    scratch: dict[str, Tensor] = field(default_factory=dict)
    """Per key, an all-zero flat buffer for :meth:`SparseCodes.cross`."""

    def chunks(self, conditions: Sequence[tuple[str, Plan | Any | None]],
               cache_bytes: int) -> None:
        """Every chunk: the reference, then each condition over it. Compared checkpoints after
        the first (:func:`~cgc_lens.studies.survival.compare.deferred_swaps`) run after the
        loop when there are several chunks, each loaded once, over the reference codes kept on
        disk (:class:`~cgc_lens.studies.survival.spill.ReferenceSpill`); same sums."""
        later, n = deferred_swaps(conditions), len(conditions)
        with ReferenceSpill() as spill:
            i = 0
            while i < len(self.batches):
                cache, i = self.reference_chunk(i, cache_bytes, n_conditions=n)
                if self.sums.n_chunks == 1 and i == len(self.batches):
                    later = []  # one chunk: every checkpoint runs over it in memory
                self.conditions_over(cache, conditions,
                                     which=[c for c in range(n) if c not in later])
                if later:
                    spill.put(cache)
                del cache  # before the next chunk is read: at most one chunk is held
            for c in later:  # one at a time, over the chunks read back one at a time
                for cache in spill.chunks():
                    self.conditions_over(cache, conditions, which=[c])
                    del cache

    def reference_chunk(self, i: int, cache_bytes: int, *, n_conditions: int,
                        ) -> tuple[list[tuple[int, dict[str, SparseCodes]]], int]:
        """Read the reference from batch ``i`` on until the cache holds ``cache_bytes`` (at
        least one batch); add the reference sums. Returns the cached codes and the next batch."""
        cache: list[tuple[int, dict[str, SparseCodes]]] = []
        held = 0
        self.bar.set_description("survival: reference")
        while i < len(self.batches) and (not cache or held < cache_bytes):
            sparse = self.reader.read(self.model, self.batches[i], self.stop, self.bos)
            _add_reference(self.sums, self.shard_of[i], sparse, n_conditions=n_conditions,
                           threshold=self.threshold, runs=self.runs[i])
            cache.append((i, sparse))
            held += sum(c.nbytes for c in sparse.values())
            i += 1
            self.bar.update(1)
        self.sums.cache_peak_bytes = max(self.sums.cache_peak_bytes, held)
        self.sums.n_chunks += 1
        return cache, i

    def conditions_over(self, cache: list[tuple[int, dict[str, SparseCodes]]],
                        conditions: Sequence[tuple[str, Plan | Any | None]],
                        which: Sequence[int] | None = None) -> None:
        """Each condition (those at indices ``which``), weights edited once, over the cached
        batches: add its sums."""
        for c in range(len(conditions)) if which is None else which:
            name, plan = conditions[c]
            self.bar.set_description(f"survival: {name}")
            with edited(self.model, plan):
                for j, ref_codes in cache:
                    # The null's codes are the reference's: a forward of the unedited model
                    # would repeat them bit for bit (issue 18), so they are taken from the cache.
                    codes = ref_codes if plan is None else self.reader.read(
                        self.model, self.batches[j], self.stop, self.bos)
                    for key, y_codes in codes.items():
                        block = self.sums.cond_sums[key][c, self.shard_of[j]]
                        scratch = _scratch(self.scratch, key, y_codes)
                        added = torch.cat([y_codes.moments(), y_codes.cross(
                            ref_codes[key], scratch=scratch)[None]])
                        block += added
                        if self.sums.groups is not None:
                            self.sums.groups.add_condition(
                                c, key, self.runs[j], y_codes, x=ref_codes[key], sums=added,
                                scratch=scratch)
                    self.bar.update(1)


def _scratch(held: dict[str, Tensor], key: str, codes: SparseCodes) -> Tensor | None:
    """An all-zero flat buffer for ``codes.cross`` (grown when a batch is larger)."""
    if codes.dense is not None:
        return None
    buf = held.get(key)
    size = codes.n * codes.d
    if buf is None or buf.numel() < size or buf.dtype != codes.vals.dtype:  # type: ignore[union-attr]
        buf = held[key] = torch.zeros(size, dtype=codes.vals.dtype, device=codes.vals.device)  # type: ignore[union-attr]
    return buf


def _group_runs(sums: SweepSums, tokens: Tensor, batch_size: int, *, n_groups: int,
                block_index: Tensor | None, total_blocks: int | None, n_conditions: int,
                threshold: float) -> list[list[tuple[int, int, int]]]:
    """Set up ``sums.groups``; each batch's row ranges per group (empty lists without)."""
    n_blocks, block_len = tokens.shape
    if n_groups == 0:
        return [[] for _ in range(-(-n_blocks // batch_size))]
    index = torch.arange(n_blocks) if block_index is None else torch.as_tensor(block_index)
    if tuple(index.shape) != (n_blocks,):
        raise CgcLensError(f"block_index must give one index per block ({n_blocks}), got shape "
                           f"{tuple(index.shape)}.")
    total = n_blocks if total_blocks is None else total_blocks
    group = block_groups(index, total_blocks=total, n_groups=n_groups)
    sums.groups = GroupSums(n_groups=min(n_groups, total), n_conditions=n_conditions,
                            threshold=threshold)
    return [row_runs(part, block_len) for part in group.split(batch_size)]


def _add_reference(sums: SweepSums, shard: int, sparse: dict[str, SparseCodes], *,
                   n_conditions: int, threshold: float,
                   runs: list[tuple[int, int, int]]) -> None:
    for key, x in sparse.items():
        device = (x.dense if x.dense is not None else x.vals).device  # type: ignore[union-attr]
        if key not in sums.ref_moments:  # allocate on the device the codes live on
            n = len(sums.n_tokens)
            sums.ref_moments[key] = torch.zeros(n, 2, x.d, dtype=torch.float64, device=device)
            sums.cond_sums[key] = torch.zeros(n_conditions, n, 3, x.d, dtype=torch.float64,
                                              device=device)
            sums.reference[key] = [ReferenceAccumulator(x.d, fire_threshold=threshold)
                                   for _ in range(n)]
        moments, batch = x.moments(), reference_accumulator(x, threshold)
        sums.ref_moments[key][shard] += moments
        if sums.groups is not None:
            sums.groups.add_reference(key, runs, x, moments, batch)
        add_codes(sums.reference[key][shard], x, batch)
    sums.n_tokens[shard] += next(iter(sparse.values())).n
