"""Evaluating trained compressors beside their TopK baseline: SAE quality per site, and the
mean-pooled latents that sparse probing classifies.

Quality goes through :func:`cgc_lens.saes.evaluate_saes` for both methods at every site, each
SAE spliced alone (``splice="each"``: one clean pass per batch reads them all), so both are
measured by one definition of MSE, explained variance, L0, L1, KL and CE loss recovered. Each
method is also evaluated with its code zeroed: what the reconstruction explains without any
latent (the compressor's skip term and b_dec; the TopK SAE's b_dec). ``latent_contribution``
is the difference: the variance the latents explain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import einsum
from jaxtyping import Int
from torch import Tensor

from cgc_lens.adaptive.compressor import AdaptiveCompressor
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.streaming import run_sites
from cgc_lens.progress import progress_bar
from cgc_lens.saes.attach import SAETarget
from cgc_lens.saes.per_head import BatchedTopKSAE
from cgc_lens.saes.quality import SAEQuality, evaluate_saes

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["LabelledTokens", "evaluate_methods", "pooled_features"]


@dataclass(frozen=True, kw_only=True)
class LabelledTokens:
    """Labelled token rows for probing: token blocks with their category, or documents."""

    tokens: Int[Tensor, "n pos"]
    """Token ids, right-padded when rows differ in length."""
    labels: tuple[str, ...]
    """One class label per row."""
    lengths: Int[Tensor, " n"] | None = None
    """Valid positions per row (the rest is padding); ``None``: every position."""

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if len(self.labels) != n or (self.lengths is not None and self.lengths.shape[0] != n):
            raise CgcLensError(
                f"Expected one label (and length) per row of tokens {tuple(self.tokens.shape)}; "
                f"got {len(self.labels)} labels"
                f"{'' if self.lengths is None else f', {self.lengths.shape[0]} lengths'}."
            )
        if self.lengths is not None and int(self.lengths.min()) < 1:
            raise CgcLensError("Every row needs at least one valid position; got a length 0.")


def evaluate_methods(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_seq pos"],
    compressor: AdaptiveCompressor,
    baseline: BatchedTopKSAE | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per (method, site): the :class:`~cgc_lens.saes.SAEQuality` and
    :class:`~cgc_lens.saes.SplicedLoss` figures, with ``method``, ``site``, ``layer``,
    ``explained_variance_without_latents`` and ``latent_contribution`` (module docstring)."""
    named: dict[str, Any] = {}
    floors: dict[str, Any] = {}
    for i, site in enumerate(compressor.sites):
        target = compressor.as_target(i)
        methods: list[tuple[str, Any, Any]] = [("adaptive", target, target.sae)]
        if baseline is not None:
            methods.append(("topk", baseline.select([i]), baseline.to_saelens(i)))
        for method, sae, one in methods:
            named[f"{method} {site.key}"] = sae
            floors[f"{method} {site.key} without latents"] = SAETarget(
                key=site.key, hook=site.hook, sae=_ZeroCode(one))
    # every SAE spliced alone, from one clean pass per batch for all of them
    result = evaluate_saes(model, tokens, named, splice="each", read_only=floors,
                           batch_size=batch_size, progress=progress)
    rows = []
    bar = progress_bar(compressor.sites, desc="evaluate sites", enabled=progress, unit="site")
    for site in bar:
        for method in ("adaptive", "topk") if baseline is not None else ("adaptive",):
            name = f"{method} {site.key}"
            quality: SAEQuality = result.per_sae[name]
            ev0 = result.per_sae[f"{name} without latents"].explained_variance
            loss = result.spliced_each.get(name)
            spliced = asdict(loss) if loss is not None else {}
            rows.append({"method": method, "site": site.key, "layer": site.layer,
                         **asdict(quality), **spliced, "explained_variance_without_latents": ev0,
                         "latent_contribution": quality.explained_variance - ev0})
    return rows


class _ZeroCode:
    """An SAE-like object (``cfg``, ``encode``, ``decode``) with every latent forced to 0."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.cfg = inner, inner.cfg

    def encode(self, x: Tensor) -> Tensor:
        return torch.zeros_like(self.inner.encode(x))   # encode: the compressor keeps x

    def decode(self, feats: Tensor) -> Tensor:
        return self.inner.decode(torch.zeros_like(feats))


@torch.no_grad()
def pooled_features(
    model: HookedTransformer,
    data: LabelledTokens,
    compressor: AdaptiveCompressor,
    baseline: BatchedTopKSAE | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Mean over each row's valid positions of the residual (``"resid"``), the compressor's
    code (``"adaptive"``) and the baseline's latents (``"topk"``): ``[n_rows, n_sites, d]``.

    Rows are right-padded, so in a causal model padding never changes the valid positions.
    """
    sites = list(compressor.sites)
    n, pos = data.tokens.shape
    lengths = data.lengths if data.lengths is not None else torch.full((n,), pos)
    out: dict[str, np.ndarray] = {
        "resid": np.zeros((n, len(sites), compressor.d_in)),
        "adaptive": np.zeros((n, len(sites), compressor.d_sae)),
    }
    if baseline is not None:
        out["topk"] = np.zeros((n, len(sites), baseline.cfg.d_sae))
    device = compressor.W_enc.device

    def pool(acts: Mapping[str, Tensor], i: int) -> None:
        x = torch.stack([acts[s.key] for s in sites], dim=2).to(device, torch.float32)
        rows = slice(i * batch_size, i * batch_size + x.shape[0])
        lens = lengths[rows].to(device)
        mask = (torch.arange(x.shape[1], device=device)[None, :] < lens[:, None]).float()
        feats = {"resid": x, "adaptive": compressor.encode(x)}
        if baseline is not None:
            feats["topk"] = baseline.encode(x)
        for name, f in feats.items():
            pooled = einsum(f, mask, "b p n d, b p -> b n d") / lens[:, None, None]
            out[name][rows] = pooled.double().cpu().numpy()

    run_sites(model, data.tokens, sites, batch_size=batch_size, callback=pool, progress=progress,
              desc="pool features")
    return out
