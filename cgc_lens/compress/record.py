"""What a compression did, per tensor: :class:`CompressionRecord` and :class:`TensorRecord`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cgc_lens.compress.operators.base import EditStats, Operator
from cgc_lens.compress.plan import Plan
from cgc_lens.compress.targets import WeightRef

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CompressionRecord", "TensorRecord"]


@dataclass(frozen=True)
class TensorRecord:
    """What one step did to one tensor (or head slice)."""

    step: int
    """Index of the step in the plan."""
    operator: str
    """Registry name of the operator."""
    param: str
    """Parameter path on the model."""
    layer: int
    """Block index."""
    name: str
    """TransformerLens weight name."""
    heads: tuple[int, ...] | None
    """Head slice edited; None for the whole tensor."""
    numel: int
    """Parameters touched (0 when the operator is the identity at this level)."""
    bits: int | None
    """Quantization bits (RTN)."""
    sparsity: float | None
    """Achieved fraction of zeros in the edited slice (pruning)."""
    rank: int | None
    """Rank kept (low rank)."""


class CompressionRecord:
    """Per-tensor account of a compression; also says whether the model was restored."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        """The plan that was applied."""
        self.restored = False
        """True once the block has put the original weights back."""
        self.n_parameters = 0
        """Parameters in the tensors that were snapshotted (touched tensors, whole)."""
        self._raw: list[tuple[int, Operator, WeightRef, int, EditStats]] = []
        self._tensors: list[TensorRecord] | None = None

    def _add(self, step: int, op: Operator, refs: Sequence[WeightRef], numels: Sequence[int],
             stats: Sequence[EditStats]) -> None:
        self._raw.extend(zip([step] * len(refs), [op] * len(refs), refs, numels, stats,
                             strict=True))
        self._tensors = None

    @property
    def tensors(self) -> list[TensorRecord]:
        """One :class:`TensorRecord` per (step, tensor), in application order."""
        if self._tensors is None:  # built on demand: the hot path only appends tuples
            self._tensors = [
                TensorRecord(step=i, operator=op.name, param=ref.param, layer=ref.layer,
                             name=ref.name, heads=ref.heads, numel=n, bits=s.bits,
                             sparsity=s.sparsity, rank=s.rank)
                for i, op, ref, n, s in self._raw
            ]
        return self._tensors

    @property
    def parameters_touched(self) -> int:
        """Sum of :attr:`TensorRecord.numel` over every step."""
        return sum(n for _, _, _, n, _ in self._raw)

    def to_frame(self) -> pd.DataFrame:
        """The per-tensor records as a DataFrame."""
        import pandas as pd

        return pd.DataFrame([r.__dict__ for r in self.tensors])

    def __repr__(self) -> str:
        return (f"CompressionRecord({len(self.plan)} steps, {len(self._raw)} tensor edits, "
                f"{self.parameters_touched} parameters touched, restored={self.restored})")
