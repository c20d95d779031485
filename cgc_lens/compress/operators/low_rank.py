"""Low-rank approximation: each weight's ``[out, in]`` matrix replaced by its truncated SVD."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix
from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.sparsity import check_fraction
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError

__all__ = ["LowRank", "low_rank_"]


def low_rank_(
    w: Float[Tensor, "*shape"], rank_ratio: float, *, out_axes: Sequence[int]
) -> tuple[Float[Tensor, "*shape"], int]:
    """Replace ``w`` by its truncated SVD, keeping ``round(rank_ratio * min(out, in))`` values.

    Returns ``(w, rank)``. ``rank_ratio=1`` leaves ``w`` untouched (no SVD round-off).

    Example:
        >>> w = torch.randn(6, 4)
        >>> int(torch.linalg.matrix_rank(low_rank_(w, 0.5, out_axes=(1,))[0]))
        2
    """
    check_fraction(rank_ratio, "rank_ratio", closed=True, low_open=True)
    mat = as_matrix(w.detach(), out_axes)
    full = min(mat.shape)
    rank = max(1, min(full, round(rank_ratio * full)))
    if rank == full:
        return w, full
    bad = int((~torch.isfinite(mat)).sum())
    if bad:  # the SVD would fail with a LinAlgError deep in torch
        raise CgcLensError(
            f"The weight has {bad} non-finite values (inf/NaN); cgc-lens cannot factor a "
            "non-finite weight: check the checkpoint."
        )
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    u, s, vh = torch.linalg.svd(mat.to(dtype), full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    w.copy_(from_matrix(approx, w.shape, out_axes))
    return w, rank


@register_operator
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
