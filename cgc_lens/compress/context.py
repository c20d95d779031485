"""Apply a plan in place and put every touched tensor back bit for bit.

``with compressed(model, RTN(6)) as record:`` snapshots exactly the tensors the plan will touch
(stacked per shape, optionally on the CPU), applies the steps, and on exit (normal return,
exception or ``KeyboardInterrupt``) copies the snapshot back (``restore="swap"`` instead edits
fresh copies and hands the original storage back). A failure while applying restores before it
propagates. Blocks nest: each restores what it found, so exits in ``with`` order give
back the state before every block; leaving an outer block first also closes the inner ones.
:func:`compress_permanently_` is the one form that does not restore.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from cgc_lens.compress.operators.base import EditStats, Operator
from cgc_lens.compress.plan import Plan, Step, as_plan
from cgc_lens.compress.snapshot import (
    Restore,
    Snapshot,
    group_by_shape,
    group_by_shape_and_axes,
    owns_storage,
)
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    import pandas as pd
    from transformer_lens import HookedTransformer

__all__ = ["CompressionRecord", "TensorRecord", "compress_permanently_", "compressed"]

logger = logging.getLogger(__name__)

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[_Block]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TensorRecord:
    """What one step did to one tensor (or head slice)."""

    step: int
    """Index of the step in the plan."""
    operator: str
    """Registry name of the operator."""
    param: str
    """Parameter path on the model."""
    layer: int
    """Block index."""
    name: str
    """TransformerLens weight name."""
    heads: tuple[int, ...] | None
    """Head slice edited; None for the whole tensor."""
    numel: int
    """Parameters touched (0 when the operator is the identity at this level)."""
    bits: int | None
    """Quantization bits (RTN)."""
    sparsity: float | None
    """Achieved fraction of zeros in the edited slice (pruning)."""
    rank: int | None
    """Rank kept (low rank)."""


class CompressionRecord:
    """Per-tensor account of a compression; also says whether the model was restored."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        """The plan that was applied."""
        self.restored = False
        """True once the block has put the original weights back."""
        self.n_parameters = 0
        """Parameters in the tensors that were snapshotted (touched tensors, whole)."""
        self._raw: list[tuple[int, Operator, WeightRef, int, EditStats]] = []
        self._tensors: list[TensorRecord] | None = None

    def _add(self, step: int, op: Operator, refs: Sequence[WeightRef], numels: Sequence[int],
             stats: Sequence[EditStats]) -> None:
        self._raw.extend(zip([step] * len(refs), [op] * len(refs), refs, numels, stats,
                             strict=True))
        self._tensors = None

    @property
    def tensors(self) -> list[TensorRecord]:
        """One :class:`TensorRecord` per (step, tensor), in application order."""
        if self._tensors is None:  # built on demand: the hot path only appends tuples
            self._tensors = [
                TensorRecord(step=i, operator=op.name, param=ref.param, layer=ref.layer,
                             name=ref.name, heads=ref.heads, numel=n, bits=s.bits,
                             sparsity=s.sparsity, rank=s.rank)
                for i, op, ref, n, s in self._raw
            ]
        return self._tensors

    @property
    def parameters_touched(self) -> int:
        """Sum of :attr:`TensorRecord.numel` over every step."""
        return sum(n for _, _, _, n, _ in self._raw)

    def to_frame(self) -> pd.DataFrame:
        """The per-tensor records as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.tensors])

    def __repr__(self) -> str:
        return (f"CompressionRecord({len(self.plan)} steps, {len(self._raw)} tensor edits, "
                f"{self.parameters_touched} parameters touched, restored={self.restored})")


_Resolved = list[tuple[Operator, list[WeightRef], list[nn.Parameter]]]


def _resolve(model: HookedTransformer, plan: Plan) -> _Resolved:
    """Every step's operator, weights and parameters; raises before anything is edited."""
    resolved: _Resolved = []
    for step in plan:
        pairs = step.resolve_params(model)
        resolved.append((step.operator, [r for r, _ in pairs], [p for _, p in pairs]))
    return resolved


def _touched(resolved: _Resolved) -> list[nn.Parameter]:
    """The parameters that non-identity steps edit, each once, in first-use order."""
    seen: dict[int, nn.Parameter] = {}
    for op, _, params in resolved:
        if not op.is_identity:
            for p in params:
                seen.setdefault(id(p), p)
    return list(seen.values())


def _fusable(resolved: _Resolved) -> bool:
    """Whether the plan is one step over whole, distinct tensors that its operator can edit
    stacked (:meth:`Operator.can_apply_stacked`).

    Such a plan is applied from the snapshot's own stacks (:meth:`Snapshot.add`): on a small
    model per-op dispatch dominates, and this skips a second stack and a dozen ops per shape.
    """
    if len(resolved) != 1:
        return False
    op, refs, params = resolved[0]
    return (
        not op.is_identity
        and all(r.heads is None for r in refs)
        and op.can_apply_stacked(params)
        and len({id(p) for p in params}) == len(params)
    )


def _apply_fused(
    snapshot: Snapshot, resolved: _Resolved, params: list[nn.Parameter], numels: list[int],
    record: CompressionRecord,
) -> None:
    """Snapshot and edit one stack at a time, while it is in cache (a :func:`_fusable` plan)."""
    op, refs, _ = resolved[0]
    stats: dict[int, EditStats] = {}
    for group, group_refs in group_by_shape_and_axes(params, refs):
        stats.update(zip(map(id, group), snapshot.add(group, op=op, refs=group_refs),
                         strict=True))
    record._add(0, op, refs, numels, [stats[id(p)] for p in params])


def _apply(resolved: _Resolved, record: CompressionRecord) -> None:
    with torch.no_grad():
        for i, (op, refs, params) in enumerate(resolved):
            if op.is_identity:
                record._add(i, op, refs, [0] * len(refs), [_identity_stats(op)] * len(refs))
                continue
            tensors = [p.detach() for p in params]
            works = [t if ref.heads is None else t[list(ref.heads)]
                     for t, ref in zip(tensors, refs, strict=True)]
            stats = op.apply_many_(works, refs)
            for t, w, ref in zip(tensors, works, refs, strict=True):
                if ref.heads is not None:  # head slices were edited as copies
                    t[list(ref.heads)] = w
            record._add(i, op, refs, [w.numel() for w in works], stats)


def _identity_stats(op: Operator) -> EditStats:
    level = getattr(op, op.level_field) if op.level_field else None
    return EditStats(bits=level if op.level_field == "bits" else None,
                     sparsity=level if op.level_field == "sparsity" else None)


class _Block:
    """The context manager behind :func:`compressed`."""

    def __init__(
        self, model: HookedTransformer, plan: Plan, offload_to_cpu: bool, restore: Restore
    ) -> None:
        if restore not in ("copy", "swap"):
            raise unknown_name("restore mode", restore, ("copy", "swap"))
        if offload_to_cpu and restore == "swap":
            raise CgcLensError("offload_to_cpu keeps a CPU copy, so it needs restore='copy'.")
        self.model, self.plan = model, plan
        self.offload_to_cpu, self.restore = offload_to_cpu, restore
        self.record: CompressionRecord | None = None
        self._snapshot: Snapshot | None = None
        self._state = "new"

    def __enter__(self) -> CompressionRecord:
        if self._state != "new":
            raise CgcLensError("This compressed(...) block was already entered; make a new one.")
        resolved = _resolve(self.model, self.plan)  # raises before anything is edited
        params = _touched(resolved)
        self.record = record = CompressionRecord(self.plan)
        numels = [p.numel() for p in params]
        record.n_parameters = sum(numels)
        restore = self.restore
        if restore == "swap" and not owns_storage(params):
            logger.debug("restore='swap' falls back to 'copy': targets share storage.")
            restore = "copy"
        fused = not self.offload_to_cpu and _fusable(resolved)
        self._snapshot = snapshot = Snapshot(offload_to_cpu=self.offload_to_cpu,
                                             restore=restore)
        try:
            _ACTIVE.setdefault(self.model, []).append(self)
            self._state = "open"
            if fused:
                _apply_fused(snapshot, resolved, params, numels, record)
            else:
                for group in group_by_shape(params):
                    snapshot.add(group)
                _apply(resolved, record)
        except BaseException:
            self._close()
            raise
        logger.debug("compressed %s: %r", getattr(self.model.cfg, "model_name", "model"),
                     record)
        return record

    def _close(self) -> None:
        stack = _ACTIVE.get(self.model, [])
        if self in stack:
            while stack[-1] is not self:  # leaving an outer block first closes the inner ones
                inner = stack[-1]
                logger.warning("Closing a nested compressed(...) block before its outer one.")
                inner._close()
            stack.pop()
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot = None
        if self.record is not None:
            self.record.restored = True
        self._state = "closed"

    def __exit__(self, *exc: object) -> None:
        if self._state == "open":
            self._close()


def compressed(
    model: HookedTransformer, plan_or_operator: Plan | Step | Operator,
    targets: Targets | None = None, *, offload_to_cpu: bool = False, restore: Restore = "copy",
) -> _Block:
    """Compress ``model`` in place for the duration of a ``with`` block.

    Args:
        model: the model to edit.
        plan_or_operator: a :class:`Plan`, a :class:`Step` or one operator.
        targets: with a single operator, which weights (default: every block weight, or the
            operator's own default such as ``W_O`` for :class:`HeadPrune`).
        offload_to_cpu: keep the copies of the touched tensors in CPU memory.
        restore: ``"copy"`` (default): edit each tensor's own storage and copy the originals
            back; views, ``data_ptr`` and captured graphs stay valid. ``"swap"``: edit fresh
            copies and hand the original storage back on exit (about a third less work, and
            bit-exact by construction); inside the block, tensors taken from a parameter
            before it (views, ``.data``) still show the original weights. Targets that do not
            own their whole storage, or share it, fall back to ``"copy"``.

    Returns:
        A context manager whose value is the :class:`CompressionRecord`.

    Example:
        >>> from cgc_lens.compress import RTN
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2,
        ...                               d_mlp=16, d_vocab=10, act_fn="relu")
        >>> model = HookedTransformer(cfg)
        >>> before = model.blocks[0].attn.W_Q.clone()
        >>> with compressed(model, RTN(4)) as record:
        ...     changed = not torch.equal(model.blocks[0].attn.W_Q, before)
        >>> changed, torch.equal(model.blocks[0].attn.W_Q, before), record.restored
        (True, True, True)
    """
    return _Block(model, as_plan(plan_or_operator, targets), offload_to_cpu, restore)


def compress_permanently_(
    model: HookedTransformer, plan_or_operator: Plan | Step | Operator,
    targets: Targets | None = None, *, atomic: bool = True, offload_to_cpu: bool = False,
) -> CompressionRecord:
    """Apply a plan and keep it: the weights are not restored.

    Refused inside a :func:`compressed` block on the same model (that block would undo it).

    Args:
        model: the model to edit.
        plan_or_operator: a :class:`Plan`, a :class:`Step` or one operator.
        targets: with a single operator, which weights.
        atomic: snapshot first so that a failure part-way leaves the model as it was.
        offload_to_cpu: keep that snapshot in CPU memory.
    """
    if _ACTIVE.get(model):
        raise CgcLensError(
            "compress_permanently_ inside a compressed(...) block on the same model would be "
            "undone when the block exits; leave the block first."
        )
    plan = as_plan(plan_or_operator, targets)
    resolved = _resolve(model, plan)
    record = CompressionRecord(plan)
    snapshot = None
    if atomic:
        snapshot = Snapshot(offload_to_cpu=offload_to_cpu)
        for group in group_by_shape(_touched(resolved)):
            snapshot.add(group)
    try:
        _apply(resolved, record)
    except BaseException:
        if snapshot is not None:
            snapshot.restore()
        raise
    return record
