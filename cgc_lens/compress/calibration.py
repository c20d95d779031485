"""Input-feature norms ``||X_j||_2`` over calibration tokens, collected with hooks.

Wanda (Sun et al. 2024, locuslab/wanda) scores ``|W_ij| * ||X_j||_2`` where ``X`` is what the
linear layer reads. In TransformerLens terms:

=================  =================================================================
weight             its input ``X``
=================  =================================================================
``W_Q, W_K, W_V``  ``ln1`` output: ``blocks.{l}.ln1.hook_normalized`` times ``ln1.w`` plus
                   ``ln1.b`` where the norm has them (the hook fires before the affine);
                   ``hook_resid_pre`` when the model has no norm
``W_O``            ``blocks.{l}.attn.hook_z``, per head: ``[n_heads, d_head]``
``W_in, W_gate``   ``ln2`` output (as for ``ln1``); ``hook_resid_mid`` without a norm
``W_out``          ``blocks.{l}.mlp.hook_post``
=================  =================================================================

Sums of squares are float64 and add across batches and processes (:meth:`InputNorms.__add__`).
Unlike locuslab/wanda, which re-collects each layer's inputs after pruning the layers before
it, one pass over the dense model serves every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.compress.targets import Targets
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["INPUT_SITE", "InputNorms", "collect_input_norms"]

INPUT_SITE: dict[str, str] = {
    "W_Q": "attn_in", "W_K": "attn_in", "W_V": "attn_in", "W_O": "z",
    "W_in": "mlp_in", "W_gate": "mlp_in", "W_out": "mlp_post",
}
"""Which input each weight reads (keys of :attr:`InputNorms.sum_sq` are ``blocks.{l}.{site}``)."""


@dataclass(frozen=True)
class InputNorms:
    """Per-input-feature sums of squares of what each targeted weight reads.

    Example:
        >>> a = InputNorms({"blocks.0.mlp_post": torch.tensor([9.0, 16.0])}, n_tokens=2)
        >>> (a + a).for_weight(0, "W_out")
        tensor([4.2426, 5.6569], dtype=torch.float64)
    """

    sum_sq: Mapping[str, Tensor]
    """``blocks.{layer}.{site}`` → float64 sum over tokens of ``X_j ** 2``, shaped like the
    weight's input axes (``[d_model]``, ``[n_heads, d_head]`` or ``[d_mlp]``)."""
    n_tokens: int
    """Number of token positions summed."""

    def for_weight(self, layer: int, name: str) -> Float[Tensor, "*in_shape"]:
        """``||X_j||_2`` for the weight ``name`` of block ``layer``."""
        if name not in INPUT_SITE:
            raise CgcLensError(f"No input site for weight {name!r}; valid: {list(INPUT_SITE)}.")
        key = f"blocks.{layer}.{INPUT_SITE[name]}"
        if key not in self.sum_sq:
            raise CgcLensError(
                f"No input norms for {name} of block {layer} (needs {key!r}); these norms hold "
                f"{sorted(self.sum_sq)}. Collect them with targets that include this weight."
            )
        return self.sum_sq[key].double().sqrt()

    def stacked(
        self, name: str, layers: Sequence[int] | None = None
    ) -> Float[Tensor, "n_layers ..."]:
        """``||X_j||_2`` of weight ``name`` for each layer, stacked (every collected layer if None).

        ``stacked("W_O")`` is the ``z_norms`` that ``analysis.importance.wanda_head_importance``
        takes next to ``model.W_O``.

        Example:
            >>> n = InputNorms({f"blocks.{l}.z": torch.ones(2, 3) for l in (0, 1)}, n_tokens=1)
            >>> n.stacked("W_O").shape
            torch.Size([2, 2, 3])
        """
        if layers is None:
            site = f".{INPUT_SITE.get(name, '')}"
            layers = sorted(int(k.split(".")[1]) for k in self.sum_sq if k.endswith(site))
        if not layers:
            raise CgcLensError(
                f"No input norms for {name!r}; these norms hold {sorted(self.sum_sq)}."
            )
        return torch.stack([self.for_weight(layer, name) for layer in layers])

    def __add__(self, other: InputNorms) -> InputNorms:
        keys = set(self.sum_sq) | set(other.sum_sq)
        summed = {
            k: self.sum_sq[k] + other.sum_sq[k] if k in self.sum_sq and k in other.sum_sq
            else (self.sum_sq.get(k) if k in self.sum_sq else other.sum_sq[k])
            for k in sorted(keys)
        }
        return InputNorms(summed, self.n_tokens + other.n_tokens)


def _input_hook(
    model: HookedTransformer, layer: int, site: str
) -> tuple[str, Callable[[Tensor], Tensor]]:
    """The hook point that carries ``site``'s input and the map from its value to the input."""
    block = model.blocks[layer]
    if site == "z":
        return f"blocks.{layer}.attn.hook_z", lambda x: x
    if site == "mlp_post":
        return f"blocks.{layer}.mlp.hook_post", lambda x: x
    norm = block.ln1 if site == "attn_in" else block.ln2
    if not hasattr(norm, "hook_normalized"):
        resid = "resid_pre" if site == "attn_in" or model.cfg.parallel_attn_mlp else "resid_mid"
        return f"blocks.{layer}.hook_{resid}", lambda x: x
    dtype = model.cfg.dtype
    w, b = getattr(norm, "w", None), getattr(norm, "b", None)

    def affine(x: Tensor) -> Tensor:  # what LayerNorm / RMSNorm return after hook_normalized
        x = x.to(dtype)
        x = x if w is None else x * w
        return x if b is None else x + b

    return f"blocks.{layer}.ln{1 if site == 'attn_in' else 2}.hook_normalized", affine


@torch.no_grad()
def collect_input_norms(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], targets: Targets | None = None,
    *, batch_size: int = 8,
) -> InputNorms:
    """Sum ``X_j ** 2`` of every targeted weight's input over ``tokens`` with hooks.

    The forward stops after the last block that holds a target; hooks are removed on exit.

    Args:
        model: the (dense) model.
        tokens: calibration tokens, held apart from the tokens used for evaluation.
        targets: whose inputs to collect; None for every block weight.
        batch_size: sequences per forward pass.
    """
    if tokens.ndim != 2:
        raise CgcLensError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}.")
    if tokens.numel() == 0:
        raise CgcLensError(
            f"Calibration needs at least one token, got tokens of shape {tuple(tokens.shape)} "
            "(0 tokens): input norms over no tokens are all zero, and Wanda would then prune "
            "every weight's first inputs by position. Pass a non-empty [batch, pos] tensor of "
            "calibration tokens."
        )
    refs = (targets or Targets()).resolve(model)
    if not refs:
        raise CgcLensError(f"{targets} selects no weights; nothing to collect norms for.")
    sites = sorted({(ref.layer, INPUT_SITE[ref.name]) for ref in refs})
    sums: dict[str, Tensor] = {}
    hooks = []
    for layer, site in sites:
        hook, to_input = _input_hook(model, layer, site)
        key = f"blocks.{layer}.{site}"
        lead = 2 if site == "z" else 1  # z keeps [n_heads, d_head]; the rest keep the last axis

        def accumulate(x: Tensor, hook: object, key: str = key, f=to_input, lead=lead) -> None:
            sq = f(x).detach().double().square()
            total = sq.sum(dim=tuple(range(sq.ndim - lead)))
            sums[key] = sums[key] + total if key in sums else total

        hooks.append((hook, accumulate))
    stop = max(layer for layer, _ in sites) + 1
    for batch in tokens.split(batch_size):
        model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks, stop_at_layer=stop)
    for key, total in sums.items():
        if not bool(torch.isfinite(total).all()):
            raise CgcLensError(
                f"The calibration inputs at {key} hold inf/NaN, so its input norms are not "
                "finite: check the model's weights and the calibration tokens."
            )
    return InputNorms(sums, tokens.numel())
