"""The survival sweep's reference statistics, taken from sparse SAE codes.

The codes themselves, and the encoder that produces them without ever forming the dense
``[positions, d_sae]`` tensor, are :class:`~cgc_lens.saes.SparseCodes` and
:class:`~cgc_lens.saes.SparseEncoder`. :func:`reference_accumulator` forms one batch's
reference-side sums (firing counts, activation sums, peaks) from the stored non-zeros alone,
O(positions · L0) instead of O(positions · d_sae), and hands them to
:meth:`ReferenceAccumulator.from_sums <cgc_lens.analysis.ReferenceAccumulator.from_sums>`; merged
into a shard's accumulator they add exactly what its ``update`` would have added.
"""

from __future__ import annotations

import torch

from cgc_lens.analysis.accumulators import ReferenceAccumulator
from cgc_lens.saes.sparse_encoder import SparseCodes

__all__ = ["add_codes", "reference_accumulator"]


def reference_accumulator(codes: SparseCodes, threshold: float) -> ReferenceAccumulator | None:
    """This batch's :class:`~cgc_lens.analysis.ReferenceAccumulator`, from the stored entries
    alone (``None`` when the codes are dense, or when zeros fire: ``threshold < 0``).

    Example:
        >>> x = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
        >>> stats = reference_accumulator(SparseCodes.of(x), 0.0).stats()
        >>> stats.fire_count.tolist(), stats.peak_activation.tolist()
        ([1, 2, 0], [1.0, 3.0, 0.0])
    """
    if codes.dense is not None or threshold < 0:
        return None
    d = codes.d
    v, cols = codes.vals.double(), codes.cols  # type: ignore[union-attr]
    fires = v > threshold
    v_fire = torch.where(fires, v, 0.0)
    zeros = torch.zeros(d, dtype=torch.float64, device=v.device)
    peak = torch.full((d,), -torch.inf, dtype=torch.float64, device=v.device)
    peak.scatter_reduce_(0, cols, v, "amax")
    has_zero = torch.bincount(cols, minlength=d) < codes.n  # a zero is seen there too
    peak = torch.where(has_zero, peak.clamp(min=0.0), peak)
    fire_count = torch.bincount(cols[fires], minlength=d)
    sum_act = zeros.clone().index_add_(0, cols, v)
    sum_act_firing = zeros.clone().index_add_(0, cols, v_fire)
    sum_sq_firing = zeros.index_add_(0, cols, v_fire * v_fire)
    return ReferenceAccumulator.from_sums(
        n_tokens=codes.n, fire_count=fire_count, sum_act=sum_act, sum_act_firing=sum_act_firing,
        sum_sq_firing=sum_sq_firing, max_act=peak, fire_threshold=threshold,
    )


def add_codes(acc: ReferenceAccumulator, codes: SparseCodes,
              batch: ReferenceAccumulator | None) -> None:
    """Add ``codes`` to ``acc``: merge ``batch``, their :func:`reference_accumulator` (sums add,
    maxima take the max, exactly as ``update`` would), or update on the dense codes when None."""
    if batch is None:
        acc.update(codes.to_dense())
    else:
        acc.merge(batch)
