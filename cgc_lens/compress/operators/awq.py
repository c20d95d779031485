"""AWQ (Lin et al. 2024): activation-aware per-input-channel scales before group-wise RTN.

A weight ``W[out, in]`` that reads ``x`` is quantized as ``Ŵ = Q(W · diag(s)) · diag(s)⁻¹`` with
``s = mean_t|x_t|^α`` (normalised by ``sqrt(max s · min s)``, floored at 1e-4, as llm-awq's
``auto_scale`` does) and ``α`` searched on a grid ``i / n_grid, i = 0..n_grid-1`` (llm-awq's
20 points) for the smallest calibration output error ``||W X - Ŵ X||²``. That error is computed
exactly from ``Xᵀ X`` (``tr(ΔW XᵀX ΔWᵀ)``, float64), streamed like GPTQ's Hessian, so every
``α`` is scored on every calibration token without holding them. ``α = 0`` is plain RTN, so the
searched error is never above RTN's on the same grid.

The scales are simulated, not folded: ``Ŵ`` is written back in place of ``W`` and no
LayerNorm is touched. The weights of one block that read the same input (``W_Q/W_K/W_V``;
``W_in/W_gate``) share one ``s`` (one ``α``, searched on the sum of their errors), as in a
deployed AWQ checkpoint where ``s`` is folded into the norm before them. Differences from
llm-awq: the error is each weight's own output (llm-awq scores the output of the module
after them, e.g. the attention block), no weight clipping search follows, and block ``l``'s
inputs come from the model with blocks ``< l`` already quantized (llm-awq uses the scaled,
unquantized blocks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.calibration import INPUT_SITE
from cgc_lens.compress.layout import as_matrix, from_matrix
from cgc_lens.compress.operators.base import (
    EditStats,
    Operator,
    Phase,
    check_finite,
    register_operator,
)
from cgc_lens.compress.operators.bits import matrix_shape, rtn_bits_per_weight
from cgc_lens.compress.operators.gptq import check_quant_fields
from cgc_lens.compress.operators.grid import check_group_size, quantize_groups
from cgc_lens.compress.operators.hessian import Calibration, InputMoments, edit_layer_by_layer
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from jaxtyping import Int
    from transformer_lens import HookedTransformer

__all__ = ["AWQ", "awq_quantize", "awq_scales", "output_error"]


def output_error(delta: Float[Tensor, "out in"], xtx: Float[Tensor, "in in"]) -> float:
    """``||ΔW X||²`` summed over tokens and outputs, from ``Xᵀ X``: ``tr(ΔW XᵀX ΔWᵀ)``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # [tokens, in]
        >>> d = torch.tensor([[0.5, -1.0]])
        >>> output_error(d, x.T @ x), float(((d @ x.T) ** 2).sum())
        (3.25, 3.25)
    """
    d = delta.double()
    return float(((d @ xtx.double()) * d).sum())


def awq_scales(mean_abs: Float[Tensor, " d_in"], alpha: float) -> Float[Tensor, " d_in"]:
    """llm-awq's scales ``s = mean|x|^α``, floored at 1e-4, divided by ``sqrt(max s · min s)``.

    Example:
        >>> awq_scales(torch.tensor([1.0, 4.0]), 0.5)
        tensor([0.7071, 1.4142], dtype=torch.float64)
    """
    s = mean_abs.double().pow(alpha).clamp_min(1e-4)
    return s / (s.max() * s.min()).sqrt()


def _scaled_rtn(
    w: Tensor, s: Tensor, bits: int, *, group_size: int | None, symmetric: bool, name: str
) -> Tensor:
    """``Q(W · diag(s)) · diag(s)⁻¹`` in ``w``'s compute dtype."""
    s = s.to(w.dtype)
    return quantize_groups(w * s, bits, group_size, symmetric, name=name) / s


def awq_quantize(
    ws: Sequence[Float[Tensor, "out in"]],
    moments: InputMoments,
    bits: int,
    *,
    group_size: int | None = 128,
    symmetric: bool = False,
    n_grid: int = 20,
    names: Sequence[str] | None = None,
) -> tuple[list[Tensor], float, float]:
    """AWQ of the weights ``ws`` that read one input: (dequantized weights, α, error).

    Args:
        ws: ``[out, in]`` matrices sharing the input whose moments are ``moments``.
        moments: ``Xᵀ X`` and ``Σ|x|`` of that input over the calibration tokens.
        bits: 2..16.
        group_size: inputs per group (dividing ``in``), None for one group per row.
        symmetric: the symmetric grid, or the asymmetric one with zero points (AWQ's default).
        n_grid: ``α`` is searched over ``i / n_grid`` for ``i`` in ``0..n_grid-1``.
        names: the weights' names, for errors.

    Returns:
        The quantized weights (in each input's dtype), the chosen ``α``, and the summed
        output error ``Σ ||W X - Ŵ X||²`` at that ``α`` (ties go to the smaller ``α``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(256, 16, generator=g) * torch.linspace(0.1, 4, 16)
        >>> w = torch.randn(8, 16, generator=g)
        >>> m = InputMoments(x.T.double() @ x.double(), x.abs().sum(0).double(), 256)
        >>> _, alpha, err = awq_quantize([w], m, 3, group_size=8)
        >>> rtn = output_error(w - quantize_groups(w, 3, 8, False), m.xtx)
        >>> alpha > 0 and err < rtn
        True
    """
    names = list(names) if names is not None else [f"weight {i}" for i in range(len(ws))]
    best: tuple[list[Tensor], float, float] | None = None
    for i in range(n_grid):
        alpha = i / n_grid
        s = awq_scales(moments.mean_abs(), alpha)
        qs = []
        for w, name in zip(ws, names, strict=True):
            x = w.to(torch.float64 if w.dtype == torch.float64 else torch.float32)
            qs.append(
                _scaled_rtn(x, s, bits, group_size=group_size, symmetric=symmetric, name=name)
            )
        err = sum(
            output_error(w.double() - q.double(), moments.xtx) for w, q in zip(ws, qs, strict=True)
        )
        if best is None or err < best[2]:
            best = ([q.to(w.dtype) for q, w in zip(qs, ws, strict=True)], alpha, err)
    assert best is not None  # n_grid >= 1 is checked by AWQ
    return best


@register_operator
@dataclass(frozen=True)
class AWQ(Operator):
    """AWQ's activation-aware scales with group-wise RTN, calibrated layer by layer.

    Needs calibration: ``AWQ(4).calibrate(model, tokens)`` returns a copy bound to ``model``
    and ``tokens`` (not saved in JSON plans; calibrate after loading).

    Example:
        >>> AWQ(4)
        AWQ(bits=4, group_size=128, symmetric=False, n_grid=20)
    """

    name: ClassVar[str] = "awq"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = "bits"
    higher_is_harsher: ClassVar[bool] = False

    bits: int
    """Bit width, 2..16; 16 is the unquantized reference and touches nothing."""
    _: KW_ONLY
    group_size: int | None = 128
    """Inputs per scale group along each output row (must divide the input dimension); None
    for one group per output channel."""
    symmetric: bool = False
    """The symmetric grid, or the asymmetric one with zero points (llm-awq's default)."""
    n_grid: int = 20
    """Grid points of the ``α`` search (``i / n_grid``, ``i = 0..n_grid-1``; 1 = plain RTN)."""
    calibration: Calibration | None = field(
        default=None, repr=False, compare=False, metadata={"serialise": False}
    )
    """The bound model and tokens; None until :meth:`calibrate`."""

    def __post_init__(self) -> None:
        check_quant_fields(self.bits, self.group_size)
        if not isinstance(self.symmetric, bool):
            raise CgcLensError(f"symmetric must be True or False, got {self.symmetric!r}.")
        if not isinstance(self.n_grid, int) or isinstance(self.n_grid, bool) or self.n_grid < 1:
            raise CgcLensError(f"n_grid must be a positive int (llm-awq: 20), got {self.n_grid!r}.")

    @property
    def is_identity(self) -> bool:
        return self.bits == 16

    @property
    def needs_calibration(self) -> bool:
        """Whether :meth:`calibrate` must run before the operator is applied."""
        return self.calibration is None and not self.is_identity

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """Effective bits per weight: ``bits`` + (fp16 scale [+ ``bits``-bit zero]) / group.

        The per-input-channel ``s`` is folded into the norm before the weight when deployed,
        so it costs nothing here.

        Example:
            >>> AWQ(4).bits_per_weight((768, 768))
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
    ) -> AWQ:
        """A copy bound to ``model`` and ``tokens`` (``targets`` are checked, not needed)."""
        calibration = Calibration.of(model, tokens, batch_size, "AWQ")
        bound = dataclasses.replace(self, calibration=calibration)
        if targets is not None:  # a group size that does not divide a weight fails here
            bound.check_refs(targets.resolve(model))
        return bound

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        if self.is_identity:
            return
        if self.calibration is None:
            raise CgcLensError(
                "AWQ needs calibration tokens: use AWQ(bits).calibrate(model, tokens) before "
                "applying it."
            )
        model = self.calibration.model("AWQ")
        for ref in refs:
            shape = model.get_parameter(ref.param).shape
            check_group_size(self.group_size, matrix_shape(shape, ref.out_axes)[1], ref.param)

    def _edit_(
        self, weights: list[Tensor], refs: list[WeightRef], moments: list[InputMoments]
    ) -> None:
        groups: dict[tuple[str, tuple[int, ...] | None], list[int]] = {}
        for i, ref in enumerate(refs):  # W_O head subsets read different inputs
            key = (INPUT_SITE[ref.name], ref.heads if INPUT_SITE[ref.name] == "z" else None)
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            mats = [as_matrix(weights[i], refs[i].out_axes) for i in idx]
            qs, _, _ = awq_quantize(
                mats,
                moments[idx[0]],
                self.bits,
                group_size=self.group_size,
                symmetric=self.symmetric,
                n_grid=self.n_grid,
                names=[str(refs[i]) for i in idx],
            )
            for i, q in zip(idx, qs, strict=True):
                weights[i].copy_(from_matrix(q, weights[i].shape, refs[i].out_axes))

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        return self.apply_many_([weight], [ref])[0]

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        """AWQ of every weight, block by block in layer order."""
        self.check_refs(refs)
        if self.is_identity:
            return [EditStats(bits=self.bits)] * len(weights)
        for w, ref in zip(weights, refs, strict=True):
            if not w.is_floating_point():
                raise CgcLensError(f"AWQ needs a floating-point weight, got {w.dtype} for {ref}.")
            check_finite(w[None], [str(ref)])
        with torch.no_grad():
            edit_layer_by_layer(self.calibration, weights, refs, self._edit_, "AWQ")
        return [EditStats(bits=self.bits)] * len(weights)
