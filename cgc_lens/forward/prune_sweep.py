"""Per-head pruning sweeps: ΔPPL and ΔKL of magnitude-pruning each head's ``W_O`` slice alone.

Pruning head ``h``'s slice to ``W'`` is a per-head edit by subtraction
(``resid' = resid − z_h @ (W_O[h] − W')``, :mod:`cgc_lens.forward.head_edits`), so every head at
every retention costs what its ablation costs: the rest of the model from the residual after
its layer's attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.compress.operators import check_fraction, head_prune_
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.head_edits import HeadEdit, select_heads, sweep_edits
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["PruneSweepResult", "head_prune_sweep"]


@dataclass(frozen=True, kw_only=True, eq=False)
class PruneSweepResult:
    """ΔPPL and ΔKL of magnitude-pruning each head's ``W_O`` slice alone, at several retentions."""

    retentions: Float[np.ndarray, " n_levels"]
    """Retention levels (fraction of the slice kept), in the order given."""
    ppl: Float[np.ndarray, "n_layers n_heads n_levels"]
    """Perplexity with the head pruned (NaN for heads not measured)."""
    delta_ppl: Float[np.ndarray, "n_layers n_heads n_levels"]
    """``ppl − dense_ppl``."""
    delta_kl: Float[np.ndarray, "n_layers n_heads n_levels"]
    """Mean KL(dense ‖ pruned) over all positions, in nats."""
    dense_ppl: float
    """Perplexity of the dense model on the same tokens."""
    n_tokens: int
    """Scored tokens."""


def head_prune_sweep(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    retentions: Sequence[float],
    *,
    heads: Sequence[Head] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
) -> PruneSweepResult:
    """ΔPPL and ΔKL of magnitude-pruning each head's ``W_O`` slice alone to each retention.

    The pruned slice is exactly what :class:`cgc_lens.compress.HeadPrune` makes
    (:func:`cgc_lens.compress.head_prune_`); only the pruned head's change is subtracted, so
    a head at retention r costs what its ablation costs.

    Example:
        >>> import torch
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> res = head_prune_sweep(HookedTransformer(cfg), torch.randint(0, 11, (2, 8)),
        ...                        [1.0, 0.5, 0.0], progress=False)
        >>> res.delta_ppl.shape, bool(np.abs(res.delta_ppl[..., 0]).max() < 1e-6)
        ((1, 2, 3), True)
    """
    levels = [check_fraction(r, "retention", closed=True) for r in retentions]
    if not levels:
        raise CgcLensError("head_prune_sweep needs at least one retention level, got none.")
    heads = select_heads(model, heads)
    edits = []
    for r in levels:
        pruned = {ell: head_prune_(model.blocks[ell].attn.W_O.detach().clone(),
                                   [r] * model.cfg.n_heads) for ell in {h.layer for h in heads}}
        edits += [HeadEdit(h, model.blocks[h.layer].attn.W_O[h.head].detach()
                           - pruned[h.layer][h.head], None) for h in heads]
    nll, kl, dense_nll, n_scored, n_pos = sweep_edits(
        model, tokens, edits, batch_size=batch_size, heads_per_pass=heads_per_pass,
        progress=progress, desc="prune sweep")
    dense_ppl = math.exp(dense_nll / n_scored)
    shape = (model.cfg.n_layers, model.cfg.n_heads, len(levels))
    ppl, dkl = np.full(shape, np.nan), np.full(shape, np.nan)
    for i, e in enumerate(edits):
        j = i // len(heads)
        ppl[e.head.layer, e.head.head, j] = math.exp(nll[i] / n_scored)
        dkl[e.head.layer, e.head.head, j] = kl[i] / n_pos
    return PruneSweepResult(retentions=np.asarray(levels, np.float64), ppl=ppl,
                            delta_ppl=ppl - dense_ppl, delta_kl=dkl, dense_ppl=dense_ppl,
                            n_tokens=n_scored)
