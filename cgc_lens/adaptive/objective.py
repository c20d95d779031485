"""The AdaptiveCompress objective (Eq. 5) and retention schedule (Eq. 6).

Per site, on one batch of ``t`` tokens::

    L = mean_t ‖h − ĥ‖²₂  +  λ · mean_t ‖f(h)‖₁  +  γ · L_cont

``‖h − ĥ‖²₂`` is summed over d_in, as Eq. 5 writes it (the squared L2 norm, SAELens's training
convention); the sites' losses are summed, so each compressor gets exactly the gradient it
would get alone. ``L_cont`` (the paper: "encourages distinct feature representations", no
formula) is, by our reading, the mean squared cosine similarity between different latents,
either of their activation patterns over the batch (``"activation"``) or of their decoder
directions (``"decoder"``). See ``docs/methods_adaptive.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch  # noqa: F401  (the doctests use it)
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from cgc_lens.errors import CgcLensError

__all__ = ["Contrastive", "LossTerms", "compressor_loss", "contrastive_loss", "ema_update",
           "retention"]

Contrastive = Literal["activation", "decoder", "none"]
"""What the contrastive term of Eq. 5 pushes apart (see the module docstring)."""


def retention(step: int, *, initial: float, final: float, warmup: int, period: int) -> float:
    """Eq. 6: ``r(t) = r_init − (r_init − r_final) · min(1, (t − t_warmup) / T)``, r_init before
    the warm-up ends.

    Example:
        >>> [round(retention(t, initial=0.999, final=0.95, warmup=2, period=4), 4)
        ...  for t in (0, 2, 4, 6, 9)]
        [0.999, 0.999, 0.9745, 0.95, 0.95]
    """
    if period < 1:
        raise CgcLensError(f"The schedule period T must be >= 1 step, got {period!r}.")
    progress = min(1.0, max(0.0, (step - warmup) / period))
    return initial - (initial - final) * progress


def ema_update(
    importance: Float[Tensor, "*n d_sae"], rate: Float[Tensor, "*n d_sae"], decay: float
) -> Float[Tensor, "*n d_sae"]:
    """Eq. 2 as a pure function: ``α g + (1 − α) · rate``.

    Example:
        >>> ema_update(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.99)
        tensor([0.9900, 0.0100])
    """
    return decay * importance + (1 - decay) * rate


def contrastive_loss(
    kind: str, feats: Float[Tensor, "n tokens d_sae"], w_dec: Float[Tensor, "n d_sae d_in"]
) -> Float[Tensor, " n"]:
    """Mean squared cosine similarity between different latents, per site.

    ``"activation"``: between the latents' activation vectors over the batch's tokens (columns
    of ``feats``); ``"decoder"``: between their decoder rows; ``"none"``: zero. Silent
    latents (zero columns) have cosine 0 with everything.

    Example:
        >>> f = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # latents 0 and 1 co-fire
        >>> contrastive_loss("activation", f, torch.eye(3)[None])
        tensor([0.3333])
    """
    if kind == "none":
        return feats.new_zeros(feats.shape[0])
    if kind == "activation":
        vectors = feats.transpose(1, 2)                       # [n, d_sae, tokens]
    elif kind == "decoder":
        vectors = w_dec
    else:
        raise CgcLensError(
            f"contrastive must be 'activation', 'decoder' or 'none', got {kind!r}."
        )
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cos = einsum(unit, unit, "n i x, n j x -> n i j")
    d_sae = cos.shape[-1]
    if d_sae < 2:
        return feats.new_zeros(feats.shape[0])
    off = cos.pow(2).sum((1, 2)) - cos.diagonal(dim1=1, dim2=2).pow(2).sum(-1)
    return off / (d_sae * (d_sae - 1))


@dataclass(frozen=True)
class LossTerms:
    """The terms of Eq. 5 per site (tensors ``[n]``; ``total`` is summed over sites)."""

    reconstruction: Tensor
    """mean_t ‖h − ĥ‖²₂."""
    l1: Tensor
    """mean_t ‖f(h)‖₁."""
    contrastive: Tensor
    """L_cont."""
    per_site: Tensor
    """reconstruction + λ · l1 + γ · contrastive."""
    total: Tensor
    """Sum of ``per_site`` (what is minimised)."""


def compressor_loss(
    x: Float[Tensor, "n tokens d_in"],
    x_hat: Float[Tensor, "n tokens d_in"],
    feats: Float[Tensor, "n tokens d_sae"],
    w_dec: Float[Tensor, "n d_sae d_in"],
    *,
    l1_coef: float,
    contrastive_coef: float,
    contrastive: str = "activation",
) -> LossTerms:
    """Eq. 5 for every site of a batch (see the module docstring).

    Example:
        >>> x = torch.ones(1, 2, 3); f = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])
        >>> t = compressor_loss(x, torch.zeros(1, 2, 3), f, torch.eye(2, 3)[None],
        ...                     l1_coef=0.5, contrastive_coef=0.0, contrastive="none")
        >>> float(t.reconstruction[0]), float(t.l1[0]), float(t.total)
        (3.0, 1.5, 3.75)
    """
    recon = (x - x_hat).pow(2).sum(-1).mean(-1)
    l1 = feats.abs().sum(-1).mean(-1)
    cont = contrastive_loss(contrastive, feats, w_dec)
    per_site = recon + l1_coef * l1 + contrastive_coef * cont
    return LossTerms(reconstruction=recon, l1=l1, contrastive=cont, per_site=per_site,
                     total=per_site.sum())
