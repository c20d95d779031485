"""The dense model's pass over a token batch, run once and kept for a study's lifetime.

The capability study scores the same held-out batches against the dense model four times: the
ablation sweep, the Theorem-1 prune sweep, the reference of the allocations' evaluation and the
"dense" allocation itself. :class:`DensePass` runs that forward once per batch and keeps its
log-probabilities and the activations asked for, so the later steps read them instead of
running the dense model again. The values are those of the first forward, bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.logits import log_probs

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["DENSE_CACHE_BYTES", "DenseOutputs", "DensePass"]

DENSE_CACHE_BYTES = 2 * 2**30
"""What a :class:`DensePass` keeps at most (log-probabilities and activations, bytes); batches
beyond it are run afresh every time they are asked for."""


@dataclass(kw_only=True)
class DenseOutputs:
    """The dense model's outputs on one batch."""

    log_probs: Tensor
    """``[batch, pos, d_vocab]`` log-probabilities (as :func:`~cgc_lens.forward.log_probs`)."""
    activations: dict[str, Tensor] = field(default_factory=dict)
    """Hook name → activation read during that forward (detached)."""

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(
            t.numel() * t.element_size() for t in (self.log_probs, *self.activations.values())
        )


class DensePass:
    """The dense forward of ``model`` per token batch, memoised (see the module docstring).

    The model must hold its dense weights whenever the object is called (every caller runs it
    outside ``compressed(...)``); hooks attached by the caller must only read.

    Example:
        >>> from cgc_lens import load_model
        >>> model = load_model("cgc-tiny", device="cpu")
        >>> dense, batch = DensePass(model), torch.randint(0, 100, (2, 8))
        >>> first = dense(batch, ["blocks.0.attn.hook_z"])
        >>> again = dense(batch, ["blocks.0.attn.hook_z"])
        >>> again is first, dense.forwards
        (True, 1)
    """

    def __init__(self, model: HookedTransformer, *, max_bytes: int = DENSE_CACHE_BYTES) -> None:
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise CgcLensError(f"max_bytes must be an int >= 0, got {max_bytes!r}.")
        self.model, self.max_bytes = model, max_bytes
        self.forwards = 0
        """Dense forwards run so far."""
        self._kept: dict[tuple[str, tuple[int, ...]], DenseOutputs] = {}

    @property
    def nbytes(self) -> int:
        """Bytes kept."""
        return sum(out.nbytes for out in self._kept.values())

    @torch.no_grad()
    def __call__(self, batch: Tensor, hooks: Sequence[str] = ()) -> DenseOutputs:
        """The dense log-probabilities of ``batch`` and the activations at ``hooks``."""
        ids = batch.detach().cpu().contiguous()
        key = (hashlib.blake2b(ids.numpy().tobytes(), digest_size=16).hexdigest(), tuple(ids.shape))
        kept = self._kept.get(key)
        if kept is not None and set(hooks) <= kept.activations.keys():
            return kept
        names = sorted(set(hooks) | (set(kept.activations) if kept is not None else set()))
        acts: dict[str, Tensor] = {}

        def keep(act: Tensor, hook) -> None:
            acts[hook.name] = act.detach()

        with self.model.hooks(fwd_hooks=[(name, keep) for name in names]):
            out = DenseOutputs(
                log_probs=log_probs(self.model(batch, return_type="logits")), activations=acts
            )
        self.forwards += 1
        self._kept.pop(key, None)
        if self.nbytes + out.nbytes <= self.max_bytes:
            self._kept[key] = out
        return out

    def clear(self) -> None:
        """Forget every kept batch."""
        self._kept.clear()
