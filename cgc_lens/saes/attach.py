"""Attach SAEs at their hook points: check them against the model, read or splice features.

SAELens's ``HookedSAETransformer.add_sae`` logs "No hook found … Skipping" for an unknown hook
and attaches nothing, and ignores ``hook_head_index`` (a per-head SAE is broadcast over every
head). Here a SAE whose hook or width does not fit the model raises, and a per-head SAE reads
and writes only ``hook_z[:, :, head]``.

A *target* is one SAE (or the heads of a batched SAE that live in one layer) at one hook:
``key`` names its features in a reading (``Site.key`` for a SAELens SAE, the hook name for a
batched SAE, whose features are ``[batch, pos, n_heads_read, d_sae]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Shaped
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.streaming import iter_batches, stop_layer
from cgc_lens.progress import progress_bar
from cgc_lens.saes.per_head import BatchedTopKSAE, _as_slice
from cgc_lens.sites import Site, validate_hook

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = ["FeatureReading", "SAETarget", "attached", "hook_shape", "run_features", "targets_for",
           "validate_sae"]

log = logging.getLogger(__name__)

Mode = Literal["read", "splice", "zero"]
"""How :func:`attached` treats the activations (typed ``str`` there so bad input meets our
error rather than a type checker's)."""


_D_MODEL_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                  "hook_mlp_out")


def hook_shape(model: HookedTransformer, hook: str) -> tuple[int, ...]:
    """The trailing shape (after ``batch, pos``) of a hook's activation.

    Known block hooks are read off the config; others from a one-token forward pass.
    """
    validate_hook(model, hook)
    cfg, last = model.cfg, hook.rsplit(".", 1)[-1]
    if hook.startswith("blocks.") and last in _D_MODEL_HOOKS:
        return (cfg.d_model,)
    if hook.startswith("blocks.") and hook.endswith((".attn.hook_z", ".attn.hook_q")):
        return (cfg.n_heads, cfg.d_head)
    seen: dict[str, tuple[int, ...]] = {}

    def record(act: Tensor, hook: Any) -> None:
        seen["shape"] = tuple(act.shape[2:])

    tokens = torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device)
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, record)]):
        stop = stop_layer(model, [hook])
        model(tokens, stop_at_layer=stop, return_type=None)
    return seen["shape"]


@dataclass
class SAETarget:
    """One SAE (or one layer's share of a batched SAE) at one hook point."""

    key: str
    """Name of its features in a reading."""
    hook: str
    """TransformerLens hook name."""
    sae: Any
    """A SAELens SAE or a :class:`BatchedTopKSAE`."""
    heads: list[int] | None = None
    """Head indices read from a per-head hook (``None``: the whole activation)."""
    subset: slice | list[int] | None = None
    """Positions inside a batched SAE (``None`` for SAELens SAEs)."""
    flatten_heads: bool = False
    """SAELens ``reshape_activations="hook_z"``: the SAE reads all heads concatenated."""

    @property
    def batched(self) -> bool:
        """Whether the SAE is a :class:`BatchedTopKSAE`."""
        return isinstance(self.sae, BatchedTopKSAE)

    def inputs(self, act: Tensor) -> Tensor:
        """The SAE's input: ``[b, p, d_in]`` (SAELens) or ``[b, p, m, d_in]`` (batched)."""
        if self.batched:
            return act[:, :, self.heads] if self.heads is not None else act[:, :, None, :]
        if self.heads is not None:
            return act[:, :, self.heads[0]]
        return act.flatten(-2) if self.flatten_heads else act

    def encode(self, act: Tensor) -> Tensor:
        """Dense feature activations of the hook activation ``act``."""
        if self.batched:
            return self.sae.encode(self.inputs(act), self.subset)
        # SAELens's hook_z reshaping wants [..., n_heads, d_head] and flattens it itself.
        return self.sae.encode(act if self.flatten_heads else self.inputs(act))

    def encode_topk(self, act: Tensor) -> tuple[Tensor, Tensor]:
        """``(values, indices)`` of the active features (batched SAEs only)."""
        return self.sae.encode_topk(self.inputs(act), self.subset)

    def decode(self, feats: Tensor) -> Tensor:
        """Reconstruction in the layout of :meth:`inputs`."""
        out = self.sae.decode(feats, self.subset) if self.batched else self.sae.decode(feats)
        return out.flatten(-2) if self.flatten_heads and out.ndim == 4 else out

    def put(self, act: Tensor, new: Tensor) -> Tensor:
        """``act`` with the SAE's slice replaced by ``new`` (layout of :meth:`inputs`)."""
        new = new.to(act.dtype)
        if self.heads is None:
            return new[:, :, 0] if self.batched else new.reshape(act.shape)
        out = act.clone()
        out[:, :, self.heads] = new if self.batched else new[:, :, None]
        return out


def validate_sae(model: HookedTransformer, sae: SAE, *, hook: str | None = None) -> SAETarget:
    """Check a SAELens SAE against ``model`` and return its target; raise on any mismatch."""
    meta = sae.cfg.metadata
    hook = hook or meta.hook_name
    if hook is None:
        raise CgcLensError("The SAE's metadata has no hook_name; pass hook='blocks.…'.")
    validate_hook(model, hook)
    shape, head = hook_shape(model, hook), meta.hook_head_index
    name = model.cfg.model_name
    per_head = len(shape) == 2
    if head is not None:
        if not per_head or not 0 <= head < shape[0]:
            raise CgcLensError(
                f"SAE has hook_head_index={head} but {hook} on {name} has shape "
                f"[batch, pos, {', '.join(map(str, shape))}]."
            )
        width, heads = shape[1], [head]
    elif per_head:
        if sae.cfg.reshape_activations != "hook_z":
            raise CgcLensError(
                f"SAE at {hook} has neither hook_head_index nor hook_z reshaping: it would be "
                f"applied to each of the {shape[0]} heads alike. Set hook_head_index."
            )
        width, heads = shape[0] * shape[1], None
    else:
        width, heads = shape[-1], None
    if sae.cfg.d_in != width:
        raise CgcLensError(
            f"SAE d_in={sae.cfg.d_in} does not fit {hook} on {name}: expected d_in={width} "
            f"(activation [batch, pos, {', '.join(map(str, shape))}])."
        )
    if meta.model_name and meta.model_name != name:
        log.info("SAE trained on %s is attached to %s", meta.model_name, name)
    key = hook if head is None else f"{hook}[{head}]"
    return SAETarget(key=key, hook=hook, sae=sae, heads=heads, flatten_heads=per_head and not heads)


def _batched_targets(model: HookedTransformer, sae: BatchedTopKSAE) -> list[SAETarget]:
    by_hook: dict[str, list[tuple[int, Site]]] = {}
    for i, site in enumerate(sae.sites):
        by_hook.setdefault(site.hook, []).append((i, site))
    out = []
    for hook, items in by_hook.items():
        validate_hook(model, hook)
        shape = hook_shape(model, hook)
        if (len(shape) == 2) != (items[0][1].head is not None) or shape[-1] != sae.cfg.d_in:
            raise CgcLensError(
                f"Batched SAE sites at {hook} need d_in={sae.cfg.d_in} per "
                f"{'head' if items[0][1].head is not None else 'token'}; {hook} on "
                f"{model.cfg.model_name} has shape [batch, pos, {', '.join(map(str, shape))}]."
            )
        heads = [s.head for _, s in items] if items[0][1].head is not None else None
        if heads is not None and max(heads) >= shape[0]:
            raise CgcLensError(
                f"Batched SAE reads head {max(heads)} of {hook}; it has {shape[0]} heads."
            )
        idx = [i for i, _ in items]
        subset = _as_slice(idx) or idx
        out.append(SAETarget(key=hook, hook=hook, sae=sae, heads=heads, subset=subset))
    return out


def targets_for(model: HookedTransformer, saes: Iterable[Any]) -> list[SAETarget]:
    """Validated targets of SAELens SAEs and batched SAEs (targets pass through unchanged);
    duplicate feature keys raise."""
    out: list[SAETarget] = []
    for sae in saes:
        if isinstance(sae, SAETarget):
            out.append(sae)
        elif isinstance(sae, BatchedTopKSAE):
            out += _batched_targets(model, sae)
        else:
            out.append(validate_sae(model, sae))
    keys = [t.key for t in out]
    if len(set(keys)) != len(keys):
        raise CgcLensError(f"Two SAEs would write the same features: keys {keys}.")
    return out


@dataclass
class FeatureReading:
    """Features read by the last forward pass inside :func:`attached`."""

    targets: list[SAETarget]
    """What is attached, in order."""
    features: dict[str, Tensor] = field(default_factory=dict)
    """Key → dense features: ``[b, p, d_sae]`` (SAELens) or ``[b, p, m, d_sae]`` (batched)."""
    inputs: dict[str, Tensor] = field(default_factory=dict)
    """Key → the SAE's input activations (kept when ``keep_inputs``)."""
    topk: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    """Key → ``(values, indices)`` ``[b, p, m, k]`` of batched SAEs, in place of dense features
    when ``sparse``."""


@contextmanager
def attached(
    model: HookedTransformer, saes: Sequence[Any], *, mode: str = "read",
    keep_inputs: bool = False, sparse: bool = False,
) -> Iterator[FeatureReading]:
    """SAEs attached at their hook points for the ``with`` block; hooks removed in ``finally``.

    ``mode``: ``"read"`` records features and leaves the activations alone; ``"splice"``
    also replaces each SAE's input by its reconstruction; ``"zero"`` zero-ablates the inputs
    (the baseline of "CE loss recovered") without encoding. ``sparse`` (read mode) keeps
    batched SAEs' features as top-k ``(values, indices)`` in ``reading.topk``, never dense.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> from cgc_lens.saes import BatchedSAEConfig
        >>> m = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8, d_vocab=7, act_fn="relu"))
        >>> sae = BatchedTopKSAE(BatchedSAEConfig.for_heads(m, expansion=2, k=2), seed=0)
        >>> with attached(m, [sae]) as reading:
        ...     _ = m(torch.zeros(1, 3, dtype=torch.long))
        >>> tuple(reading.features["blocks.0.attn.hook_z"].shape)
        (1, 3, 2, 8)
    """
    if mode not in ("read", "splice", "zero"):
        raise CgcLensError(f"mode must be 'read', 'splice' or 'zero', got {mode!r}.")
    reading = FeatureReading(targets=targets_for(model, saes))

    def make_hook(target: SAETarget) -> Callable[[Tensor, Any], Tensor | None]:
        def hook_fn(act: Tensor, hook: Any) -> Tensor | None:
            if mode == "zero":
                return target.put(act, torch.zeros_like(target.inputs(act)))
            if keep_inputs:
                reading.inputs[target.key] = target.inputs(act)
            if sparse and target.batched and mode == "read":
                reading.topk[target.key] = target.encode_topk(act)
                return None
            feats = target.encode(act)
            reading.features[target.key] = feats
            return target.put(act, target.decode(feats)) if mode == "splice" else None

        return hook_fn

    # model.hooks removes the hooks in its own finally, also when the block raises.
    with model.hooks(fwd_hooks=[(t.hook, make_hook(t)) for t in reading.targets]):
        yield reading


@torch.no_grad()
def run_features(
    model: HookedTransformer,
    tokens: Shaped[Tensor, "n_seq pos"] | Iterable[Tensor],
    saes: Sequence[Any],
    *,
    batch_size: int = 8,
    accumulators: Sequence[Any] = (),
    sparse: bool = False,
    progress: bool = True,
) -> int:
    """Stream SAE features over ``tokens``; return the number of batches.

    One forward per batch, stopped after the deepest SAE's layer; each batch's features go to
    ``accumulators`` as ``update(features, batch_index)``: key → dense features, or, with
    ``sparse``, key → ``(values, indices)`` for batched SAEs (see
    :class:`cgc_lens.forward.streaming.Accumulator`).
    """
    with attached(model, saes, sparse=sparse) as reading:
        stop = stop_layer(model, [t.hook for t in reading.targets])
        batches, n_batches = iter_batches(tokens, batch_size)
        count = 0
        for i, batch in enumerate(progress_bar(batches, total=n_batches, enabled=progress,
                                               desc="SAE features")):
            reading.features.clear()
            reading.topk.clear()
            model(batch.to(model.cfg.device), stop_at_layer=stop, return_type=None)
            features: Mapping[str, Any] = {**reading.features, **reading.topk}
            for acc in accumulators:
                acc.update(features, i)
            count += 1
    return count
