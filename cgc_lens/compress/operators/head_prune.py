"""Per-head pruning: magnitude pruning inside each attention head's slice at its own ratio."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.sparsity import check_fraction, measured_sparsity, smallest_mask
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head

__all__ = ["HeadPrune", "head_prune_"]


def head_prune_(
    w: Float[Tensor, "n_heads ..."], retention: Sequence[float]
) -> Float[Tensor, "n_heads ..."]:
    """Keep the top ``retention[h]`` fraction of ``w[h]`` by magnitude, zero the rest; returns w.

    Example:
        >>> W_O = torch.tensor([[[1.0, -4.0]], [[2.0, 3.0]]])  # [n_heads=2, d_head=1, d_model=2]
        >>> head_prune_(W_O, [0.5, 1.0])
        tensor([[[ 0., -4.]],
        <BLANKLINE>
                [[ 2.,  3.]]])
    """
    if len(retention) != w.shape[0]:
        raise CgcLensError(f"Need one retention per head ({w.shape[0]}), got {len(retention)}.")
    for h, r in enumerate(retention):
        check_fraction(r, f"retention of head {h}", closed=True)
        n = w[h].numel()
        k = n - min(n, round(r * n))
        if k:
            w[h].masked_fill_(smallest_mask(w[h].detach().abs(), k), 0)
    return w


@register_operator
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
        return EditStats(sparsity=measured_sparsity(weight))

    def to_dict(self) -> dict[str, Any]:
        return {"operator": self.name,
                "retention": [[h.layer, h.head, r] for h, r in self.retention.items()]}

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> HeadPrune:
        if set(data) != {"retention"}:
            raise CgcLensError(f"HeadPrune takes only 'retention', got {sorted(data)}.")
        return cls({Head(int(layer), int(h)): float(r) for layer, h, r in data["retention"]})
