"""Losses from the final residual, the logits of one chunk of positions at a time.

A batch's logits are ``batch × pos × d_vocab``: 33 GB for Gemma-2-2B's 256k vocabulary at
batch 16 × 1,024 tokens. Nothing needs them all at once: :func:`final_residual` runs the blocks
and ``ln_final`` (``batch × pos × d_model``), and :func:`unembed_nll` unembeds and scores
``NLL_CHUNK_ELEMENTS // d_vocab`` positions at a time, and only the positions asked for (a
sliding window scores only those it introduces). :func:`log_probs` is the one log-softmax rule
of every loss (at least float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["NLL_CHUNK_ELEMENTS", "final_residual", "log_probs", "unembed_nll"]

NLL_CHUNK_ELEMENTS = 1 << 24
"""Logits held at once when a loss is taken from the final residual (:func:`unembed_nll`):
64 MiB of float32, 64 positions of a 256k vocabulary, 8,192 of cgc-tiny's 2,048."""


def log_probs(logits: Tensor) -> Tensor:
    """``log_softmax`` over the vocabulary in at least float32 (float64 stays float64)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def final_residual(
    model: HookedTransformer, inputs: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_model"]:
    """The residual the unembedding reads: every block, then ``ln_final``, exactly as
    ``HookedTransformer.forward`` computes it before its logits.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> model, tokens = HookedTransformer(cfg), torch.randint(0, 11, (2, 8))
        >>> torch.equal(model.unembed(final_residual(model, tokens)), model(tokens))
        True
    """
    resid = model(inputs, stop_at_layer=model.cfg.n_layers)
    return model.ln_final(resid) if model.cfg.normalization_type is not None else resid


def unembed_nll(
    model: HookedTransformer,
    resid: Float[Tensor, "n d_model"],
    targets: Int[Tensor, " n"],
    *,
    chunk_tokens: int | None = None,
    w_t: Tensor | None = None,
) -> Float[Tensor, " n"]:
    """NLL of ``targets[i]`` under the logits of ``resid[i]`` (:func:`final_residual`), the
    logits of ``chunk_tokens`` positions at a time.

    Peak memory is one chunk's logits and log-probabilities, whatever the vocabulary: the
    default chunk holds ``NLL_CHUNK_ELEMENTS`` logits (64 positions at a 256k vocabulary).
    Each chunk is unembedded as ``HookedTransformer.forward`` does it (``unembed`` hook points,
    ``F.linear`` with the contiguous transpose of ``W_U``, the Gemma-2 soft cap) and scored as
    :func:`cgc_lens.forward.metrics.token_nll` does, so the values are those of
    ``token_nll(model(tokens), tokens)`` (bit for bit when a chunk takes the BLAS kernel the
    whole batch takes; measured on x86 CPUs: chunks of 8 rows or more; smaller ones round
    differently, about 1e-7 relative).

    Args:
        model: the model whose ``unembed`` reads ``resid``.
        resid: ``[n, d_model]`` residual rows after ``ln_final``.
        targets: ``[n]`` the token each row predicts.
        chunk_tokens: rows per chunk; None: ``max(1, NLL_CHUNK_ELEMENTS // d_vocab)``.
        w_t: ``W_U.T.contiguous()`` when the caller made it already (one copy per call, not
            per chunk).

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8,
        ...                               d_vocab=11, act_fn="relu")
        >>> model, tokens = HookedTransformer(cfg), torch.randint(0, 11, (2, 8))
        >>> resid = final_residual(model, tokens)[:, :-1].reshape(-1, 8)
        >>> nll = unembed_nll(model, resid, tokens[:, 1:].reshape(-1), chunk_tokens=3)
        >>> from cgc_lens.forward.metrics import token_nll
        >>> torch.allclose(nll.view(2, 7), token_nll(model(tokens), tokens), atol=1e-6)
        True
    """
    from transformer_lens.utilities.activation_functions import apply_softcap

    rows = max(1, NLL_CHUNK_ELEMENTS // model.cfg.d_vocab) if chunk_tokens is None else chunk_tokens
    if not isinstance(rows, int) or rows < 1:
        raise CgcLensError(f"chunk_tokens must be a positive int or None, got {chunk_tokens!r}.")
    unembed = model.unembed
    w_t = unembed.W_U.T.contiguous() if w_t is None else w_t
    out = []
    for x, t in zip(resid.split(rows), targets.split(rows), strict=True):
        logits = unembed.hook_out(torch.nn.functional.linear(unembed.hook_in(x), w_t, unembed.b_U))
        logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
        out.append(-log_probs(logits).gather(-1, t[:, None]).squeeze(-1))
    return torch.cat(out) if out else resid.new_zeros(0, dtype=torch.float32)
