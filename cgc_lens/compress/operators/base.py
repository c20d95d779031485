"""The weight-edit operators and their registry.

Every operator is a frozen dataclass whose one level (bits, sparsity, ratio) may be given
positionally, as the papers write them (``RTN(6)``); every other field is keyword-only. All share
one contract: :meth:`Operator.apply_` edits one weight in place under ``torch.no_grad()`` and
returns an :class:`EditStats`; the restore-exactly context lives in :mod:`.context`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from cgc_lens.compress.layout import HEAD_AXIS, in_axes
from cgc_lens.compress.operators.prune import (
    check_fraction,
    head_prune_,
    low_rank_,
    magnitude_prune_,
    magnitude_prune_global_,
    wanda_prune_,
)
from cgc_lens.compress.operators.rtn import (
    CONVENTIONS,
    Convention,
    check_bits,
    rtn_quantize_,
    rtn_quantize_stack_,
)
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.compress.wanda import InputNorms, collect_input_norms
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from jaxtyping import Int
    from transformer_lens import HookedTransformer

__all__ = [
    "PHASES",
    "RTN",
    "EditStats",
    "HeadPrune",
    "LowRank",
    "MagnitudePrune",
    "Operator",
    "Phase",
    "WandaPrune",
    "operator_class",
    "operator_from_dict",
    "register_operator",
    "registered_operators",
]

Phase = Literal["rank", "prune", "quantize"]
PHASES: tuple[str, ...] = get_args(Phase)
"""Phase-avoidance execution order (Ma et al. 2026, via the CGC paper §4.4)."""

_BATCH_MAX_NUMEL = 1 << 18  # tensors up to this size are quantized stacked, per-op cost dominates


@dataclass(frozen=True)
class EditStats:
    """What one operator did to one tensor (None where it does not apply)."""

    bits: int | None = None
    """Quantization bit width."""
    sparsity: float | None = None
    """Achieved fraction of exact zeros in the edited slice."""
    rank: int | None = None
    """Rank kept by the truncated SVD."""


def _sparsity(w: Tensor) -> float:
    return float((w == 0).sum()) / max(1, w.numel())


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


@dataclass(frozen=True)
class RTN(Operator):
    """Per-output-channel round-to-nearest, dequantized (see :mod:`.quantize` for conventions).

    Example:
        >>> RTN(6)
        RTN(bits=6, convention='symmetric', group_size=None)
    """

    name: ClassVar[str] = "rtn"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = "bits"
    higher_is_harsher: ClassVar[bool] = False

    bits: int
    """Bit width, 2..16; 16 is the unquantized reference and touches nothing."""
    _: KW_ONLY
    convention: Convention = "symmetric"
    """``"symmetric"`` (paper Eq. 2), ``"symmetric_full"`` or ``"asymmetric"``."""
    group_size: int | None = None
    """Inputs per scale group inside an output channel (e.g. 128); None for per-channel."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.convention not in CONVENTIONS:
            raise unknown_name("RTN convention", self.convention, CONVENTIONS)
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or isinstance(self.group_size, bool)
            or self.group_size < 1
        ):
            raise CgcLensError(
                f"group_size must be a positive int or None, got {self.group_size!r}."
            )

    @property
    def is_identity(self) -> bool:
        return self.bits == 16

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        rtn_quantize_(weight, self.bits, out_axes=ref.out_axes, convention=self.convention,
                      group_size=self.group_size)
        return EditStats(bits=self.bits)

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        groups: dict[tuple, list[Tensor]] = {}
        with torch.no_grad():
            for w, ref in zip(weights, refs, strict=True):
                if (self.group_size is None and w.dtype == torch.float32
                        and w.numel() <= _BATCH_MAX_NUMEL):
                    groups.setdefault((w.shape, w.device, ref.out_axes), []).append(w)
                else:
                    self.apply_(w, ref)
            for (_, _, out_axes), ws in groups.items():
                rtn_quantize_stack_(torch.stack(ws), self.bits, out_axes=out_axes,
                                    convention=self.convention, targets=ws)
        stats = EditStats(bits=self.bits)
        return [stats] * len(weights)


@dataclass(frozen=True)
class MagnitudePrune(Operator):
    """Zero the smallest-magnitude fraction of each tensor (``scope="tensor"``, as in the
    survival paper) or of all targeted weights together (``scope="global"``).

    Example:
        >>> MagnitudePrune(0.5, scope="global").to_dict()
        {'operator': 'magnitude', 'sparsity': 0.5, 'scope': 'global'}
    """

    name: ClassVar[str] = "magnitude"
    phase: ClassVar[Phase] = "prune"
    level_field: ClassVar[str | None] = "sparsity"

    sparsity: float
    """Fraction of weights zeroed, in [0, 1)."""
    _: KW_ONLY
    scope: Literal["tensor", "global"] = "tensor"
    """Compare magnitudes within each tensor or across all targeted weights."""

    def __post_init__(self) -> None:
        check_fraction(self.sparsity, "sparsity", closed=False)
        if self.scope not in ("tensor", "global"):
            raise unknown_name("pruning scope", self.scope, ("tensor", "global"))

    @property
    def is_identity(self) -> bool:
        return self.sparsity == 0

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        with torch.no_grad():
            magnitude_prune_(weight, self.sparsity)
        return EditStats(sparsity=_sparsity(weight))

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        if self.scope == "tensor":
            return super().apply_many_(weights, refs)
        with torch.no_grad():
            magnitude_prune_global_(weights, self.sparsity)
        return [EditStats(sparsity=_sparsity(w)) for w in weights]


@dataclass(frozen=True)
class WandaPrune(Operator):
    """Wanda: zero the lowest ``|W_ij| * ||X_j||_2`` within each output row.

    Needs input norms from calibration tokens: ``WandaPrune(0.5).calibrate(model, tokens)``
    returns a calibrated copy (norms are not saved in JSON plans; calibrate after loading).
    """

    name: ClassVar[str] = "wanda"
    phase: ClassVar[Phase] = "prune"
    level_field: ClassVar[str | None] = "sparsity"

    sparsity: float
    """Fraction of each output row zeroed, in [0, 1)."""
    _: KW_ONLY
    input_norms: InputNorms | None = field(
        default=None, repr=False, compare=False, metadata={"serialise": False}
    )
    """Norms from :func:`~cgc_lens.compress.collect_input_norms`; None until calibrated."""

    def __post_init__(self) -> None:
        check_fraction(self.sparsity, "sparsity", closed=False)

    @property
    def is_identity(self) -> bool:
        return self.sparsity == 0

    def calibrate(
        self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
        targets: Targets | None = None, *, batch_size: int = 8,
    ) -> WandaPrune:
        """A copy holding the input norms of ``targets`` (default: every block weight)."""
        norms = collect_input_norms(model, tokens, targets, batch_size=batch_size)
        return dataclasses.replace(self, input_norms=norms)

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        if self.is_identity:
            return
        if self.input_norms is None:
            raise CgcLensError(
                "WandaPrune needs input norms: use WandaPrune(s).calibrate(model, tokens) "
                "(or Plan.calibrate) on calibration tokens before applying it."
            )
        for ref in refs:
            self.input_norms.for_weight(ref.layer, ref.name)  # raises if missing

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        self.check_refs([ref])
        if self.is_identity:
            return EditStats(sparsity=_sparsity(weight))
        norms = self.input_norms.for_weight(ref.layer, ref.name)  # type: ignore[union-attr]
        if ref.heads is not None and HEAD_AXIS in in_axes(weight.ndim, ref.out_axes):
            norms = norms[list(ref.heads)]
        with torch.no_grad():
            wanda_prune_(weight, norms.to(weight.device), self.sparsity, out_axes=ref.out_axes)
        return EditStats(sparsity=_sparsity(weight))


@dataclass(frozen=True, eq=True)
class HeadPrune(Operator):
    """Magnitude pruning inside each head's slice at a per-head retention ratio.

    By default the slices are those of ``W_O`` (``[d_head, d_model]`` per head), as in the
    capability-density paper's Uniform / CGC-L / Inverted rows; targets may name other attention
    weights. Heads not in ``retention`` keep everything (1.0 = untouched, 0.0 = slice zeroed).

    Example:
        >>> HeadPrune({Head(0, 1): 0.5}).default_targets()
        Targets(families=None, names=('W_O',), layers=None, heads=(Head(layer=0, head=1),))
    """

    name: ClassVar[str] = "head_prune"
    phase: ClassVar[Phase] = "prune"
    level_field: ClassVar[str | None] = None

    retention: Mapping[Head, float]
    """Fraction of each head's slice kept, in [0, 1], keyed by ``Head(layer, head)``."""

    def __post_init__(self) -> None:
        if not isinstance(self.retention, Mapping):
            raise CgcLensError(f"retention must map Head → float, got {self.retention!r}.")
        for head, r in self.retention.items():
            if not isinstance(head, Head):
                raise CgcLensError(f"retention keys must be Head(layer, head), got {head!r}.")
            check_fraction(r, f"retention of {head}", closed=True)
        ordered = {h: float(r) for h, r in sorted(self.retention.items())}
        object.__setattr__(self, "retention", ordered)

    def __hash__(self) -> int:
        return hash(tuple(self.retention.items()))

    @classmethod
    def uniform(cls, heads: Iterable[Head], retention: float) -> HeadPrune:
        """The same retention for every head in ``heads`` (the paper's Uniform row)."""
        return cls(dict.fromkeys(heads, retention))

    @property
    def is_identity(self) -> bool:
        return all(r == 1 for r in self.retention.values())

    def default_targets(self) -> Targets:
        return Targets(names=("W_O",), heads=tuple(h for h, r in self.retention.items() if r < 1))

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        for ref in refs:
            if ref.n_heads is None:
                raise CgcLensError(f"HeadPrune edits attention-head slices; {ref} has no heads.")

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        self.check_refs([ref])
        ratios = [self.retention.get(Head(ref.layer, h), 1.0) for h in ref.head_ids]
        with torch.no_grad():
            head_prune_(weight, ratios)
        return EditStats(sparsity=_sparsity(weight))

    def to_dict(self) -> dict[str, Any]:
        return {"operator": self.name,
                "retention": [[h.layer, h.head, r] for h, r in self.retention.items()]}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> HeadPrune:
        if set(data) != {"retention"}:
            raise CgcLensError(f"HeadPrune takes only 'retention', got {sorted(data)}.")
        return cls({Head(int(layer), int(h)): float(r) for layer, h, r in data["retention"]})


@dataclass(frozen=True)
class LowRank(Operator):
    """Truncated SVD of each weight's ``[out, in]`` matrix.

    Example:
        >>> LowRank(0.25).phase
        'rank'
    """

    name: ClassVar[str] = "low_rank"
    phase: ClassVar[Phase] = "rank"
    level_field: ClassVar[str | None] = "rank_ratio"
    higher_is_harsher: ClassVar[bool] = False

    rank_ratio: float
    """Fraction of ``min(out, in)`` singular values kept, in (0, 1]; 1 touches nothing."""

    def __post_init__(self) -> None:
        check_fraction(self.rank_ratio, "rank_ratio", closed=True, low_open=True)

    @property
    def is_identity(self) -> bool:
        return self.rank_ratio == 1

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        with torch.no_grad():
            _, rank = low_rank_(weight, self.rank_ratio, out_axes=ref.out_axes)
        return EditStats(rank=rank)


_REGISTRY: dict[str, type[Operator]] = {
    cls.name: cls for cls in (RTN, MagnitudePrune, WandaPrune, HeadPrune, LowRank)
}


def register_operator(cls: type[Operator]) -> type[Operator]:
    """Add an operator class under ``cls.name``; a name already taken raises."""
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise CgcLensError(f"Only Operator subclasses can be registered, got {cls!r}.")
    if cls.name in _REGISTRY:
        raise CgcLensError(f"An operator named {cls.name!r} is already registered.")
    _REGISTRY[cls.name] = cls
    return cls


def registered_operators() -> tuple[str, ...]:
    """Names of every registered operator.

    Example:
        >>> registered_operators()
        ('head_prune', 'low_rank', 'magnitude', 'rtn', 'wanda')
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
