"""The state handling shared by the streaming accumulators of the survival audit.

:class:`SumAccumulator` holds per-feature float64 (or int64) tensors of shape ``[d_sae]`` on one
device, plus the number of token positions seen. Every field is a SUM across shards except the
ones named in ``_MAX_FIELDS`` (a running MAX), so :meth:`SumAccumulator.merge` of the
accumulators of disjoint shards is exactly the accumulator of all of them. The concrete
accumulators (:class:`~cgc_lens.analysis.accumulators.PearsonAccumulator`,
:class:`~cgc_lens.analysis.reference_stats.ReferenceAccumulator`) add ``update``, their finished
statistics, and a ``from_sums`` constructor naming their sufficient statistics; the layout of
the state stays inside ``cgc_lens.analysis``.

Groups (blocked-jackknife uncertainty). Built with ``n_groups = G > 0``, an accumulator also
keeps every SUM field per group of token blocks: ``group_<field>`` of shape ``[G, d_sae]`` and
``group_n_tokens`` ``[G]``, each batch row added to its group's row (``update(..., groups=)``).
They are SUM fields like the others (``state_dict``, ``merge`` and an all-reduce add them), the
pooled fields are formed exactly as without groups, and the groups add up to them (float64
rounding). :meth:`SumAccumulator.leave_one_out` gives the statistics without one group, the
replicates of the delete-one-group jackknife. MAX fields are not kept per group: a
leave-one-out accumulator carries the pooled maximum.
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

    def __init__(
        self, d_sae: int, *, n_groups: int = 0, device: torch.device | str | None = None
    ) -> None:
        if not isinstance(d_sae, int) or isinstance(d_sae, bool) or d_sae < 1:
            raise CgcLensError(f"d_sae must be a positive int, got {d_sae!r}.")
        if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups < 0:
            raise CgcLensError(f"n_groups must be an int >= 0 (0: no groups), got {n_groups!r}.")
        self.d_sae = d_sae
        self.n_groups = n_groups
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
        n_groups = 0
        if state.get("group_n_tokens") is not None:
            n_groups = int(state["group_n_tokens"].shape[0])  # type: ignore[union-attr]
        state = {k: v for k, v in state.items() if v is not None}
        acc = cls(int(first.shape[0]), n_groups=n_groups, **settings)  # type: ignore[arg-type]
        return acc.load_state_dict(state)  # type: ignore[arg-type]

    @classmethod
    def _grouped(cls) -> tuple[str, ...]:
        """The fields also kept per group: every SUM field."""
        return tuple(k for k in cls._FIELDS if k not in cls._MAX_FIELDS)

    def _layout(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """Every state field's dtype and shape (the group fields only with ``n_groups > 0``)."""
        out = {k: (t, (self.d_sae,)) for k, t in self._FIELDS.items()}
        if self.n_groups:
            g = self.n_groups
            out.update({f"group_{k}": (self._FIELDS[k], (g, self.d_sae)) for k in self._grouped()})
            out["group_n_tokens"] = (torch.int64, (g,))
        return out

    def _allocate(self, device: torch.device) -> None:
        self.device = device
        for name, (dtype, shape) in self._layout().items():
            fill = -math.inf if name in self._MAX_FIELDS else 0
            self._state[name] = torch.full(shape, fill, dtype=dtype, device=device)

    def _group_index(self, groups: int | Tensor | None, n_rows: int, lead: tuple[int, ...],
                     ) -> Tensor | None:
        """Each flattened row's group (int64 on this device), checked; None without groups."""
        if not self.n_groups:
            if groups is not None:
                raise CgcLensError("groups= given to an accumulator built without groups; build "
                                   "it with n_groups=G to keep per-group sums.")
            return None
        if groups is None:
            raise CgcLensError(f"This accumulator keeps {self.n_groups} groups: pass groups= "
                               "(each row's group, or one int for the batch).")
        if isinstance(groups, int) and not isinstance(groups, bool):
            idx = torch.full((n_rows,), groups, dtype=torch.int64, device=self.device)
        elif isinstance(groups, Tensor) and not groups.is_floating_point() and \
                tuple(groups.shape) in (lead, (n_rows,)):
            idx = groups.reshape(-1).to(device=self.device, dtype=torch.int64)
        else:
            got = tuple(groups.shape) if isinstance(groups, Tensor) else repr(groups)
            raise CgcLensError(f"groups must be an int or an integer tensor of shape {lead} (one "
                               f"group per row), got {got}.")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n_groups):
            raise CgcLensError(f"groups must lie in [0, {self.n_groups}), got "
                               f"[{int(idx.min())}, {int(idx.max())}].")
        return idx

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

    def _add(self, name: str, part: Tensor, groups: Tensor | None) -> None:
        """Add a chunk's rows ``part`` ``[rows, d_sae]`` to the SUM field ``name`` and, with
        groups, each row to its group's row of ``group_<name>`` (the pooled sum is formed as
        without groups, so it is unchanged bit for bit)."""
        self._state[name] += part.sum(0)
        if groups is not None:
            self._state[f"group_{name}"].index_add_(0, groups, part)
            if name == self._grouped()[0]:  # once per chunk: the group's positions
                self._state["group_n_tokens"] += torch.bincount(groups, minlength=self.n_groups)

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
        mine, theirs = self._all_settings(), other._all_settings()
        if other.d_sae != self.d_sae or mine != theirs:
            raise CgcLensError(
                f"Cannot merge accumulators with different settings: expected d_sae={self.d_sae}, "
                f"{mine}; got d_sae={other.d_sae}, {theirs}."
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

    def _all_settings(self) -> dict[str, object]:
        return {**self._settings(), "n_groups": self.n_groups}

    def leave_one_out(self: _Acc, group: int) -> _Acc:
        """The statistics of every group but ``group`` (a new accumulator without groups): one
        replicate of the delete-one-group jackknife. Its sums are those of the other groups added
        up; a MAX field keeps the pooled maximum.

        Example:
            >>> from cgc_lens.analysis import PearsonAccumulator
            >>> x = torch.arange(8.0).reshape(4, 2)
            >>> acc = PearsonAccumulator(2, n_groups=2)
            >>> _ = acc.update(x, x, groups=torch.tensor([0, 0, 1, 1]))
            >>> rest = acc.leave_one_out(0)
            >>> rest.n_tokens, rest.state_dict()["sum_x"].tolist()
            (2, [10.0, 12.0])
        """
        if not 0 <= group < self.n_groups:
            raise CgcLensError(f"group must lie in [0, {self.n_groups}), got {group!r}.")
        if self.device is None:
            raise CgcLensError(f"{type(self).__name__} has seen no tokens; call update() first.")
        keep = torch.ones(self.n_groups, dtype=torch.bool, device=self.device)
        keep[group] = False
        state = {k: self._state[f"group_{k}"][keep].sum(0) for k in self._grouped()}
        state.update({k: self._state[k].clone() for k in self._MAX_FIELDS})
        state["n_tokens"] = self._state["group_n_tokens"][keep].sum()
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.n_groups = 0
        new._state = {}
        return new.load_state_dict(state)

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
        layout = self._layout()
        expected = {*layout, "n_tokens"}
        if set(state) != expected:
            raise CgcLensError(f"Expected state keys {sorted(expected)}, got {sorted(state)}.")
        for name, (_, want) in layout.items():
            shape = tuple(state[name].shape)
            if shape != want:
                raise CgcLensError(f"State {name!r}: expected shape {want}, got {shape}.")
        device = self.device or state[next(iter(self._FIELDS))].device
        self._state = {k: state[k].to(device=device, dtype=t) for k, (t, _) in layout.items()}
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
