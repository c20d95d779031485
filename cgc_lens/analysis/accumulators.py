"""Streaming per-feature statistics for the feature-survival audit (QDM paper, App. I).

Two accumulators hold everything the audit needs in O(d_sae) memory, never tokens × features:

- :class:`PearsonAccumulator`: the float64 sufficient statistics of Eq. I.1 (n, Σx, Σy, Σx²,
  Σy², Σxy) for the reference SAE activations ``x`` and one condition's ``y`` on identical token
  positions, finished into Pearson r by Eq. I.2 (:meth:`PearsonAccumulator.pearson`).
- :class:`ReferenceAccumulator`: reference-side firing counts, running max and activation sums,
  finished into :class:`ReferenceStats` (firing rate for the active filter of Eq. 4, and the
  fragility predictors of §3.7).

Both live on the device of the activations they see (CPU or CUDA; float64 everywhere, so not MPS)
and share :class:`~cgc_lens.analysis.accumulator_base.SumAccumulator`'s state handling: ``update``
adds a batch, ``merge`` adds another accumulator of the same kind (exact: the merge of disjoint
shards is the accumulator of all their tokens), which is how shards of a run, other processes or
other machines are combined; ``from_sums`` builds one from its sufficient statistics given by name
(sums formed elsewhere, e.g. from sparse codes); ``state_dict`` gives the plain tensors (every
field is a SUM except ``max_act``, a MAX) for ``torch.distributed.all_reduce`` or for saving.
The reference side lives in :mod:`cgc_lens.analysis.reference_stats` and is re-exported here.

Numerics (why raw float64 sums are enough). Eq. I.2 subtracts ``Σx·Σx/n`` from ``Σx²``, which
cancels catastrophically when a feature's variance is tiny next to its squared mean. For an SAE
feature with firing rate p (activations ≥ 0, zero when not firing), ``(Σx)²/n ≤ p·Σx²``, so the
subtraction loses at most ``log10(1/(1-p))`` digits: none worth counting for sparse features. It
bites only for features firing on nearly every token at a nearly constant value; there float64
(≈16 digits) still resolves a relative variance ``var/E[x²]`` down to ≈1e-12, far below the
≈1e-7 relative rounding already present in float32 (≈1e-3 in bf16) activations, so the input,
not the accumulator, limits precision. Products are formed after the cast to float64, so ``x·y``
is never rounded to the input dtype. Below :data:`FLAT_RTOL` a variance is treated as zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import ClassVar, Literal, TypeVar

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.analysis.accumulator_base import CHUNK_ELEMENTS, FLAT_RTOL, SumAccumulator
from cgc_lens.analysis.reference_stats import ReferenceAccumulator, ReferenceStats
from cgc_lens.errors import CgcLensError

__all__ = [
    "FLAT_RTOL",
    "PearsonAccumulator",
    "ReferenceAccumulator",
    "ReferenceStats",
    "ZeroVariance",
    "merge_all",
]

_Acc = TypeVar("_Acc", bound=SumAccumulator)


class ZeroVariance(IntEnum):
    """Why a feature's r is not the ratio of Eq. I.2 (:meth:`PearsonAccumulator.zero_variance`).

    ``NONE``: both vary, r is Eq. I.2. ``FLAT_REFERENCE``: the reference is constant (e.g. dead),
    r undefined (NaN). ``FLAT_OTHER``: the reference varies but the condition is constant (the
    feature was switched off or pinned by compression); r is 0 by default (see ``flat_other``).
    ``FLAT_BOTH_EQUAL``: both constant at the same value, the pattern is reproduced exactly, r = 1.
    ``FLAT_BOTH_DIFFERENT``: both constant at different values, r undefined (NaN).
    """

    NONE = 0
    FLAT_REFERENCE = 1
    FLAT_OTHER = 2
    FLAT_BOTH_EQUAL = 3
    FLAT_BOTH_DIFFERENT = 4


class PearsonAccumulator(SumAccumulator):
    """Float64 sufficient statistics of Eq. I.1 for per-feature Pearson r (Eqs. 3, I.2).

    Args:
        d_sae: number of SAE features.
        device: where the sums live; ``None`` adopts the device of the first batch.

    Example:
        >>> acc = PearsonAccumulator(3)
        >>> x = torch.rand(50, 3)
        >>> acc.update(x, 2 * x + 1).update(x, 2 * x + 1).pearson().round(12).tolist()
        [1.0, 1.0, 1.0]
    """

    _FIELDS: ClassVar[dict[str, torch.dtype]] = {
        name: torch.float64 for name in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")
    }

    @classmethod
    def from_sums(
        cls,
        *,
        n_tokens: int | Tensor,
        sum_x: Tensor,
        sum_y: Tensor,
        sum_xx: Tensor,
        sum_yy: Tensor,
        sum_xy: Tensor,
        device: torch.device | str | None = None,
        **groups: Tensor,
    ) -> PearsonAccumulator:
        """An accumulator holding the sufficient statistics of Eq. I.1 (each ``[d_sae]``).

        The result is what :meth:`update` would hold after the same positions; tensors already
        on the target device in float64 are held, not copied.

        Args:
            n_tokens: token positions n the sums run over (an int or a 0-d tensor).
            sum_x: Σx, the reference activations summed over positions.
            sum_y: Σy, the condition's activations summed over positions.
            sum_xx: Σx², formed in float64.
            sum_yy: Σy², formed in float64.
            sum_xy: Σxy over identical positions, formed in float64.
            device: where the sums live; ``None`` keeps the device of ``sum_x``.
            **groups: per-group sums, all or none: ``group_n_tokens`` ``[G]`` and
                ``group_sum_x`` ... ``group_sum_xy`` ``[G, d_sae]`` (what :meth:`state_dict`
                holds for an accumulator with groups).

        Example:
            >>> x = torch.rand(20, 3)
            >>> acc = PearsonAccumulator(3).update(x, x + 1)
            >>> back = PearsonAccumulator.from_sums(**acc.state_dict())
            >>> bool((back.pearson() == acc.pearson()).all()), back.n_tokens
            (True, 20)
        """
        fields = {"sum_x": sum_x, "sum_y": sum_y, "sum_xx": sum_xx, "sum_yy": sum_yy,
                  "sum_xy": sum_xy, **groups}
        return cls._from_fields(n_tokens, fields, device=device)

    @torch.no_grad()
    def update(
        self,
        ref: Float[Tensor, "*batch d_sae"],
        other: Float[Tensor, "*batch d_sae"],
        *,
        groups: int | Int[Tensor, "*batch"] | None = None,
    ) -> PearsonAccumulator:
        """Add one batch: reference and condition SAE activations on identical positions.

        Leading dimensions (``batch pos`` or ``batch*pos``) are flattened; returns ``self``.
        ``groups`` (required with ``n_groups > 0``, refused without): each position's group
        in ``[0, n_groups)``, or one int for the whole batch.
        """
        x_all, y_all = self._check_batch(ref, other)
        g_all = self._group_index(groups, x_all.shape[0], tuple(ref.shape[:-1]))
        if x_all.shape[0] == 0:
            return self
        rows = max(1, CHUNK_ELEMENTS // self.d_sae)
        for start in range(0, x_all.shape[0], rows):
            x = x_all[start:start + rows].double()
            y = y_all[start:start + rows].double()
            g = None if g_all is None else g_all[start:start + rows]
            for name, part in (("sum_x", x), ("sum_y", y)):
                self._add(name, part, g)
            for name, (a, b) in (("sum_xx", (x, x)), ("sum_yy", (y, y)), ("sum_xy", (x, y))):
                self._add(name, a * b, g)  # one product held at a time
        self.n_tokens += x_all.shape[0]
        return self

    def _moments(self) -> tuple[np.ndarray, ...]:
        s = self._require_tokens()
        n = float(self.n_tokens)
        var_x = s["sum_xx"] - s["sum_x"] * s["sum_x"] / n  # n·Var(x), Eq. I.2 denominator
        var_y = s["sum_yy"] - s["sum_y"] * s["sum_y"] / n
        cov = s["sum_xy"] - s["sum_x"] * s["sum_y"] / n  # n·Cov(x, y), Eq. I.2 numerator
        flat_x = var_x <= FLAT_RTOL * s["sum_xx"]
        flat_y = var_y <= FLAT_RTOL * s["sum_yy"]
        return s["sum_x"], s["sum_y"], var_x, var_y, cov, flat_x, flat_y

    def zero_variance(self) -> np.ndarray:
        """Per-feature :class:`ZeroVariance` codes (int8, shape ``[d_sae]``)."""
        sum_x, sum_y, _, _, _, flat_x, flat_y = self._moments()
        scale = np.maximum(np.abs(sum_x), np.abs(sum_y))
        same_mean = np.abs(sum_x - sum_y) <= FLAT_RTOL * scale
        codes = np.full(self.d_sae, ZeroVariance.NONE, dtype=np.int8)
        codes[flat_x & ~flat_y] = ZeroVariance.FLAT_REFERENCE
        codes[~flat_x & flat_y] = ZeroVariance.FLAT_OTHER
        codes[flat_x & flat_y & same_mean] = ZeroVariance.FLAT_BOTH_EQUAL
        codes[flat_x & flat_y & ~same_mean] = ZeroVariance.FLAT_BOTH_DIFFERENT
        return codes

    def pearson(self, *, flat_other: Literal["damaged", "undefined"] = "damaged") -> np.ndarray:
        """Per-feature Pearson r (Eq. I.2) as a float64 numpy array of shape ``[d_sae]``.

        Zero-variance features follow :class:`ZeroVariance`: r = 1 when both are constant and
        equal, NaN (undefined: classified apart, never averaged) when the reference is constant
        or both are constant and differ. A reference that varies while the condition is flat has
        lost all of its pattern: ``flat_other="damaged"`` (default) gives it r = 0,
        ``"undefined"`` gives NaN. r is clipped to [-1, 1] against rounding.
        """
        if flat_other not in ("damaged", "undefined"):
            raise CgcLensError(f"flat_other must be 'damaged' or 'undefined', got {flat_other!r}.")
        _, _, var_x, var_y, cov, _, _ = self._moments()
        with np.errstate(divide="ignore", invalid="ignore"):
            # sqrt of the product, not a product of sqrts: the null x ≡ y then gives r = 1 exactly.
            r = np.clip(cov / np.sqrt(var_x * var_y), -1.0, 1.0)
        codes = self.zero_variance()
        r[codes == ZeroVariance.FLAT_REFERENCE] = np.nan
        r[codes == ZeroVariance.FLAT_BOTH_DIFFERENT] = np.nan
        r[codes == ZeroVariance.FLAT_BOTH_EQUAL] = 1.0
        r[codes == ZeroVariance.FLAT_OTHER] = 0.0 if flat_other == "damaged" else np.nan
        return r


def merge_all(accumulators: Sequence[_Acc]) -> _Acc:
    """A new accumulator holding the sum of ``accumulators`` (none of them is modified).

    Example:
        >>> a, b = PearsonAccumulator(2), PearsonAccumulator(2)
        >>> x = torch.rand(10, 2)
        >>> merge_all([a.update(x[:4], x[:4]), b.update(x[4:], x[4:])]).n_tokens
        10
    """
    if not accumulators:
        raise CgcLensError("merge_all needs at least one accumulator, got none.")
    out = accumulators[0].copy()
    for acc in accumulators[1:]:
        out.merge(acc)
    return out
