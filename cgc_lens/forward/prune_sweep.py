"""Per-head pruning sweeps: ΔPPL and ΔKL of magnitude-pruning each head's ``W_O`` slice alone.

Pruning head ``h``'s slice to ``W'`` is a per-head edit by subtraction
(``resid' = resid − z_h @ (W_O[h] − W')``, :mod:`cgc_lens.forward.head_edits`): one dense
forward per batch caches every layer's ``hook_z`` and the residual after its attention, and each
(head, retention) restarts there, running only the rest of its layer, the layers after it and
the unembedding. The retentions of one head are stacked along the batch axis as far as a memory
cap allows (:data:`PASS_LOGITS_ELEMENTS`), so a pass serves several levels.
:func:`head_prune_sweep_naive` is the reference: one whole forward per head, level and batch
with the slice pruned in place by :class:`cgc_lens.compress.HeadPrune` (tests and
``benchmarks/bench_prune_sweep.py`` check the two agree).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.compress.context import compressed
from cgc_lens.compress.operators import HeadPrune, check_fraction, head_prune_
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.head_edits import (
    EditSums,
    HeadEdit,
    check_blocks,
    reduce_edit_sums,
    select_heads,
    sweep_edits,
)
from cgc_lens.forward.metrics import log_probs, nll_kl_sums
from cgc_lens.forward.streaming import iter_batches
from cgc_lens.progress import progress_bar
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["PASS_LOGITS_ELEMENTS", "PruneSweepResult", "head_prune_sweep", "head_prune_sweep_naive"]

PASS_LOGITS_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 28}
"""The memory cap of one stacked pass, in logits (edits × blocks × positions × d_vocab), per
device type; other devices take the CPU's. CPU: 8 MiB of float32 logits, about what stays in
cache (stacked beyond it, a pass gets slower per edit: ``benchmarks/bench_prune_sweep.py``);
cgc-tiny's batch of 8 × 128 tokens is already that, so its sweep runs one edit per pass, while
shorter batches stack their levels. CUDA: 1 GiB of float32 logits (and as much for their
log-probabilities)."""


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


def _levels(retentions: Sequence[float]) -> list[float]:
    levels = [check_fraction(r, "retention", closed=True) for r in retentions]
    if not levels:
        raise CgcLensError("head_prune_sweep needs at least one retention level, got none.")
    return levels


def _edits(model: HookedTransformer, heads: list[Head], levels: list[float]) -> list[HeadEdit]:
    """One edit per (head, level), head-major: a head's levels are neighbours, so a stacked
    pass holds several levels of one head."""
    pruned = {}
    for r in levels:
        for ell in {h.layer for h in heads}:
            w_o = model.blocks[ell].attn.W_O.detach()
            pruned[ell, r] = w_o - head_prune_(w_o.clone(), [r] * model.cfg.n_heads)
    return [HeadEdit(h, pruned[h.layer, r][h.head], None) for h in heads for r in levels]


def _per_pass(
    model: HookedTransformer,
    tokens: Tensor,
    batch_size: int,
    heads_per_pass: int | None,
) -> int | None:
    """Edits per stacked pass: as given, or as many as keep the pass's logits under the cap."""
    if (
        heads_per_pass is not None
        or not isinstance(batch_size, int)
        or batch_size < 1
        or not isinstance(tokens, Tensor)
        or tokens.ndim != 2
    ):
        return heads_per_pass  # checked (and refused) by sweep_edits
    device = torch.device(model.cfg.device).type
    cap = PASS_LOGITS_ELEMENTS.get(device, PASS_LOGITS_ELEMENTS["cpu"])
    per_edit = max(1, min(batch_size, tokens.shape[0])) * tokens.shape[1] * model.cfg.d_vocab
    return max(1, cap // per_edit)


def _result(
    model: HookedTransformer,
    heads: list[Head],
    levels: list[float],
    sums: EditSums,
) -> PruneSweepResult:
    nll, kl, dense_nll, n_scored, n_pos = sums
    dense_ppl = math.exp(dense_nll / n_scored)
    shape = (model.cfg.n_layers, model.cfg.n_heads, len(levels))
    ppl, dkl = np.full(shape, np.nan), np.full(shape, np.nan)
    for i, (h, j) in enumerate((h, j) for h in heads for j in range(len(levels))):
        ppl[h.layer, h.head, j] = math.exp(nll[i] / n_scored)
        dkl[h.layer, h.head, j] = kl[i] / n_pos
    return PruneSweepResult(
        retentions=np.asarray(levels, np.float64),
        ppl=ppl,
        delta_ppl=ppl - dense_ppl,
        delta_kl=dkl,
        dense_ppl=dense_ppl,
        n_tokens=n_scored,
    )


def head_prune_sweep(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    retentions: Sequence[float],
    *,
    heads: Sequence[Head] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
    dense: DensePass | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> PruneSweepResult:
    """ΔPPL and ΔKL of magnitude-pruning each head's ``W_O`` slice alone to each retention.

    The pruned slice is exactly what :class:`cgc_lens.compress.HeadPrune` makes
    (:func:`cgc_lens.compress.head_prune_`); only the pruned head's change is subtracted from
    the residual after its layer's attention, so a (head, retention) costs the rest of the model
    from there: its floor.

    Args:
        model: the model (left unchanged).
        tokens: evaluation blocks ``[n_blocks, pos]``; each block resets the context.
        retentions: fractions of each slice kept, in ``[0, 1]`` (1 is the dense model, 0 the
            zero-ablation).
        heads: the heads to prune (default: all); the others are NaN in the result.
        batch_size: token blocks per dense forward.
        heads_per_pass: (head, retention) edits of one layer stacked along the batch axis in one
            forward. None: as many as keep a pass under :data:`PASS_LOGITS_ELEMENTS` logits for
            the model's device (a head's levels first, then the next head's).
        progress: show a tqdm bar.
        dense: the study's dense pass (:class:`~cgc_lens.forward.dense.DensePass`): a batch it
            already ran is not run again.
        reduce: applied to the summed NLL, KL and token counts (one float64 vector) before
            they become perplexities, as in :func:`~cgc_lens.forward.ablation.head_ablation`.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> res = head_prune_sweep(HookedTransformer(cfg), torch.randint(0, 11, (2, 8)),
        ...                        [1.0, 0.5, 0.0], progress=False)
        >>> res.delta_ppl.shape, bool(np.abs(res.delta_ppl[..., 0]).max() < 1e-6)
        ((1, 2, 3), True)
    """
    levels = _levels(retentions)
    heads = select_heads(model, heads)
    sums = sweep_edits(
        model,
        tokens,
        _edits(model, heads, levels),
        batch_size=batch_size,
        heads_per_pass=_per_pass(model, tokens, batch_size, heads_per_pass),
        progress=progress,
        desc="prune sweep",
        dense=dense,
    )
    return _result(model, heads, levels, reduce_edit_sums(sums, reduce))


def head_prune_sweep_naive(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    retentions: Sequence[float],
    **kwargs: Any,
) -> PruneSweepResult:
    """The reference for :func:`head_prune_sweep`: per batch, head and retention, one whole
    forward with the slice pruned in place (``compressed(model, HeadPrune({head: r}))``).

    Takes :func:`head_prune_sweep`'s arguments, with its defaults; ``heads_per_pass`` is
    ignored.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> m, t = HookedTransformer(cfg), torch.randint(0, 11, (2, 8))
        >>> a = head_prune_sweep(m, t, [0.5, 0.25], progress=False)
        >>> b = head_prune_sweep_naive(m, t, [0.5, 0.25], progress=False)
        >>> bool(np.allclose(a.delta_ppl, b.delta_ppl, atol=1e-5))
        True
    """
    bound = inspect.signature(head_prune_sweep).bind(model, tokens, retentions, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    levels = _levels(a["retentions"])
    heads = select_heads(model, a["heads"])
    sums = _sweep_naive(
        model,
        tokens,
        [(h, r) for h in heads for r in levels],
        batch_size=a["batch_size"],
        progress=a["progress"],
    )
    return _result(model, heads, levels, sums)


@torch.no_grad()
def _sweep_naive(
    model: HookedTransformer,
    tokens: Tensor,
    edits: list[tuple[Head, float]],
    *,
    batch_size: int,
    progress: bool,
) -> EditSums:
    """What :func:`~cgc_lens.forward.head_edits.sweep_edits` returns, from one whole forward
    per edit and batch with the edit's weights in place."""
    tokens = check_blocks(model, tokens)
    nll, kl = np.zeros(len(edits)), np.zeros(len(edits))
    dense_nll, n_scored, n_pos = 0.0, 0, 0
    batches, n_batches = iter_batches(tokens, batch_size)
    bar = progress_bar(
        total=(n_batches or 0) * len(edits),
        desc="naive prune sweep",
        enabled=progress,
    )
    for rows in batches:
        batch = rows.to(model.cfg.device)
        ref_logp = log_probs(model(batch, return_type="logits"))
        ref_p = ref_logp.exp()
        dense_nll += float(nll_kl_sums(ref_logp, batch, ref_logp, ref_p)[0])
        n_scored, n_pos = n_scored + batch.shape[0] * (batch.shape[1] - 1), n_pos + batch.numel()
        for i, (head, r) in enumerate(edits):
            with compressed(model, HeadPrune({head: r})):
                logp = log_probs(model(batch, return_type="logits"))
            a, k = nll_kl_sums(logp, batch, ref_logp, ref_p)
            nll[i] += float(a)
            kl[i] += float(k)
            bar.update(1)
    bar.close()
    return nll, kl, dense_nll, n_scored, n_pos
