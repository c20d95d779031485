"""Loss-side metrics: per-token NLL, KL between two models' next-token distributions, perplexity."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["kl_divergence", "token_nll"]


def token_nll(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Negative log-likelihood of each next token, in float64-safe float32 log-softmax.

    Position ``i`` of the result scores ``tokens[:, i + 1]`` given ``tokens[:, : i + 1]``.

    Example:
        >>> logits = torch.zeros(1, 3, 4)
        >>> token_nll(logits, torch.tensor([[0, 1, 2]]))
        tensor([[1.3863, 1.3863]])
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_divergence(
    ref_logits: Float[Tensor, "batch pos d_vocab"], logits: Float[Tensor, "batch pos d_vocab"]
) -> Float[Tensor, "batch pos"]:
    """KL(ref ‖ other) of the next-token distributions at each position, in nats.

    Example:
        >>> x = torch.randn(2, 3, 5)
        >>> float(kl_divergence(x, x).abs().max())
        0.0
    """
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)
