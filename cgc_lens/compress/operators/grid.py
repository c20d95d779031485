"""The integer quantization grid shared by group-wise RTN, GPTQ and AWQ, on the HuggingFace
``[out, in]`` layout.

Groups run along the input dimension of each output row: group ``g`` of row ``r`` is
``w2d[r, g * group_size : (g + 1) * group_size]`` (``group_size=None``: the whole row, i.e.
per output channel). Each group gets a scale and an integer zero point:

- ``symmetric=True`` (the survival paper's Eq. 2, today's per-channel RTN):
  ``scale = max|w| / (2^(b-1) - 1)``, zero 0, integers in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``.
- ``symmetric=False`` (compressed-tensors / GPTQ): the range is widened to contain 0,
  ``scale = (max - min) / (2^b - 1)``, ``zero = round(-min / scale)``, integers in
  ``[0, 2^b - 1]``.

A scale of 0 (an all-zero group) is floored at the smallest normal float; that group
quantizes to 0.

The arithmetic is compressed-tensors' ``fake_quantize`` (``calculate_qparams`` and
``_quantize_dequantize``) operation for operation, so the results are equal bit for bit:
``q = round(clamp(w / scale + zero, qmin, qmax))`` (round half to even), ``w' = (q - zero) *
scale``, in float32 (float64 weights stay float64). The asymmetric zero point is rounded, and
``w / scale + zero`` formed, in compressed-tensors' signed frame (integers in
``[-2^(b-1), 2^(b-1) - 1]``, zero shifted by ``2^(b-1)``), which gives the same grid but rounds
a sum lying within an ulp of a half-integer the way compressed-tensors does.

Per-channel symmetric RTN (:func:`~cgc_lens.compress.operators.rtn.rtn_quantize`) keeps
``torch.fake_quantize_per_channel_affine``'s ``w * (1 / scale)``; the two differ only where
``w / scale`` lies within an ulp of a half-integer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = [
    "GroupQParams",
    "check_group_size",
    "fake_quantize",
    "grid_range",
    "group_qparams",
    "quantize_groups",
    "valid_group_sizes",
]


class GroupQParams(NamedTuple):
    """Scale and zero point of every group of a ``[out, in]`` matrix."""

    scale: Tensor
    """``[out, n_groups]``, float32 (float64 for float64 weights)."""
    zero: Tensor
    """``[out, n_groups]``, the integer zero point (stored as float; 0 when symmetric)."""


def grid_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest integer of the grid.

    Example:
        >>> grid_range(4, True), grid_range(4, False)
        ((-7, 7), (0, 15))
    """
    _check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def valid_group_sizes(n_in: int) -> list[int]:
    """The group sizes that divide an input dimension of ``n_in``.

    Example:
        >>> valid_group_sizes(24)
        [1, 2, 3, 4, 6, 8, 12, 24]
    """
    return [d for d in range(1, n_in + 1) if n_in % d == 0]


def check_group_size(group_size: int | None, n_in: int, name: str = "this weight") -> None:
    """Raise :class:`~cgc_lens.errors.CgcLensError` unless ``group_size`` is None or a
    positive int dividing ``n_in`` (the input dimension of the weight ``name``).

    Example:
        >>> check_group_size(128, 96, "blocks.0.attn.W_O")
        Traceback (most recent call last):
        ...
        cgc_lens.errors.CgcLensError: group_size 128 does not divide the input dimension 96 of \
blocks.0.attn.W_O; valid group sizes: 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96 (or None for \
one group per output channel).
    """
    if group_size is None:
        return
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise CgcLensError(f"group_size must be a positive int or None, got {group_size!r}.")
    if n_in % group_size:
        sizes = ", ".join(map(str, valid_group_sizes(n_in)))
        raise CgcLensError(
            f"group_size {group_size} does not divide the input dimension {n_in} of {name}; "
            f"valid group sizes: {sizes} (or None for one group per output channel)."
        )


def _check_bits(bits: object) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise CgcLensError(f"bits must be an int in 2..16, got {bits!r}.")


def _as_groups(w2d: Tensor, group_size: int | None, name: str) -> Tensor:
    """``w2d`` as ``[out, n_groups, group_size]`` in the compute dtype (a view when it can)."""
    if w2d.ndim != 2:
        raise CgcLensError(f"{name} must be a 2-d [out, in] matrix, got shape {tuple(w2d.shape)}.")
    if not w2d.is_floating_point():
        raise CgcLensError(f"{name} must be floating point, got dtype {w2d.dtype}.")
    check_group_size(group_size, w2d.shape[1], name)
    dtype = torch.float64 if w2d.dtype == torch.float64 else torch.float32
    x = w2d.to(dtype)
    return x.view(x.shape[0], -1, group_size or max(1, x.shape[1]))


def _qparams(x: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """(scale, zero in the signed frame) over the last axis of ``x``, keepdim."""
    tiny = torch.finfo(x.dtype).tiny
    lo = x.amin(dim=-1, keepdim=True).clamp_max(0)
    hi = x.amax(dim=-1, keepdim=True).clamp_min(0)
    if symmetric:
        scale = torch.maximum(lo.neg(), hi).div_(2 ** (bits - 1) - 1).clamp_min_(tiny)
        return scale, torch.zeros_like(scale)
    half = 2 ** (bits - 1)
    scale = (hi - lo).div_(2**bits - 1).clamp_min_(tiny)
    zero = (-half - lo / scale).clamp_(-half, half - 1).round_()  # compressed-tensors' frame
    return scale, zero


def group_qparams(
    w2d: Float[Tensor, "out in"],
    bits: int,
    group_size: int | None,
    symmetric: bool,
    *,
    name: str = "this weight",
) -> GroupQParams:
    """Scale and zero point of each group of ``w2d`` (module docstring: the conventions).

    Args:
        w2d: the HuggingFace ``[out, in]`` matrix (see :func:`cgc_lens.compress.as_matrix`).
        bits: 2..16.
        group_size: inputs per group (dividing ``in``), or None for one group per row.
        symmetric: Eq. 2's symmetric grid, or the asymmetric grid with a zero point.
        name: the weight's name, for the error when ``group_size`` does not divide ``in``.

    Returns:
        ``scale`` and ``zero``, each ``[out, n_groups]``; ``zero`` in ``[0, 2^b - 1]``
        (asymmetric) or 0.

    Example:
        >>> w = torch.tensor([[-1.0, 2.0, 0.5, 0.25]])
        >>> group_qparams(w, 2, 2, False)
        GroupQParams(scale=tensor([[1.0000, 0.1667]]), zero=tensor([[1., 0.]]))
    """
    _check_bits(bits)
    scale, zero = _qparams(_as_groups(w2d, group_size, name), bits, symmetric)
    if not symmetric:
        zero = zero + 2 ** (bits - 1)
    return GroupQParams(scale.squeeze(-1), zero.squeeze(-1))


def fake_quantize(w: Tensor, scale: Tensor, zero: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Quantize ``w`` onto the grid of ``scale`` and ``zero`` (broadcast against ``w``) and
    dequantize: a new tensor in ``scale``'s dtype.

    This is the step GPTQ takes one column at a time: ``scale`` and ``zero`` as returned by
    :func:`group_qparams` (``zero`` in ``[0, 2^b - 1]``), indexed to the columns of ``w``.

    Example:
        >>> fake_quantize(torch.tensor([0.3, -0.8, 2.4]), torch.tensor(0.5), torch.tensor(2.0),
        ...               2, False)
        tensor([ 0.5000, -1.0000,  0.5000])
    """
    _check_bits(bits)
    x = w.to(scale.dtype)
    if symmetric:
        qmin, qmax = grid_range(bits, True)
        return (x / scale).clamp_(qmin, qmax).round_().mul_(scale)
    half = 2 ** (bits - 1)
    signed_zero = zero.to(scale.dtype) - half
    q = (x / scale).add_(signed_zero).clamp_(-half, half - 1).round_()
    return q.sub_(signed_zero).mul_(scale)


def quantize_groups(
    w2d: Float[Tensor, "out in"],
    bits: int,
    group_size: int | None,
    symmetric: bool,
    *,
    name: str = "this weight",
) -> Float[Tensor, "out in"]:
    """Group-wise RTN of ``w2d``, dequantized: a new tensor of ``w2d``'s dtype and shape.

    Args:
        w2d: the HuggingFace ``[out, in]`` matrix.
        bits: 2..16.
        group_size: inputs per group (dividing ``in``), or None for one group per row.
        symmetric: Eq. 2's symmetric grid, or the asymmetric grid with a zero point.
        name: the weight's name, for the error when ``group_size`` does not divide ``in``.

    Example:
        >>> w = torch.tensor([[-1.0, 2.0, 0.5, 0.25]])
        >>> quantize_groups(w, 2, 2, False)
        tensor([[-1.0000,  2.0000,  0.5000,  0.3333]])
    """
    _check_bits(bits)
    x = _as_groups(w2d, group_size, name)
    scale, zero = _qparams(x, bits, symmetric)
    if not symmetric:
        zero = zero + 2 ** (bits - 1)
    return fake_quantize(x, scale, zero, bits, symmetric).view(w2d.shape).to(w2d.dtype)
