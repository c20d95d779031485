"""Per-head edits by subtraction: one dense forward per batch, then each edited head's loss
without recomputing its layer's attention.

Ablating head ``h`` of layer ℓ (``hook_z[..., h, :] = 0``, or the head's mean for mean-ablation)
or pruning its ``W_O`` slice changes one thing: the head's contribution to the attention output,
``z_h @ W_O[h]``. Attention output is linear in ``z`` (``attn_out = Σ_h z_h W_O[h] + b_O``), so
the edited residual is the dense one minus that change::

    zero-ablation   resid' = resid − z_h @ W_O[h]
    mean-ablation   resid' = resid − (z_h − μ_h) @ W_O[h]
    pruning to W'   resid' = resid − z_h @ (W_O[h] − W')

One dense forward per token batch caches, for every layer, ``hook_z`` and the residual right
after the attention (``hook_resid_mid``; ``hook_resid_post`` for attention-only and parallel
attention/MLP blocks, whose MLP does not read the attention output). Layer ℓ's attention is
never recomputed: each edit subtracts its change, runs the rest of block ℓ (``ln2``, MLP) and
``model(resid, start_at_layer=ℓ + 1)``, which ends in the unembedding. Several edits of one
layer can share one forward, their residuals stacked along the batch dimension (``heads_per_pass``:
all heads of a layer on CUDA; one on CPU, where stacking is slower per head).

The same dense pass scores the dense model, so ΔPPL and ΔKL = mean KL(dense ‖ edited) over
positions come from identical tokens. NLL and KL are the formulas of
:func:`cgc_lens.forward.metrics.token_nll` and :func:`cgc_lens.forward.metrics.kl_divergence`,
sharing one ``log_softmax`` per edited forward (:func:`cgc_lens.forward.metrics.nll_kl_sums`).
The users are :mod:`cgc_lens.forward.ablation` (whose ``head_ablation_naive`` is the reference:
one full hooked forward per head) and :mod:`cgc_lens.forward.prune_sweep`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import einsum, rearrange
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.metrics import check_token_ids, log_probs, nll_kl_sums
from cgc_lens.forward.streaming import iter_batches
from cgc_lens.progress import progress_bar
from cgc_lens.sites import Head, hook_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "EditSums", "HeadEdit", "check_blocks", "logits_from_residual", "reduce_edit_sums",
    "residual_start", "select_heads", "sweep_edits",
]

_UNSUPPORTED = "Per-head edits by subtraction need attention output linear in hook_z"

EditSums = tuple[np.ndarray, np.ndarray, float, int, int]
"""Summed NLL and KL per edit, the dense NLL sum, scored tokens and KL positions."""


def reduce_edit_sums(sums: EditSums, reduce: Callable[[Tensor], Tensor] | None) -> EditSums:
    """``sums`` passed through ``reduce`` as one float64 vector (e.g. summed over the ranks of
    a process group, each of which swept its own token blocks); as they are when None. Token
    counts stay exact in float64 (below 2⁵³).

    Example:
        >>> sums = (np.ones(2), np.zeros(2), 3.0, 4, 5)
        >>> reduce_edit_sums(sums, lambda v: v * 2)[2:]
        (6.0, 8, 10)
    """
    if reduce is None:
        return sums
    nll, kl, dense_nll, n_scored, n_pos = sums
    n = len(nll)
    flat = torch.from_numpy(np.concatenate([nll, kl, [dense_nll, n_scored, n_pos]]).astype(
        np.float64))
    out = reduce(flat).numpy()
    return out[:n], out[n:2 * n], float(out[2 * n]), int(out[2 * n + 1]), int(out[2 * n + 2])


@dataclass(frozen=True)
class HeadEdit:
    """``resid' = resid − (z_h − shift) @ delta_w`` for one head."""

    head: Head
    """The edited head."""
    delta_w: Tensor
    """``[d_head, d_model]``: the change of the head's ``W_O`` slice (all of it to ablate)."""
    shift: Tensor | None
    """``[d_head]``: the value ``z_h`` is set to (mean-ablation); None: zero."""


def residual_start(model: HookedTransformer) -> str:
    """Which residual the edits start from: ``resid_mid`` or ``resid_post``; raises if neither."""
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    if (cfg.original_architecture in POST_NORM_ARCHITECTURES
            or cfg.use_normalization_before_and_after):
        raise CgcLensError(f"{_UNSUPPORTED}; {cfg.model_name} normalises the attention output "
                           "before the residual add. Use head_ablation_naive.")
    if cfg.positional_embedding_type == "shortformer" or getattr(cfg, "load_in_4bit", False):
        raise CgcLensError(f"{_UNSUPPORTED} and start_at_layer without extra inputs; "
                           f"{cfg.model_name} is shortformer or 4-bit. Use head_ablation_naive.")
    return "resid_post" if cfg.attn_only or cfg.parallel_attn_mlp else "resid_mid"


def check_blocks(model: HookedTransformer, tokens: Tensor) -> Tensor:
    """``tokens`` if they are blocks ``[n_blocks, pos >= 2]`` of ids the model knows; raises
    otherwise."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] < 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise CgcLensError(f"Expected token blocks [n_blocks, pos >= 2], got {shape}.")
    check_token_ids(model, tokens)
    return tokens


def select_heads(model: HookedTransformer, heads: Sequence[Head] | None) -> list[Head]:
    """The heads to edit, sorted and checked against the model; all of them if None."""
    if heads is None:
        return [Head(ell, h) for ell in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    return sorted({Head(int(h.layer), int(h.head)).check(model) for h in heads})


def logits_from_residual(
    model: HookedTransformer, layer: int, resid: Tensor, start: str
) -> Tensor:
    """Logits from the residual right after layer ``layer``'s attention (or after the block)."""
    if start == "resid_mid":
        block, cfg = model.blocks[layer], model.cfg
        resid = block.hook_resid_mid(resid)
        mlp_in = block.hook_mlp_in(resid.clone()) if cfg.use_hook_mlp_in else resid
        resid = block.hook_resid_post(resid + block.apply_mlp(block.ln2(mlp_in)))
    return model(resid, start_at_layer=layer + 1, return_type="logits")


def _heads_per_pass(model: HookedTransformer, heads_per_pass: int | None) -> int:
    per_pass = heads_per_pass
    if per_pass is None:  # measured: on CPU stacking only adds cache misses (bench_ablation.py)
        per_pass = model.cfg.n_heads if torch.device(model.cfg.device).type == "cuda" else 1
    if not isinstance(per_pass, int) or per_pass < 1:
        raise CgcLensError(
            f"heads_per_pass must be a positive int or None, got {heads_per_pass!r}.")
    return per_pass


def _by_layer(edits: Sequence[HeadEdit]) -> tuple[dict[int, list[int]], list[int]]:
    """Indices of the edits per layer, and of those that change nothing (a zero ``delta_w``:
    a head whose W_O is 0, retention 1)."""
    by_layer: dict[int, list[int]] = {}
    identity = []
    for i, e in enumerate(edits):
        if bool((e.delta_w == 0).all()):
            identity.append(i)
        else:
            by_layer.setdefault(e.head.layer, []).append(i)
    return by_layer, identity


def _chunk_losses(
    model: HookedTransformer, layer: int, chunk: Sequence[HeadEdit], *, z: Tensor, resid: Tensor,
    start: str, batch: Tensor, ref_logp: Tensor, ref_p: Tensor,
) -> tuple[Tensor, Tensor]:
    """Summed NLL and KL of each edit of ``chunk`` (all of ``layer``), in one stacked forward
    from the layer's cached ``hook_z`` (``z``) and residual after its attention (``resid``)."""
    b, pos = batch.shape
    zc = z[:, :, [e.head.head for e in chunk]]
    if any(e.shift is not None for e in chunk):
        zc = zc - torch.stack([e.shift if e.shift is not None
                               else torch.zeros_like(e.delta_w[:, 0])
                               for e in chunk]).to(zc)
    delta = einsum(zc, torch.stack([e.delta_w for e in chunk]).to(zc),
                   "b p e d, e d m -> e b p m")
    stacked = rearrange(resid[None] - delta, "e b p m -> (e b) p m")
    logp = log_probs(logits_from_residual(model, layer, stacked, start)).view(
        len(chunk), b, pos, -1)
    return nll_kl_sums(logp, batch, ref_logp, ref_p)


@torch.no_grad()
def sweep_edits(
    model: HookedTransformer, tokens: Tensor, edits: Sequence[HeadEdit], *, batch_size: int,
    heads_per_pass: int | None, progress: bool, desc: str, dense: DensePass | None = None,
) -> EditSums:
    """Summed NLL and KL per edit, the dense NLL sum, scored tokens and KL positions.

    ``dense``: the study's dense pass (:class:`~cgc_lens.forward.dense.DensePass`), read instead
    of running the dense forward of a batch it already ran."""
    start = residual_start(model)
    tokens = check_blocks(model, tokens)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CgcLensError(f"batch_size must be a positive int, got {batch_size!r}.")
    per_pass = _heads_per_pass(model, heads_per_pass)
    by_layer, identity = _by_layer(edits)
    nll, kl = np.zeros(len(edits)), np.zeros(len(edits))
    dense_nll, n_scored, n_pos = 0.0, 0, 0
    cache: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        cache[hook.name] = act.detach()

    hooks = [(hook_name(kind, layer=ell), keep) for ell in by_layer for kind in ("z", start)]
    batches, n_batches = iter_batches(tokens, batch_size)
    bar = progress_bar(total=(n_batches or 0) * len(by_layer), desc=desc, enabled=progress)
    for rows in batches:
        batch = rows.to(model.cfg.device)
        if dense is None:
            with model.hooks(fwd_hooks=hooks):
                ref_logp = log_probs(model(batch, return_type="logits"))
            acts = cache
        else:
            got = dense(batch, [name for name, _ in hooks])
            ref_logp, acts = got.log_probs, got.activations
        ref_p = ref_logp.exp()
        d_nll = float(nll_kl_sums(ref_logp, batch, ref_logp, ref_p)[0])
        dense_nll += d_nll
        nll[identity] += d_nll
        n_scored, n_pos = n_scored + batch.shape[0] * (batch.shape[1] - 1), n_pos + batch.numel()
        for ell, idx in by_layer.items():
            z, resid = acts[hook_name("z", layer=ell)], acts[hook_name(start, layer=ell)]
            for lo in range(0, len(idx), per_pass):
                sel = idx[lo:lo + per_pass]
                e_nll, e_kl = _chunk_losses(model, ell, [edits[i] for i in sel], z=z, resid=resid,
                                            start=start, batch=batch, ref_logp=ref_logp,
                                            ref_p=ref_p)
                nll[sel] += e_nll.cpu().numpy()
                kl[sel] += e_kl.cpu().numpy()
            bar.update(1)
        cache.clear()
    bar.close()
    return nll, kl, dense_nll, n_scored, n_pos
