"""The AdaptiveCompress residual compressor (Eqs. 2-4 of the AdaptiveCompress paper), batched.

One module holds ``n`` independent compressors, one per site (``hook_resid_post`` of a layer),
with weights stacked along a leading ``n`` dimension like :class:`~cgc_lens.saes.BatchedTopKSAE`,
so the compressors of several layers train in one batched matmul on one forward pass::

    a = act(LayerNorm(h) W_enc + b_enc)        # act: ReLU (our reading) or identity (literal)
    f = a ⊙ g ⊙ m                              # Eq. 3; g the EMA importance, m the retention mask
    ĥ = f W_dec + b_dec + skip_scale · h       # Eq. 4

``g`` is an exponential moving average of each latent's firing rate ``1[a > 0]`` (Eq. 2),
updated by :meth:`AdaptiveCompressor.update_importance` during training only; ``m`` keeps the
``⌈r · d_sae⌉`` latents of largest ``g`` (:meth:`AdaptiveCompressor.set_retention`). Both are
buffers, saved with the weights. The readings behind every choice are in
``docs/methods_adaptive.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn

from cgc_lens.adaptive.objective import ema_update
from cgc_lens.errors import CgcLensError
from cgc_lens.io.serialization import load_folder, save_folder
from cgc_lens.saes.attach import SAETarget
from cgc_lens.saes.per_head import tied_unit_init
from cgc_lens.sites import Site

__all__ = ["AdaptiveCompressor", "CompressorConfig", "n_retained"]

FORMAT = "cgc-lens.adaptive-compressor"


@dataclass(frozen=True, kw_only=True)
class CompressorConfig:
    """Architecture of one AdaptiveCompress compressor (Eqs. 2-4); the same for every site."""

    d_sae: int | None = None
    """Latents per site; ``None``: d_in (the paper's W_θ ∈ R^{d×d})."""
    ema_decay: float = 0.99
    """α of Eq. 2: g ← α g + (1 − α) · firing rate of the step's batch."""
    skip_scale: float = 0.1
    """Weight of the skip connection in Eq. 4 (ĥ = f W′ + skip_scale · h)."""
    activation: Literal["relu", "identity"] = "relu"
    """Nonlinearity inside f: 'relu' (our reading: latents can be silent, L0 is meaningful) or
    'identity' (Eq. 3 literally: no nonlinearity, every retained latent is non-zero)."""
    bias: bool = True
    """Learn an encoder bias b_enc and a decoder bias b_dec (the paper writes neither; False
    gives Eqs. 3-4 literally)."""
    importance_weighting: bool = True
    """Multiply f by the importance g (Eq. 3 literally); False: g only ranks the latents for
    the retention mask."""
    importance_init: float = 1.0
    """Starting value of g for every latent (1: all latents start fully important)."""
    ln_eps: float = 1e-5
    """Epsilon of the LayerNorm in Eq. 3 (learned elementwise affine, as torch's default)."""

    def __post_init__(self) -> None:
        if self.d_sae is not None and (
            not isinstance(self.d_sae, int) or isinstance(self.d_sae, bool) or self.d_sae < 1
        ):
            raise CgcLensError(f"d_sae must be a positive int or None, got {self.d_sae!r}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise CgcLensError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}.")
        if not math.isfinite(self.skip_scale):
            raise CgcLensError(f"skip_scale must be a finite number, got {self.skip_scale!r}.")
        if self.activation not in ("relu", "identity"):
            raise CgcLensError(
                f"activation must be 'relu' or 'identity', got {self.activation!r}."
            )
        if not 0.0 <= self.importance_init <= 1.0:
            raise CgcLensError(
                f"importance_init must be in [0, 1] (a firing rate), got {self.importance_init!r}."
            )
        if not self.ln_eps > 0:
            raise CgcLensError(f"ln_eps must be > 0, got {self.ln_eps!r}.")


def n_retained(retention: float, d_sae: int) -> int:
    """How many latents a retention fraction keeps: ``⌈r · d_sae⌉``, at least 1.

    Example:
        >>> n_retained(0.999, 128), n_retained(0.95, 128), n_retained(0.0, 128)
        (128, 122, 1)
    """
    if not 0.0 <= retention <= 1.0:
        raise CgcLensError(f"retention must be in [0, 1], got {retention!r}.")
    # the small slack keeps r · d_sae that is an integer up to rounding at that integer
    return min(d_sae, max(1, math.ceil(retention * d_sae - 1e-9)))


class AdaptiveCompressor(nn.Module):
    """``n`` AdaptiveCompress compressors, one per site, with stacked weights.

    Args:
        sites: the site each compressor reads (``Site.resid_post(layer)``), in order.
        d_in: width of every site (d_model for residual sites).
        cfg: the architecture.
        model_name: the model the compressors are for (saved with the weights).
        seed: seeds the weight initialisation.

    Example:
        >>> comp = AdaptiveCompressor([Site.resid_post(0), Site.resid_post(1)], d_in=8, seed=0)
        >>> x = torch.randn(3, 5, 2, 8)                   # [batch, pos, n, d_in]
        >>> tuple(comp.encode(x).shape), tuple(comp(x).shape)
        ((3, 5, 2, 8), (3, 5, 2, 8))
        >>> comp.set_retention(0.5); int(comp.mask.sum(-1)[0])
        4
    """

    def __init__(
        self, sites: Sequence[Site], d_in: int, cfg: CompressorConfig = CompressorConfig(), *,
        model_name: str | None = None, seed: int | None = None,
    ) -> None:
        super().__init__()
        sites = tuple(sites)
        if not sites or not all(isinstance(s, Site) for s in sites):
            raise CgcLensError(f"sites must be a non-empty sequence of Site, got {sites!r}.")
        if len(set(sites)) != len(sites):
            raise CgcLensError(f"sites must be distinct; got {[s.key for s in sites]}.")
        if not isinstance(d_in, int) or isinstance(d_in, bool) or d_in < 1:
            raise CgcLensError(f"d_in must be a positive int, got {d_in!r}.")
        self.sites, self.d_in, self.model_name = sites, d_in, model_name
        self.cfg = cfg
        self.d_sae = cfg.d_sae or d_in
        n, d_sae = len(sites), self.d_sae
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w_enc, w_dec = tied_unit_init(n, d_in, d_sae, gen)  # as our TopK SAEs
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_enc)
        self.ln_w = nn.Parameter(torch.ones(n, d_in))
        self.ln_b = nn.Parameter(torch.zeros(n, d_in))
        self.b_enc = nn.Parameter(torch.zeros(n, d_sae)) if cfg.bias else None
        self.b_dec = nn.Parameter(torch.zeros(n, d_in)) if cfg.bias else None
        self.register_buffer("importance", torch.full((n, d_sae), float(cfg.importance_init)))
        self.register_buffer("mask", torch.ones(n, d_sae, dtype=torch.bool))

    @property
    def n(self) -> int:
        """Number of compressors."""
        return len(self.sites)

    # --- maths on [m, tokens, d]; ``sl`` picks m of the n compressors -------------------------
    def _activations(self, x: Tensor, sl: slice = slice(None)) -> Tensor:
        """Ungated latents ``a = act(LayerNorm(x) W_enc + b_enc)`` of ``x [m, t, d_in]``."""
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        normed = (x - mean) * torch.rsqrt(var + self.cfg.ln_eps)
        normed = normed * self.ln_w[sl, None, :] + self.ln_b[sl, None, :]
        pre = torch.bmm(normed, self.W_enc[sl])
        if self.b_enc is not None:
            pre = pre + self.b_enc[sl, None, :]
        return pre.relu() if self.cfg.activation == "relu" else pre

    def gate(self) -> Float[Tensor, "n d_sae"]:
        """What multiplies the latents: ``g ⊙ m`` (or ``m`` without importance weighting)."""
        mask = self.mask.to(self.W_enc.dtype)
        return self.importance * mask if self.cfg.importance_weighting else mask

    def _gated(self, acts: Tensor, sl: slice = slice(None)) -> Tensor:
        return acts * self.gate()[sl, None, :]

    def _decode(self, feats: Tensor, x: Tensor, sl: slice = slice(None)) -> Tensor:
        out = torch.bmm(feats, self.W_dec[sl]) + self.cfg.skip_scale * x
        return out + self.b_dec[sl, None, :] if self.b_dec is not None else out

    def _flat(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        if x.shape[-2:] != (self.n, self.d_in):
            raise CgcLensError(
                f"Expected activations [..., n={self.n}, d_in={self.d_in}], got {tuple(x.shape)}."
            )
        return rearrange(x.to(self.W_enc.dtype), "... n d -> n (...) d"), tuple(x.shape[:-2])

    def _unflat(self, t: Tensor, lead: tuple[int, ...]) -> Tensor:
        return rearrange(t, "n t d -> t n d").reshape(*lead, self.n, t.shape[-1])

    # --- public API on [..., n, d] ----------------------------------------------------------
    def encode(self, x: Float[Tensor, "*batch n d_in"]) -> Float[Tensor, "*batch n d_sae"]:
        """The compressed code ``f(h)`` of Eq. 3 (gated by importance and retention)."""
        flat, lead = self._flat(x)
        return self._unflat(self._gated(self._activations(flat)), lead)

    def decode(
        self, feats: Float[Tensor, "*batch n d_sae"], x: Float[Tensor, "*batch n d_in"]
    ) -> Float[Tensor, "*batch n d_in"]:
        """The reconstruction of Eq. 4 from the code ``feats`` and the input ``x`` (skip term)."""
        flat_x, lead = self._flat(x)
        flat_f = rearrange(feats.to(self.W_enc.dtype), "... n s -> n (...) s")
        return self._unflat(self._decode(flat_f, flat_x), lead)

    def forward(self, x: Float[Tensor, "*batch n d_in"]) -> Float[Tensor, "*batch n d_in"]:
        """The reconstruction ``decode(encode(x), x)``."""
        return self.decode(self.encode(x), x)

    @torch.no_grad()
    def update_importance(self, acts: Float[Tensor, "n tokens d_sae"]) -> None:
        """Eq. 2 for one step: ``g ← α g + (1 − α) · mean_t 1[a_t > 0]`` (ungated ``acts``)."""
        rate = (acts > 0).to(self.importance.dtype).mean(1)
        self.importance.copy_(ema_update(self.importance, rate, self.cfg.ema_decay))

    @torch.no_grad()
    def set_retention(self, retention: float) -> None:
        """Keep the ``⌈r · d_sae⌉`` latents of largest importance per site (ties: lower index)."""
        keep = n_retained(retention, self.d_sae)
        order = torch.sort(self.importance, dim=-1, descending=True, stable=True).indices
        self.mask.zero_().scatter_(-1, order[:, :keep], True)

    def as_target(self, site: int | Site) -> SAETarget:
        """One compressor as a target for :func:`cgc_lens.saes.evaluate_saes` and ``attached``.

        The target's ``decode(feats)`` adds the skip term of the input its last ``encode`` saw:
        in a forward pass the hook encodes and then decodes the same activation, and
        ``evaluate_saes`` decodes each batch's features right after that batch's pass.
        """
        i = self.sites.index(site) if isinstance(site, Site) else site
        if not 0 <= i < self.n:
            raise CgcLensError(f"Compressor index must be in 0..{self.n - 1}, got {i}.")
        return SAETarget(key=self.sites[i].key, hook=self.sites[i].hook, sae=_OneSite(self, i))

    # --- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` (weights, g and mask) into ``path``."""
        meta = {
            "sites": [[s.kind, s.layer, s.head] for s in self.sites],
            "d_in": self.d_in, "d_sae": self.d_sae, "model_name": self.model_name,
            "config": asdict(self.cfg), "extra": extra or {},
        }
        return save_folder(path, self.state_dict(), meta, fmt=FORMAT)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> AdaptiveCompressor:
        """Inverse of :meth:`save`."""
        tensors, meta = load_folder(path, fmt=FORMAT, what="a compressor")
        sites = [Site(kind, layer, head) for kind, layer, head in meta["sites"]]
        comp = cls(sites, meta["d_in"], CompressorConfig(**meta["config"]),
                   model_name=meta.get("model_name"))
        comp.load_state_dict(tensors)
        return comp.to(device)


class _OneSite:
    """Compressor ``i`` with the SAE interface ``evaluate_saes`` and ``attached`` call."""

    def __init__(self, comp: AdaptiveCompressor, i: int) -> None:
        self.comp, self.i = comp, i
        self.cfg = SimpleNamespace(d_in=comp.d_in, d_sae=comp.d_sae)
        self._last_input: Tensor | None = None

    def _one(self, x: Tensor) -> Tensor:
        """``x [..., d_in]`` as ``[1, tokens, d_in]`` for compressor ``i`` alone."""
        return rearrange(x.to(self.comp.W_enc.dtype), "... d -> 1 (...) d")

    def encode(self, x: Tensor) -> Tensor:
        self._last_input = x
        c, sl = self.comp, slice(self.i, self.i + 1)
        feats = c._gated(c._activations(self._one(x), sl), sl)
        return feats.reshape(*x.shape[:-1], c.d_sae)

    def decode(self, feats: Tensor) -> Tensor:
        if self._last_input is None:
            raise CgcLensError("decode needs the input of the last encode (the skip term).")
        c, sl = self.comp, slice(self.i, self.i + 1)
        out = c._decode(self._one(feats), self._one(self._last_input), sl)
        return out.reshape(*self._last_input.shape)
