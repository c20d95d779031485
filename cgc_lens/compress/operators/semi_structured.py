"""n:m semi-structured sparsity (2:4, 4:8): the :class:`SemiStructured` operator.

In every group of ``m`` consecutive input weights of each output row of the HuggingFace
``[out, in]`` matrix (the layout NVIDIA's sparse tensor cores read), the ``n`` largest scores
are kept and the rest zeroed. Scores are ``|W_ij|`` (``"magnitude"``) or Wanda's
``|W_ij| * ||X_j||_2`` (``"wanda"``, Sun et al. 2024, whose 2:4 results use exactly this
per-group comparison); ties go to the earliest input of the group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.calibration import InputNorms, collect_input_norms
from cgc_lens.compress.layout import HEAD_AXIS, as_matrix, from_matrix, in_axes
from cgc_lens.compress.operators.base import EditStats, Operator, Phase, register_operator
from cgc_lens.compress.operators.bits import semi_structured_bits_per_weight
from cgc_lens.compress.operators.grid import valid_group_sizes
from cgc_lens.compress.operators.sparsity import measured_sparsity
from cgc_lens.compress.operators.wanda import wanda_scores
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    from jaxtyping import Int
    from transformer_lens import HookedTransformer

__all__ = ["SCORES", "Score", "SemiStructured", "semi_structured_mask", "semi_structured_prune_"]

Score = Literal["magnitude", "wanda"]
SCORES: tuple[str, ...] = get_args(Score)


def semi_structured_mask(
    scores: Float[Tensor, "out in"], n: int, m: int, *, name: str = "this weight"
) -> Tensor:
    """Boolean ``[out, in]`` mask keeping the ``n`` highest scores of every ``m`` consecutive
    inputs of each row (ties: the earliest input).

    Example:
        >>> semi_structured_mask(torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0, 5.0, 5.0, 1.0]]), 2, 4)
        tensor([[ True, False,  True, False, False,  True,  True, False]])
    """
    n_out, n_in = scores.shape
    if n_in % m:
        sizes = [d for d in valid_group_sizes(n_in) if d > 1]
        raise CgcLensError(
            f"{n}:{m} sparsity needs m to divide the input dimension {n_in} of {name}; "
            f"m that divide it: {sizes}."
        )
    groups = scores.reshape(n_out, n_in // m, m)
    order = torch.sort(groups, dim=2, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(2, order, True).view(n_out, n_in)


def semi_structured_prune_(
    w: Float[Tensor, "*shape"],
    n: int,
    m: int,
    *,
    out_axes: Sequence[int],
    input_norms: Tensor | None = None,
    name: str = "this weight",
) -> Float[Tensor, "*shape"]:
    """Zero all but the ``n`` highest scores in every ``m`` consecutive inputs, in place.

    Args:
        w: a weight in TransformerLens layout.
        n: weights kept per group.
        m: group length along the inputs.
        out_axes: the weight's output axes.
        input_norms: ``||X_j||_2`` shaped like the weight's input axes for Wanda scores; None
            for magnitude.
        name: the weight's name, for the error when ``m`` does not divide its inputs.

    Example:
        >>> W_in = torch.tensor([[1.0], [-3.0], [0.5], [2.0]])  # [d_model=4, d_mlp=1]
        >>> semi_structured_prune_(W_in, 2, 4, out_axes=(1,)).flatten()
        tensor([ 0., -3.,  0.,  2.])
    """
    if input_norms is None:
        scores = w.detach().abs()
    else:
        scores = wanda_scores(w, input_norms, out_axes=out_axes)
    mask = semi_structured_mask(as_matrix(scores.float(), out_axes), n, m, name=name)
    w.masked_fill_(~from_matrix(mask, w.shape, out_axes), 0)
    return w


@register_operator
@dataclass(frozen=True)
class SemiStructured(Operator):
    """n:m semi-structured pruning along each output row's inputs (2:4, 4:8), by magnitude
    or by Wanda score (then calibrate first, as :class:`~cgc_lens.compress.WandaPrune`).

    Example:
        >>> SemiStructured()
        SemiStructured(n=2, m=4, score='magnitude')
        >>> SemiStructured(2, 4).bits_per_weight((768, 768))  # 16-bit values + 2-bit indices
        9.0
    """

    name: ClassVar[str] = "semi_structured"
    phase: ClassVar[Phase] = "prune"
    level_field: ClassVar[str | None] = None

    n: int = 2
    """Weights kept in each group."""
    m: int = 4
    """Consecutive inputs per group; must divide every edited weight's input dimension."""
    _: KW_ONLY
    score: Score = "magnitude"
    """``"magnitude"`` (``|W|``) or ``"wanda"`` (``|W| * ||X||``, needs calibration)."""
    input_norms: InputNorms | None = field(
        default=None, repr=False, compare=False, metadata={"serialise": False}
    )
    """Norms from :func:`~cgc_lens.compress.collect_input_norms` (``"wanda"`` only)."""

    def __post_init__(self) -> None:
        for what, value, low in (("m", self.m, 1), ("n", self.n, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise CgcLensError(f"{what} must be an int in {low}.., got {value!r}.")
        if not 1 <= self.n <= self.m:
            raise CgcLensError(f"n must be an int in 1..m ({self.m}), got {self.n!r}.")
        if self.score not in SCORES:
            raise unknown_name("semi-structured score", self.score, SCORES)

    @property
    def is_identity(self) -> bool:
        return self.n == self.m

    @property
    def sparsity(self) -> float:
        """The fraction of every group zeroed, ``1 - n / m``."""
        return 1 - self.n / self.m

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """16-bit kept values + index metadata (:mod:`~cgc_lens.compress.operators.bits`)."""
        return semi_structured_bits_per_weight(self.n, self.m)

    def calibrate(
        self,
        model: HookedTransformer,
        tokens: Int[Tensor, "batch pos"],
        targets: Targets | None = None,
        *,
        batch_size: int = 8,
    ) -> SemiStructured:
        """A copy holding the input norms of ``targets`` (needed by ``score="wanda"``)."""
        norms = collect_input_norms(model, tokens, targets, batch_size=batch_size)
        return dataclasses.replace(self, input_norms=norms)

    def check_refs(self, refs: Sequence[WeightRef]) -> None:
        if self.is_identity or self.score != "wanda":
            return
        if self.input_norms is None or self.input_norms.n_tokens < 1:
            raise CgcLensError(
                f"SemiStructured({self.n}, {self.m}, score='wanda') needs input norms over at "
                "least one token: use .calibrate(model, tokens) (or Plan.calibrate) first."
            )
        for ref in refs:
            self.input_norms.for_weight(ref.layer, ref.name)  # raises if missing

    def _norms(self, weight: Tensor, ref: WeightRef) -> Tensor | None:
        if self.score != "wanda":
            return None
        norms = self.input_norms.for_weight(ref.layer, ref.name)  # type: ignore[union-attr]
        if ref.heads is not None and HEAD_AXIS in in_axes(weight.ndim, ref.out_axes):
            norms = norms[list(ref.heads)]
        return norms.to(weight.device)

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        return self.apply_many_([weight], [ref])[0]

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        self.check_refs(refs)
        if self.is_identity:
            return [EditStats(sparsity=measured_sparsity(w)) for w in weights]
        for w, ref in zip(weights, refs, strict=True):  # every weight checked before any edit
            n_in = as_matrix(w, ref.out_axes).shape[1]
            if n_in % self.m:
                semi_structured_mask(w.new_zeros(1, n_in), self.n, self.m, name=str(ref))
        with torch.no_grad():
            for w, ref in zip(weights, refs, strict=True):
                semi_structured_prune_(
                    w,
                    self.n,
                    self.m,
                    out_axes=ref.out_axes,
                    input_norms=self._norms(w, ref),
                    name=str(ref),
                )
        return [EditStats(sparsity=measured_sparsity(w)) for w in weights]
