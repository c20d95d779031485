"""Where the output channels of each TransformerLens weight lie.

A HuggingFace ``nn.Linear`` stores ``weight[out_features, in_features]``; TransformerLens splits
the attention projections by head and stores everything ``[in, out]``. Every operator in
:mod:`cgc_lens.compress` works per *output channel* (the axes below) and reduces over the rest:

============  =================================  ===========================  ====================
tensor        TransformerLens shape              output channel (kept axes)   reduced over
============  =================================  ===========================  ====================
``W_Q/K/V``   ``[n_heads, d_model, d_head]``     ``(head, d_head)``: (0, 2)   ``d_model``
``W_O``       ``[n_heads, d_head, d_model]``     ``d_model``: (2,)            ``(n_heads, d_head)``
``W_in/gate`` ``[d_model, d_mlp]``               ``d_mlp``: (1,)              ``d_model``
``W_out``     ``[d_mlp, d_model]``               ``d_model``: (1,)            ``d_mlp``
============  =================================  ===========================  ====================

:func:`as_matrix` turns any of them into the HuggingFace ``[out, in]`` matrix, with the input
axes flattened in their stored order (so ``W_O``'s input index is ``head * d_head + i``, as in
``o_proj``), and :func:`from_matrix` turns it back.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Shaped
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = [
    "ATTN_WEIGHTS",
    "HEAD_AXIS",
    "MLP_WEIGHTS",
    "OUT_AXES",
    "as_matrix",
    "from_matrix",
    "in_axes",
]

ATTN_WEIGHTS: tuple[str, ...] = ("W_Q", "W_K", "W_V", "W_O")
"""The attention weights that compression edits, in the order they are visited."""
MLP_WEIGHTS: tuple[str, ...] = ("W_in", "W_gate", "W_out")
"""The MLP weights that compression edits (``W_gate`` only where the model is gated)."""

OUT_AXES: dict[str, tuple[int, ...]] = {
    "W_Q": (0, 2),
    "W_K": (0, 2),
    "W_V": (0, 2),
    "W_O": (2,),
    "W_in": (1,),
    "W_gate": (1,),
    "W_out": (1,),
}
"""Output-channel axes of each TransformerLens weight (see the module docstring)."""

HEAD_AXIS = 0
"""The head axis of every attention weight."""


def in_axes(ndim: int, out_axes: Sequence[int]) -> tuple[int, ...]:
    """The axes a per-output-channel statistic reduces over.

    Example:
        >>> in_axes(3, (0, 2))
        (1,)
    """
    out = _normalise(ndim, out_axes)
    return tuple(a for a in range(ndim) if a not in out)


def _normalise(ndim: int, out_axes: Sequence[int]) -> tuple[int, ...]:
    out = tuple(a % ndim if -ndim <= a < ndim else a for a in out_axes)
    if not out or any(not 0 <= a < ndim for a in out) or len(set(out)) != len(out):
        raise CgcLensError(
            f"out_axes must be distinct axes of a {ndim}-d tensor, got {tuple(out_axes)}."
        )
    if len(out) == ndim:
        raise CgcLensError(f"out_axes {tuple(out_axes)} leave no input axis to reduce over.")
    return out


def as_matrix(w: Shaped[Tensor, "*shape"], out_axes: Sequence[int]) -> Shaped[Tensor, "out in"]:
    """``w`` as the HuggingFace ``[out_features, in_features]`` matrix (a view when possible).

    Example:
        >>> import torch
        >>> W_O = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)  # [n_heads, d_head, d_model]
        >>> as_matrix(W_O, (2,)).shape
        torch.Size([4, 6])
        >>> bool((as_matrix(W_O, (2,))[1] == W_O[:, :, 1].flatten()).all())
        True
    """
    out = _normalise(w.ndim, out_axes)
    inn = in_axes(w.ndim, out)
    n_out = 1
    for a in out:
        n_out *= w.shape[a]
    return w.permute(*out, *inn).reshape(n_out, -1)


def from_matrix(
    mat: Shaped[Tensor, "out in"], shape: Sequence[int], out_axes: Sequence[int]
) -> Shaped[Tensor, "*shape"]:
    """Inverse of :func:`as_matrix`: the ``[out, in]`` matrix back in TransformerLens layout.

    Example:
        >>> import torch
        >>> W_Q = torch.randn(2, 5, 3)
        >>> bool(torch.equal(from_matrix(as_matrix(W_Q, (0, 2)), W_Q.shape, (0, 2)), W_Q))
        True
    """
    out = _normalise(len(shape), out_axes)
    inn = in_axes(len(shape), out)
    order = (*out, *inn)
    permuted = mat.reshape(*(shape[a] for a in order))
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return permuted.permute(*inverse)
