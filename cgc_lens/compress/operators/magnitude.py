"""Magnitude pruning: zero the smallest-magnitude weights, per tensor or over all targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.sparsity import (
    check_fraction,
    measured_sparsity,
    n_pruned,
    smallest_mask,
)
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import unknown_name

__all__ = ["MagnitudePrune", "magnitude_prune_", "magnitude_prune_global_"]


def magnitude_prune_(w: Float[Tensor, "*shape"], sparsity: float) -> Float[Tensor, "*shape"]:
    """Zero the smallest-magnitude ``sparsity`` fraction of ``w`` in place; returns ``w``.

    Example:
        >>> magnitude_prune_(torch.tensor([0.5, -0.1, 2.0, 0.2]), 0.5)
        tensor([0.5000, 0.0000, 2.0000, 0.0000])
    """
    check_fraction(sparsity, "sparsity", closed=False)
    k = n_pruned(w.numel(), sparsity)
    if k:
        w.masked_fill_(smallest_mask(w.detach().abs(), k), 0)
    return w


def magnitude_prune_global_(weights: Sequence[Tensor], sparsity: float) -> None:
    """Zero the smallest-magnitude ``sparsity`` fraction of all ``weights`` taken together."""
    check_fraction(sparsity, "sparsity", closed=False)
    if not weights:
        return
    device = weights[0].device
    scores = torch.cat([w.detach().abs().reshape(-1).float().to(device) for w in weights])
    mask = smallest_mask(scores, n_pruned(scores.numel(), sparsity))
    for w, m in zip(weights, mask.split([w.numel() for w in weights]), strict=True):
        w.masked_fill_(m.view(w.shape).to(w.device), 0)


@register_operator
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
        return EditStats(sparsity=measured_sparsity(weight))

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        if self.scope == "tensor":
            return super().apply_many_(weights, refs)
        with torch.no_grad():
            magnitude_prune_global_(weights, self.sparsity)
        return [EditStats(sparsity=measured_sparsity(w)) for w in weights]
