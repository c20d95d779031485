"""The steps of the capability study that :func:`~cgc_lens.studies.capability.run.run_capability`
calls in order, besides the forward passes of :mod:`.passes`.

Loading (token blocks, per-head SAEs), the Theorem 1 readings (destruction per head and level,
their correlations with density, each head's phase-transition point) and the allocations with the
CGC-F search. The math is :mod:`cgc_lens.analysis`'s; these functions feed it the study's data.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cgc_lens.analysis.allocation import Allocation, cgc_l, inverted, uniform
from cgc_lens.analysis.density import DensityResult
from cgc_lens.analysis.evolution import cgc_f_from_starts
from cgc_lens.analysis.importance import finite_rank_correlation
from cgc_lens.analysis.phase import phase_transition_points
from cgc_lens.analysis.survival import destruction
from cgc_lens.analysis.uncertainty import correlation_interval
from cgc_lens.data import TokenBlocks, draw_blocks, load_corpus
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.prune_sweep import head_prune_sweep
from cgc_lens.saes import BatchedSAEConfig, TrainConfig, load_batched_sae
from cgc_lens.sites import Head
from cgc_lens.studies.capability.config import CapabilityConfig
from cgc_lens.studies.capability.intervals import interval_keys
from cgc_lens.studies.capability.passes import CalibrationStats, KLFitness
from cgc_lens.studies.capability.result import Theorem1Result
from cgc_lens.studies.capability.sharding import SplitFitness, fit_head_saes, token_shard

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from cgc_lens.saes.per_head import BatchedTopKSAE

__all__ = ["allocations", "load_blocks", "load_saes", "spearman", "theorem1"]

logger = logging.getLogger(__name__)


def spearman(x: np.ndarray, y: np.ndarray,
             config: CapabilityConfig | None = None) -> dict[str, float]:
    """Spearman ρ, p and n over the pairs where both are finite (NaN when fewer than 3 or flat),
    as the study reports it (:func:`~cgc_lens.analysis.importance.finite_rank_correlation`);
    with a ``config``, also ρ's bootstrap interval and permutation p (``rho_ci_low``,
    ``rho_ci_high``, ``rho_perm_p``) from its ``seed``, ``bootstrap_resamples`` and
    ``confidence``."""
    c = finite_rank_correlation(x, y)
    out = {"rho": c.rho, "p": c.p_value, "n": c.n}
    if config is not None:
        out |= interval_keys(correlation_interval(
            x, y, seed=config.seed, n_resamples=config.bootstrap_resamples,
            confidence=config.confidence), "rho")
    return out


def load_blocks(config: CapabilityConfig, model: HookedTransformer, split: str, *, n_tokens: int,
                block_len: int, seed: int, categories: tuple[str, ...] | None) -> TokenBlocks:
    """``n_tokens // block_len`` blocks of ``split`` of the study's corpus, drawn by ``seed``."""
    name = config.corpus or ("cgc-tiny" if config.model == "cgc-tiny" else "wikitext-103-raw-v1")
    corpus = load_corpus(name, split=split, max_documents=config.max_documents,
                         category_field=config.category_field)
    if categories is not None:
        corpus = corpus.select(categories)
    n_blocks = n_tokens // block_len
    if n_blocks < 1:
        raise CgcLensError(f"Expected at least one block of {block_len} tokens in {split} "
                           f"tokens, got {n_tokens} tokens.")
    return draw_blocks(corpus, model, block_len=block_len, n_blocks=n_blocks, seed=seed,
                       max_documents=config.max_documents, asked=f"{split} tokens ({n_tokens})")


def load_saes(config: CapabilityConfig, model: HookedTransformer,
              calibration: TokenBlocks) -> BatchedTopKSAE:
    """The per-head SAEs ``config.saes`` names, or fresh ones trained on the calibration tokens
    (split by heads over the ranks of a process group: :func:`.sharding.fit_head_saes`)."""
    source = config.saes
    if source == "auto":
        source = "cgc-tiny" if config.model == "cgc-tiny" else "train"
    if source != "train":
        return load_batched_sae(source, device=str(model.cfg.device))
    cfg = model.cfg
    sae_cfg = BatchedSAEConfig(
        sites=tuple(Head(ell, h).site for ell in range(cfg.n_layers) for h in range(cfg.n_heads)),
        d_in=cfg.d_head, d_sae=config.d_sae or 8 * cfg.d_head, k=config.k,
        model_name=cfg.model_name)
    train = TrainConfig(epochs=config.sae_epochs, lr=config.sae_lr,
                        batch_size=config.sae_batch_size, max_steps=config.sae_max_steps,
                        seed=config.seed)
    sae, res = fit_head_saes(model, calibration.tokens, sae_cfg, train,
                             batch_size=config.batch_size, progress=config.progress)
    logger.info("trained %d per-head SAEs (d_sae %d, k %d): %d steps", sae.n, sae_cfg.d_sae,
                sae_cfg.k, res.steps)
    return sae


def _destruction(config: CapabilityConfig, stats: CalibrationStats,
                 shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Destruction per head and level, and n_active per head, from the survival sums."""
    n_layers, n_heads = shape
    n_levels = len(config.survival_retentions)
    d_sae = stats.survival_counts.shape[-1]
    destr = np.full((n_layers, n_heads, n_levels), np.nan)
    n_active = np.zeros((n_layers, n_heads), dtype=np.int64)
    for ell in range(n_layers):
        r = np.stack([acc.pearson() for acc in stats.survival[ell]])  # [levels, heads * F]
        r = r.reshape(n_levels, n_heads, d_sae).transpose(1, 0, 2)
        rate = stats.survival_counts[ell].numpy() / max(stats.survival_tokens, 1)
        destr[ell], n_active[ell] = destruction(r, rate > config.active_rate,
                                                survived=config.survived)
    return destr, n_active


def _ptp(config: CapabilityConfig, curves: np.ndarray) -> np.ndarray:
    """Each head's phase-transition point over sparsity (the dense point has no damage); NaN
    for a curve with a missing level."""
    levels = np.asarray(config.survival_retentions, float)
    x = np.concatenate([[0.0], 1.0 - levels])
    flat = curves.reshape(-1, curves.shape[-1])
    ys = np.concatenate([np.zeros((flat.shape[0], 1)), flat], axis=1)
    points = phase_transition_points(x, ys, method=config.ptp_method, nonfinite="nan")
    return points.reshape(curves.shape[:2])


def theorem1(config: CapabilityConfig, model: HookedTransformer, stats: CalibrationStats,
             density: DensityResult, evaluation: TokenBlocks, *,
             dense: DensePass | None = None) -> Theorem1Result:
    """Destruction per head and level, its correlation with density, and each head's PTP (the
    prune sweep's blocks split over the ranks of a process group, its sums merged)."""
    levels = np.asarray(config.survival_retentions, float)
    destr, n_active = _destruction(config, stats, density.density.shape)
    dppl = dkl = None
    if config.survival_dppl:
        shard = token_shard(len(evaluation), config.batch_size)
        sweep = head_prune_sweep(model, shard.take(evaluation.tokens), list(levels),
                                 batch_size=config.batch_size,
                                 heads_per_pass=config.heads_per_pass, progress=config.progress,
                                 reduce=shard.reduce, dense=dense)
        dppl, dkl = sweep.delta_ppl, sweep.delta_kl
    ptp_d = _ptp(config, destr)
    ptp_p = None if dppl is None else _ptp(config, dppl)
    dd = density.density
    per_level = [{"retention": float(r), "destruction": spearman(dd, destr[..., j], config),
                  "dppl": None if dppl is None else spearman(dd, dppl[..., j], config)}
                 for j, r in enumerate(levels)]
    return Theorem1Result(
        retentions=levels, pruning=config.survival_pruning, destruction=destr, n_active=n_active,
        delta_ppl=dppl, delta_kl=dkl, ptp_destruction=ptp_d, ptp_dppl=ptp_p,
        correlations=per_level,
        ptp_correlations={"destruction": spearman(dd, ptp_d, config),
                          "dppl": None if ptp_p is None else spearman(dd, ptp_p, config)},
        n_tokens=stats.survival_tokens)


def _closed_forms(config: CapabilityConfig, model: HookedTransformer,
                  density: DensityResult) -> dict[str, Allocation]:
    """Dense, Uniform, CGC-L and Inverted at the config's retention and ceilings."""
    cfg = model.cfg
    sizes = np.full(density.density.shape, float(cfg.d_head * cfg.d_model))
    rho, kw = config.retention, {"rho_min": config.rho_min, "rho_max": config.rho_max,
                                 "gamma": config.ceiling_gamma, "floor": config.floor}
    return {
        "dense": Allocation(retention=np.ones(sizes.shape), sizes=sizes, rho=1.0, method="dense"),
        "uniform": uniform(sizes, rho),
        "cgc_l": cgc_l(density.density, sizes, rho, **kw),
        "inverted": inverted(density.density, sizes, rho, **kw),
    }


def allocations(config: CapabilityConfig, model: HookedTransformer, density: DensityResult,
                calibration: TokenBlocks) -> dict[str, Any]:
    """The allocations, and CGC-F from the better of CGC-L and Uniform (when Uniform fits under
    the ceilings) with each allocation's calibration KL."""
    allocs = _closed_forms(config, model, density)
    out: dict[str, Any] = {"allocations": allocs, "search": None, "origin": None,
                           "calibration_kl": {}}
    if not config.cgc_f:
        return out
    evo = replace(config.evo, seed=config.evo.seed + config.seed,
                  progress=config.evo.progress and config.progress)
    fitness = KLFitness(model, calibration.tokens, max_tokens=max(evo.tokens_per_stage),
                        batch_size=config.batch_size)
    n_last, ceilings = evo.tokens_per_stage[-1], allocs["cgc_l"].ceilings
    starts = {"cgc_l": allocs["cgc_l"]}
    uni = allocs["uniform"]
    if (uni.retention <= ceilings + 1e-12).all():
        starts["uniform"] = Allocation(retention=uni.retention, sizes=uni.sizes, rho=uni.rho,
                                       method="uniform", ceilings=ceilings)
    else:
        logger.warning("Uniform retention %g exceeds some density ceilings: CGC-F cannot start "
                       "from it and is compared with CGC-L only.", config.retention)
    best = cgc_f_from_starts(starts, SplitFitness(fitness), evo, floor=config.floor)
    allocs["cgc_f"] = best.allocation
    out.update(search=best.search, origin=best.origin, start=best.start)
    known = {"dense": 0.0, **best.start_fitness, "cgc_f": best.fitness}
    out["calibration_kl"] = {m: known[m] if m in known else fitness(a.by_head(), n_last)
                             for m, a in allocs.items()}
    out["calibration_kl_tokens"] = fitness.rows(n_last) * calibration.block_len
    return out
