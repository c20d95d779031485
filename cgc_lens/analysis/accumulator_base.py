"""The state handling shared by the streaming accumulators of the survival audit.

:class:`SumAccumulator` holds per-feature float64 (or int64) tensors of shape ``[d_sae]`` on one
device, plus the number of token positions seen. Every field is a SUM across shards except the
ones named in ``_MAX_FIELDS`` (a running MAX), so :meth:`SumAccumulator.merge` of the
accumulators of disjoint shards is exactly the accumulator of all of them. The concrete
accumulators (:class:`~cgc_lens.analysis.accumulators.PearsonAccumulator`,
:class:`~cgc_lens.analysis.reference_stats.ReferenceAccumulator`) add ``update``, their finished
statistics, and a ``from_sums`` constructor naming their sufficient statistics; the layout of
the state stays inside ``cgc_lens.analysis``.
"""

from __future__ import annotations

import math
from typing import ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["CHUNK_ELEMENTS", "FLAT_RTOL", "SumAccumulator"]

FLAT_RTOL = 1e-10
"""A feature is flat (zero variance) when ``Σx² − (Σx)²/n ≤ FLAT_RTOL · Σx²``: the float64 sums
cannot resolve a smaller relative variance (see :mod:`cgc_lens.analysis.accumulators`)."""

CHUNK_ELEMENTS = 1 << 24
"""float64 temporaries per update chunk: 128 MiB each, whatever d_sae."""

_Acc = TypeVar("_Acc", bound="SumAccumulator")


def _resolve(device: torch.device | str) -> torch.device:
    """The concrete device tensors report (``"cuda"`` → ``cuda:0``), for exact comparisons."""
    return torch.empty(0, device=device).device


class SumAccumulator:
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

    @classmethod
    def _from_fields(
        cls: type[_Acc], n_tokens: int | Tensor, fields: dict[str, Tensor], **settings: object
    ) -> _Acc:
        """An accumulator of ``cls`` (built with ``settings``) holding ``fields``: the shared
        body of the subclasses' ``from_sums`` (``d_sae`` is the length of the first field)."""
        first = next(iter(fields.values()))
        if first.ndim != 1:
            raise CgcLensError(f"Expected sums of shape [d_sae], got {tuple(first.shape)}.")
        state = {**fields, "n_tokens": n_tokens}
        return cls(int(first.shape[0]), **settings).load_state_dict(state)  # type: ignore[arg-type]

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
        """Row slices small enough that float64 temporaries stay near :data:`CHUNK_ELEMENTS`."""
        return list(rows.split(max(1, CHUNK_ELEMENTS // self.d_sae)))

    def _settings(self) -> dict[str, object]:
        return {}

    def merge(self: _Acc, other: _Acc) -> _Acc:
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

    def copy(self: _Acc) -> _Acc:
        """An independent copy (same device)."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._state = {k: v.clone() for k, v in self._state.items()}
        return new

    def to(self: _Acc, device: torch.device | str) -> _Acc:
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

    def load_state_dict(self: _Acc, state: dict[str, Tensor]) -> _Acc:
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
