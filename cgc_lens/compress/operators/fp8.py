"""FP8 weight quantization, dequantized: the :class:`FP8` operator.

Each output channel (``scale="channel"``) or the whole weight (``"tensor"``) is scaled so that
its largest magnitude lands on the format's largest finite value (448 for ``e4m3``, 57344 for
``e5m2``), cast through ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` (round to nearest
even) and back: ``w' = fp8(clamp(w / scale, -max, max)) * scale``, in float32 (float64 weights
stay float64). This is compressed-tensors' FP8 (``QuantizationArgs(type="float", num_bits=8)``)
operation for operation. An all-zero channel gets a scale floored at the smallest normal float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix
from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.bits import fp8_bits_per_weight
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

__all__ = ["FP8", "FP8_DTYPES", "FP8Format", "FP8Scale", "fp8_quantize"]

FP8Format = Literal["e4m3", "e5m2"]
FP8Scale = Literal["channel", "tensor"]
FP8_DTYPES: dict[str, torch.dtype] = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
"""The torch dtype of each format (``e4m3`` is the finite-only ``e4m3fn`` that ships)."""


def fp8_quantize(
    w: Float[Tensor, "*shape"],
    fmt: FP8Format = "e4m3",
    scale: FP8Scale = "channel",
    *,
    out_axes: Sequence[int],
) -> Float[Tensor, "*shape"]:
    """FP8 of a weight in any layout, dequantized; a new tensor of ``w``'s dtype and shape.

    Example:
        >>> w = torch.tensor([[448.0, 17.0, -0.3]])  # one output channel: scale 1
        >>> fp8_quantize(w, out_axes=(0,)).tolist()  # 17: a tie of e4m3's 16 and 18, to even
        [[448.0, 16.0, -0.3125]]
    """
    if fmt not in FP8_DTYPES:
        raise unknown_name("FP8 format", fmt, FP8_DTYPES)
    if scale not in get_args(FP8Scale):
        raise unknown_name("FP8 scale", scale, get_args(FP8Scale))
    if not w.is_floating_point():
        raise CgcLensError(f"FP8 needs a floating-point weight, got dtype {w.dtype}.")
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    mat = as_matrix(w, out_axes).to(dtype)
    fmax = torch.finfo(FP8_DTYPES[fmt]).max
    amax = mat.abs().amax(dim=1, keepdim=True) if scale == "channel" else mat.abs().amax()
    s = (amax / fmax).clamp_min(torch.finfo(dtype).tiny)
    q = (mat / s).clamp_(-fmax, fmax).to(FP8_DTYPES[fmt]).to(dtype) * s
    return from_matrix(q, w.shape, out_axes).to(w.dtype).contiguous()


@register_operator
@dataclass(frozen=True)
class FP8(Operator):
    """FP8 (``e4m3`` or ``e5m2``) with a float32 scale per output channel or per tensor,
    dequantized in place.

    Example:
        >>> FP8()
        FP8(fmt='e4m3', scale='channel')
        >>> FP8().bits_per_weight((768, 3072))  # a float32 scale per 3072 inputs
        8.010416666666666
    """

    name: ClassVar[str] = "fp8"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = None

    fmt: FP8Format = "e4m3"
    """``"e4m3"`` (max 448) or ``"e5m2"`` (max 57344)."""
    _: KW_ONLY
    scale: FP8Scale = "channel"
    """``"channel"``: one scale per output channel; ``"tensor"``: one per weight."""

    def __post_init__(self) -> None:
        if self.fmt not in FP8_DTYPES:
            raise unknown_name("FP8 format", self.fmt, FP8_DTYPES)
        if self.scale not in get_args(FP8Scale):
            raise unknown_name("FP8 scale", self.scale, get_args(FP8Scale))

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """8 bits + a float32 scale per channel or per tensor (see
        :mod:`~cgc_lens.compress.operators.bits`)."""
        return fp8_bits_per_weight(self.scale, shape, out_axes)

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        with torch.no_grad():
            weight.copy_(fp8_quantize(weight, self.fmt, self.scale, out_axes=ref.out_axes))
        return EditStats(bits=8)
