"""The streaming pass of the survival audit: reference once, every condition on identical tokens.

Order of work (App. I, and the issue's cost bound of 1.2 × (1 + C) bare forwards):

1. **Reference, once per batch.** One forward to the read-out layer (``stop_at_layer``), the
   frozen SAE encodes, the reference sums are updated, and the batch's SAE codes are cached
   *sparse* (flat indices + values of the non-zeros; dense when more than a third are non-zero).
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
into :class:`~cgc_lens.analysis.PearsonAccumulator` objects through ``load_state_dict``, so r
comes from the one implementation of Eq. I.2 and its zero-variance rules. x·x, y·y and x·y are
formed by the same operations in the same order, so the null condition gives bit-identical
sums and r = 1 exactly (on CPU; CUDA's ``index_add_`` order may differ in the last bit).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from cgc_lens.analysis.streaming_stats import PearsonAccumulator, ReferenceAccumulator
from cgc_lens.compress import Plan, compressed
from cgc_lens.errors import CgcLensError
from cgc_lens.saes.attach import SAETarget, attached
from cgc_lens.streaming import stop_layer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["SparseCodes", "SweepSums", "stream_conditions"]

log = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 1 << 24  # float64 temporaries of the dense path: 128 MiB, whatever d_sae
_DENSE_FRACTION = 1 / 3  # above this many non-zeros, dense storage (4 B/entry) beats 12 B/nnz


@dataclass
class SparseCodes:
    """One batch of SAE codes ``[n, d_sae]``: non-zeros (row-major flat index, value), or dense.

    Example:
        >>> codes = SparseCodes.of(torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
        >>> codes.flat.tolist(), codes.moments().tolist()
        ([1, 3], [[1.0, 2.0, 0.0], [1.0, 4.0, 0.0]])
    """

    n: int
    """Token positions."""
    d: int
    """Features (d_sae)."""
    flat: Tensor | None = None
    """Sorted flat indices ``row * d + col`` of the non-zeros (int64), when sparse."""
    vals: Tensor | None = None
    """Their values, in the SAE's dtype (unchanged, so the null stays exact)."""
    dense: Tensor | None = None
    """The codes themselves, when dense."""

    @classmethod
    def of(cls, codes: Tensor) -> SparseCodes:
        """Store ``codes`` ``[n, d]`` in whichever form is smaller."""
        n, d = codes.shape
        flat = codes.reshape(-1)
        nz = flat.nonzero().squeeze(1)
        if nz.numel() > _DENSE_FRACTION * flat.numel():
            return cls(n, d, dense=codes)
        return cls(n, d, flat=nz, vals=flat[nz])

    @property
    def nbytes(self) -> int:
        """Memory held."""
        if self.dense is not None:
            return self.dense.numel() * self.dense.element_size()
        return self.flat.numel() * 8 + self.vals.numel() * self.vals.element_size()  # type: ignore[union-attr]

    def to_dense(self) -> Tensor:
        """The ``[n, d]`` codes."""
        if self.dense is not None:
            return self.dense
        out = torch.zeros(self.n * self.d, dtype=self.vals.dtype, device=self.vals.device)  # type: ignore[union-attr]
        out[self.flat] = self.vals  # type: ignore[index]
        return out.view(self.n, self.d)

    def moments(self) -> Tensor:
        """``[2, d]`` float64: Σ over positions of the codes and of their squares."""
        if self.dense is None:
            v = self.vals.double()  # type: ignore[union-attr]
            cols = self.flat % self.d  # type: ignore[operator]
            out = torch.zeros(2, self.d, dtype=torch.float64, device=v.device)
            out[0].index_add_(0, cols, v)
            out[1].index_add_(0, cols, v * v)
            return out
        out = torch.zeros(2, self.d, dtype=torch.float64, device=self.dense.device)
        for part in self.dense.split(max(1, _CHUNK_ELEMENTS // self.d)):
            p = part.double()
            out[0] += p.sum(0)
            out[1] += (p * p).sum(0)
        return out

    def reference_state(self, threshold: float) -> dict[str, Tensor] | None:
        """This batch's :class:`ReferenceAccumulator` state, from the non-zeros alone (``None``
        when dense, or when zeros fire: ``threshold < 0``); the same sums as its ``update``."""
        if self.dense is not None or threshold < 0:
            return None
        v, cols = self.vals.double(), self.flat % self.d  # type: ignore[union-attr, operator]
        fires = v > threshold
        v_fire = torch.where(fires, v, 0.0)
        zeros = torch.zeros(self.d, dtype=torch.float64, device=v.device)
        peak = torch.full((self.d,), -torch.inf, dtype=torch.float64, device=v.device)
        peak.scatter_reduce_(0, cols, v, "amax")
        has_zero = torch.bincount(cols, minlength=self.d) < self.n  # a zero is seen there too
        peak = torch.where(has_zero, peak.clamp(min=0.0), peak)
        return {"fire_count": torch.bincount(cols[fires], minlength=self.d),
                "sum_act": zeros.clone().index_add_(0, cols, v),
                "sum_act_firing": zeros.clone().index_add_(0, cols, v_fire),
                "sum_sq_firing": zeros.index_add_(0, cols, v_fire * v_fire), "max_act": peak,
                "n_tokens": torch.tensor(self.n, dtype=torch.int64)}

    def cross(self, ref: SparseCodes) -> Tensor:
        """``[d]`` float64: Σ over positions of ``ref · self`` (products formed in float64)."""
        if self.dense is None:
            flat, v = self.flat, self.vals.double()  # type: ignore[union-attr]
            if ref.dense is not None:
                x = ref.dense.reshape(-1)[flat]
            elif ref.flat.numel() == 0:  # type: ignore[union-attr]
                x = torch.zeros_like(self.vals)  # type: ignore[arg-type]
            else:  # look the condition's non-zeros up among the reference's
                pos = torch.searchsorted(ref.flat, flat).clamp_(max=ref.flat.numel() - 1)  # type: ignore[arg-type, union-attr]
                x = torch.where(ref.flat[pos] == flat, ref.vals[pos], 0)  # type: ignore[index]
            out = torch.zeros(self.d, dtype=torch.float64, device=v.device)
            return out.index_add_(0, flat % self.d, x.double() * v)  # type: ignore[operator]
        out = torch.zeros(self.d, dtype=torch.float64, device=self.dense.device)
        rows = max(1, _CHUNK_ELEMENTS // self.d)
        for xp, yp in zip(ref.to_dense().split(rows), self.dense.split(rows), strict=True):
            out += (xp.double() * yp.double()).sum(0)
        return out


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

    def reference_shards(self, key: str) -> list[ReferenceAccumulator]:
        """The reference accumulators of ``key``, one per shard."""
        return self.reference[key]

    def pearson_shards(self, key: str, condition: str) -> list[PearsonAccumulator]:
        """The condition's :class:`PearsonAccumulator` per shard (sharing these sums' memory)."""
        c = self.conditions.index(condition)
        ref, cond = self.ref_moments[key], self.cond_sums[key][c]
        out = []
        for s, n in enumerate(self.n_tokens):
            state = {"sum_x": ref[s, 0], "sum_xx": ref[s, 1], "sum_y": cond[s, 0],
                     "sum_yy": cond[s, 1], "sum_xy": cond[s, 2],
                     "n_tokens": torch.tensor(n, dtype=torch.int64)}
            out.append(PearsonAccumulator(ref.shape[-1]).load_state_dict(state))
        return out


def _read(model: HookedTransformer, reading, batch: Tensor, stop: int | None, bos: int | None,
          ) -> dict[str, Tensor]:
    """One forward to the read-out layer; each SAE's codes as ``[positions, d_sae]``."""
    if bos is not None:
        batch = torch.cat([torch.full_like(batch[:, :1], bos), batch], dim=1)
    reading.features.clear()
    model(batch.to(model.cfg.device), stop_at_layer=stop, return_type=None)
    out = {}
    for key, f in reading.features.items():
        if f.ndim != 3:
            raise CgcLensError(f"Expected SAE codes [batch, pos, d_sae] at {key}, got "
                               f"{tuple(f.shape)} (batched per-head SAEs are not supported here).")
        out[key] = (f[:, 1:] if bos is not None else f).reshape(-1, f.shape[-1])
    return out


@torch.no_grad()
def stream_conditions(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks block_len"],
    targets: Sequence[SAETarget],
    conditions: Sequence[tuple[str, Plan | None]],
    *,
    batch_size: int = 8,
    n_shards: int = 16,
    cache_bytes: int = 32 << 20,
    bos: int | None = None,
    fire_threshold: float = 0.0,
    progress: bool = True,
) -> SweepSums:
    """Stream the reference and every condition over ``tokens``; return per-shard sums.

    Args:
        model: the reference model (edited in place per condition, restored exactly).
        tokens: ``[n_blocks, block_len]`` token ids.
        targets: validated SAEs (:func:`cgc_lens.saes.validate_sae`) at their read-out hooks.
        conditions: ``(name, plan)`` pairs; ``plan=None`` is the null (the model as it is).
        batch_size: blocks per forward pass.
        n_shards: consecutive groups of batches with their own sums (fewer if fewer batches).
        cache_bytes: reference codes held before the conditions run over them (see module doc).
        bos: a token id to prepend to every block (its position is not counted), or None.
        fire_threshold: firing threshold of the reference accumulators.
        progress: show a progress bar.
    """
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise CgcLensError(f"Expected tokens [n_blocks, block_len] with at least one block, got "
                           f"shape {tuple(tokens.shape)}.")
    batches = list(tokens.split(batch_size))
    n_shards = min(n_shards, len(batches))
    shard_of = [i * n_shards // len(batches) for i in range(len(batches))]
    names = tuple(name for name, _ in conditions)
    stop = stop_layer(model, [t.hook for t in targets])
    sums = SweepSums(keys=tuple(t.key for t in targets), conditions=names,
                     n_tokens=[0] * n_shards)
    t0 = time.perf_counter()
    bar = tqdm(total=len(batches) * (1 + len(conditions)), desc="survival sweep", leave=False,
               disable=not progress)
    with attached(model, list(targets)) as reading, bar:
        i = 0
        while i < len(batches):
            cache: list[tuple[int, dict[str, SparseCodes]]] = []
            held = 0
            while i < len(batches) and (not cache or held < cache_bytes):
                codes = _read(model, reading, batches[i], stop, bos)
                sparse = {key: SparseCodes.of(c) for key, c in codes.items()}
                _add_reference(sums, shard_of[i], codes, sparse=sparse, n_conditions=len(names),
                               threshold=fire_threshold)
                cache.append((i, sparse))
                held += sum(c.nbytes for c in sparse.values())
                i += 1
                bar.update(1)
            sums.cache_peak_bytes = max(sums.cache_peak_bytes, held)
            sums.n_chunks += 1
            for c, (_, plan) in enumerate(conditions):
                edit = contextlib.nullcontext() if plan is None else compressed(model, plan)
                with edit:
                    for j, ref_codes in cache:
                        codes = _read(model, reading, batches[j], stop, bos)
                        for key, y in codes.items():
                            y_codes = SparseCodes.of(y)
                            block = sums.cond_sums[key][c, shard_of[j]]
                            block[:2] += y_codes.moments()
                            block[2] += y_codes.cross(ref_codes[key])
                        bar.update(1)
            del cache
    sums.seconds = time.perf_counter() - t0
    log.info("survival sweep: %d batches × (1 + %d conditions) in %.1f s, %d chunk(s), reference "
             "cache peak %.1f MB", len(batches), len(names), sums.seconds, sums.n_chunks,
             sums.cache_peak_bytes / 2**20)
    return sums


def _add_reference(sums: SweepSums, shard: int, codes: dict[str, Tensor], *,
                   sparse: dict[str, SparseCodes], n_conditions: int, threshold: float) -> None:
    for key, x in codes.items():
        if key not in sums.ref_moments:  # allocate on the device the codes live on
            n, d = len(sums.n_tokens), x.shape[-1]
            sums.ref_moments[key] = torch.zeros(n, 2, d, dtype=torch.float64, device=x.device)
            sums.cond_sums[key] = torch.zeros(n_conditions, n, 3, d, dtype=torch.float64,
                                              device=x.device)
            sums.reference[key] = [ReferenceAccumulator(d, fire_threshold=threshold)
                                   for _ in range(n)]
        sums.ref_moments[key][shard] += sparse[key].moments()
        acc = sums.reference[key][shard]
        state = sparse[key].reference_state(threshold)
        if state is None:
            acc.update(x)
        else:  # merge() adds the sums and takes the max, exactly as update() would
            acc.merge(ReferenceAccumulator(x.shape[-1], fire_threshold=threshold)
                      .load_state_dict(state))
    sums.n_tokens[shard] += next(iter(codes.values())).shape[0]
