"""GPTQ (Frantar et al. 2023): quantize one input column at a time and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer-wise objective ``||W X - Ŵ X||²``.

:func:`gptq_quantize` is Algorithm 1 of the paper with the choices of the reference code
(IST-DASLab/gptq) and llm-compressor, on the HuggingFace ``[out, in]`` matrix:

- dead inputs (``H_ii == 0``: a feature that never fires) get ``H_ii = 1`` and ``W[:, i] = 0``;
- dampening ``λ = damp · mean(diag H)`` added to the diagonal;
- ``U`` = upper Cholesky factor of ``H⁻¹`` (Cholesky of ``H``, ``cholesky_inverse``, Cholesky
  again; float64 here), whose rows give every column's update (the paper's Eq. 4 with
  Cholesky reformulation, §"Step 3");
- lazy batches: the error of a block of ``block_size`` columns is applied to the remaining
  columns in one matrix product when the block is done (§"Step 2");
- groups are **static**: every group's scale and zero point come from the weight before any
  update, on the grid of :mod:`~cgc_lens.compress.operators.grid` (the reference's
  ``--static-groups``; llm-compressor's observer). With ``act_order`` the columns are visited
  by descending ``diag H`` while each keeps the group of its original position (llm-compressor's
  ``actorder="weight"``), so the result is stored as contiguous groups with no ``g_idx``.

The :class:`GPTQ` operator runs it layer by layer
(:func:`~cgc_lens.compress.operators.hessian.edit_layer_by_layer`): each block's Hessians are
collected from the model with the blocks before it already quantized. The restore contract is
the context's: :func:`~cgc_lens.compress.compressed` snapshots the weights and GPTQ edits
them in place.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix
from cgc_lens.compress.operators.base import (
    EditStats,
    Operator,
    Phase,
    check_finite,
    register_operator,
)
from cgc_lens.compress.operators.bits import matrix_shape, rtn_bits_per_weight
from cgc_lens.compress.operators.grid import check_group_size, fake_quantize, group_qparams
from cgc_lens.compress.operators.hessian import Calibration, InputMoments, edit_layer_by_layer
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from jaxtyping import Int
    from transformer_lens import HookedTransformer

__all__ = ["GPTQ", "check_quant_fields", "gptq_quantize", "inverse_hessian_factor"]


def inverse_hessian_factor(
    h: Float[Tensor, "d_in d_in"], damp: float, *, name: str = "this weight"
) -> tuple[Float[Tensor, "d_in d_in"], Tensor]:
    """(upper Cholesky factor of ``(H + λI)⁻¹`` in float64, dead-input mask) after the dead
    inputs of ``h`` got ``H_ii = 1`` and ``λ = damp · mean(diag H)`` was added.

    Example:
        >>> u, dead = inverse_hessian_factor(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), 0.0)
        >>> torch.diagonal(u), dead
        (tensor([0.5000, 1.0000], dtype=torch.float64), tensor([False,  True]))
    """
    h = h.to(torch.float64, copy=True)
    diag = torch.diagonal(h)
    dead = diag == 0
    diag.masked_fill_(dead, 1.0)
    diag.add_(damp * diag.mean())
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise CgcLensError(
            f"The Hessian of {name} is not positive definite after dampening by damp={damp} "
            "(its calibration inputs are linearly dependent); raise damp (GPTQ's default is "
            "0.01) or calibrate on more tokens."
        )
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True), dead


def _column_params(
    w: Tensor, bits: int, group_size: int | None, symmetric: bool, name: str
) -> tuple[Tensor, Tensor]:
    """Static per-column scale and zero ``[out, in]`` (each column its group's)."""
    scale, zero = group_qparams(w, bits, group_size, symmetric, name=name)
    width = group_size or w.shape[1]
    return scale.repeat_interleave(width, dim=1), zero.repeat_interleave(width, dim=1)


def gptq_quantize(
    w2d: Float[Tensor, "out in"],
    h: Float[Tensor, "in in"],
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = True,
    act_order: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    name: str = "this weight",
) -> Float[Tensor, "out in"]:
    """GPTQ of ``w2d`` under the Hessian ``h``: a new dequantized tensor of ``w2d``'s dtype.

    Args:
        w2d: the HuggingFace ``[out, in]`` matrix.
        h: ``2 Xᵀ X`` of its calibration inputs (any positive multiple gives the same result).
        bits: 2..16.
        group_size: inputs per group (dividing ``in``), None for one group per output row.
        symmetric: the symmetric grid, or the asymmetric one with zero points.
        act_order: visit columns by descending ``diag H`` (groups stay static).
        damp: dampening as a fraction of the mean diagonal.
        block_size: columns per lazy batch.
        name: the weight's name, for errors.

    Example:
        >>> from cgc_lens.compress.operators.grid import quantize_groups
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(64, 8, generator=g), torch.randn(4, 8, generator=g)
        >>> def err(q): return float(((w - q) @ x.T).square().sum())  # ||WX - ŴX||²
        >>> q = gptq_quantize(w, 2 * x.T @ x, 3, group_size=None)
        >>> err(q) < err(quantize_groups(w, 3, None, True))
        True
    """
    check_quant_fields(bits, group_size, damp, block_size)
    check_group_size(group_size, w2d.shape[1], name)
    if tuple(h.shape) != (w2d.shape[1], w2d.shape[1]):
        raise CgcLensError(
            f"The Hessian of {name} must be [{w2d.shape[1]}, {w2d.shape[1]}] "
            f"(its input dimension), got {tuple(h.shape)}."
        )
    dtype = torch.float64 if w2d.dtype == torch.float64 else torch.float32
    u, dead = inverse_hessian_factor(h, damp, name=name)
    w = w2d.to(dtype, copy=True)
    scale, zero = _column_params(w, bits, group_size, symmetric, name)  # before dead zeroing
    w[:, dead] = 0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(h.double()), descending=True, stable=True)
        u, _ = inverse_hessian_factor(h[perm][:, perm], damp, name=name)
        w, scale, zero = w[:, perm], scale[:, perm], zero[:, perm]
    _lazy_batches_(
        w, u.to(dtype), scale, zero, bits=bits, symmetric=symmetric, block_size=block_size
    )
    if perm is not None:
        w = w[:, torch.argsort(perm)]
    return w.to(w2d.dtype)


def _lazy_batches_(
    w: Tensor,
    u: Tensor,
    scale: Tensor,
    zero: Tensor,
    *,
    bits: int,
    symmetric: bool,
    block_size: int,
) -> None:
    """Quantize ``w`` in place, column by column, with the updates of each block batched."""
    n_in = w.shape[1]
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        block = w[:, i1:i2].clone()
        err = torch.empty_like(block)
        u_block = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = block[:, i]
            q = fake_quantize(col, scale[:, i1 + i], zero[:, i1 + i], bits, symmetric)
            e = (col - q).div_(u_block[i, i])
            block[:, i:].sub_(e[:, None] * u_block[i, i:][None, :])
            block[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = block
        if i2 < n_in:
            w[:, i2:].sub_(err @ u[i1:i2, i2:])


def check_quant_fields(
    bits: object, group_size: object, damp: object = 0.0, block_size: object = 1
) -> None:
    """Raise :class:`~cgc_lens.errors.CgcLensError` on a bad level, group size, damp or block.

    Example:
        >>> check_quant_fields(4, 0)
        Traceback (most recent call last):
        ...
        cgc_lens.errors.CgcLensError: group_size must be a positive int or None, got 0.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise CgcLensError(
            f"bits must be an int in 2..16 (16 = unquantized reference), got {bits!r}."
        )
    if group_size is not None and (
        not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1
    ):
        raise CgcLensError(f"group_size must be a positive int or None, got {group_size!r}.")
    if (
        not isinstance(damp, int | float)
        or isinstance(damp, bool)
        or not (math.isfinite(damp) and damp >= 0)
    ):
        raise CgcLensError(
            f"damp must be a number in [0, inf) (GPTQ's default 0.01), got {damp!r}."
        )
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise CgcLensError(f"block_size must be a positive int, got {block_size!r}.")


@register_operator
@dataclass(frozen=True)
class GPTQ(Operator):
    """GPTQ, calibrated layer by layer on calibration tokens (see the module docstring).

    Needs calibration: ``GPTQ(4).calibrate(model, tokens)`` returns a copy bound to ``model``
    and ``tokens`` (not saved in JSON plans; calibrate after loading). The inputs are collected
    when it is applied, block by block, from the model as it is then.

    Example:
        >>> GPTQ(4, group_size=128, symmetric=False)
        GPTQ(bits=4, group_size=128, symmetric=False, act_order=False, damp=0.01, block_size=128)
    """

    name: ClassVar[str] = "gptq"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = "bits"
    higher_is_harsher: ClassVar[bool] = False

    bits: int
    """Bit width, 2..16; 16 is the unquantized reference and touches nothing."""
    _: KW_ONLY
    group_size: int | None = 128
    """Inputs per scale group along each output row (must divide the input dimension); None
    for one group per output channel."""
    symmetric: bool = True
    """The symmetric grid (no zero point), or the asymmetric one with integer zero points."""
    act_order: bool = False
    """Quantize columns by descending ``diag H`` (static groups kept)."""
    damp: float = 0.01
    """Dampening ``λ = damp · mean(diag H)``."""
    block_size: int = 128
    """Columns per lazy batch."""
    calibration: Calibration | None = field(
        default=None, repr=False, compare=False, metadata={"serialise": False}
    )
    """The bound model and tokens; None until :meth:`calibrate`."""

    def __post_init__(self) -> None:
        check_quant_fields(self.bits, self.group_size, self.damp, self.block_size)
        for flag in ("symmetric", "act_order"):
            if not isinstance(getattr(self, flag), bool):
                raise CgcLensError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")

    @property
    def is_identity(self) -> bool:
        return self.bits == 16

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run before the operator is applied."""
        return self.calibration is None and not self.is_identity

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """Effective bits per weight: ``bits`` + (fp16 scale [+ ``bits``-bit zero]) / group.

        Example:
            >>> GPTQ(4, symmetric=False).bits_per_weight((768, 768))
            4.15625
        """
        return rtn_bits_per_weight(
            self.bits, shape, out_axes, group_size=self.group_size, symmetric=self.symmetric
        )

    def calibrate(
        self,
        model: HookedTransformer,
        tokens: Int[Tensor, "batch pos"],
        targets: Targets | None = None,
        *,
        batch_size: int = 8,
    ) -> GPTQ:
        """A copy bound to ``model`` and ``tokens`` (``targets`` are checked, not needed)."""
        calibration = Calibration.of(model, tokens, batch_size, "GPTQ")
        bound = dataclasses.replace(self, calibration=calibration)
        if targets is not None:  # a group size that does not divide a weight fails here
            bound.check_refs(targets.resolve(model))
        return bound

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        if self.is_identity:
            return
        if self.calibration is None:
            raise CgcLensError(
                "GPTQ needs calibration tokens: use GPTQ(bits).calibrate(model, tokens) "
                "before applying it."
            )
        model = self.calibration.model("GPTQ")
        for ref in refs:
            shape = model.get_parameter(ref.param).shape
            check_group_size(self.group_size, matrix_shape(shape, ref.out_axes)[1], ref.param)

    def _edit_(
        self, weights: list[Tensor], refs: list[WeightRef], moments: list[InputMoments]
    ) -> None:
        for weight, ref, m in zip(weights, refs, moments, strict=True):
            mat = as_matrix(weight, ref.out_axes)
            q = gptq_quantize(
                mat,
                m.hessian(),
                self.bits,
                group_size=self.group_size,
                symmetric=self.symmetric,
                act_order=self.act_order,
                damp=self.damp,
                block_size=self.block_size,
                name=str(ref),
            )
            weight.copy_(from_matrix(q, weight.shape, ref.out_axes))

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        return self.apply_many_([weight], [ref])[0]

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        """GPTQ of every weight, block by block in layer order (sequential calibration)."""
        self.check_refs(refs)
        if self.is_identity:
            return [EditStats(bits=self.bits)] * len(weights)
        for w, ref in zip(weights, refs, strict=True):
            if not w.is_floating_point():
                raise CgcLensError(f"GPTQ needs a floating-point weight, got {w.dtype} for {ref}.")
            check_finite(w[None], [str(ref)])
        with torch.no_grad():
            edit_layer_by_layer(self.calibration, weights, refs, self._edit_, "GPTQ")
        return [EditStats(bits=self.bits)] * len(weights)
