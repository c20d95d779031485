"""The steps of :func:`cgc_lens.studies.capability.config.run_capability`, in order.

Loading (model, blocks, SAEs), one calibration pass, the pure analyses, the ablation and pruning
sweeps, the allocations with the CGC-F search, and the held-out evaluation.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.stats

from cgc_lens.forward.ablation import head_ablation
from cgc_lens.forward.prune_sweep import head_prune_sweep
from cgc_lens.analysis.allocation import Allocation, cgc_f, cgc_l, inverted, uniform
from cgc_lens.analysis.density import DensityResult, capability_density
from cgc_lens.analysis.importance import (
    magnitude_head_importance,
    rank_correlation,
    wanda_head_importance,
)
from cgc_lens.analysis.phase import phase_transition_point
from cgc_lens.data import TokenBlocks, load_corpus, token_blocks
from cgc_lens.errors import CgcLensError
from cgc_lens.studies.capability.passes import (
    CalibrationStats,
    KLFitness,
    block_labels,
    calibration_pass,
    default_sample,
    destruction,
    effective_z_maps,
    evaluate_allocations,
)
from cgc_lens.studies.capability.result import CapabilityResult, Theorem1Result
from cgc_lens.models import load_model
from cgc_lens.saes import BatchedSAEConfig, TrainConfig, fit_sae, load_batched_sae
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from cgc_lens.studies.capability.config import CapabilityConfig
    from cgc_lens.saes.per_head import BatchedTopKSAE

__all__ = ["run_study", "spearman"]

logger = logging.getLogger(__name__)


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Spearman ρ, p and n over the pairs where both are finite (NaN when fewer than 3 or flat)."""
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return {"rho": float("nan"), "p": float("nan"), "n": int(ok.sum())}
    res = scipy.stats.spearmanr(x[ok], y[ok])
    return {"rho": float(res[0]), "p": float(res[1]), "n": int(ok.sum())}


def _blocks(config: CapabilityConfig, model: HookedTransformer, split: str, *, n_tokens: int,
            block_len: int, seed: int, categories: tuple[str, ...] | None) -> TokenBlocks:
    name = config.corpus or ("cgc-tiny" if config.model == "cgc-tiny" else "wikitext-103-raw-v1")
    corpus = load_corpus(name, split=split, max_documents=config.max_documents)
    if categories is not None:
        corpus = corpus.select(categories)
    n_blocks = n_tokens // block_len
    if n_blocks < 1:
        raise CgcLensError(f"Expected at least one block of {block_len} tokens in {split} "
                           f"tokens, got {n_tokens} tokens.")
    return token_blocks(corpus, model, block_len=block_len, n_blocks=n_blocks, seed=seed)


def _saes(config: CapabilityConfig, model: HookedTransformer,
          calibration: TokenBlocks) -> BatchedTopKSAE:
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
    sae, res = fit_sae(model, calibration.tokens, sae_cfg, train, batch_size=config.batch_size,
                       progress=config.progress)
    logger.info("trained %d per-head SAEs (d_sae %d, k %d): %d steps", sae.n, sae_cfg.d_sae,
                sae_cfg.k, res.steps)
    return sae


def _theorem1(config: CapabilityConfig, model: HookedTransformer, stats: CalibrationStats,
              density: DensityResult, evaluation: TokenBlocks) -> Theorem1Result:
    """Destruction per head and level, its correlation with density, and each head's PTP."""
    n_layers, n_heads = density.density.shape
    levels = np.asarray(config.survival_retentions, float)
    d_sae = stats.survival_counts.shape[-1]
    destr = np.full((n_layers, n_heads, len(levels)), np.nan)
    n_active = np.zeros((n_layers, n_heads), dtype=np.int64)
    for ell in range(n_layers):
        r = np.stack([acc.pearson() for acc in stats.survival[ell]])  # [levels, heads * F]
        r = r.reshape(len(levels), n_heads, d_sae).transpose(1, 0, 2)
        rate = stats.survival_counts[ell].numpy() / max(stats.survival_tokens, 1)
        destr[ell], n_active[ell] = destruction(r, rate > config.active_rate,
                                                survived=config.survived)
    dppl = dkl = None
    if config.survival_dppl:
        sweep = head_prune_sweep(model, evaluation.tokens, list(levels),
                                 batch_size=config.batch_size,
                                 heads_per_pass=config.heads_per_pass, progress=config.progress)
        dppl, dkl = sweep.delta_ppl, sweep.delta_kl
    x = np.concatenate([[0.0], 1.0 - levels])  # sparsity; the dense point has no damage

    def ptp(curves: np.ndarray) -> np.ndarray:
        out = np.full(curves.shape[:2], np.nan)
        for (ell, h), _ in np.ndenumerate(out):
            y = np.concatenate([[0.0], curves[ell, h]])
            if np.isfinite(y).all():
                out[ell, h] = phase_transition_point(x, y, method=config.ptp_method).x
        return out

    ptp_d = ptp(destr)
    ptp_p = None if dppl is None else ptp(dppl)
    per_level = [{"retention": float(r), "destruction": spearman(density.density, destr[..., j]),
                  "dppl": None if dppl is None else spearman(density.density, dppl[..., j])}
                 for j, r in enumerate(levels)]
    return Theorem1Result(
        retentions=levels, pruning=config.survival_pruning, destruction=destr, n_active=n_active,
        delta_ppl=dppl, delta_kl=dkl, ptp_destruction=ptp_d, ptp_dppl=ptp_p,
        correlations=per_level,
        ptp_correlations={"destruction": spearman(density.density, ptp_d),
                          "dppl": None if ptp_p is None else spearman(density.density, ptp_p)},
        n_tokens=stats.survival_tokens)


def _allocations(config: CapabilityConfig, model: HookedTransformer, density: DensityResult,
                 calibration: TokenBlocks) -> dict[str, Any]:
    cfg = model.cfg
    sizes = np.full(density.density.shape, float(cfg.d_head * cfg.d_model))
    rho, kw = config.retention, {"rho_min": config.rho_min, "rho_max": config.rho_max,
                                 "gamma": config.ceiling_gamma, "floor": config.floor}
    allocs = {
        "dense": Allocation(retention=np.ones(sizes.shape), sizes=sizes, rho=1.0, method="dense"),
        "uniform": uniform(sizes, rho),
        "cgc_l": cgc_l(density.density, sizes, rho, **kw),
        "inverted": inverted(density.density, sizes, rho, **kw),
    }
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
    if (allocs["uniform"].retention <= ceilings + 1e-12).all():
        starts["uniform"] = Allocation(retention=allocs["uniform"].retention, sizes=sizes,
                                       rho=rho, method="uniform", ceilings=ceilings)
    else:
        logger.warning("Uniform retention %g exceeds some density ceilings: CGC-F cannot start "
                       "from it and is compared with CGC-L only.", rho)
    start_fit = {m: fitness(a.by_head(), n_last) for m, a in starts.items()}
    start = min(start_fit, key=start_fit.__getitem__)
    search = cgc_f(starts[start], fitness, evo, floor=config.floor)
    best, best_fit, origin = search.allocation, float(search.history[-1]), "search"
    # Elitism across the starts: the snapped grid start can be worse than the unsnapped CGC-L,
    # so CGC-F returns whichever of {search result, CGC-L, Uniform} has the lowest fitness.
    for m, value in start_fit.items():
        if value < best_fit:
            best = Allocation(retention=starts[m].retention, sizes=sizes, rho=rho,
                              method="cgc_f", ceilings=ceilings)
            best_fit, origin = value, m
    allocs["cgc_f"] = best
    out.update(search=search, origin=origin, start=start)
    known = {"dense": 0.0, **start_fit, "cgc_f": best_fit}
    out["calibration_kl"] = {m: known[m] if m in known else fitness(a.by_head(), n_last)
                             for m, a in allocs.items()}
    out["calibration_kl_tokens"] = fitness.rows(n_last) * calibration.block_len
    return out


def run_study(config: CapabilityConfig, *, model: HookedTransformer | None = None,
              calibration: TokenBlocks | None = None, evaluation: TokenBlocks | None = None,
              sae: BatchedTopKSAE | None = None) -> CapabilityResult:
    """Every step of the study; see :func:`~cgc_lens.studies.capability.config.run_capability`."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    model = model if model is not None else load_model(config.model, device=config.device)
    block_len = config.block_len or min(512, model.cfg.n_ctx)
    if calibration is None:
        calibration = _blocks(config, model, config.calibration_split,
                              n_tokens=config.calibration_tokens, block_len=block_len,
                              seed=config.seed, categories=config.categories)
    if evaluation is None:
        evaluation = _blocks(config, model, config.eval_split, n_tokens=config.eval_tokens,
                             block_len=block_len, seed=config.seed + 1, categories=None)
    cats, cat_mode = block_labels(calibration, config.consistency_categories)
    lap("load")
    sae = sae if sae is not None else _saes(config, model, calibration)
    lap("saes")
    sample = config.sample_per_category or default_sample(cat_mode, len(calibration))
    maps = effective_z_maps(model.W_O, config.survival_retentions,
                            pruning=config.survival_pruning, seed=config.seed)
    stats = calibration_pass(model, calibration.tokens, cats, sae, sample_per_category=sample,
                             seed=config.seed, maps=maps, survival_tokens=config.survival_tokens,
                             batch_size=config.batch_size, progress=config.progress)
    density = capability_density(stats.features,
                                 replace(config.density, seed=config.density.seed + config.seed))
    W_O = model.W_O.detach()
    wanda = wanda_head_importance(W_O, stats.z_sum_sq.sqrt())
    magnitude = magnitude_head_importance(W_O)
    lap("calibration")
    means = (stats.z_sum / stats.n_tokens).to(W_O.dtype)
    ablation = head_ablation(model, evaluation.tokens, mode=config.ablation_mode, means=means,
                             batch_size=config.batch_size, heads_per_pass=config.heads_per_pass,
                             progress=config.progress)
    lap("ablation")
    theorem1 = _theorem1(config, model, stats, density, evaluation)
    lap("theorem1")
    alloc = _allocations(config, model, density, calibration)
    lap("cgc_f")
    scores = evaluate_allocations(
        model, evaluation.tokens, {m: a.by_head() for m, a in alloc["allocations"].items()},
        probes=config.probes, batch_size=config.batch_size, progress=config.progress)
    lap("evaluate")
    for m, row in scores.items():
        row["kl_calibration"] = alloc["calibration_kl"].get(m, float("nan"))
    return CapabilityResult(
        config=config, model_name=str(model.cfg.model_name), d_sae=sae.cfg.d_sae,
        calibration_tokens=calibration.tokens.numel(), eval_tokens=evaluation.tokens.numel(),
        consistency_categories=cat_mode, density=density, wanda=wanda, magnitude=magnitude,
        wanda_corr=rank_correlation(density.density, wanda),
        magnitude_corr=rank_correlation(density.density, magnitude),
        ablation=ablation, ablation_corr=rank_correlation(density.density, ablation.delta_ppl),
        allocations=alloc["allocations"], scores=scores, search=alloc["search"],
        cgc_f_origin=alloc["origin"], cgc_f_start=alloc.get("start"),
        calibration_kl_tokens=alloc.get("calibration_kl_tokens"),
        theorem1=theorem1, timings=timings)
