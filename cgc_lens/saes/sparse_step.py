"""The sparse TopK training step: loss and gradients of batched TopK SAEs from k latents a token.

:func:`sparse_topk_loss` computes the loss of :func:`~cgc_lens.saes.train.topk_loss` (Σ over
SAEs of the mean squared reconstruction error, plus the AuxK term of Gao et al. 2024 once any
latent is dead) and, when asked, its gradients in the same pass, a chunk of heads at a time, so a
chunk's ``[heads, batch, d_sae]`` tensors stay in cache between the encoder, top-k and backward.
:class:`SparseTopKLoss` wraps it as an autograd function. Only the k active latents of a token
reach its reconstruction, and only they receive gradient (top-k passes gradient to the selected
entries only), so:

- decode ``x̂ = Σ_j a_j W_dec[i_j] + b_dec`` is an ``embedding_bag`` (k · d_in per token,
  not d_sae · d_in);
- ``∂L/∂a_j = ∂L/∂x̂ · W_dec[i_j]`` is a sampled matmul at the k entries (``sampled_addmm``);
- ``∂W_dec = Aᵀ ∂L/∂x̂`` and ``∂W_enc = (x − b_dec)ᵀ ∂L/∂pre`` stay dense batched matmuls on
  the chunk's (cache-resident) codes: on CPU the scatter-add of k rows per token measured
  slower than the dense matmul at d_sae / k ≈ 20;
- AuxK works on the dead latents only (``[m, batch, n_dead]``), which is exact: the top
  ``aux_k`` of the pre-activations masked to dead latents are among the dead latents, and
  when there are at most ``aux_k`` of them all are taken (the ``-inf`` padding the dense
  form may pick contributes ``relu(-inf) = 0``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SparseTopKLoss", "sparse_topk_loss"]


class SparseTopKLoss(torch.autograd.Function):
    """The loss with gradients computed in the same pass (chunk by chunk, while the chunk's
    tensors are in cache); ``backward`` only scales them by the incoming scalar gradient."""

    @staticmethod
    def forward(ctx, w_enc, b_enc, w_dec, b_dec, x, since_fired, opts):  # type: ignore[override]  # noqa: PLR0917 - Function.apply passes inputs positionally
        params = (w_enc, b_enc, w_dec, b_dec)
        ctx.grads = [torch.empty_like(p) for p in params]
        return sparse_topk_loss(params, x, since_fired, grads=ctx.grads, **opts)

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_loss == 1):
            grads = [g * grad_loss for g in grads]
        return (*grads, None, None, None)


def sparse_topk_loss(
    params: tuple[Tensor, ...], x: Tensor, since_fired: Tensor, *, grads: list[Tensor] | None,
    k: int, aux_k: int, aux_coef: float, dead_after: int, chunk: int,
) -> Tensor:
    """The TopK + AuxK loss of ``params = (W_enc, b_enc, W_dec, b_dec)``, ``chunk`` heads at a
    time; fills ``grads`` (one per parameter) when given and updates ``since_fired`` in place.

    Args:
        params: the batched SAE's parameters, ``n`` SAEs along the first dimension.
        x: ``[n, batch, d_in]`` inputs (not requiring grad).
        since_fired: ``[n, d_sae]`` tokens since each latent last fired.
        grads: one tensor per parameter, overwritten with the gradients; ``None``: loss only.
        k: active latents per token.
        aux_k: dead latents the AuxK term may use per token.
        aux_coef: weight of the AuxK term (0 turns it off).
        dead_after: a latent is dead after this many tokens without firing.
        chunk: heads per chunk.
    """
    n = x.shape[0]
    main, aux = x.new_empty(n), x.new_empty(n)
    any_dead = False
    for start in range(0, n, chunk):
        heads = slice(start, min(start + chunk, n))
        any_dead |= _sparse_chunk(
            tuple(p[heads] for p in params), x[heads], since_fired[heads],
            out=(main[heads], aux[heads]),
            grads=None if grads is None else [g[heads] for g in grads],
            k=k, aux_k=aux_k, aux_coef=aux_coef, dead_after=dead_after,
        )
    loss = main.sum()
    # As topk_loss_dense: once any SAE has a dead latent, every SAE's AuxK term is added (for
    # an SAE without dead latents it equals its reconstruction loss and has no gradient).
    return loss + aux_coef * aux.sum() if aux_coef > 0 and any_dead else loss


@dataclass(frozen=True, kw_only=True)
class _Forward:
    """One chunk's forward pass through ``m`` SAEs (shapes ``[m, batch, ·]``)."""

    xc: Tensor
    """``x − b_dec``, the encoder's input."""
    pre: Tensor
    """Pre-activations ``[m, batch, d_sae]``."""
    values: Tensor
    """Top-k pre-activations ``[m, batch, k]``."""
    indices: Tensor
    """Their latents ``[m, batch, k]``."""
    acts: Tensor
    """``relu(values)``: the codes at ``indices``."""
    rows: Tensor
    """``[m · batch, k]`` rows of the chunk's stacked decoders ``[m · d_sae, d_in]``."""
    err: Tensor
    """Reconstruction minus input, ``[m, batch, d_in]``."""


def _sparse_chunk(
    params: tuple[Tensor, ...], x: Tensor, since_fired: Tensor, *,
    out: tuple[Tensor, Tensor], grads: list[Tensor] | None,
    k: int, aux_k: int, aux_coef: float, dead_after: int,
) -> bool:
    """Loss terms (into ``out = (main, aux)``) and gradients (into ``grads``) of ``m`` SAEs
    (the steps of the module docstring). Returns whether any latent of the chunk is dead."""
    w_enc, _, w_dec, _ = params
    main, aux = out
    fwd = _forward(params, x, k)
    main.copy_(fwd.err.pow(2).sum(-1).mean(-1))
    dead = _update_dead(since_fired, fwd, x.shape[1], dead_after)
    any_dead = aux_coef > 0 and bool(dead.any())
    g_pre = None if grads is None else _decoder_grads(fwd, w_dec, grads)
    if any_dead:
        _aux_term(fwd, w_dec, dead, aux_k=aux_k, aux_coef=aux_coef, dtype=x.dtype, out=aux,
                  grads=grads, g_pre=g_pre)
    else:
        aux.copy_(main)
    if grads is not None:
        _encoder_grads(fwd, w_enc, grads, g_pre)  # type: ignore[arg-type]
    return any_dead


def _forward(params: tuple[Tensor, ...], x: Tensor, k: int) -> _Forward:
    """Encode, keep the top k, decode as an ``embedding_bag`` over the k decoder rows."""
    w_enc, b_enc, w_dec, b_dec = params
    m, batch, d_in = x.shape
    d_sae = w_enc.shape[-1]
    xc = x - b_dec[:, None, :]
    pre = torch.baddbmm(b_enc[:, None, :], xc, w_enc)  # [m, batch, d_sae]
    values, indices = pre.topk(k, dim=-1, sorted=False)
    acts = values.relu()
    rows = (indices + torch.arange(m, device=x.device)[:, None, None] * d_sae).view(-1, k)
    x_hat = F.embedding_bag(rows, w_dec.reshape(m * d_sae, d_in), mode="sum",
                            per_sample_weights=acts.view(-1, k)).view(m, batch, d_in)
    err = x_hat.add_(b_dec[:, None, :]).sub_(x)
    return _Forward(xc=xc, pre=pre, values=values, indices=indices, acts=acts, rows=rows,
                    err=err)


def _update_dead(since_fired: Tensor, fwd: _Forward, batch: int, dead_after: int) -> Tensor:
    """Count ``batch`` more tokens since each latent fired (0 for those that fired); the dead."""
    m = since_fired.shape[0]
    fired = torch.zeros_like(since_fired).scatter_add_(
        -1, fwd.indices.view(m, -1), (fwd.values > 0).view(m, -1).to(since_fired.dtype))
    since_fired.add_(batch).masked_fill_(fired > 0, 0)
    return since_fired >= dead_after


def _decoder_grads(fwd: _Forward, w_dec: Tensor, grads: list[Tensor]) -> Tensor:
    """Fill ∂W_dec and ∂b_dec of the reconstruction loss; return its ∂pre."""
    _, _, g_w_dec, g_b_dec = grads
    m, batch, d_in = fwd.err.shape
    d_sae, k = fwd.pre.shape[-1], fwd.indices.shape[-1]
    g_x_hat = fwd.err * (2 / batch)
    code = _csr(fwd.rows, fwd.acts, m * batch, m * d_sae)
    g_acts = torch.sparse.sampled_addmm(
        code, g_x_hat.view(-1, d_in), w_dec.reshape(m * d_sae, d_in).T, beta=0
    ).values().view(m, batch, k)
    g_pre = torch.zeros_like(fwd.pre).scatter_(-1, fwd.indices, g_acts * (fwd.values > 0))
    dense_code = torch.zeros_like(fwd.pre).scatter_(-1, fwd.indices, fwd.acts)
    torch.bmm(dense_code.transpose(1, 2), g_x_hat, out=g_w_dec)
    g_b_dec.copy_(g_x_hat.sum(1))
    return g_pre


def _aux_term(
    fwd: _Forward, w_dec: Tensor, dead: Tensor, *, aux_k: int, aux_coef: float,
    dtype: torch.dtype, out: Tensor, grads: list[Tensor] | None, g_pre: Tensor | None,
) -> None:
    """The AuxK loss on the dead latents (into ``out``); its gradients added to ``∂W_dec``
    (``grads[2]``) and ``g_pre`` when ``grads`` is given. ``dtype``: the input's."""
    m, batch, d_in = fwd.err.shape
    n_dead = int(dead.sum(-1).max())
    order = dead.to(dtype).topk(n_dead, dim=-1, sorted=False).indices  # dead ones first
    valid = dead.gather(-1, order)
    cols = order[:, None, :].expand(m, batch, n_dead)
    aux_pre = fwd.pre.gather(-1, cols).masked_fill_(~valid[:, None, :], float("-inf"))
    if n_dead > aux_k:
        aux_values, pick = aux_pre.topk(aux_k, dim=-1, sorted=False)
        aux_code = torch.zeros_like(aux_pre).scatter_(-1, pick, aux_values.relu())
    else:
        aux_code = aux_pre.relu_()
    dead_rows = order[:, :, None].expand(m, n_dead, d_in)
    w_dead = w_dec.gather(1, dead_rows)  # [m, n_dead, d_in]
    aux_err = torch.bmm(aux_code, w_dead).add_(fwd.err)
    out.copy_(aux_err.pow(2).sum(-1).mean(-1))
    if grads is not None:
        g_aux = aux_err.mul_(2 * aux_coef / batch)
        g_aux_pre = torch.bmm(g_aux, w_dead.transpose(1, 2)).mul_(aux_code > 0)
        g_pre.scatter_add_(-1, cols, g_aux_pre)  # type: ignore[union-attr]
        grads[2].scatter_add_(1, dead_rows, torch.bmm(aux_code.transpose(1, 2), g_aux))


def _encoder_grads(fwd: _Forward, w_enc: Tensor, grads: list[Tensor], g_pre: Tensor) -> None:
    """Fill ∂W_enc and ∂b_enc from ``g_pre``, and take b_dec's path through the encoder off
    ∂b_dec."""
    g_w_enc, g_b_enc, _, g_b_dec = grads
    g_bias = g_pre.sum(1)
    g_b_enc.copy_(g_bias)
    torch.bmm(fwd.xc.transpose(1, 2), g_pre, out=g_w_enc)
    g_b_dec.sub_(torch.bmm(w_enc, g_bias[:, :, None])[..., 0])


def _csr(rows: Tensor, values: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """``[n_rows, n_cols]`` CSR matrix with ``rows.shape[1]`` entries per row at ``rows``."""
    per_row = rows.shape[1]
    crow = torch.arange(0, n_rows * per_row + 1, per_row, device=rows.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": used for sampled_addmm
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, rows.reshape(-1), values.reshape(-1),
                                       (n_rows, n_cols))
