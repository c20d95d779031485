"""Effective bits per weight of each storage format, scales and zero points included, so that
formats compare at equal size.

Storage assumed (what a deployed checkpoint of each format holds):

- dense reference: float16, 16 bits.
- RTN / GPTQ / AWQ int-``b``: ``b`` bits per weight, a float16 scale per group (one group per
  output channel when ``group_size`` is None) and, when asymmetric, a ``b``-bit zero point per
  group (compressed-tensors' pack-quantized layout).
- NF4 (bitsandbytes / QLoRA): 4 bits per weight and a float32 absmax per block; with double
  quantization the absmax is stored in 8 bits, with a float32 constant per 256 absmax values
  and one float32 offset (the absmax mean) per tensor.
- FP8: 8 bits per weight, a float32 scale per output channel (``"channel"``) or per tensor.
- n:m semi-structured sparsity (NVIDIA's sparse format): the ``n`` kept values of every ``m``
  in float16, plus ``ceil(log2 m)`` index bits per kept value (2 for 2:4): 9 bits for 2:4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cgc_lens.compress.layout import in_axes

__all__ = [
    "DENSE_BITS",
    "SCALE_BITS",
    "fp8_bits_per_weight",
    "matrix_shape",
    "nf4_bits_per_weight",
    "rtn_bits_per_weight",
    "semi_structured_bits_per_weight",
]

DENSE_BITS = 16
"""Bits of an unquantized (float16) weight, and of the kept values of a sparse format."""
SCALE_BITS = 16
"""Bits of one integer-grid scale (float16, as GPTQ / AWQ / compressed-tensors store them)."""
FP32_BITS = 32
"""Bits of a float32 constant (NF4 absmax, FP8 scale)."""


def matrix_shape(shape: Sequence[int], out_axes: Sequence[int] | None = None) -> tuple[int, int]:
    """``(out, in)`` of the HuggingFace matrix of a weight of ``shape``.

    Args:
        shape: the TransformerLens shape, or ``(out, in)`` itself when ``out_axes`` is None.
        out_axes: the weight's output axes (see :data:`cgc_lens.compress.OUT_AXES`).

    Example:
        >>> matrix_shape((12, 768, 64), (0, 2))  # W_Q of GPT-2
        (768, 768)
    """
    shape = tuple(int(n) for n in shape)
    if out_axes is None:
        n_out, n_in = shape
        return n_out, n_in
    inn = in_axes(len(shape), out_axes)
    n_in = math.prod(shape[a] for a in inn)
    return math.prod(shape) // max(1, n_in), n_in


def rtn_bits_per_weight(
    bits: int,
    shape: Sequence[int],
    out_axes: Sequence[int] | None = None,
    *,
    group_size: int | None = None,
    symmetric: bool = True,
) -> float:
    """``bits`` + (16-bit scale [+ ``bits``-bit zero point]) / group size; 16 when ``bits`` is
    16 (the unquantized reference).

    Example:
        >>> rtn_bits_per_weight(4, (768, 768), group_size=128, symmetric=False)
        4.15625
    """
    if bits >= DENSE_BITS:
        return float(DENSE_BITS)
    _, n_in = matrix_shape(shape, out_axes)
    per_group = SCALE_BITS + (0 if symmetric else bits)
    return bits + per_group / (group_size or n_in)


def nf4_bits_per_weight(block_size: int, double_quant: bool, numel: int) -> float:
    """4 + absmax bits per block (QLoRA's 4.5 at block 64, 4.127 with double quantization).

    Example:
        >>> nf4_bits_per_weight(64, False, 768 * 768), round(
        ...     nf4_bits_per_weight(64, True, 768 * 768), 5)
        (4.5, 4.12701)
    """
    if not double_quant:
        return 4 + FP32_BITS / block_size
    return 4 + 8 / block_size + FP32_BITS / (block_size * 256) + FP32_BITS / numel


def fp8_bits_per_weight(
    scale: str, shape: Sequence[int], out_axes: Sequence[int] | None = None
) -> float:
    """8 + 32 / (inputs per output channel) (``"channel"``) or 8 + 32 / numel (``"tensor"``).

    Example:
        >>> fp8_bits_per_weight("channel", (768, 3072))
        8.010416666666666
    """
    n_out, n_in = matrix_shape(shape, out_axes)
    return 8 + FP32_BITS / (n_in if scale == "channel" else n_out * n_in)


def semi_structured_bits_per_weight(n: int, m: int) -> float:
    """16-bit kept values and ``ceil(log2 m)`` index bits per kept value, per weight.

    Example:
        >>> semi_structured_bits_per_weight(2, 4), semi_structured_bits_per_weight(4, 8)
        (9.0, 9.5)
    """
    if n == m:
        return float(DENSE_BITS)
    return (DENSE_BITS + math.ceil(math.log2(m))) * n / m
