"""Streamed training of AdaptiveCompress compressors, with a TopK SAE baseline on the same tokens.

One forward pass per batch (stopped after the deepest site) feeds every site's compressor and,
when given, the batched TopK baseline: both train on exactly the same activations, and nothing
of size tokens × d is kept beyond the current batch. A step is::

    m ← top-⌈r(t) · d_sae⌉ latents by g          (Eq. 6; g from the previous steps)
    f, ĥ ← compressor(h);  L ← Eq. 5;  AdamW step
    g ← α g + (1 − α) · firing rate              (Eq. 2, on the ungated latents)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from jaxtyping import Int
from torch import Tensor

from cgc_lens.adaptive.compressor import AdaptiveCompressor, n_retained
from cgc_lens.adaptive.history import TrainHistory, Window, batch_stats, check_finite
from cgc_lens.adaptive.objective import Contrastive, LossTerms, compressor_loss, retention
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.streaming import run_sites
from cgc_lens.progress import progress_bar
from cgc_lens.saes.per_head import BatchedTopKSAE

# topk_loss: our SAE trainer's TopK + AuxK loss (train_batched itself needs all activations stored).
from cgc_lens.saes.train import TrainConfig, topk_loss

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["AdaptiveTrainConfig", "TrainHistory", "train_compressors"]

log = logging.getLogger(__name__)


def _positive_int(owner: str, name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CgcLensError(f"{owner}.{name} must be a positive int, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class AdaptiveTrainConfig:
    """How to train the compressors (the paper's §4-5 defaults) and their TopK baseline."""

    steps: int = 300
    """Optimizer steps (one model forward each)."""
    batch_size: int = 32
    """Sequences per step (the paper: 32); every token of them is a training example."""
    lr: float = 3e-4
    """AdamW learning rate (the paper: 3e-4)."""
    weight_decay: float = 0.01
    """AdamW weight decay (the paper: 0.01)."""
    l1_coef: float = 0.04
    """λ of Eq. 5 (the paper: 0.04)."""
    contrastive_coef: float = 0.1
    """γ of Eq. 5 (the paper: 0.1)."""
    contrastive: Contrastive = "activation"
    """What L_cont pushes apart: latents' activation patterns over the batch, their decoder
    directions, or nothing."""
    retention_init: float = 0.999
    """r_init of Eq. 6 (the paper: 0.999)."""
    retention_final: float = 0.95
    """r_final of Eq. 6 (the paper: 0.95)."""
    warmup_steps: int | None = None
    """t_warmup of Eq. 6 (the paper: 12,000 of an unstated total); None: steps // 5."""
    schedule_steps: int | None = None
    """T of Eq. 6, steps from r_init to r_final after the warm-up; None: steps // 2."""
    unit_norm_decoder: bool = True
    """Keep decoder rows at unit norm, so the L1 penalty cannot be dodged by shrinking f and
    growing W′ (the paper does not say)."""
    baseline: bool = True
    """Also train a TopK SAE of the same width on the same tokens."""
    baseline_k: int | None = None
    """Active latents per token of the TopK baseline; None: d_sae // 8."""
    baseline_lr: float = 3e-4
    """Adam learning rate of the TopK baseline."""
    baseline_aux_k_coef: float = 1 / 32
    """AuxK dead-latent loss weight of the baseline (Gao et al. 2024)."""
    seed: int = 0
    """Seeds the initialisations and the batch order."""
    log_every: int = 10
    """Record the training curves averaged over this many steps."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            _positive_int("AdaptiveTrainConfig", name, getattr(self, name))
        _positive_int("AdaptiveTrainConfig", "schedule_steps", self.schedule_steps,
                      allow_none=True)
        _positive_int("AdaptiveTrainConfig", "baseline_k", self.baseline_k, allow_none=True)
        if self.warmup_steps is not None and (
            not isinstance(self.warmup_steps, int) or self.warmup_steps < 0
        ):
            raise CgcLensError(
                f"AdaptiveTrainConfig.warmup_steps must be an int >= 0 or None, got "
                f"{self.warmup_steps!r}."
            )
        for name in ("lr", "baseline_lr"):
            if not getattr(self, name) > 0:
                raise CgcLensError(f"AdaptiveTrainConfig.{name} must be > 0, got "
                                   f"{getattr(self, name)!r}.")
        for name in ("weight_decay", "l1_coef", "contrastive_coef", "baseline_aux_k_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise CgcLensError(f"AdaptiveTrainConfig.{name} must be >= 0, got {value!r}.")
        if self.contrastive not in ("activation", "decoder", "none"):
            raise CgcLensError(
                "AdaptiveTrainConfig.contrastive must be 'activation', 'decoder' or 'none', "
                f"got {self.contrastive!r}."
            )
        if not 0 < self.retention_final <= self.retention_init <= 1:
            raise CgcLensError(
                "Expected 0 < retention_final <= retention_init <= 1, got "
                f"retention_init={self.retention_init!r}, retention_final={self.retention_final!r}."
            )

    @property
    def warmup(self) -> int:
        """t_warmup in steps."""
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 5

    @property
    def period(self) -> int:
        """T in steps."""
        return self.schedule_steps if self.schedule_steps is not None else max(1, self.steps // 2)

    def retention_at(self, step: int) -> float:
        """r(step) of Eq. 6."""
        return retention(step, initial=self.retention_init, final=self.retention_final,
                         warmup=self.warmup, period=self.period)


class _Batches:
    """``steps`` batches of ``batch_size`` rows, reshuffled every pass over ``tokens``."""

    def __init__(self, tokens: Tensor, batch_size: int, steps: int, seed: int) -> None:
        self.tokens, self.batch_size, self.steps, self.seed = tokens, batch_size, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        n, done = self.tokens.shape[0], 0
        size = min(self.batch_size, n)
        while done < self.steps:
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n - size + 1, size):
                if done == self.steps:
                    return
                yield self.tokens[perm[start:start + size]]
                done += 1


def _project_decoder_grad(w: Tensor) -> None:
    """Remove each decoder row's gradient component along the row (unit-norm constraint)."""
    if w.grad is not None:
        w.grad.sub_((w.grad * w).sum(-1, keepdim=True) * w)


def _renorm(w: Tensor) -> None:
    w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-8))


def train_compressors(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_seq pos"],
    compressor: AdaptiveCompressor,
    cfg: AdaptiveTrainConfig = AdaptiveTrainConfig(),
    *,
    baseline: BatchedTopKSAE | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train ``compressor`` (and ``baseline``) in place on activations streamed from ``tokens``.

    ``baseline`` must read the same sites, in the same order, with the same width.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> from cgc_lens.sites import Site
        >>> m = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=8, d_vocab=7, act_fn="relu"))
        >>> comp = AdaptiveCompressor([Site.resid_post(0), Site.resid_post(1)], d_in=8, seed=0)
        >>> hist = train_compressors(m, torch.randint(0, 7, (8, 8)), comp,
        ...                          AdaptiveTrainConfig(steps=4, batch_size=4, log_every=2),
        ...                          progress=False)
        >>> hist.steps, hist.tokens, len(hist.records)
        (4, 128, 4)
    """
    sites = list(compressor.sites)
    if baseline is not None and (list(baseline.sites) != sites
                                 or baseline.cfg.d_in != compressor.d_in):
        raise CgcLensError(
            f"The baseline must read the compressor's sites {[s.key for s in sites]} with "
            f"d_in={compressor.d_in}; got {[s.key for s in baseline.sites]}, "
            f"d_in={baseline.cfg.d_in}."
        )
    run = _Run(compressor, cfg, baseline, tokens, progress=progress)
    try:
        run_sites(model, _Batches(tokens, cfg.batch_size, cfg.steps, cfg.seed), sites,
                  callback=run.step, progress=False)
    finally:
        run.bar.close()
    run.hist.seconds = time.perf_counter() - run.t0
    log.info("trained %d compressors%s: %d steps, %d tokens in %.1f s", compressor.n,
             " and their TopK baseline" if baseline else "", run.hist.steps, run.hist.tokens,
             run.hist.seconds)
    return run.hist


class _Run:
    """The state of one :func:`train_compressors` run; :meth:`step` takes one batch's readings."""

    def __init__(
        self, compressor: AdaptiveCompressor, cfg: AdaptiveTrainConfig,
        baseline: BatchedTopKSAE | None, tokens: Tensor, *, progress: bool,
    ) -> None:
        self.compressor, self.cfg, self.baseline = compressor, cfg, baseline
        self.sites = list(compressor.sites)
        self.device = device = compressor.W_enc.device
        self.opt = torch.optim.AdamW(compressor.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.topk_cfg = TrainConfig(lr=cfg.baseline_lr, aux_k_coef=cfg.baseline_aux_k_coef)
        self.base_opt = (torch.optim.Adam(baseline.parameters(), lr=cfg.baseline_lr)
                         if baseline else None)
        self.since_fired = (torch.zeros(baseline.n, baseline.cfg.d_sae, dtype=torch.long,
                                        device=device) if baseline else None)
        self.hist = TrainHistory(steps=0, tokens=0, seconds=0.0, config=asdict(cfg))
        self.window, self.t0 = Window(), time.perf_counter()
        self.bar = progress_bar(total=cfg.steps, desc="train compressors", enabled=progress)
        batch_tokens = min(cfg.batch_size, tokens.shape[0]) * tokens.shape[1]
        # Gao et al.: dead after 10M tokens without firing; a short run uses a quarter of it.
        self.dead_after = max(batch_tokens, min(10_000_000, cfg.steps * batch_tokens // 4))

    def step(self, acts: Mapping[str, Tensor], i: int) -> None:
        """Step ``i``: one update of the compressor (and of the baseline) on these readings."""
        cfg, compressor, sites, hist = self.cfg, self.compressor, self.sites, self.hist
        x = torch.stack([acts[s.key] for s in sites]).to(device=self.device, dtype=torch.float32)
        x = rearrange(x, "n b p d -> n (b p) d")
        if i == 0:
            _init_decoder_bias(compressor, self.baseline, x)
        r = cfg.retention_at(i)
        feats, x_hat, terms = _compressor_step(compressor, self.opt, x, r, cfg)
        self.window.add("adaptive", {
            "loss": terms.per_site, "reconstruction": terms.reconstruction, "l1": terms.l1,
            "contrastive": terms.contrastive, **batch_stats(x, x_hat, feats)})
        check_finite(hist, "adaptive", sites, terms.per_site, i)
        if self.baseline is not None:
            stats = _topk_step(self.baseline, self.base_opt, x, since_fired=self.since_fired,
                               cfg=self.topk_cfg, dead_after=self.dead_after)
            self.window.add("topk", stats)
            check_finite(hist, "topk", sites, stats["loss"], i)
        self.window.count += 1
        hist.steps, hist.tokens = i + 1, hist.tokens + x.shape[1]
        if hist.steps % cfg.log_every == 0 or hist.steps == cfg.steps:
            hist.records += self.window.flush(hist.steps, sites, {"adaptive": {
                "retention": r, "kept": n_retained(r, compressor.d_sae)}})
            self.bar.set_postfix(loss=f"{float(terms.per_site.mean()):.4g}")
        self.bar.update(1)


def _compressor_step(
    compressor: AdaptiveCompressor, opt: torch.optim.Optimizer, x: Tensor, r: float,
    cfg: AdaptiveTrainConfig,
) -> tuple[Tensor, Tensor, LossTerms]:
    """One step of the compressor at retention ``r`` (Eq. 6 mask, Eq. 5 loss, AdamW, Eq. 2
    importance); its latents, reconstruction and loss terms before the step."""
    compressor.set_retention(r)
    with torch.enable_grad():
        a = compressor._activations(x)
        feats = compressor._gated(a)
        x_hat = compressor._decode(feats, x)
        terms = compressor_loss(x, x_hat, feats, compressor.W_dec, l1_coef=cfg.l1_coef,
                                contrastive_coef=cfg.contrastive_coef,
                                contrastive=cfg.contrastive)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
    with torch.no_grad():
        if cfg.unit_norm_decoder:
            _project_decoder_grad(compressor.W_dec)
        opt.step()
        if cfg.unit_norm_decoder:
            _renorm(compressor.W_dec)
    compressor.update_importance(a.detach())
    return feats, x_hat, terms


@torch.no_grad()
def _init_decoder_bias(
    compressor: AdaptiveCompressor, baseline: BatchedTopKSAE | None, x: Tensor
) -> None:
    """Start b_dec where a silent code reconstructs best: (1 − skip_scale) · mean of the first
    batch for the compressor (its skip term adds the rest), the mean for the baseline."""
    mean = x.mean(1)
    if compressor.b_dec is not None:
        compressor.b_dec.copy_((1 - compressor.cfg.skip_scale) * mean)
    if baseline is not None:
        baseline.b_dec.copy_(mean)


def _topk_step(
    sae: BatchedTopKSAE, opt: torch.optim.Optimizer, x: Tensor, *, since_fired: Tensor,
    cfg: TrainConfig, dead_after: int,
) -> dict[str, Tensor]:
    """One step of the TopK baseline (the trainer's loss, unit-norm decoder); its batch figures
    before the step, as the compressor's."""
    with torch.no_grad():
        values, indices = sae._topk(sae._pre(x))
        feats = torch.zeros(*values.shape[:-1], sae.cfg.d_sae, device=x.device).scatter_(
            -1, indices, values)
        x_hat = sae._decode_dense(feats)
        recon = (x - x_hat).pow(2).sum(-1).mean(-1)
        stats = {"loss": recon, "reconstruction": recon, "l1": feats.abs().sum(-1).mean(-1),
                 **batch_stats(x, x_hat, feats)}
    with torch.enable_grad():
        loss = topk_loss(sae, x, since_fired, cfg, dead_after)
        opt.zero_grad(set_to_none=True)
        loss.backward()
    with torch.no_grad():
        _project_decoder_grad(sae.W_dec)
        opt.step()
        _renorm(sae.W_dec)
    return stats
