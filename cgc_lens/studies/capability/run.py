"""The capability-density study end to end (Gupta 2026, §3-§5), plus a direct test of Theorem 1.

``run_capability(CapabilityConfig())`` on cgc-tiny, or ``cgc-lens cgc --out DIR``:

1. per-head SAE features on categorised calibration tokens → capability density (Defs 1-4);
2. Wanda and magnitude per head from the same pass; Spearman ρ(density, Wanda) (§5.3, Fig. 3);
3. per-head ablation ΔPPL / ΔKL on held-out tokens; Pearson and Spearman vs density (Fig. 2);
4. Uniform, CGC-L, Inverted and CGC-F allocations applied as per-head magnitude pruning of
   ``W_O`` slices; PPL, ΔPPL, KL and capability probes per allocation (Table 1, Fig. 4);
5. Theorem 1: per head and pruning level, the fraction of its active SAE features that do not
   survive (r < 0.9), its Spearman against density, and each head's phase-transition point.

The readings this module adds are in docs/methods_capability.md ("The study"); the user guide
is docs/capability.md. The config is :mod:`.config`, the forward passes :mod:`.passes`, the other
steps :mod:`.steps`, and the result type :mod:`.result`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cgc_lens.analysis.density import capability_density
from cgc_lens.analysis.importance import (
    magnitude_head_importance,
    rank_correlation,
    wanda_head_importance,
    with_intervals,
)
from cgc_lens.checks import check_device, check_finite_weights
from cgc_lens.data import TokenBlocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.ablation import head_ablation
from cgc_lens.forward.dense import DensePass
from cgc_lens.models import load_model
from cgc_lens.progress import Stages
from cgc_lens.studies.capability.config import CapabilityConfig
from cgc_lens.studies.capability.passes import (
    block_labels,
    calibration_pass,
    default_sample,
    effective_z_maps,
    evaluate_allocations,
)
from cgc_lens.studies.capability.result import CapabilityResult
from cgc_lens.studies.capability.sharding import merge_calibration, token_shard
from cgc_lens.studies.capability.steps import allocations, load_blocks, load_saes, theorem1

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["run_capability"]

logger = logging.getLogger(__name__)


_STAGES = {
    "load": "load model and tokens",
    "saes": "per-head SAEs",
    "calibration": "calibration pass, density, Wanda",
    "ablation": "head ablation",
    "theorem1": "Theorem 1 prune sweep",
    "cgc_f": "allocations, CGC-F",
    "evaluate": "evaluate allocations, probes",
}
"""The steps ``run_capability`` laps, in order, and what its stage bar says while each runs."""


class _Laps:
    """Seconds per step, rounded to ms: ``lap(name)`` closes the step that ends now. A bar over
    the steps (``progress``) names the step running."""

    def __init__(self, progress: bool = False) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()
        self.stages = Stages(tuple(_STAGES.values()), desc="capability", enabled=progress)

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._clock, 3)
        self._clock = now
        self.stages.next()


def _token_sets(config: CapabilityConfig, model: HookedTransformer,
                calibration: TokenBlocks | None,
                evaluation: TokenBlocks | None) -> tuple[TokenBlocks, TokenBlocks]:
    """The calibration and held-out blocks: given, or drawn from the config's corpus."""
    block_len = config.block_len or min(512, model.cfg.n_ctx)
    if calibration is None:
        calibration = load_blocks(config, model, config.calibration_split,
                                  n_tokens=config.calibration_tokens, block_len=block_len,
                                  seed=config.seed, categories=config.categories)
    if evaluation is None:
        evaluation = load_blocks(config, model, config.eval_split, n_tokens=config.eval_tokens,
                                 block_len=block_len, seed=config.seed + 1, categories=None)
    return calibration, evaluation


def _measure(config: CapabilityConfig, model: HookedTransformer, calibration: TokenBlocks,
             evaluation: TokenBlocks, *, sae: Any, labels: tuple[Any, str],
             lap: _Laps, dense: DensePass | None = None) -> dict[str, Any]:
    """Calibration pass, density, Wanda, magnitude, ablation and Theorem 1 (the blocks of
    each pass split over the ranks of a process group, the statistics merged)."""
    cats, cat_mode = labels
    sample = config.sample_per_category or default_sample(cat_mode, len(calibration))
    maps = effective_z_maps(model.W_O, config.survival_retentions,
                            pruning=config.survival_pruning, seed=config.seed)
    stats = calibration_pass(model, calibration.tokens, cats, sae, sample_per_category=sample,
                             seed=config.seed, maps=maps, survival_tokens=config.survival_tokens,
                             n_groups=config.density.n_groups, batch_size=config.batch_size,
                             progress=config.progress,
                             blocks=token_shard(len(calibration), config.batch_size).blocks)
    stats = merge_calibration(stats)
    density = capability_density(stats.features,
                                 replace(config.density, seed=config.density.seed + config.seed),
                                 groups=stats.groups)
    W_O = model.W_O.detach()
    wanda = wanda_head_importance(W_O, stats.z_sum_sq.sqrt())
    magnitude = magnitude_head_importance(W_O)
    lap("calibration")
    means = (stats.z_sum / stats.n_tokens).to(W_O.dtype)
    shard = token_shard(len(evaluation), config.batch_size)
    ablation = head_ablation(model, shard.take(evaluation.tokens), mode=config.ablation_mode,
                             means=means, batch_size=config.batch_size,
                             heads_per_pass=config.heads_per_pass, progress=config.progress,
                             reduce=shard.reduce, dense=dense)
    lap("ablation")
    result = theorem1(config, model, stats, density, evaluation, dense=dense)
    lap("theorem1")
    return {"cat_mode": cat_mode, "density": density, "wanda": wanda, "magnitude": magnitude,
            "ablation": ablation, "theorem1": result}


def _correlate(config: CapabilityConfig, density: Any, signal: Any) -> Any:
    """ρ and r of density against a per-head signal, with bootstrap intervals over heads and
    permutation p-values (seeded by ``config.seed``)."""
    return with_intervals(rank_correlation(density, signal), density, signal, seed=config.seed,
                          n_resamples=config.bootstrap_resamples, confidence=config.confidence)


def run_capability(config: CapabilityConfig | None = None, **inputs: Any) -> CapabilityResult:
    """Run the study. ``inputs`` may supply ready objects instead of loading them (tests,
    notebooks): ``model`` (HookedTransformer), ``calibration`` / ``evaluation`` (TokenBlocks),
    ``sae`` (BatchedTopKSAE over every head).

    The model is edited only inside ``compressed(...)`` blocks and is restored bit-exactly.
    """
    config = config or CapabilityConfig()
    unknown = set(inputs) - {"model", "calibration", "evaluation", "sae"}
    if unknown:
        raise CgcLensError(f"Unknown inputs {sorted(unknown)}; valid: calibration, evaluation, "
                           "model, sae.")
    t0, lap = time.perf_counter(), _Laps(progress=config.progress)
    model = inputs.get("model")
    if model is None:
        check_device(config.device)
        model = load_model(config.model, device=config.device)
    check_finite_weights(model, what=f"the reference model {model.cfg.model_name!r}")
    calibration, evaluation = _token_sets(config, model, inputs.get("calibration"),
                                          inputs.get("evaluation"))
    labels = block_labels(calibration, config.consistency_categories)
    lap("load")
    sae = inputs.get("sae")
    sae = sae if sae is not None else load_saes(config, model, calibration)
    lap("saes")
    # the dense pass over the held-out batches, run once for the ablation sweep, the Theorem-1
    # sweep and the evaluation of the allocations (the model is dense between their edits)
    dense = DensePass(model)
    m = _measure(config, model, calibration, evaluation, sae=sae, labels=labels, lap=lap,
                 dense=dense)
    alloc = allocations(config, model, m["density"], calibration)
    lap("cgc_f")
    shard = token_shard(len(evaluation), config.batch_size)
    scores = evaluate_allocations(
        model, shard.take(evaluation.tokens),
        {k: a.by_head() for k, a in alloc["allocations"].items()}, probes=config.probes,
        batch_size=config.batch_size, progress=config.progress, reduce=shard.reduce,
        dense=dense)
    dense.clear()
    lap("evaluate")
    for k, row in scores.items():
        row["kl_calibration"] = alloc["calibration_kl"].get(k, float("nan"))
    density = m["density"].density
    result = CapabilityResult(
        config=config, model_name=str(model.cfg.model_name), d_sae=sae.cfg.d_sae,
        calibration_tokens=calibration.tokens.numel(), eval_tokens=evaluation.tokens.numel(),
        consistency_categories=m["cat_mode"], density=m["density"], wanda=m["wanda"],
        magnitude=m["magnitude"], wanda_corr=_correlate(config, density, m["wanda"]),
        magnitude_corr=_correlate(config, density, m["magnitude"]), ablation=m["ablation"],
        ablation_corr=_correlate(config, density, m["ablation"].delta_ppl),
        allocations=alloc["allocations"], scores=scores, search=alloc["search"],
        cgc_f_origin=alloc["origin"], cgc_f_start=alloc.get("start"),
        calibration_kl_tokens=alloc.get("calibration_kl_tokens"),
        theorem1=m["theorem1"], timings=lap.timings)
    logger.info("capability study done in %.1f s", time.perf_counter() - t0)
    return result
