"""The operator protocol, what an edit reports, and the registry of operators by name.

Every operator is a frozen dataclass whose one level (bits, sparsity, ratio) may be given
positionally, as the papers write them (``RTN(6)``); every other field is keyword-only. All share
one contract: :meth:`Operator.apply_` edits one weight in place under ``torch.no_grad()`` and
returns an :class:`EditStats`; the restore-exactly context lives in
:mod:`cgc_lens.compress.context`.
Each operator lives in its own module and registers itself with :func:`register_operator`.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_args

import torch
from torch import Tensor

from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

__all__ = [
    "PHASES",
    "EditStats",
    "Operator",
    "Phase",
    "check_finite",
    "operator_class",
    "operator_from_dict",
    "register_operator",
    "registered_operators",
]

Phase = Literal["rank", "prune", "quantize"]
PHASES: tuple[str, ...] = get_args(Phase)
"""Phase-avoidance execution order (Ma et al. 2026, via the CGC paper §4.4)."""


@dataclass(frozen=True)
class EditStats:
    """What one operator did to one tensor (None where it does not apply)."""

    bits: int | None = None
    """Quantization bit width."""
    sparsity: float | None = None
    """Achieved fraction of exact zeros in the edited slice."""
    rank: int | None = None
    """Rank kept by the truncated SVD."""


def check_finite(stack: Tensor, names: Sequence[str]) -> None:
    """Raise :class:`~cgc_lens.errors.CgcLensError` if ``stack`` (axis 0 stacks the weights
    ``names``) holds inf or NaN: no operator gives a meaningful result on such a weight (RTN
    would turn its whole output channel into NaN).

    One sum: an inf or NaN anywhere makes it non-finite (``torch.isfinite`` over the stack is
    ten times slower on CPU). Only then, or when the sum of finite values overflowed, are the
    values checked one by one.
    """
    if math.isfinite(stack.sum().item()):
        return
    bad = [(n, int((~torch.isfinite(t)).sum())) for n, t in zip(names, stack, strict=True)]
    bad = [(n, c) for n, c in bad if c]
    if not bad:  # the sum overflowed; every value is finite
        return
    name, count = bad[0]
    more = f" (and {len(bad) - 1} more weights)" if len(bad) > 1 else ""
    raise CgcLensError(
        f"{name} has {count} non-finite values (inf/NaN){more}; cgc-lens cannot quantize, prune "
        "or factor a non-finite weight: check the checkpoint, or leave the weight out of the "
        "targets (Targets(names=..., layers=...))."
    )


class Operator(ABC):
    """Base of every weight-edit operator: a frozen dataclass with a registry name."""

    name: ClassVar[str]
    """Registry name, used in JSON plans."""
    phase: ClassVar[Phase]
    """Where the operator sits in the rank → prune → quantize order."""
    level_field: ClassVar[str | None]
    """The field holding the operator's scalar level (None if it has none)."""
    higher_is_harsher: ClassVar[bool] = True
    """Whether raising the level compresses more (sparsity) or less (bits, rank ratio)."""
    checks_finite_stacked: ClassVar[bool] = False
    """Whether :meth:`apply_stacked_` itself refuses a stack holding inf/NaN before editing
    it (by :func:`check_finite`); the snapshot then skips its own pass over the stack."""

    @property
    def is_identity(self) -> bool:
        """True when the operator leaves every weight unchanged (nothing is touched)."""
        return False

    def default_targets(self) -> Targets:
        """Targets used when a step names none: every block weight."""
        return Targets()

    def check_refs(self, refs: Sequence[WeightRef]) -> None:  # noqa: B027 - optional hook
        """Raise before any edit if the operator cannot edit ``refs``."""

    @abstractmethod
    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        """Edit ``weight`` (the tensor, or the head slice, named by ``ref``) in place."""

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        """Edit several weights; operators that can batch (or act globally) override this."""
        with torch.no_grad():
            return [self.apply_(w, r) for w, r in zip(weights, refs, strict=True)]

    def can_apply_stacked(self, weights: Sequence[Tensor]) -> bool:
        """Whether :meth:`apply_stacked_` can edit ``weights`` (whole tensors), stacked by shape.

        A caller that already stacks same-shaped weights (the snapshot taken by
        :func:`~cgc_lens.compress.compressed`) then edits each stack in one go, while it is
        still in cache, instead of calling :meth:`apply_many_`. The default is no.
        """
        return False

    def apply_stacked_(
        self, stack: Tensor, refs: Sequence[WeightRef], *, targets: Sequence[Tensor] | None = None
    ) -> list[EditStats]:
        """Edit a stack of whole weights of one shape, dtype, device and output axes.

        Args:
            stack: axis 0 stacks the weights named by ``refs``, in order.
            refs: the stacked weights; they share ``out_axes``.
            targets: None to edit ``stack`` itself in place; else the stacked weights in stack
                order, holding the stack's values: the result is written into them and
                ``stack`` is left as it was.

        Returns:
            One :class:`EditStats` per stacked weight, in stack order.

        Called only where :meth:`can_apply_stacked` holds for the stacked weights.
        """
        raise CgcLensError(f"{type(self).__name__} cannot edit stacked weights.")

    def at_level(self, level: int | float) -> Operator:
        """A copy at another level (bits, sparsity, ratio), for sweeps and matched searches."""
        if self.level_field is None:
            raise CgcLensError(f"{type(self).__name__} has no scalar level to set.")
        if self.level_field == "bits":
            level = round(level)
        return dataclasses.replace(self, **{self.level_field: level})  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"operator": name, **fields}``; :func:`operator_from_dict` reads it."""
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.metadata.get("serialise", True)
        }
        return {"operator": self.name, **values}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Operator:
        """Build from :meth:`to_dict`'s fields (without ``"operator"``)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in names:
                raise unknown_name(f"{cls.__name__} field", key, names)
        return cls(**data)


_REGISTRY: dict[str, type[Operator]] = {}

OperatorType = TypeVar("OperatorType", bound=type[Operator])


def register_operator(cls: OperatorType) -> OperatorType:
    """Add an operator class under ``cls.name``; a name already taken raises.

    Used as a class decorator by every operator module of this package.
    """
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise CgcLensError(f"Only Operator subclasses can be registered, got {cls!r}.")
    if cls.name in _REGISTRY:
        raise CgcLensError(f"An operator named {cls.name!r} is already registered.")
    _REGISTRY[cls.name] = cls
    return cls


def registered_operators() -> tuple[str, ...]:
    """Names of every registered operator.

    Example:
        >>> names = registered_operators()
        >>> names == tuple(sorted(names)) and {"rtn", "magnitude", "wanda", "nf4"} <= set(names)
        True
    """
    return tuple(sorted(_REGISTRY))


def operator_class(name: str) -> type[Operator]:
    """The operator class registered as ``name``, or raise with the closest names."""
    if name not in _REGISTRY:
        raise unknown_name("operator", name, _REGISTRY)
    return _REGISTRY[name]


def operator_from_dict(data: Mapping[str, Any]) -> Operator:
    """Inverse of :meth:`Operator.to_dict`."""
    if "operator" not in data:
        raise CgcLensError(f"An operator dict needs an 'operator' name, got keys {sorted(data)}.")
    fields_ = {k: v for k, v in data.items() if k != "operator"}
    return operator_class(data["operator"]).from_fields(fields_)
