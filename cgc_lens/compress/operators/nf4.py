"""NormalFloat4 (QLoRA, Dettmers et al. 2023) weight quantization, dequantized: the :class:`NF4`
operator.

The layout is bitsandbytes' ``quantize_4bit(quant_type="nf4")``: the HuggingFace ``[out, in]``
matrix is read in row-major order and cut into blocks of ``block_size`` consecutive values (a
short last block keeps its own absmax); each block is divided by its absmax and every value
goes to the nearest of the 16 NormalFloat4 levels (:data:`NF4_CODE`, ties to the lower level),
then back: ``w' = code[q] * absmax``, in float32, as bitsandbytes' CPU kernels compute it.

With ``double_quant`` the absmax values are themselves quantized as QLoRA does: their mean is
subtracted, and the rest is quantized in blocks of 256 to bitsandbytes' signed 8-bit dynamic
map (:func:`dynamic_map`) with a float32 absmax per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from functools import cache
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix
from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.bits import matrix_shape, nf4_bits_per_weight
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError

__all__ = [
    "NF4",
    "NF4_CODE",
    "double_quantize_absmax",
    "dynamic_map",
    "nf4_quantize",
    "nf4_quantize_blocks",
]

NF4_CODE: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
"""The 16 NormalFloat4 levels (QLoRA App. E; bitsandbytes ``get_4bit_type("nf4")``)."""

DOUBLE_QUANT_BLOCK = 256
"""Absmax values per block of the second quantization (QLoRA)."""


@cache
def dynamic_map() -> tuple[float, ...]:
    """bitsandbytes' signed 8-bit dynamic quantization map (``create_dynamic_map()``): 256
    sorted levels in [-1, 1], a dynamic exponent and a linear fraction (Dettmers 2016).

    Example:
        >>> levels = dynamic_map()
        >>> len(levels), levels[0], levels[-1], 0.0 in levels
        (256, -0.992968738079071, 1.0, True)
    """
    data: list[float] = []
    for i in range(7):  # exponent 10^-6 .. 10^0, 2^i fraction levels each, both signs
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0  # float32 products, as bitsandbytes forms them
        data += ((10 ** (-6 + i)) * means).tolist() + ((-(10 ** (-6 + i))) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    return tuple(torch.tensor(sorted(data), dtype=torch.float32).tolist())


def _blockwise_absmax(flat: Tensor, block: int) -> Tensor:
    full = flat.numel() - flat.numel() % block
    absmax = flat[:full].view(-1, block).abs().amax(dim=1)
    if full < flat.numel():
        absmax = torch.cat([absmax, flat[full:].abs().amax().unsqueeze(0)])
    return absmax


def _scaled(flat: Tensor, absmax: Tensor, block: int) -> Tensor:
    """``flat / absmax`` per block, clamped to [-1, 1], as bitsandbytes computes it (times the
    reciprocal in full blocks, divided in the short last one)."""
    full = flat.numel() - flat.numel() % block
    safe = absmax.clamp(min=1e-38)
    scaled = (flat[:full].view(-1, block) * (1.0 / safe[: full // block]).view(-1, 1)).view(-1)
    if full < flat.numel():
        scaled = torch.cat([scaled, flat[full:] / safe[-1]])
    return scaled.clamp_(-1, 1)


def double_quantize_absmax(absmax: Tensor) -> Tensor:
    """The absmax values after QLoRA's second quantization (dequantized back)."""
    offset = absmax.mean()
    centred = absmax - offset
    absmax2 = _blockwise_absmax(centred, DOUBLE_QUANT_BLOCK)
    scaled = _scaled(centred, absmax2, DOUBLE_QUANT_BLOCK)
    code = torch.tensor(dynamic_map(), dtype=torch.float32, device=absmax.device)
    q = (scaled.unsqueeze(-1) - code).abs().argmin(dim=-1)  # nearest level
    per_value = absmax2.repeat_interleave(DOUBLE_QUANT_BLOCK)[: absmax.numel()]
    return code[q] * per_value + offset


def nf4_quantize_blocks(
    flat: Float[Tensor, " n"], block_size: int = 64, *, double_quant: bool = False
) -> Float[Tensor, " n"]:
    """NF4 of a 1-d tensor in blocks of ``block_size`` consecutive values, dequantized (float32).

    Example:
        >>> nf4_quantize_blocks(torch.tensor([1.0, -0.5, 0.2, 0.0]), 4)
        tensor([ 1.0000, -0.5251,  0.1609,  0.0000])
    """
    x = flat.reshape(-1).to(torch.float32)
    absmax = _blockwise_absmax(x, block_size)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=x.device)
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(_scaled(x, absmax, block_size), bounds)
    if double_quant:
        absmax = double_quantize_absmax(absmax)
    per_value = absmax.repeat_interleave(block_size)[: x.numel()]
    return code[q] * per_value


def nf4_quantize(
    w: Float[Tensor, "*shape"],
    block_size: int = 64,
    *,
    out_axes: Sequence[int],
    double_quant: bool = False,
) -> Float[Tensor, "*shape"]:
    """NF4 of a weight in any layout (blocks along its ``[out, in]`` rows), dequantized; a new
    tensor of ``w``'s dtype and shape.

    Example:
        >>> W_in = torch.tensor([[1.0, 0.2], [-0.5, 0.0]])  # [d_model, d_mlp]: rows are inputs
        >>> nf4_quantize(W_in, 4, out_axes=(1,))  # HF rows (1, -0.5), (0.2, 0) form one block
        tensor([[ 1.0000,  0.1609],
                [-0.5251,  0.0000]])
    """
    if not w.is_floating_point():
        raise CgcLensError(f"NF4 needs a floating-point weight, got dtype {w.dtype}.")
    mat = as_matrix(w, out_axes)
    flat = nf4_quantize_blocks(mat.reshape(-1), block_size, double_quant=double_quant)
    return from_matrix(flat.view(mat.shape), w.shape, out_axes).to(w.dtype).contiguous()


def _check_block_size(block_size: object) -> None:
    if (
        not isinstance(block_size, int)
        or isinstance(block_size, bool)
        or not 2 <= block_size <= 4096
    ):
        raise CgcLensError(
            f"block_size must be an int in 2..4096 (bitsandbytes uses 64; QLoRA 64), got "
            f"{block_size!r}."
        )


@register_operator
@dataclass(frozen=True)
class NF4(Operator):
    """NormalFloat4 with an absmax per block of consecutive ``[out, in]`` weights (QLoRA,
    bitsandbytes), optionally with the absmax double-quantized; dequantized in place.

    Example:
        >>> NF4()
        NF4(block_size=64, double_quant=False)
        >>> NF4().bits_per_weight((768, 768)), NF4(double_quant=True).bits_per_weight((768, 768))
        (4.5, 4.127007378472222)
    """

    name: ClassVar[str] = "nf4"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = None

    block_size: int = 64
    """Consecutive weights (row-major ``[out, in]``) sharing one absmax."""
    _: KW_ONLY
    double_quant: bool = False
    """Quantize the absmax values to 8 bits in blocks of 256 (QLoRA's double quantization)."""

    def __post_init__(self) -> None:
        _check_block_size(self.block_size)
        if not isinstance(self.double_quant, bool):
            raise CgcLensError(f"double_quant must be True or False, got {self.double_quant!r}.")

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """4 bits + the absmax per block (module :mod:`~cgc_lens.compress.operators.bits`)."""
        n_out, n_in = matrix_shape(shape, out_axes)
        return nf4_bits_per_weight(self.block_size, self.double_quant, n_out * n_in)

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        with torch.no_grad():
            weight.copy_(
                nf4_quantize(
                    weight, self.block_size, out_axes=ref.out_axes, double_quant=self.double_quant
                )
            )
        return EditStats(bits=4)
