"""Per-head ablation and per-head pruning sweeps: ΔPPL and ΔKL, exact and without wasted layers.

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
:func:`cgc_lens.forward.metrics.token_nll` and :func:`cgc_lens.forward.metrics.kl_divergence`, sharing one
``log_softmax`` per edited forward. :func:`head_ablation_naive` is the reference: one full
hooked forward per head (tests and ``benchmarks/bench_ablation.py`` check the two agree).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from einops import einsum, rearrange
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from cgc_lens.compress.operators import check_fraction, head_prune_
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import check_token_ids, log_probs
from cgc_lens.sites import Head, hook_name
from cgc_lens.forward.streaming import iter_batches, run_sites

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "AblationResult",
    "PruneSweepResult",
    "head_ablation",
    "head_ablation_naive",
    "head_means",
    "head_prune_sweep",
]

logger = logging.getLogger(__name__)

Mode = Literal["zero", "mean"]
_UNSUPPORTED = "Per-head edits by subtraction need attention output linear in hook_z"


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


@dataclass(frozen=True)
class _Edit:
    """``resid' = resid − (z_h − shift) @ delta_w`` for one head."""

    head: Head
    delta_w: Tensor  # [d_head, d_model]
    shift: Tensor | None  # [d_head]


def _check_model(model: HookedTransformer) -> str:
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


def _check_tokens(model: HookedTransformer, tokens: Tensor) -> Tensor:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.shape[1] < 2:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise CgcLensError(f"Expected token blocks [n_blocks, pos >= 2], got {shape}.")
    check_token_ids(model, tokens)
    return tokens


def _heads(model: HookedTransformer, heads: Sequence[Head] | None) -> list[Head]:
    if heads is None:
        return [Head(ell, h) for ell in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    return sorted({Head(int(h.layer), int(h.head)).check(model) for h in heads})


def _losses(logp: Tensor, tokens: Tensor, ref_logp: Tensor, ref_p: Tensor) -> tuple[Tensor, Tensor]:
    """Summed NLL (``token_nll``) and KL(ref ‖ ·) (``kl_divergence``) per leading index, float64.

    ``logp`` is ``[..., batch, pos, d_vocab]``; ``tokens``, ``ref_logp`` and ``ref_p`` lack the
    leading dims and broadcast. ``logp`` is consumed: the KL is formed in place in its buffer
    (``logp − ref``, then one dot product with ``p_ref`` per position), which on CPU is about 3×
    faster than materialising ``p_ref (ref − logp)`` and as exact (the difference is taken
    elementwise, never as a difference of two sums).
    """
    lead = logp.shape[:-3]
    target = tokens[:, 1:, None].expand(*lead, -1, -1, 1)
    nll = -logp[..., :-1, :].gather(-1, target).squeeze(-1).double().sum((-2, -1))
    if logp is ref_logp:
        return nll, torch.zeros_like(nll)
    diff = logp.sub_(ref_logp).reshape(-1, *logp.shape[-3:])  # log p − log p_ref, in place
    kl = torch.stack([-torch.einsum("bpv,bpv->bp", ref_p, d).double().sum() for d in diff])
    return nll, kl.reshape(lead)


def _finish(model: HookedTransformer, layer: int, resid: Tensor, start: str) -> Tensor:
    """Logits from the residual right after layer ``layer``'s attention (or after the block)."""
    if start == "resid_mid":
        block, cfg = model.blocks[layer], model.cfg
        resid = block.hook_resid_mid(resid)
        mlp_in = block.hook_mlp_in(resid.clone()) if cfg.use_hook_mlp_in else resid
        resid = block.hook_resid_post(resid + block.apply_mlp(block.ln2(mlp_in)))
    return model(resid, start_at_layer=layer + 1, return_type="logits")


@torch.no_grad()
def _sweep(
    model: HookedTransformer, tokens: Tensor, edits: Sequence[_Edit], *, batch_size: int,
    heads_per_pass: int | None, progress: bool, desc: str,
) -> tuple[np.ndarray, np.ndarray, float, int, int]:
    """Summed NLL and KL per edit, the dense NLL sum, scored tokens and KL positions."""
    start = _check_model(model)
    tokens = _check_tokens(model, tokens)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CgcLensError(f"batch_size must be a positive int, got {batch_size!r}.")
    per_pass = heads_per_pass
    if per_pass is None:  # measured: on CPU stacking only adds cache misses (bench_ablation.py)
        per_pass = model.cfg.n_heads if torch.device(model.cfg.device).type == "cuda" else 1
    if not isinstance(per_pass, int) or per_pass < 1:
        raise CgcLensError(
            f"heads_per_pass must be a positive int or None, got {heads_per_pass!r}.")
    by_layer: dict[int, list[int]] = {}
    identity = []  # a zero change of W_O (a head whose W_O is 0, retention 1) changes nothing
    for i, e in enumerate(edits):
        if bool((e.delta_w == 0).all()):
            identity.append(i)
        else:
            by_layer.setdefault(e.head.layer, []).append(i)
    device = model.cfg.device
    nll, kl = np.zeros(len(edits)), np.zeros(len(edits))
    dense_nll, n_scored, n_pos = 0.0, 0, 0
    cache: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        cache[hook.name] = act.detach()

    hooks = [(hook_name(kind, layer=ell), keep) for ell in by_layer for kind in ("z", start)]
    batches, n_batches = iter_batches(tokens, batch_size)
    bar = tqdm(total=(n_batches or 0) * len(by_layer), desc=desc, disable=not progress,
               leave=False)
    for rows in batches:
        batch = rows.to(device)
        with model.hooks(fwd_hooks=hooks):
            ref_logp = log_probs(model(batch, return_type="logits"))
        ref_p = ref_logp.exp()
        b, pos = batch.shape
        d_nll = float(_losses(ref_logp, batch, ref_logp, ref_p)[0])
        dense_nll += d_nll
        nll[identity] += d_nll
        n_scored, n_pos = n_scored + b * (pos - 1), n_pos + b * pos
        for ell, idx in by_layer.items():
            z, resid = cache[hook_name("z", layer=ell)], cache[hook_name(start, layer=ell)]
            for lo in range(0, len(idx), per_pass):
                chunk = [edits[i] for i in idx[lo:lo + per_pass]]
                zc = z[:, :, [e.head.head for e in chunk]]
                if any(e.shift is not None for e in chunk):
                    zc = zc - torch.stack([e.shift if e.shift is not None
                                           else torch.zeros_like(e.delta_w[:, 0])
                                           for e in chunk]).to(zc)
                delta = einsum(zc, torch.stack([e.delta_w for e in chunk]).to(zc),
                               "b p e d, e d m -> e b p m")
                stacked = rearrange(resid[None] - delta, "e b p m -> (e b) p m")
                logp = log_probs(_finish(model, ell, stacked, start)).view(len(chunk), b, pos, -1)
                e_nll, e_kl = _losses(logp, batch, ref_logp, ref_p)
                sel = idx[lo:lo + per_pass]
                nll[sel] += e_nll.cpu().numpy()
                kl[sel] += e_kl.cpu().numpy()
            bar.update(1)
        cache.clear()
    bar.close()
    return nll, kl, dense_nll, n_scored, n_pos


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

    run_sites(model, _check_tokens(model, tokens), hooks, batch_size=batch_size, callback=add,
              progress=progress, desc="head means")
    return total / tokens.numel()


def _ablation_edits(
    model: HookedTransformer, heads: list[Head], mode: str, means: Tensor | None,
) -> list[_Edit]:
    if mode not in ("zero", "mean"):
        raise CgcLensError(f"mode must be 'zero' or 'mean', got {mode!r}.")
    cfg = model.cfg
    if mode == "mean":
        shape = (cfg.n_layers, cfg.n_heads, cfg.d_head)
        if means is None or tuple(means.shape) != shape:
            got = None if means is None else tuple(means.shape)
            raise CgcLensError(f"Mean-ablation needs means [n_layers, n_heads, d_head] = {shape} "
                               f"(from head_means on calibration tokens), got {got}.")
    return [_Edit(h, model.blocks[h.layer].attn.W_O[h.head].detach(),
                  None if mode == "zero" else means[h.layer, h.head]) for h in heads]


def _result(model, heads, sums, *, mode: str) -> AblationResult:
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

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> res = head_ablation(HookedTransformer(cfg), torch.randint(0, 11, (3, 8)),
        ...                     progress=False)
        >>> res.delta_ppl.shape, res.n_tokens
        ((2, 2), 21)
    """
    heads = _heads(model, heads)
    edits = _ablation_edits(model, heads, mode, means)
    out = _sweep(model, tokens, edits, batch_size=batch_size, heads_per_pass=heads_per_pass,
                 progress=progress, desc=f"{mode}-ablation")
    return _result(model, heads, out, mode=mode)


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
    heads = _heads(model, a["heads"])
    edits = _ablation_edits(model, heads, a["mode"], a["means"])
    out = _sweep_naive(model, tokens, edits, batch_size=a["batch_size"], progress=a["progress"])
    return _result(model, heads, out, mode=a["mode"])


@torch.no_grad()
def _sweep_naive(
    model: HookedTransformer, tokens: Tensor, edits: Sequence[_Edit], *, batch_size: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, float, int, int]:
    """What :func:`_sweep` returns, from one full forward per edit that sets ``hook_z``."""
    tokens = _check_tokens(model, tokens)
    device = model.cfg.device
    nll, kl = np.zeros(len(edits)), np.zeros(len(edits))
    dense_nll, n_scored, n_pos = 0.0, 0, 0
    batches, n_batches = iter_batches(tokens, batch_size)
    bar = tqdm(total=(n_batches or 0) * len(edits), desc="naive ablation", disable=not progress,
               leave=False)
    for rows in batches:
        batch = rows.to(device)
        ref_logp = log_probs(model(batch, return_type="logits"))
        ref_p = ref_logp.exp()
        dense_nll += float(_losses(ref_logp, batch, ref_logp, ref_p)[0])
        n_scored, n_pos = n_scored + batch.shape[0] * (batch.shape[1] - 1), n_pos + batch.numel()
        for i, e in enumerate(edits):
            def ablate(z: Tensor, hook, e: _Edit = e) -> Tensor:
                z = z.clone()
                z[:, :, e.head.head] = 0.0 if e.shift is None else e.shift.to(z)
                return z

            with model.hooks(fwd_hooks=[(hook_name("z", layer=e.head.layer), ablate)]):
                logp = log_probs(model(batch, return_type="logits"))
            a, k = _losses(logp, batch, ref_logp, ref_p)
            nll[i] += float(a)
            kl[i] += float(k)
            bar.update(1)
    bar.close()
    return nll, kl, dense_nll, n_scored, n_pos


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
    heads = _heads(model, heads)
    edits = []
    for r in levels:
        pruned = {ell: head_prune_(model.blocks[ell].attn.W_O.detach().clone(),
                                   [r] * model.cfg.n_heads) for ell in {h.layer for h in heads}}
        edits += [_Edit(h, model.blocks[h.layer].attn.W_O[h.head].detach()
                        - pruned[h.layer][h.head], None) for h in heads]
    nll, kl, dense_nll, n_scored, n_pos = _sweep(
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
