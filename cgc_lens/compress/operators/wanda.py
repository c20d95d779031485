"""Wanda pruning (Sun et al. 2024): zero the lowest ``|W_ij| * ||X_j||_2`` in each output row.

The input norms ``||X_j||_2`` come from :mod:`cgc_lens.compress.calibration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.calibration import InputNorms, collect_input_norms
from cgc_lens.compress.layout import HEAD_AXIS, as_matrix, from_matrix, in_axes
from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.sparsity import check_fraction, measured_sparsity, n_pruned
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from jaxtyping import Int
    from transformer_lens import HookedTransformer

__all__ = ["WandaPrune", "wanda_prune_", "wanda_scores"]


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


@register_operator
@dataclass(frozen=True)
class WandaPrune(Operator):
    """Wanda: zero the lowest ``|W_ij| * ||X_j||_2`` within each output row.

    Needs input norms from calibration tokens: ``WandaPrune(0.5).calibrate(model, tokens)``
    returns a calibrated copy (norms are not saved in JSON plans; calibrate after loading).
    """

    name: ClassVar[str] = "wanda"
    phase: ClassVar[Phase] = "prune"
    level_field: ClassVar[str | None] = "sparsity"

    sparsity: float
    """Fraction of each output row zeroed, in [0, 1)."""
    _: KW_ONLY
    input_norms: InputNorms | None = field(
        default=None, repr=False, compare=False, metadata={"serialise": False}
    )
    """Norms from :func:`~cgc_lens.compress.collect_input_norms`; None until calibrated."""

    def __post_init__(self) -> None:
        check_fraction(self.sparsity, "sparsity", closed=False)

    @property
    def is_identity(self) -> bool:
        return self.sparsity == 0

    def calibrate(
        self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
        targets: Targets | None = None, *, batch_size: int = 8,
    ) -> WandaPrune:
        """A copy holding the input norms of ``targets`` (default: every block weight)."""
        norms = collect_input_norms(model, tokens, targets, batch_size=batch_size)
        return dataclasses.replace(self, input_norms=norms)

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        if self.is_identity:
            return
        if self.input_norms is None:
            raise CgcLensError(
                "WandaPrune needs input norms: use WandaPrune(s).calibrate(model, tokens) "
                "(or Plan.calibrate) on calibration tokens before applying it."
            )
        if self.input_norms.n_tokens < 1:
            raise CgcLensError(
                f"WandaPrune's input norms were collected over {self.input_norms.n_tokens} "
                "tokens; calibrate on at least one token: "
                "WandaPrune(s).calibrate(model, tokens) with non-empty tokens."
            )
        for ref in refs:
            self.input_norms.for_weight(ref.layer, ref.name)  # raises if missing

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        self.check_refs([ref])
        if self.is_identity:
            return EditStats(sparsity=measured_sparsity(weight))
        norms = self.input_norms.for_weight(ref.layer, ref.name)  # type: ignore[union-attr]
        if ref.heads is not None and HEAD_AXIS in in_axes(weight.ndim, ref.out_axes):
            norms = norms[list(ref.heads)]
        with torch.no_grad():
            wanda_prune_(weight, norms.to(weight.device), self.sparsity, out_axes=ref.out_axes)
        return EditStats(sparsity=measured_sparsity(weight))
