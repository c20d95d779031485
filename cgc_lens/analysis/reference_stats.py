"""Reference-side statistics of the feature-survival audit (QDM paper, App. I and §3.7).

:class:`ReferenceAccumulator` streams the reference SAE activations into per-feature firing
counts, activation sums and a running maximum (float64 sums in O(d_sae) memory; see
:mod:`cgc_lens.analysis.accumulators` for the numerics), finished into :class:`ReferenceStats`:
the firing rate of the active filter (Eq. 4) and the fragility predictors of §3.7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.analysis.accumulator_base import CHUNK_ELEMENTS, FLAT_RTOL, SumAccumulator
from cgc_lens.errors import CgcLensError

__all__ = ["ReferenceAccumulator", "ReferenceStats"]


@dataclass(frozen=True, kw_only=True, eq=False)
class ReferenceStats:
    """Finished reference-side statistics: numpy arrays of shape ``[d_sae]``, float64 unless noted.

    Build it with :meth:`ReferenceAccumulator.stats` (or directly, e.g. in tests).
    """

    n_tokens: int
    """Token positions seen."""
    fire_count: np.ndarray
    """Positions where the activation is above the firing threshold (int64)."""
    sum_activation: np.ndarray
    """Σ_t x_t over all positions."""
    sum_activation_firing: np.ndarray
    """Σ_t x_t over firing positions."""
    sum_sq_firing: np.ndarray
    """Σ_t x_t² over firing positions."""
    peak_activation: np.ndarray
    """Running maximum of the activation over all positions (App. I)."""

    def __post_init__(self) -> None:
        if self.n_tokens < 1:
            raise CgcLensError(f"ReferenceStats needs n_tokens >= 1, got {self.n_tokens}.")
        shapes = {k: np.shape(getattr(self, k)) for k in _REF_ARRAYS}
        if len(set(shapes.values())) != 1 or len(shapes["fire_count"]) != 1:
            raise CgcLensError(f"ReferenceStats arrays must share one shape [d_sae], got {shapes}.")
        if (np.asarray(self.fire_count) > self.n_tokens).any():
            raise CgcLensError(f"fire_count exceeds n_tokens={self.n_tokens}.")

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return int(np.shape(self.fire_count)[0])

    @property
    def firing_rate(self) -> np.ndarray:
        """``fire_count / n_tokens``: the firing rate of Eq. 4."""
        return np.asarray(self.fire_count, dtype=np.float64) / self.n_tokens

    @property
    def mean_activation(self) -> np.ndarray:
        """Mean activation over all positions, ``Σ_t x_t / n_tokens``."""
        return np.asarray(self.sum_activation, dtype=np.float64) / self.n_tokens

    @property
    def mean_when_firing(self) -> np.ndarray:
        """Mean activation over firing positions (0 for a feature that never fires)."""
        count = np.asarray(self.fire_count)
        return np.where(count > 0, self.sum_activation_firing / np.maximum(count, 1), 0.0)

    @property
    def constant(self) -> np.ndarray:
        """Bool mask of the features constant over every position (zero variance to
        :data:`~cgc_lens.analysis.accumulator_base.FLAT_RTOL`; their r is no correlation).

        A feature that fires somewhere but not everywhere varies (its non-firing activations are
        at most the threshold, its firing ones above it); one that never fires is inactive. So an
        active constant feature fires at every position, at one value.

        Example:
            >>> s = ReferenceAccumulator(3).update(torch.tensor([[2.0, 1.0, 0.0],
            ...                                                  [2.0, 3.0, 0.0]])).stats()
            >>> s.constant.tolist()
            [True, False, False]
        """
        count = np.asarray(self.fire_count)
        total = np.asarray(self.sum_activation_firing, dtype=np.float64)
        sum_sq = np.asarray(self.sum_sq_firing, dtype=np.float64)
        var = sum_sq - total**2 / np.maximum(count, 1)
        return (count == self.n_tokens) & (count > 0) & (var <= FLAT_RTOL * sum_sq)

    @property
    def second_moment_when_firing(self) -> np.ndarray:
        """Mean of x² over firing positions (0 for a feature that never fires)."""
        count = np.asarray(self.fire_count)
        return np.where(count > 0, self.sum_sq_firing / np.maximum(count, 1), 0.0)


_REF_ARRAYS = (
    "fire_count", "sum_activation", "sum_activation_firing", "sum_sq_firing", "peak_activation"
)


class ReferenceAccumulator(SumAccumulator):
    """Reference-side firing counts, running max and activation sums (App. I, §3.7).

    Args:
        d_sae: number of SAE features.
        fire_threshold: a feature fires at a position when its activation is strictly above this
            (0 for ReLU / JumpReLU / TopK SAEs, whose non-firing activations are exactly 0).
        device: where the sums live; ``None`` adopts the device of the first batch.

    Example:
        >>> acc = ReferenceAccumulator(2)
        >>> _ = acc.update(torch.tensor([[0.0, 1.0], [2.0, 3.0], [0.0, 0.0], [0.0, 5.0]]))
        >>> stats = acc.stats()
        >>> stats.firing_rate.tolist(), stats.peak_activation.tolist()
        ([0.25, 0.75], [2.0, 5.0])
    """

    _FIELDS: ClassVar[dict[str, torch.dtype]] = {
        "fire_count": torch.int64,
        "sum_act": torch.float64,
        "sum_act_firing": torch.float64,
        "sum_sq_firing": torch.float64,
        "max_act": torch.float64,
    }
    _MAX_FIELDS: ClassVar[frozenset[str]] = frozenset({"max_act"})

    def __init__(
        self,
        d_sae: int,
        *,
        fire_threshold: float = 0.0,
        n_groups: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if not math.isfinite(fire_threshold):
            raise CgcLensError(f"fire_threshold must be finite, got {fire_threshold!r}.")
        self.fire_threshold = float(fire_threshold)
        super().__init__(d_sae, n_groups=n_groups, device=device)

    @classmethod
    def from_sums(
        cls,
        *,
        n_tokens: int | Tensor,
        fire_count: Tensor,
        sum_act: Tensor,
        sum_act_firing: Tensor,
        sum_sq_firing: Tensor,
        max_act: Tensor,
        fire_threshold: float = 0.0,
        device: torch.device | str | None = None,
        **groups: Tensor,
    ) -> ReferenceAccumulator:
        """An accumulator holding given sufficient statistics (each ``[d_sae]``).

        Merging it into another adds them exactly as :meth:`update` would have over the same
        positions. Tensors already on the target device in the target dtype are held, not
        copied.

        Args:
            n_tokens: token positions the statistics cover (an int or a 0-d tensor).
            fire_count: positions where the activation is above ``fire_threshold`` (int64).
            sum_act: Σ_t x_t over all positions (float64).
            sum_act_firing: Σ_t x_t over firing positions (float64).
            sum_sq_firing: Σ_t x_t² over firing positions (float64).
            max_act: the maximum activation over all positions (-inf for none; float64).
            fire_threshold: the threshold the counts were taken at.
            device: where the statistics live; ``None`` keeps the device of ``fire_count``.
            **groups: per-group sums, all or none: ``group_n_tokens`` ``[G]`` and
                ``group_fire_count``, ``group_sum_act``, ``group_sum_act_firing``,
                ``group_sum_sq_firing`` ``[G, d_sae]`` (``max_act`` is not kept per group).

        Example:
            >>> acc = ReferenceAccumulator(2).update(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
            >>> back = ReferenceAccumulator.from_sums(**acc.state_dict())
            >>> back.stats().fire_count.tolist(), back.n_tokens
            ([1, 2], 2)
        """
        fields = {"fire_count": fire_count, "sum_act": sum_act, "sum_act_firing": sum_act_firing,
                  "sum_sq_firing": sum_sq_firing, "max_act": max_act, **groups}
        return cls._from_fields(n_tokens, fields, fire_threshold=fire_threshold, device=device)

    def _settings(self) -> dict[str, object]:
        return {"fire_threshold": self.fire_threshold}

    @torch.no_grad()
    def update(
        self, ref: Float[Tensor, "*batch d_sae"], *, groups: int | Tensor | None = None
    ) -> ReferenceAccumulator:
        """Add one batch of reference SAE activations; returns ``self``. ``groups``: each
        position's group (or one int), required with ``n_groups > 0``, refused without."""
        (x_all,) = self._check_batch(ref)
        g_all = self._group_index(groups, x_all.shape[0], tuple(ref.shape[:-1]))
        if x_all.shape[0] == 0:
            return self
        s = self._state
        rows = max(1, CHUNK_ELEMENTS // self.d_sae)
        for start in range(0, x_all.shape[0], rows):
            x = x_all[start:start + rows].double()
            g = None if g_all is None else g_all[start:start + rows]
            fires = x > self.fire_threshold
            x_fire = torch.where(fires, x, 0.0)
            # an int64 copy only for the groups' index_add_ (the pooled count is the same)
            self._add("fire_count", fires if g is None else fires.long(), g)
            self._add("sum_act", x, g)
            self._add("sum_act_firing", x_fire, g)
            self._add("sum_sq_firing", x_fire * x_fire, g)
            torch.maximum(s["max_act"], x.amax(0), out=s["max_act"])
        self.n_tokens += x_all.shape[0]
        return self

    def stats(self) -> ReferenceStats:
        """Finish into :class:`ReferenceStats` (numpy, on CPU)."""
        s = self._require_tokens()
        return ReferenceStats(
            n_tokens=self.n_tokens,
            fire_count=s["fire_count"].astype(np.int64),
            sum_activation=s["sum_act"],
            sum_activation_firing=s["sum_act_firing"],
            sum_sq_firing=s["sum_sq_firing"],
            peak_activation=s["max_act"],
        )
