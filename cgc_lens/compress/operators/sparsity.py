"""Pruning arithmetic shared by the pruning operators: fraction checks, counts, k-smallest masks.

Counts: pruning a fraction ``s`` of ``n`` weights zeroes exactly ``round(s * n)`` of them, the
smallest first and, among equal values, the earliest in storage order (deterministic ties).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["check_fraction", "measured_sparsity", "n_pruned", "smallest_mask"]


def check_fraction(value: object, what: str, *, closed: bool, low_open: bool = False) -> float:
    """``value`` as a float in [0, 1) (``closed=False``) or [0, 1] (``closed=True``), else raise.

    ``low_open`` excludes 0 as well (for ratios where 0 means nothing is left).
    """
    valid = "(0, 1]" if low_open else ("[0, 1]" if closed else "[0, 1)")
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (0 < v if low_open else v >= 0) and (v <= 1 if closed else v < 1)
    if not ok:
        raise CgcLensError(f"{what} must be a number in {valid}, got {value!r}.")
    return float(value)


def n_pruned(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a fraction ``sparsity`` zeroes.

    Example:
        >>> n_pruned(10, 0.25), n_pruned(4096, 0.5)
        (2, 2048)
    """
    return min(n, round(sparsity * n))


def smallest_mask(scores: Float[Tensor, "*shape"], k: int) -> Tensor:
    """Boolean mask of the ``k`` smallest entries of ``scores`` (ties: earliest flat index).

    Example:
        >>> smallest_mask(torch.tensor([3.0, 1.0, 1.0, 2.0]), 2)
        tensor([False,  True,  True, False])
    """
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k <= 0:
        return mask.view(scores.shape)
    if k >= flat.numel():
        return mask.fill_(True).view(scores.shape)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    threshold = torch.kthvalue(flat, k).values
    torch.lt(flat, threshold, out=mask)
    ties = (flat == threshold).nonzero().squeeze(1)
    mask[ties[: k - int(mask.sum())]] = True
    return mask.view(scores.shape)


def measured_sparsity(w: Tensor) -> float:
    """The fraction of exact zeros in ``w`` (0 for an empty tensor).

    Example:
        >>> measured_sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0]))
        0.5
    """
    return float((w == 0).sum()) / max(1, w.numel())
