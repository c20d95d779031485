"""Weight-level pruning and low-rank functions, in place on one tensor (or a list of them).

Counts: pruning a fraction ``s`` of ``n`` weights zeroes exactly ``round(s * n)`` of them, the
smallest first and, among equal values, the earliest in storage order (deterministic ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix, in_axes
from cgc_lens.errors import CgcLensError

__all__ = [
    "check_fraction",
    "head_prune_",
    "low_rank_",
    "magnitude_prune_",
    "n_pruned",
    "smallest_mask",
    "wanda_prune_",
    "wanda_scores",
]


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


def _broadcast_norms(w: Tensor, input_norms: Tensor, out_axes: Sequence[int]) -> Tensor:
    inn = in_axes(w.ndim, out_axes)
    expected = tuple(w.shape[a] for a in inn)
    if tuple(input_norms.shape) != expected:
        raise CgcLensError(
            f"Input norms must have the shape of the weight's input axes {expected}, "
            f"got {tuple(input_norms.shape)}."
        )
    return input_norms.reshape([w.shape[a] if a in inn else 1 for a in range(w.ndim)])


def wanda_scores(
    w: Float[Tensor, "*shape"], input_norms: Float[Tensor, "*in_shape"], *, out_axes: Sequence[int]
) -> Float[Tensor, "*shape"]:
    """Wanda importance ``|W_ij| * ||X_j||_2`` (Sun et al. 2024), in ``w``'s layout and dtype.

    Args:
        w: a weight in TransformerLens layout.
        input_norms: ``||X_j||_2`` over calibration tokens, shaped like ``w``'s input axes
            (``[d_model]`` for ``W_Q``, ``[n_heads, d_head]`` for ``W_O`` ...).
        out_axes: the output-channel axes of ``w``.

    Example:
        >>> W_in = torch.tensor([[1.0, -2.0], [3.0, 0.5]])  # [d_model=2, d_mlp=2]
        >>> wanda_scores(W_in, torch.tensor([10.0, 1.0]), out_axes=(1,))
        tensor([[10.0000, 20.0000],
                [ 3.0000,  0.5000]])
    """
    norms = _broadcast_norms(w, input_norms, out_axes)
    return (w.detach().abs().to(norms.dtype) * norms).to(w.dtype)


def wanda_prune_(
    w: Float[Tensor, "*shape"], input_norms: Float[Tensor, "*in_shape"], sparsity: float, *,
    out_axes: Sequence[int],
) -> Float[Tensor, "*shape"]:
    """Zero, in each output channel, the ``sparsity`` fraction of lowest Wanda scores; returns w.

    Scores are compared within each output row, as locuslab/wanda does (its default
    "per-output" comparison group), with a stable sort so ties go to the earliest input.

    Example:
        >>> W_in = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
        >>> wanda_prune_(W_in, torch.tensor([10.0, 1.0]), 0.5, out_axes=(1,))
        tensor([[ 1., -2.],
                [ 0.,  0.]])
    """
    check_fraction(sparsity, "sparsity", closed=False)
    scores = as_matrix(wanda_scores(w, input_norms, out_axes=out_axes).float(), out_axes)
    k = n_pruned(scores.shape[1], sparsity)
    if k:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask = torch.zeros(scores.shape, dtype=torch.bool, device=w.device).scatter_(1, order, True)
        w.masked_fill_(from_matrix(mask, w.shape, out_axes), 0)
    return w


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
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    u, s, vh = torch.linalg.svd(mat.to(dtype), full_matrices=False)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    w.copy_(from_matrix(approx, w.shape, out_axes))
    return w, rank
