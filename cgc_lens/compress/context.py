"""Apply a plan in place and put every touched tensor back bit for bit.

``with compressed(model, RTN(6)) as record:`` snapshots exactly the tensors the plan will touch
(stacked per shape, optionally on the CPU), applies the steps, and on exit (normal return,
exception or ``KeyboardInterrupt``) copies the snapshot back (``restore="swap"`` instead edits
fresh copies and hands the original storage back). A failure while applying restores before it
propagates. Blocks nest: each restores what it found, so exits in ``with`` order give
back the state before every block; leaving an outer block first also closes the inner ones.
:func:`compress_permanently_` is the one form that does not restore.

Restoring is interrupt-safe: it runs with SIGINT and SIGTERM held back
(:class:`~cgc_lens.compress.interrupts.deferred_signals`, main thread only) and delivers them
once every tensor is back; a block stays registered on its model until its tensors are back,
so an outer block, a retried exit or :func:`restore_all_` can finish what an interrupted one
left. A restore that cannot finish raises a :class:`RuntimeError` that names
:func:`restore_all_`. Grad mode is left as it was found.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

from cgc_lens.compress.interrupts import deferred_signals
from cgc_lens.compress.operators.base import EditStats, Operator
from cgc_lens.compress.plan import Plan, Step, as_plan
from cgc_lens.compress.record import CompressionRecord, TensorRecord
from cgc_lens.compress.snapshot import (
    Restore,
    Snapshot,
    check_finite,
    group_by_shape,
    group_by_shape_and_axes,
    owns_storage,
    restore_with_retries,
)
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["CompressionRecord", "TensorRecord", "compress_permanently_", "compressed",
           "restore_all_"]

logger = logging.getLogger(__name__)

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[_Block]] = weakref.WeakKeyDictionary()
_CLOSE_TRIES = 100  # exits retried after an interrupt that came before signals were held


_Resolved = list[tuple[Operator, list[WeightRef], list[nn.Parameter]]]


def _resolve(model: HookedTransformer, plan: Plan) -> _Resolved:
    """Every step's operator, weights and parameters; raises before anything is edited."""
    resolved: _Resolved = []
    for step in plan:
        pairs = step.resolve_params(model)
        resolved.append((step.operator, [r for r, _ in pairs], [p for _, p in pairs]))
    return resolved


def _names(resolved: _Resolved) -> dict[int, str]:
    """``id(parameter) -> parameter path``, for messages."""
    return {id(p): ref.param for _, refs, params in resolved
            for ref, p in zip(refs, params, strict=True)}


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
        names = [r.param for r in group_refs]
        stats.update(zip(map(id, group), snapshot.add(group, names, op=op, refs=group_refs),
                         strict=True))
    record._add(0, op, refs, numels, [stats[id(p)] for p in params])


def _snapshot_all(snapshot: Snapshot, params: list[nn.Parameter], names: dict[int, str]) -> None:
    for group in group_by_shape(params):
        snapshot.add(group, [names[id(p)] for p in group])


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
        self._restoring = False  # True once a close holds the signals: its errors are its own
        self._grad = True

    def __enter__(self) -> CompressionRecord:
        if self._state != "new":
            raise CgcLensError("This compressed(...) block was already entered; make a new one.")
        self._grad = torch.is_grad_enabled()
        try:  # the return included: an interrupt anywhere closes the block
            record = self._open()
            logger.debug("compressed %s: %r", getattr(self.model.cfg, "model_name", "model"),
                         record)
            return record
        except BaseException as err:
            try:
                self._retry_close(err if isinstance(err, KeyboardInterrupt) else None)
            finally:
                torch.set_grad_enabled(self._grad)  # an operator's no_grad may have been cut
            raise

    def _open(self) -> CompressionRecord:
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
        snapshot = Snapshot(offload_to_cpu=self.offload_to_cpu, restore=restore)
        self._snapshot = snapshot  # registered before anything is edited
        _ACTIVE.setdefault(self.model, []).append(self)
        self._state = "open"
        if fused:
            _apply_fused(snapshot, resolved, params, numels, record)
        else:
            _snapshot_all(snapshot, params, _names(resolved))
            _apply(resolved, record)
        return record

    def _close(self) -> None:
        """Put the weights back (inner blocks first) with signals held, then unregister."""
        with deferred_signals():
            self._restoring = True
            stack = _ACTIVE.get(self.model, [])
            while self in stack and stack[-1] is not self:  # an outer block closes inner ones
                logger.warning("Closing a nested compressed(...) block before its outer one.")
                stack[-1]._close()
            errors: list[BaseException] = []
            if self._snapshot is not None:
                try:
                    errors = restore_with_retries(self._snapshot)
                except RuntimeError as err:
                    logger.error("%s", err)
                    raise RuntimeError(
                        f"{err} The weights of the model are still compressed and the block "
                        "stays registered: call cgc_lens.compress.restore_all_(model) to try "
                        "again."
                    ) from err.__cause__
                self._snapshot = None
            if self in stack:
                stack.remove(self)
            if self.record is not None:
                self.record.restored = True
            self._state = "closed"
            for err in errors:  # the weights are back: say what happened on the way
                logger.warning("Restoring needed another try after %s: %s",
                               type(err).__name__, err)
                if not isinstance(err, Exception):  # an interrupt: deliver it now
                    raise err

    def __exit__(self, *exc: object) -> None:
        try:  # first statement: an interrupt inside is caught and the close is retried
            if self._state == "open":
                self._close()
            return
        except BaseException as err:
            if self._state == "closed" or self._restoring:  # delivered once the weights were
                raise  # back, or the restore's own error (the block stays registered)
            first = err  # a signal handler's exception before the signals were held
        self._retry_close(first)

    def _retry_close(self, interrupt: BaseException | None) -> None:
        """:meth:`_close` until the block is closed, then raise ``interrupt`` (what a signal
        handler raised before the signals were held: KeyboardInterrupt, or a user handler's
        own exception) if there was one."""
        for _ in range(_CLOSE_TRIES):
            try:
                if self._state != "closed":
                    self._close()
                break
            except BaseException as err:
                if self._state == "closed" or self._restoring:
                    raise
                interrupt = interrupt or err
        if interrupt is not None:
            raise interrupt


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
            "undone when the block exits; leave the block first (a block that was interrupted "
            "before it put the weights back is finished by cgc_lens.compress.restore_all_(model))."
        )
    plan = as_plan(plan_or_operator, targets)
    resolved = _resolve(model, plan)
    record = CompressionRecord(plan)
    names, touched = _names(resolved), _touched(resolved)
    snapshot = None
    if atomic:
        snapshot = Snapshot(offload_to_cpu=offload_to_cpu)
        _snapshot_all(snapshot, touched, names)
    else:
        for group in group_by_shape(touched):
            check_finite(torch.stack([p.detach() for p in group]), [names[id(p)] for p in group])
    grad = torch.is_grad_enabled()
    try:
        _apply(resolved, record)
    except BaseException:
        torch.set_grad_enabled(grad)
        if snapshot is not None:
            with deferred_signals():
                restore_with_retries(snapshot)
        raise
    return record


def restore_all_(model: HookedTransformer) -> int:
    """Put back the weights of every :func:`compressed` block still open on ``model``.

    For a block whose exit was cut short (an interrupt before it could hold signals, or a
    restore that failed and raised): the outermost block is closed, which closes the inner
    ones first. Returns how many blocks were closed (0 when none was open).

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2,
        ...                               d_vocab=10, attn_only=True)
        >>> restore_all_(HookedTransformer(cfg))
        0
    """
    stack = _ACTIVE.get(model) or []
    n = len(stack)
    if stack:
        stack[0]._retry_close(None)
    return n
