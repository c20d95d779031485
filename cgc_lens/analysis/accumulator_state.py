"""What a merge of accumulator states across processes needs to know, without the layout.

A state (:meth:`~cgc_lens.analysis.accumulator_base.SumAccumulator.state_dict`) is a dict of
tensors; :func:`max_fields` names those that merge by maximum (every other one, ``n_tokens``
included, sums), and :func:`allocated` gives an accumulator that saw no tokens its empty
statistics (sums 0, maxima −inf), so that it can take part in an all-reduce with the same
fields as the others. :mod:`cgc_lens.distributed` merges states through these two alone.
"""

from __future__ import annotations

from typing import TypeVar

import torch

from cgc_lens.analysis.accumulator_base import SumAccumulator
from cgc_lens.errors import CgcLensError

__all__ = ["allocated", "max_fields"]

_Acc = TypeVar("_Acc", bound=SumAccumulator)


def max_fields(acc: SumAccumulator | type[SumAccumulator]) -> frozenset[str]:
    """The state fields of ``acc`` (an accumulator or its class) that merge by maximum.

    Example:
        >>> from cgc_lens.analysis import ReferenceAccumulator
        >>> sorted(max_fields(ReferenceAccumulator))
        ['max_act']
    """
    cls = acc if isinstance(acc, type) else type(acc)
    if not issubclass(cls, SumAccumulator):
        raise CgcLensError(f"Expected a survival accumulator, got {cls.__name__}.")
    return frozenset(cls._MAX_FIELDS)


def allocated(acc: _Acc, device: torch.device | str) -> _Acc:
    """``acc`` with its statistics allocated on ``device`` if it holds none yet (it saw no
    tokens and was built without a device); returns ``acc``, changed in place.

    Example:
        >>> from cgc_lens.analysis import ReferenceAccumulator
        >>> acc = allocated(ReferenceAccumulator(3), "cpu")
        >>> acc.state_dict()["max_act"].tolist(), int(acc.state_dict()["n_tokens"])
        ([-inf, -inf, -inf], 0)
    """
    if not isinstance(acc, SumAccumulator):
        raise CgcLensError(f"Expected a survival accumulator, got {type(acc).__name__}.")
    if acc.device is None:
        acc._allocate(torch.empty(0, device=device).device)
    return acc
