"""Streaming per-feature statistics for the feature-survival audit (QDM paper, App. I).

Two accumulators hold everything the audit needs in O(d_sae) memory, never tokens × features:

- :class:`PearsonAccumulator`: the float64 sufficient statistics of Eq. I.1 (n, Σx, Σy, Σx²,
  Σy², Σxy) for the reference SAE activations ``x`` and one condition's ``y`` on identical token
  positions, finished into Pearson r by Eq. I.2 (:meth:`PearsonAccumulator.pearson`).
- :class:`ReferenceAccumulator`: reference-side firing counts, running max and activation sums,
  finished into :class:`ReferenceStats` (firing rate for the active filter of Eq. 4, and the
  fragility predictors of §3.7).

Both live on the device of the activations they see (CPU or CUDA; float64 everywhere, so not MPS)
and :meth:`merge` adds another accumulator of the same kind, which is how shards of a run, other
processes or other machines are combined; :meth:`state_dict` gives the plain tensors (every field
is a SUM except ``max_act``, a MAX) for ``torch.distributed.all_reduce`` or for saving.

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

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = [
    "FLAT_RTOL",
    "PearsonAccumulator",
    "ReferenceAccumulator",
    "ReferenceStats",
    "ZeroVariance",
    "merge_all",
]

FLAT_RTOL = 1e-10
"""A feature is flat (zero variance) when ``Σx² − (Σx)²/n ≤ FLAT_RTOL · Σx²``: the float64 sums
cannot resolve a smaller relative variance (see the module docstring)."""

_CHUNK_ELEMENTS = 1 << 24  # float64 temporaries per update chunk: 128 MiB each, whatever d_sae


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


def _resolve(device: torch.device | str) -> torch.device:
    """The concrete device tensors report (``"cuda"`` → ``cuda:0``), for exact comparisons."""
    return torch.empty(0, device=device).device


class _Accumulator:
    """Shared state handling: float64 tensors on one device, summed (or maxed) on merge."""

    _FIELDS: ClassVar[dict[str, torch.dtype]] = {}
    _MAX_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, d_sae: int, *, device: torch.device | str | None = None) -> None:
        if not isinstance(d_sae, int) or isinstance(d_sae, bool) or d_sae < 1:
            raise CgcLensError(f"d_sae must be a positive int, got {d_sae!r}.")
        self.d_sae = d_sae
        self.n_tokens = 0
        self.device = None if device is None else _resolve(device)
        self._state: dict[str, Tensor] = {}
        if self.device is not None:
            self._allocate(self.device)

    def _allocate(self, device: torch.device) -> None:
        self.device = device
        for name, dtype in self._FIELDS.items():
            fill = -math.inf if name in self._MAX_FIELDS else 0
            self._state[name] = torch.full((self.d_sae,), fill, dtype=dtype, device=device)

    def _check_batch(self, *acts: Tensor) -> list[Tensor]:
        first = acts[0]
        for a in acts:
            if not isinstance(a, Tensor) or not a.is_floating_point():
                got = a.dtype if isinstance(a, Tensor) else type(a).__name__
                raise CgcLensError(f"Expected floating-point torch tensors, got {got}.")
            if a.shape != first.shape:
                raise CgcLensError(
                    f"Reference and condition activations must cover identical positions: "
                    f"got shapes {tuple(first.shape)} and {tuple(a.shape)}."
                )
            if a.device != first.device:
                raise CgcLensError(f"Activations on different devices: {first.device}, {a.device}.")
        if first.ndim < 1 or first.shape[-1] != self.d_sae:
            raise CgcLensError(
                f"Expected activations [..., d_sae={self.d_sae}], got shape {tuple(first.shape)}."
            )
        if self.device is None:
            self._allocate(first.device)
        elif first.device != self.device:
            raise CgcLensError(
                f"This accumulator lives on {self.device}; got activations on {first.device}. "
                "Move one of them (accumulator.to(device))."
            )
        return [a.reshape(-1, self.d_sae) for a in acts]

    def _chunks(self, rows: Tensor) -> list[Tensor]:
        """Row slices small enough that float64 temporaries stay near _CHUNK_ELEMENTS."""
        return list(rows.split(max(1, _CHUNK_ELEMENTS // self.d_sae)))

    def _settings(self) -> dict[str, object]:
        return {}

    def merge(self, other: _Accumulator) -> _Accumulator:
        """Add ``other``'s statistics to this accumulator in place and return ``self``.

        Sums add and running maxima take the maximum, so merging the accumulators of disjoint
        shards of the tokens gives exactly the accumulator of all of them (up to float64 rounding).
        """
        if type(other) is not type(self):
            raise CgcLensError(f"Cannot merge {type(other).__name__} into {type(self).__name__}.")
        if other.d_sae != self.d_sae or other._settings() != self._settings():
            raise CgcLensError(
                f"Cannot merge accumulators with different settings: expected d_sae={self.d_sae}, "
                f"{self._settings()}; got d_sae={other.d_sae}, {other._settings()}."
            )
        if other.n_tokens == 0:
            return self
        if self.device is None:
            self._allocate(other.device)  # type: ignore[arg-type]
        for name, other_value in other._state.items():
            value = other_value.to(self.device)
            if name in self._MAX_FIELDS:
                torch.maximum(self._state[name], value, out=self._state[name])
            else:
                self._state[name] += value
        self.n_tokens += other.n_tokens
        return self

    def copy(self) -> _Accumulator:
        """An independent copy (same device)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._state = {k: v.clone() for k, v in self._state.items()}
        return new

    def to(self, device: torch.device | str) -> _Accumulator:
        """Move the statistics to ``device`` in place and return ``self``."""
        self.device = _resolve(device)
        self._state = {k: v.to(self.device) for k, v in self._state.items()}
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The raw statistics, plus ``n_tokens`` as a 0-d int64 tensor (every entry sums across
        shards except ``max_act``, which takes the maximum)."""
        out = {k: v.clone() for k, v in self._state.items()}
        out["n_tokens"] = torch.tensor(self.n_tokens, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> _Accumulator:
        """Replace the statistics with ``state`` (from :meth:`state_dict`, e.g. after an
        all-reduce); returns ``self``. Settings such as ``fire_threshold`` come from the
        constructor and must match those of the accumulators that produced ``state``."""
        expected = {*self._FIELDS, "n_tokens"}
        if set(state) != expected:
            raise CgcLensError(f"Expected state keys {sorted(expected)}, got {sorted(state)}.")
        for name in self._FIELDS:
            shape = tuple(state[name].shape)
            if shape != (self.d_sae,):
                raise CgcLensError(f"State {name!r}: expected shape ({self.d_sae},), got {shape}.")
        device = self.device or state[next(iter(self._FIELDS))].device
        self._state = {k: state[k].to(device=device, dtype=t) for k, t in self._FIELDS.items()}
        self.device = device
        self.n_tokens = int(state["n_tokens"])
        return self

    def _require_tokens(self) -> dict[str, np.ndarray]:
        if self.n_tokens == 0:
            raise CgcLensError(f"{type(self).__name__} has seen no tokens; call update() first.")
        state = {k: v.detach().cpu().numpy() for k, v in self._state.items()}
        sums = {k: v for k, v in state.items() if k not in self._MAX_FIELDS}
        bad = [k for k, v in sums.items() if not np.isfinite(v).all()]
        if bad:
            raise CgcLensError(f"Non-finite activations reached the sums {bad}; check the inputs.")
        return state


class PearsonAccumulator(_Accumulator):
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

    @torch.no_grad()
    def update(
        self, ref: Float[Tensor, "*batch d_sae"], other: Float[Tensor, "*batch d_sae"]
    ) -> PearsonAccumulator:
        """Add one batch: reference and condition SAE activations on identical positions.

        Leading dimensions (``batch pos`` or ``batch*pos``) are flattened; returns ``self``.
        """
        x_all, y_all = self._check_batch(ref, other)
        if x_all.shape[0] == 0:
            return self
        s = self._state
        for x_part, y_part in zip(self._chunks(x_all), self._chunks(y_all), strict=True):
            x, y = x_part.double(), y_part.double()
            s["sum_x"] += x.sum(0)
            s["sum_y"] += y.sum(0)
            s["sum_xx"] += (x * x).sum(0)
            s["sum_yy"] += (y * y).sum(0)
            s["sum_xy"] += (x * y).sum(0)
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
    def second_moment_when_firing(self) -> np.ndarray:
        """Mean of x² over firing positions (0 for a feature that never fires)."""
        count = np.asarray(self.fire_count)
        return np.where(count > 0, self.sum_sq_firing / np.maximum(count, 1), 0.0)


_REF_ARRAYS = (
    "fire_count", "sum_activation", "sum_activation_firing", "sum_sq_firing", "peak_activation"
)


class ReferenceAccumulator(_Accumulator):
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
        self, d_sae: int, *, fire_threshold: float = 0.0, device: torch.device | str | None = None
    ) -> None:
        if not math.isfinite(fire_threshold):
            raise CgcLensError(f"fire_threshold must be finite, got {fire_threshold!r}.")
        self.fire_threshold = float(fire_threshold)
        super().__init__(d_sae, device=device)

    def _settings(self) -> dict[str, object]:
        return {"fire_threshold": self.fire_threshold}

    @torch.no_grad()
    def update(self, ref: Float[Tensor, "*batch d_sae"]) -> ReferenceAccumulator:
        """Add one batch of reference SAE activations; returns ``self``."""
        (x_all,) = self._check_batch(ref)
        if x_all.shape[0] == 0:
            return self
        s = self._state
        for x_part in self._chunks(x_all):
            x = x_part.double()
            fires = x > self.fire_threshold
            x_fire = torch.where(fires, x, 0.0)
            s["fire_count"] += fires.sum(0)
            s["sum_act"] += x.sum(0)
            s["sum_act_firing"] += x_fire.sum(0)
            s["sum_sq_firing"] += (x_fire * x_fire).sum(0)
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


def merge_all(accumulators: list[_Accumulator] | tuple[_Accumulator, ...]) -> _Accumulator:
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
