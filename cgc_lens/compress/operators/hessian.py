"""Streamed second moments of what each weight reads, and the layer-by-layer driver that the
calibrated quantizers (GPTQ, AWQ) share.

For a linear map ``y = W x`` (HuggingFace ``W[out, in]``), GPTQ's layer-wise objective
``||W X - Ŵ X||²`` has the Hessian ``H = 2 Xᵀ X`` (Frantar et al. 2023, Eq. 1-2), ``X[tokens,
in]``. :func:`collect_layer_inputs` accumulates ``Xᵀ X`` (and ``Σ|x|`` for AWQ) in float64 over
token batches through hooks, so only one batch of activations is held at a time. Which
activation each weight reads is :data:`~cgc_lens.compress.calibration.INPUT_SITE`'s table:
``W_Q/K/V`` share one input per layer (one matrix for the three), ``W_O`` reads ``hook_z``
flattened to ``n_heads · d_head`` (``o_proj``'s input order), ``W_in/W_gate`` the ``ln2`` output,
``W_out`` ``hook_post``.

:func:`edit_layer_by_layer` is the standard sequential calibration: the inputs of block ``l``
are collected from the model with blocks ``< l`` already edited, then block ``l``'s weights are
edited in place. Nothing is cached between blocks (that would hold every calibration activation
at once), so block ``l`` costs a forward through blocks ``0..l``: ``L (L + 1) / 2`` block
forwards in all for ``L`` blocks, each over the calibration tokens in batches.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.compress.calibration import INPUT_SITE, _input_hook
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "Calibration",
    "InputMoments",
    "collect_layer_inputs",
    "edit_layer_by_layer",
    "input_index",
]


@dataclass(frozen=True)
class InputMoments:
    """Float64 sums over calibration tokens of what one weight reads (``x`` of length ``in``).

    Example:
        >>> x = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
        >>> m = InputMoments(x.T.double() @ x.double(), x.abs().sum(0).double(), 2)
        >>> m.hessian()
        tensor([[20., -4.],
                [-4.,  8.]], dtype=torch.float64)
    """

    xtx: Float[Tensor, "d_in d_in"]
    """``Σ_t x_t x_tᵀ`` (float64)."""
    abs_sum: Float[Tensor, " d_in"]
    """``Σ_t |x_t|`` per input feature (float64)."""
    n_tokens: int
    """Token positions summed."""

    def hessian(self) -> Float[Tensor, "d_in d_in"]:
        """GPTQ's ``H = 2 Xᵀ X`` (a new float64 tensor)."""
        return self.xtx * 2

    def mean_abs(self) -> Float[Tensor, " d_in"]:
        """AWQ's activation statistic ``mean_t |x_t|`` per input feature."""
        return self.abs_sum / max(1, self.n_tokens)


def input_index(ref: WeightRef, n_heads: int, d_head: int) -> Tensor | None:
    """Indices of ``ref``'s input features in its site's moments, None when it reads them all.

    Only ``W_O`` restricted to some heads reads part of its site (``hook_z`` of those heads).

    Example:
        >>> input_index(WeightRef(0, "W_O", "blocks.0.attn.W_O", heads=(1,), n_heads=2), 2, 3)
        tensor([3, 4, 5])
    """
    if ref.heads is None or INPUT_SITE[ref.name] != "z":
        return None
    return torch.cat([torch.arange(h * d_head, (h + 1) * d_head) for h in ref.heads])


@torch.no_grad()
def collect_layer_inputs(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    sites: Sequence[str],
    *,
    batch_size: int = 8,
) -> dict[str, InputMoments]:
    """``Xᵀ X`` and ``Σ|x|`` of each input site of block ``layer``, streamed over ``tokens``.

    The forward stops after block ``layer``; one batch of activations is held at a time.

    Args:
        model: the model, as it is now (earlier blocks possibly already edited).
        tokens: calibration tokens ``[batch, pos]``.
        layer: the block.
        sites: input sites (values of ``INPUT_SITE``: ``"attn_in"``, ``"z"``, ``"mlp_in"``,
            ``"mlp_post"``).
        batch_size: sequences per forward pass.
    """
    sums: dict[str, list[Tensor]] = {}
    hooks = []
    for site in sorted(set(sites)):
        hook, to_input = _input_hook(model, layer, site)

        def accumulate(x: Tensor, hook: object, site: str = site, f=to_input) -> None:
            x = f(x).detach()
            flat = (
                x.reshape(-1, x.shape[-2] * x.shape[-1])
                if site == "z"
                else x.reshape(-1, x.shape[-1])
            )
            flat = flat.double()
            xtx, abs_sum = flat.T @ flat, flat.abs().sum(0)
            if site in sums:
                sums[site][0] += xtx
                sums[site][1] += abs_sum
            else:
                sums[site] = [xtx, abs_sum]

        hooks.append((hook, accumulate))
    for batch in tokens.split(batch_size):
        model.run_with_hooks(batch, return_type=None, fwd_hooks=hooks, stop_at_layer=layer + 1)
    out = {}
    for site, (xtx, abs_sum) in sums.items():
        if not bool(torch.isfinite(xtx).all()):
            raise CgcLensError(
                f"The calibration inputs of blocks.{layer}.{site} hold inf/NaN, so their "
                "Hessian is not finite: check the model's weights and the calibration tokens."
            )
        out[site] = InputMoments(xtx, abs_sum, tokens.numel())
    return out


@dataclass(frozen=True)
class Calibration:
    """What a calibrated quantizer keeps: the model it was calibrated on (weakly) and the tokens.

    The inputs themselves are collected when the operator is applied, block by block, from
    the model as it is then (so an earlier step of a plan, or an earlier block, is seen).
    """

    model_ref: weakref.ReferenceType
    """A weak reference to the model."""
    tokens: Int[Tensor, "batch pos"]
    """Calibration tokens, held apart from evaluation tokens."""
    batch_size: int
    """Sequences per forward pass while collecting."""

    @classmethod
    def of(cls, model: HookedTransformer, tokens: Tensor, batch_size: int, who: str) -> Calibration:
        """Check ``tokens`` and ``batch_size`` and bind them to ``model``."""
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
            shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise CgcLensError(
                f"{who} calibration tokens must be an integer [batch, pos] tensor, got {shape}."
            )
        if tokens.numel() == 0:
            raise CgcLensError(
                f"{who} needs at least one calibration token, got tokens of shape "
                f"{tuple(tokens.shape)}: pass a non-empty [batch, pos] tensor."
            )
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise CgcLensError(f"batch_size must be a positive int, got {batch_size!r}.")
        return cls(weakref.ref(model), tokens.detach().cpu(), batch_size)

    def model(self, who: str) -> HookedTransformer:
        """The bound model, or raise if it is gone."""
        model = self.model_ref()
        if model is None:
            raise CgcLensError(
                f"The model {who} was calibrated on no longer exists; "
                f"calibrate again: {who}.calibrate(model, tokens)."
            )
        return model


def _check_bound(
    model: HookedTransformer, refs: Sequence[WeightRef], weights: Sequence[Tensor], who: str
) -> None:
    for w, ref in zip(weights, refs, strict=True):
        try:
            param = model.get_parameter(ref.param)
        except AttributeError:
            param = None
        expected = (
            None
            if param is None
            else (param.shape if ref.heads is None else (len(ref.heads), *param.shape[1:]))
        )
        if expected is None or tuple(w.shape) != tuple(expected):
            raise CgcLensError(
                f"{who} was calibrated on a model without {ref} of shape {tuple(w.shape)}; "
                f"calibrate it on the model it edits: {who}.calibrate(model, tokens)."
            )


EditFn = Callable[[list[Tensor], list[WeightRef], list[InputMoments]], None]


def edit_layer_by_layer(
    calibration: Calibration,
    weights: Sequence[Tensor],
    refs: Sequence[WeightRef],
    edit_: EditFn,
    who: str,
) -> None:
    """Sequential calibration: for each block in order, collect its inputs from the model as
    it is now, then ``edit_(weights, refs, moments)`` edits that block's weights in place
    (``moments[i]`` is what ``weights[i]`` reads).

    Head slices (``ref.heads``) are edited as copies by the caller; they are written into the
    model's parameter as soon as their block is done, so later blocks read the edited model.
    """
    model = calibration.model(who)
    _check_bound(model, refs, weights, who)
    by_layer: dict[int, list[int]] = {}
    for i, ref in enumerate(refs):
        by_layer.setdefault(ref.layer, []).append(i)
    cfg = model.cfg
    for layer in sorted(by_layer):
        idx = by_layer[layer]
        sites = [INPUT_SITE[refs[i].name] for i in idx]
        collected = collect_layer_inputs(
            model,
            calibration.tokens.to(cfg.device),
            layer,
            sites,
            batch_size=calibration.batch_size,
        )
        moments = []
        for i in idx:
            m = collected[INPUT_SITE[refs[i].name]]
            sel = input_index(refs[i], cfg.n_heads, cfg.d_head)
            if sel is not None:
                m = InputMoments(m.xtx[sel][:, sel], m.abs_sum[sel], m.n_tokens)
            moments.append(m)
        edit_([weights[i] for i in idx], [refs[i] for i in idx], moments)
        for i in idx:
            ref, w = refs[i], weights[i]
            if ref.heads is not None:
                param = model.get_parameter(ref.param).detach()
                if param.data_ptr() != w.data_ptr():
                    param[list(ref.heads)] = w
