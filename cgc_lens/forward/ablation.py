"""Per-head ablation: ΔPPL and ΔKL of ablating each head alone, exact and without wasted layers.

Zero- or mean-ablating head ``h`` of layer ℓ (``hook_z[..., h, :] = 0`` or its mean) is a
per-head edit by subtraction (:mod:`cgc_lens.forward.head_edits`): one dense forward per batch,
then per head the rest of the model from the residual after layer ℓ's attention.
:func:`head_ablation_naive` is the reference: one full hooked forward per head (tests and
``benchmarks/bench_ablation.py`` check the two agree). Pruning sweeps of ``W_O`` slices are
:mod:`cgc_lens.forward.prune_sweep`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

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
from cgc_lens.forward.streaming import iter_batches, run_sites
from cgc_lens.progress import progress_bar
from cgc_lens.sites import Head, hook_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["AblationResult", "head_ablation", "head_ablation_naive", "head_means"]

logger = logging.getLogger(__name__)

Mode = Literal["zero", "mean"]


@dataclass(frozen=True, kw_only=True, eq=False)
class AblationResult:
    """ΔPPL and ΔKL of ablating each head alone (NaN for heads not measured)."""

    ppl: Float[np.ndarray, "n_layers n_heads"]
    """Perplexity with the head ablated."""
    delta_ppl: Float[np.ndarray, "n_layers n_heads"]
    """``ppl − dense_ppl``."""
    delta_kl: Float[np.ndarray, "n_layers n_heads"]
    """Mean KL(dense ‖ ablated) of the next-token distributions over all positions, in nats."""
    dense_ppl: float
    """Perplexity of the dense model on the same tokens."""
    n_tokens: int
    """Scored tokens (every position of each block after the first)."""
    mode: str
    """``zero`` or ``mean``."""

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, ppl, delta_ppl, delta_kl."""
        n_layers, n_heads = self.ppl.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        return pd.DataFrame({"layer": layer, "head": head, "ppl": self.ppl.ravel(),
                             "delta_ppl": self.delta_ppl.ravel(),
                             "delta_kl": self.delta_kl.ravel()})


def head_means(
    model: HookedTransformer, tokens: Int[Tensor, "n_blocks pos"], *, batch_size: int = 8,
    progress: bool = True,
) -> Float[Tensor, "n_layers n_heads d_head"]:
    """Mean of ``hook_z`` per head and coordinate over every position of ``tokens`` (float64).

    The mean-ablation value: a head is replaced by its average output on these tokens.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> tuple(head_means(HookedTransformer(cfg), torch.randint(0, 11, (3, 8)),
        ...                  progress=False).shape)
        (2, 2, 4)
    """
    cfg = model.cfg
    total = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head, dtype=torch.float64)
    hooks = [hook_name("z", layer=ell) for ell in range(cfg.n_layers)]

    def add(acts, _i: int) -> None:
        for ell, name in enumerate(hooks):
            total[ell] += acts[name].double().sum((0, 1)).cpu()

    run_sites(model, check_blocks(model, tokens), hooks, batch_size=batch_size, callback=add,
              progress=progress, desc="head means")
    return total / tokens.numel()


def _ablation_edits(
    model: HookedTransformer, heads: list[Head], mode: str, means: Tensor | None,
) -> list[HeadEdit]:
    if mode not in ("zero", "mean"):
        raise CgcLensError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    cfg = model.cfg
    if mode == "mean":
        shape = (cfg.n_layers, cfg.n_heads, cfg.d_head)
        if means is None or tuple(means.shape) != shape:
            got = None if means is None else tuple(means.shape)
            raise CgcLensError(f"Mean-ablation needs means [n_layers, n_heads, d_head] = {shape} "
                               f"(from head_means on calibration tokens), got {got}.")
    return [HeadEdit(h, model.blocks[h.layer].attn.W_O[h.head].detach(),
                     None if mode == "zero" else means[h.layer, h.head]) for h in heads]


def _result(model, heads, sums: EditSums, *, mode: str) -> AblationResult:
    nll, kl, dense_nll, n_scored, n_pos = sums
    cfg = model.cfg
    dense_ppl = math.exp(dense_nll / n_scored)
    ppl = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    dkl = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    for h, a, k in zip(heads, nll, kl, strict=True):
        ppl[h.layer, h.head] = math.exp(a / n_scored)
        dkl[h.layer, h.head] = k / n_pos
    return AblationResult(ppl=ppl, delta_ppl=ppl - dense_ppl, delta_kl=dkl, dense_ppl=dense_ppl,
                          n_tokens=n_scored, mode=mode)


def head_ablation(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_blocks pos"],
    *,
    mode: Mode = "zero",
    means: Float[Tensor, "n_layers n_heads d_head"] | None = None,
    heads: Sequence[Head] | None = None,
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    progress: bool = True,
    dense: DensePass | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> AblationResult:
    """ΔPPL and ΔKL of ablating each head alone, restarting after its layer's attention.

    Args:
        model: the model (left unchanged).
        tokens: evaluation blocks ``[n_blocks, pos]``; each block resets the context (the
            chunked perplexity protocol).
        mode: ``zero`` (``hook_z[..., h, :] = 0``) or ``mean`` (``hook_z[..., h, :] = μ_h``).
        means: ``μ`` for mean-ablation, from :func:`head_means` on calibration tokens.
        heads: the heads to ablate (default: all); the others are NaN in the result.
        batch_size: token blocks per dense forward.
        heads_per_pass: edits of one layer stacked into one forward. Default: all heads of the
            layer on CUDA; 1 on CPU, where stacking makes each head slower (larger activations
            fall out of cache). Memory grows with ``batch_size × heads_per_pass × pos × d_vocab``.
        progress: show a tqdm bar.
        dense: the study's dense pass (:class:`~cgc_lens.forward.dense.DensePass`): a batch it
            already ran is not run again.
        reduce: applied to the summed NLL, KL and token counts (one float64 vector) before
            they become perplexities: e.g. a sum over the ranks of a process group, each
            given its own blocks (:func:`~cgc_lens.forward.head_edits.reduce_edit_sums`).

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> res = head_ablation(HookedTransformer(cfg), torch.randint(0, 11, (3, 8)),
        ...                     progress=False)
        >>> res.delta_ppl.shape, res.n_tokens
        ((2, 2), 21)
    """
    heads = select_heads(model, heads)
    edits = _ablation_edits(model, heads, mode, means)
    out = sweep_edits(model, tokens, edits, batch_size=batch_size,
                      heads_per_pass=heads_per_pass, progress=progress, desc=f"{mode}-ablation",
                      dense=dense)
    return _result(model, heads, reduce_edit_sums(out, reduce), mode=mode)


def head_ablation_naive(
    model: HookedTransformer, tokens: Int[Tensor, "n_blocks pos"], **kwargs: Any
) -> AblationResult:
    """The reference for :func:`head_ablation`: one full hooked forward per head and batch.

    Takes :func:`head_ablation`'s arguments, with its defaults; ``heads_per_pass`` is ignored.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> m, t = HookedTransformer(cfg), torch.randint(0, 11, (2, 8))
        >>> a = head_ablation(m, t, progress=False)
        >>> b = head_ablation_naive(m, t, progress=False)
        >>> bool(np.allclose(a.delta_ppl, b.delta_ppl, atol=1e-5))
        True
    """
    # bound to head_ablation's signature: one list of arguments and defaults for both
    bound = inspect.signature(head_ablation).bind(model, tokens, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    heads = select_heads(model, a["heads"])
    edits = _ablation_edits(model, heads, a["mode"], a["means"])
    out = _sweep_naive(model, tokens, edits, batch_size=a["batch_size"], progress=a["progress"])
    return _result(model, heads, out, mode=a["mode"])


@torch.no_grad()
def _sweep_naive(
    model: HookedTransformer, tokens: Tensor, edits: Sequence[HeadEdit], *, batch_size: int,
    progress: bool,
) -> EditSums:
    """What :func:`~cgc_lens.forward.head_edits.sweep_edits` returns, from one full forward
    per edit that sets ``hook_z``."""
    tokens = check_blocks(model, tokens)
    device = model.cfg.device
    nll, kl = np.zeros(len(edits)), np.zeros(len(edits))
    dense_nll, n_scored, n_pos = 0.0, 0, 0
    batches, n_batches = iter_batches(tokens, batch_size)
    bar = progress_bar(total=(n_batches or 0) * len(edits), desc="naive ablation",
                       enabled=progress)
    for rows in batches:
        batch = rows.to(device)
        ref_logp = log_probs(model(batch, return_type="logits"))
        ref_p = ref_logp.exp()
        dense_nll += float(nll_kl_sums(ref_logp, batch, ref_logp, ref_p)[0])
        n_scored, n_pos = n_scored + batch.shape[0] * (batch.shape[1] - 1), n_pos + batch.numel()
        for i, e in enumerate(edits):
            def ablate(z: Tensor, hook, e: HeadEdit = e) -> Tensor:
                z = z.clone()
                z[:, :, e.head.head] = 0.0 if e.shift is None else e.shift.to(z)
                return z

            with model.hooks(fwd_hooks=[(hook_name("z", layer=e.head.layer), ablate)]):
                logp = log_probs(model(batch, return_type="logits"))
            a, k = nll_kl_sums(logp, batch, ref_logp, ref_p)
            nll[i] += float(a)
            kl[i] += float(k)
            bar.update(1)
    bar.close()
    return nll, kl, dense_nll, n_scored, n_pos
