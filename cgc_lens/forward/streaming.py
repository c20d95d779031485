"""Batched hooked forward passes that read only the requested hook points.

One forward pass per token batch; hooks only at the sites asked for; the pass stops after the
deepest block that holds one of them (``stop_at_layer``). Each batch's readings go to
accumulators and are then dropped, so a run never holds tokens × features for all its tokens:
statistics are summed by the accumulators (DESIGN: "stream, never materialise").

Readings are keyed by :attr:`cgc_lens.sites.Site.key`: the hook name, or ``"{hook}[{head}]"``
for one head of a per-head hook, whose reading is ``hook_z[:, :, head, :]``
(``[batch, pos, d_head]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Shaped
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.progress import progress_bar
from cgc_lens.sites import Site, layer_of, validate_hook

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "Accumulator", "SiteLike", "collect_activations", "iter_batches", "run_sites",
    "site_keys", "stop_layer",
]

log = logging.getLogger(__name__)

SiteLike = Site | str
"""A :class:`Site`, or a full TransformerLens hook name such as ``"blocks.2.hook_mlp_out"``."""

_PRE_BLOCK_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


@runtime_checkable
class Accumulator(Protocol):
    """Anything that takes one batch's readings at a time.

    ``batch_index`` counts batches from 0; with a token tensor and ``batch_size`` b, batch i
    holds rows ``[i * b, (i + 1) * b)``.
    """

    def update(self, acts: Mapping[str, Tensor], batch_index: int) -> None:
        """Fold one batch's readings (keyed by :attr:`Site.key`) into the running state."""


def _as_site_key(model: HookedTransformer, site: SiteLike) -> tuple[str, str, int | None]:
    """(key, hook, head) of one requested site, validated against ``model``."""
    if isinstance(site, Site):
        validate_hook(model, site.hook)
        if site.head is not None and site.head >= model.cfg.n_heads:
            raise CgcLensError(
                f"Site {site.key!r} asks for head {site.head}; {model.cfg.model_name} has "
                f"{model.cfg.n_heads} heads (valid: 0..{model.cfg.n_heads - 1})."
            )
        return site.key, site.hook, site.head
    if isinstance(site, str):
        validate_hook(model, site)
        return site, site, None
    raise CgcLensError(f"A site must be a Site or a hook name, got {type(site).__name__}.")


def site_keys(model: HookedTransformer, sites: Sequence[SiteLike]) -> list[str]:
    """The reading keys ``run_sites`` will use for ``sites`` (validated, duplicates removed)."""
    return list(dict.fromkeys(_as_site_key(model, s)[0] for s in sites))


def stop_layer(model: HookedTransformer, hooks: Iterable[str]) -> int | None:
    """The ``stop_at_layer`` that runs just far enough to reach every hook in ``hooks``.

    Hooks inside block ℓ need blocks ``0..ℓ`` (stop at ℓ + 1); embedding hooks need none
    (stop at 0); hooks after the blocks (``ln_final``, ``unembed``) need the full pass (``None``).

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=3, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
        ...                               act_fn="relu")
        >>> stop_layer(HookedTransformer(cfg), ["blocks.0.attn.hook_z", "blocks.1.hook_resid_post"])
        2
    """
    stop: int | None = 0
    for name in hooks:
        if name.startswith("blocks."):
            stop = None if stop is None else max(stop, layer_of(name) + 1)
        elif name not in _PRE_BLOCK_HOOKS:
            stop = None
    return stop


def iter_batches(
    tokens: Shaped[Tensor, "n_seq pos"] | Iterable[Tensor], batch_size: int
) -> tuple[Iterator[Tensor], int | None]:
    """Split a token tensor into row batches, or pass an iterable of batches through.

    Returns the iterator and the number of batches (``None`` when unknown).

    Example:
        >>> it, n = iter_batches(torch.zeros(5, 3, dtype=torch.long), 2)
        >>> n, [b.shape[0] for b in it]
        (3, [2, 2, 1])
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CgcLensError(f"batch_size must be a positive int, got {batch_size!r}.")
    if isinstance(tokens, Tensor):
        if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise CgcLensError(
                f"tokens must be an integer tensor [n_seq, pos], got {tuple(tokens.shape)} "
                f"{tokens.dtype}."
            )
        n = (tokens.shape[0] + batch_size - 1) // batch_size
        # no rows, no batch (split would give one empty batch): a rank's empty token shard
        return iter(tokens.split(batch_size) if n else ()), n
    n_known = len(tokens) if hasattr(tokens, "__len__") else None  # type: ignore[arg-type]
    return iter(tokens), n_known


def _resolve(
    model: HookedTransformer, sites: Sequence[SiteLike], accumulators: Sequence[Any],
    stop_at_layer: int | Literal["auto"] | None,
) -> tuple[set[str], dict[str, list[tuple[str, int | None]]], int | None]:
    """What :func:`run_sites` reads, validated: the reading keys, (key, head) of each reading
    per hook, and the layer to stop at."""
    if not sites:
        raise CgcLensError("run_sites needs at least one site to read; got none.")
    resolved = [_as_site_key(model, s) for s in sites]
    by_hook: dict[str, list[tuple[str, int | None]]] = {}
    for key, hook, head in dict.fromkeys(resolved):
        by_hook.setdefault(hook, []).append((key, head))
    for acc in accumulators:
        if not callable(getattr(acc, "update", None)):
            raise CgcLensError(
                f"Accumulators need an update(acts, batch_index) method; got {acc!r}."
            )
    stop = stop_layer(model, by_hook) if stop_at_layer == "auto" else stop_at_layer
    return {k for k, _, _ in resolved}, by_hook, stop


def _reading_hooks(
    by_hook: Mapping[str, list[tuple[str, int | None]]], readings: dict[str, Tensor]
) -> list[tuple[str, Callable[..., None]]]:
    """Forward hooks that store each hook's readings (one head of a per-head hook, or all of
    it) in ``readings`` under their keys."""

    def make_hook(targets: list[tuple[str, int | None]]) -> Callable[..., None]:
        def hook_fn(act: Tensor, hook: object) -> None:
            for key, head in targets:
                readings[key] = act.detach() if head is None else act.detach()[:, :, head]

        return hook_fn

    return [(hook, make_hook(targets)) for hook, targets in by_hook.items()]


@torch.no_grad()
def run_sites(
    model: HookedTransformer,
    tokens: Shaped[Tensor, "n_seq pos"] | Iterable[Tensor],
    sites: Sequence[SiteLike],
    *,
    batch_size: int = 8,
    accumulators: Sequence[Any] = (),
    callback: Callable[[Mapping[str, Tensor], int], None] | None = None,
    stop_at_layer: int | Literal["auto"] | None = "auto",
    progress: bool = True,
    desc: str = "forward",
) -> int:
    """Run ``model`` over ``tokens`` batch by batch and hand each batch's readings on; returns
    the number of batches run.

    Args:
        model: a TransformerLens model; token batches are moved to its device.
        tokens: ``[n_seq, pos]`` token ids, or an iterable of ``[batch, pos]`` batches.
        sites: what to read: :class:`Site` objects (``Site.z(l, head=h)`` reads one head) or
            full hook names.
        batch_size: rows per forward pass when ``tokens`` is a tensor.
        accumulators: objects with ``update(acts, batch_index)`` (:class:`Accumulator`; typed
            ``Any`` so that a wrong object meets our error, not a type checker's).
        callback: a function called as ``callback(acts, batch_index)``, after the accumulators.
        stop_at_layer: ``"auto"`` stops after the deepest block read (:func:`stop_layer`);
            an int or ``None`` is passed to the model as is.
        progress: show a tqdm bar.
        desc: the bar's label.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
        ...                               act_fn="relu")
        >>> shapes = []
        >>> def record(acts, i):
        ...     shapes.append(tuple(acts["blocks.0.attn.hook_z[1]"].shape))
        >>> run_sites(HookedTransformer(cfg), torch.zeros(3, 4, dtype=torch.long),
        ...           [Site.z(0, head=1)], batch_size=2, progress=False, callback=record)
        2
        >>> shapes
        [(2, 4, 4), (1, 4, 4)]
    """
    keys, by_hook, stop = _resolve(model, sites, accumulators, stop_at_layer)
    readings: dict[str, Tensor] = {}
    batches, n_batches = iter_batches(tokens, batch_size)
    n_done = 0
    with model.hooks(fwd_hooks=_reading_hooks(by_hook, readings)), progress_bar(
        total=n_batches, desc=desc, enabled=progress
    ) as bar:
        for i, batch in enumerate(batches):
            _read(model, batch, stop, readings, keys)
            for acc in accumulators:
                acc.update(readings, i)
            if callback is not None:
                callback(readings, i)
            n_done += 1
            bar.update(1)
    readings.clear()
    return n_done


def _read(
    model: HookedTransformer, batch: Tensor, stop: int | None, readings: dict[str, Tensor],
    keys: set[str],
) -> None:
    """One forward of ``batch`` (on the model's device) that fills ``readings`` with ``keys``."""
    readings.clear()
    model(batch.to(model.cfg.device), stop_at_layer=stop, return_type=None)
    missing = keys - set(readings)
    if missing:
        raise CgcLensError(
            f"Hooks {sorted(missing)} did not fire with stop_at_layer={stop}; "
            "stop later or pass stop_at_layer='auto'."
        )


class _Collector:
    """Concatenate readings batch by batch (for small sets such as SAE calibration tokens)."""

    def __init__(self, dtype: torch.dtype | None, device: torch.device | str | None) -> None:
        self.parts: dict[str, list[Tensor]] = {}
        self.dtype, self.device = dtype, device

    def update(self, acts: Mapping[str, Tensor], batch_index: int) -> None:
        for key, act in acts.items():
            self.parts.setdefault(key, []).append(act.to(device=self.device, dtype=self.dtype))


def collect_activations(
    model: HookedTransformer,
    tokens: Shaped[Tensor, "n_seq pos"] | Iterable[Tensor],
    sites: Sequence[SiteLike],
    *,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Tensor]:
    """Readings for all of ``tokens``, concatenated along the batch dimension.

    This holds tokens × d_in per site (model activations, not SAE features); meant for
    calibration sets of the paper's size (128 × 512 tokens), not for whole corpora.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
        ...                               act_fn="relu")
        >>> acts = collect_activations(HookedTransformer(cfg), torch.zeros(3, 4, dtype=torch.long),
        ...                            [Site.resid_post(1)], batch_size=2, progress=False)
        >>> tuple(acts["blocks.1.hook_resid_post"].shape)
        (3, 4, 8)
    """
    collector = _Collector(dtype, device)
    run_sites(
        model, tokens, sites, batch_size=batch_size, accumulators=[collector],
        progress=progress, desc="collect",
    )
    return {key: torch.cat(parts) for key, parts in collector.parts.items()}
