"""Stacked copies of the parameters a plan touches, and how they are put back bit for bit.

:class:`Snapshot` backs :func:`~cgc_lens.compress.compressed`: it stacks same-shaped parameters
(optionally on the CPU), can let the operator edit each stack while it is still in cache
(:meth:`~cgc_lens.compress.Operator.apply_stacked_`), and restores by copying back (``"copy"``)
or by handing the original storage back (``"swap"``).

The three memory primitives (:func:`stack_copies`, :func:`copy_all_`, :func:`set_data_`) are
module functions so that tests can make each fail at any call. :meth:`Snapshot.restore` is
idempotent: after a failure part-way it can simply be run again. :func:`check_finite` refuses a
non-finite weight before anything is edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cgc_lens.compress.operators.base import EditStats, Operator, check_finite
from cgc_lens.compress.targets import WeightRef

__all__ = [
    "RESTORE_TRIES",
    "Restore",
    "Snapshot",
    "check_finite",
    "copy_all_",
    "group_by_shape",
    "group_by_shape_and_axes",
    "owns_storage",
    "restore_with_retries",
    "set_data_",
    "stack_copies",
]

Restore = Literal["copy", "swap"]


def copy_all_(dst: list[Tensor], src: list[Tensor]) -> None:
    """Copy each of ``src`` into the tensor of ``dst`` at the same position."""
    if not dst:
        return
    if hasattr(torch, "_foreach_copy_"):  # one dispatch for many small tensors (torch >= 2.1)
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src, strict=True):
            d.copy_(s)


def stack_copies(tensors: Sequence[Tensor], *, offload_to_cpu: bool) -> Tensor:
    """Copies of same-shaped ``tensors``, stacked on axis 0 (in pinned CPU memory when
    ``offload_to_cpu`` and the tensors are on a GPU)."""
    if not offload_to_cpu:
        return torch.stack(list(tensors))
    t0 = tensors[0]
    buf = torch.empty((len(tensors), *t0.shape), dtype=t0.dtype, device="cpu",
                      pin_memory=t0.device.type == "cuda")
    copy_all_(list(buf.unbind(0)), list(tensors))
    return buf


def set_data_(param: nn.Parameter, data: Tensor) -> None:
    """Make ``data`` the storage of ``param`` (no copy; autograd is not involved)."""
    param.data = data


class Snapshot:
    """What :func:`~cgc_lens.compress.compressed` needs to put the touched parameters back,
    stacked per shape.

    ``"copy"`` keeps copies and copies them back (the storage never changes). ``"swap"`` gives
    each parameter a fresh copy to be edited and keeps the original storage aside, so that
    restoring is handing it back: no copy on exit. Groups are added one at a time, each
    registered before anything in it is edited, so :meth:`restore` is right after a failure
    (or ``KeyboardInterrupt``) at any point.
    """

    def __init__(self, *, offload_to_cpu: bool, restore: Restore = "copy") -> None:
        self._offload = offload_to_cpu
        self._swap = restore == "swap"
        self._pairs: list[tuple[Tensor, Tensor]] = []  # (parameter tensor, its copy)
        self._swapped: list[tuple[nn.Parameter, Tensor]] = []

    def add(self, params: Sequence[nn.Parameter], names: Sequence[str], *,
            op: Operator | None = None, refs: Sequence[WeightRef] = ()) -> list[EditStats]:
        """Snapshot ``params`` (same shape, dtype and device; ``names`` name them in errors);
        with ``op``, edit them too by :meth:`Operator.apply_stacked_` (``refs`` name them, with
        one ``out_axes``) while the stack is still in cache. Returns the edit's stats, one per
        parameter ([] without op). A non-finite weight is refused before anything is edited."""
        tensors = [p.detach() for p in params]
        buf = stack_copies(tensors, offload_to_cpu=self._offload)
        if op is None or not op.checks_finite_stacked:  # else apply_stacked_ checks, cheaper
            check_finite(buf, names)
        with torch.no_grad():
            if self._swap:
                for p, fresh in zip(params, buf.unbind(0), strict=True):
                    self._swapped.append((p, p.data))  # noted first: restore undoes the swap
                    set_data_(p, fresh)
                if op is not None:  # the stack is the parameters' storage now
                    return op.apply_stacked_(buf, refs)
            else:
                # one C-level call: an interrupt cannot leave a tensor without its copy
                self._pairs.extend(zip(tensors, buf.unbind(0), strict=True))
                if op is not None:  # read from the copies, edit the parameters
                    return op.apply_stacked_(buf, refs, targets=tensors)
        return []

    def restore(self) -> None:
        """Put every snapshotted tensor back. Idempotent, so a restore that failed part-way
        can be run again; it needs no grad mode (the copies go into detached tensors)."""
        if self._pairs:
            dst, src = zip(*self._pairs, strict=True)
            copy_all_(list(dst), list(src))
        for p, original in reversed(self._swapped):
            set_data_(p, original)


RESTORE_TRIES = 3
"""How often :func:`restore_with_retries` runs a failing restore before it gives up."""


def restore_with_retries(snapshot: Snapshot) -> list[BaseException]:
    """Run :meth:`Snapshot.restore` until it completes; returns the errors it got on the way.

    Raises :class:`RuntimeError` (from the last error) when every one of :data:`RESTORE_TRIES`
    runs failed: the snapshot is then still whole, and restoring can be tried again later.
    """
    errors: list[BaseException] = []
    for _ in range(RESTORE_TRIES):
        try:
            snapshot.restore()
        except BaseException as err:  # any failure: try again, then say so
            errors.append(err)
        else:
            return errors
    raise RuntimeError(
        f"Could not put the compressed weights back ({RESTORE_TRIES} tries; last error: "
        f"{type(errors[-1]).__name__}: {errors[-1]})."
    ) from errors[-1]


def group_by_shape(params: Sequence[nn.Parameter]) -> list[list[nn.Parameter]]:
    """``params`` grouped by shape, dtype and device."""
    groups: dict[tuple, list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.shape, p.dtype, p.device), []).append(p)
    return list(groups.values())


def group_by_shape_and_axes(
    params: Sequence[nn.Parameter], refs: Sequence[WeightRef]
) -> list[tuple[list[nn.Parameter], list[WeightRef]]]:
    """``params`` with their ``refs``, grouped by shape, dtype, device and output axes."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.shape, p.dtype, p.device, refs[i].out_axes), []).append(i)
    return [([params[i] for i in g], [refs[i] for i in g]) for g in groups.values()]


def owns_storage(params: Sequence[nn.Parameter]) -> bool:
    """Whether each parameter is the whole of its own storage, and no two share one.

    ``restore="swap"`` hands a parameter new storage; a parameter that is a view of a larger
    tensor (fused QKV, a weight inside an outer swap block's stack) or that shares storage
    with another target would stop aliasing it, so such blocks fall back to ``"copy"``.
    """
    seen = set()
    for p in params:
        storage = p.untyped_storage()
        if p.storage_offset() or storage.nbytes() != p.numel() * p.element_size():
            return False
        seen.add(storage.data_ptr())
    return len(seen) == len(params)
