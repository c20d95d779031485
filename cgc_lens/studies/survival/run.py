"""The feature-survival audit end to end ("I quantized my model and perplexity looks fine: did
the SAE features I interpret survive?"; QDM paper §3, Apps. B-L).

:func:`run_survival` takes a :class:`SurvivalConfig` and returns a :class:`SurvivalResult`:

1. the model, the frozen SAE at its read-out hook, and three disjoint token sets (features,
   perplexity, the matched search's held-out tokens);
2. the conditions: the null, RTN per bit-width, any plans, and magnitude pruning whose
   perplexity on the held-out tokens matches a named condition's (:func:`~cgc_lens.compress.
   match_level`);
3. one streaming sweep (:func:`~cgc_lens.studies.survival.passes.stream_conditions`, shared
   out over ``torch.distributed`` ranks by :mod:`~cgc_lens.studies.survival.ranks`): the
   reference forward runs once per batch, every condition reuses its SAE codes;
4. each condition's perplexity on the evaluation tokens (chunked; sliding window optional);
5. the analyses of :mod:`cgc_lens.analysis` (taxonomy, overlaps, deciles, fragility, checks).

``cgc-lens survival`` (:mod:`cgc_lens.cli`) parses into the same config.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from cgc_lens.analysis.accumulators import merge_all
from cgc_lens.analysis.fragility import (
    FragilityPredictor,
    fragility_dataset,
    marginal_aucs,
    survival_by_quartile,
)
from cgc_lens.analysis.stability import (
    budget_sensitivity,
    null_check,
    subset_stability,
    threshold_grid,
)
from cgc_lens.analysis.survival import (
    ConditionSummary,
    active_features,
    decile_table,
    overlap,
    summarize_condition,
    summary_table,
)
from cgc_lens.analysis.survival_intervals import survival_intervals
from cgc_lens.checks import check_device, check_finite_weights
from cgc_lens.data import TokenBlocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import bos_token_id
from cgc_lens.models import load_model
from cgc_lens.saes.attach import SAETarget
from cgc_lens.sites import layer_of
from cgc_lens.studies.survival.compare import compared_conditions
from cgc_lens.studies.survival.conditions import (
    Condition,
    check_condition_shapes,
    resolve_conditions,
    sae_target,
    token_sets,
)
from cgc_lens.studies.survival.config import (
    NULL_NAME,
    PlanCondition,
    SurvivalConfig,
    parse_sae,
)
from cgc_lens.studies.survival.passes import SweepSums
from cgc_lens.studies.survival.protocol import baseline_check, bos_policy
from cgc_lens.studies.survival.ranks import perplexities, sweep
from cgc_lens.studies.survival.result import (
    FragilityReport,
    StabilityChecks,
    SurvivalResult,
)

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = [
    "FragilityReport", "PlanCondition", "StabilityChecks", "SurvivalConfig", "SurvivalResult",
    "run_survival",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _table(config: SurvivalConfig, sums: SweepSums, key: str, conds: list[Condition], *,
           ppl: dict[str, tuple[float | None, float | None]], layer: int,
           intervals: dict[str, np.ndarray] | None = None,
           ) -> tuple[list[ConditionSummary], dict[str, np.ndarray], Any, np.ndarray]:
    """Table 1 rows (with their jackknife intervals when the sweep kept groups) and per-feature
    r at one read-out key; ``intervals`` gets each condition's ``[3, d_sae]`` r intervals."""
    pooled_ref = merge_all(sums.reference_shards(key))
    ref = pooled_ref.stats()  # type: ignore[attr-defined]
    active = active_features(ref.firing_rate, config.active_rate)
    ppl_ref = ppl.get(NULL_NAME, (None, None))[0]
    rows, r = [], {}
    groups = sums.groups if sums.groups is not None and sums.groups.n_groups >= 2 else None
    group_ref = None if groups is None else groups.reference_sums(key, pooled_ref)  # once
    for c in conds:
        acc = merge_all(sums.pearson_shards(key, c.name))
        r[c.name] = acc.pearson(flat_other=config.flat_other)  # type: ignore[attr-defined]
        row = summarize_condition(
            c.name, r[c.name], active, tokens=acc.n_tokens, bits=c.bits, sparsity=c.sparsity,
            ppl=ppl.get(c.name, (None, None))[0], ppl_reference=ppl_ref, layer=layer,
            thresholds=config.thresholds, constant=ref.constant)
        row = dataclasses.replace(row, spec=c.spec, format=c.format, group_size=c.group_size,
                                  bits_per_weight=c.bits_per_weight)
        if groups is not None:
            iv = survival_intervals(
                groups.pearson(key, sums.conditions.index(c.name), acc),
                group_ref,  # type: ignore[arg-type]
                thresholds=config.thresholds, flat_other=config.flat_other)
            row = dataclasses.replace(row, **iv.row_fields())
            if intervals is not None:
                intervals[c.name] = iv.r
        rows.append(row)
    return rows, r, ref, active


def _attempt(what: str, fn: Callable[[], T]) -> tuple[T | None, str | None]:
    """Run a degenerate-prone analysis (one outcome class, too few features); say why not."""
    try:
        return fn(), None
    except CgcLensError as err:
        log.warning("%s skipped: %s", what, err)
        return None, f"{what} skipped: {err}"


def _fragility(config: SurvivalConfig, ref: Any, r: np.ndarray, active: np.ndarray, name: str,
               ) -> FragilityReport:
    X, y = fragility_dataset(ref, r, active, survived=config.survived)
    fit = FragilityPredictor(C=config.fragility_c, n_splits=config.fragility_folds,
                             random_state=config.seed).fit(X, y)
    return FragilityReport(
        condition=name, n_features=len(y), survived_pct=100 * float(y.mean()),
        cv_auc=fit.cv_auc_, cv_auc_std=fit.cv_auc_std_, oof_auc=fit.oof_auc_,
        fold_aucs=tuple(float(a) for a in fit.fold_aucs_),
        coefficients=fit.coefficients().reset_index(drop=True),
        marginal_aucs={k: float(v) for k, v in marginal_aucs(X, y).items()},
        quartiles=survival_by_quartile(X, y), roc_curves=tuple(fit.roc_curves_))


def _stability(config: SurvivalConfig, sums: SweepSums, *, key: str, focus: str,
               r: dict[str, np.ndarray], active: np.ndarray,
               second: pd.DataFrame | None) -> StabilityChecks:
    refs, conds = sums.reference_shards(key), sums.pearson_shards(key, focus)
    total, biggest = sum(sums.n_tokens), max(sums.n_tokens)
    budgets = sorted({max(sums.n_tokens[0], int(f * total)) for f in config.budget_fractions})
    kw = {"thresholds": config.thresholds, "flat_other": config.flat_other}
    budget, _ = _attempt("budget check", lambda: budget_sensitivity(refs, conds, budgets, **kw))
    subsets, _ = _attempt("subset check", lambda: subset_stability(
        refs, conds, max(biggest, int(config.subset_fraction * total)),
        seeds=config.subset_seeds, **kw))
    null = null_check(r[NULL_NAME], active, survived=config.survived) if config.null else None
    return StabilityChecks(
        condition=focus, null=null, budget=pd.DataFrame() if budget is None else budget,
        subsets=pd.DataFrame() if subsets is None else subsets,
        thresholds=threshold_grid(r[focus], active), second_layer=second)


@torch.no_grad()
def run_survival(
    config: SurvivalConfig | None = None,
    *,
    model: HookedTransformer | None = None,
    sae: SAE | None = None,
    second_sae: SAE | None = None,
    tokens: Int[Tensor, "n_blocks block_len"] | TokenBlocks | None = None,
    eval_tokens: Int[Tensor, "n_eval block_len_eval"] | TokenBlocks | None = None,
    match_tokens: Int[Tensor, "n_match block_len_match"] | TokenBlocks | None = None,
    calibration_tokens: Int[Tensor, "n_cal block_len_cal"] | TokenBlocks | None = None,
) -> SurvivalResult:
    """Run the feature-survival audit described by ``config`` (see the module docstring).

    Args:
        config: what to run (default: cgc-tiny, its residual SAE, RTN 8..4, pruning matched to
            INT6).
        model: a loaded model to use instead of ``config.model`` (edited in place during the
            run and restored bit for bit, also on an exception).
        sae: a SAELens SAE to use instead of ``config.sae``.
        second_sae: an SAE at a second read-out site instead of ``config.second_sae``.
        tokens: feature tokens instead of drawing ``config.tokens`` from ``config.corpus``.
        eval_tokens: perplexity tokens instead of drawing ``config.eval_tokens``.
        match_tokens: held-out tokens of the matched search instead of ``config.match_tokens``.
        calibration_tokens: GPTQ / AWQ / Wanda calibration tokens instead of drawing them.

    Example:
        >>> result = run_survival(SurvivalConfig(tokens=4096, bits=(8, 4)))  # doctest: +SKIP
        >>> result.to_frame()[["name", "mean_corr", "survived_pct"]]  # doctest: +SKIP
    """
    # Over 60 lines: the docstring names every input; the body is the audit's steps in order
    config = SurvivalConfig() if config is None else config
    t_start = time.perf_counter()
    if model is None:
        check_device(config.device)
        model = load_model(config.model, device=config.device, dtype=config.dtype)
    compared = _checked(config, model)
    targets = _targets(config, model, sae, second_sae)
    bos, protocol = bos_policy(config.prepend_bos, targets[0].sae)
    # the passes run with the bos policy resolved; the result keeps the config as given
    given, config = config, config if config.prepend_bos == bos else config.replace(
        prepend_bos=bos)
    sets = token_sets(config, model, {"features": tokens, "eval": eval_tokens,
                                       "match": match_tokens, "calibration": calibration_tokens})
    feats = sets["features"]
    assert feats is not None
    t0 = time.perf_counter()
    conds, matches = resolve_conditions(config, model, sets["match"], sets.get("calibration"))
    t_match = time.perf_counter() - t0
    conds = _with_compared(conds, compared, matches)
    sums, ranks_info = sweep(config, model, feats, targets, conds,
                             bos=bos_token_id(model) if config.prepend_bos else None)
    t0 = time.perf_counter()
    ppl = perplexities(config, model, conds, sets["eval"])
    t_ppl = time.perf_counter() - t0
    protocol.update(baseline_check(sets["eval"], ppl.get(NULL_NAME, (None, None))[0],
                                   prepend_bos=bos, allow=config.allow))
    config = given
    info: dict[str, Any] = {}  # filled after the analyses, so its total time includes them
    result = _analyses(config, sums, targets, conds, ppl=ppl, matches=matches, info=info)
    info.update(_info(config, model, targets, sets=sets, sums=sums, ppl=ppl, t_start=t_start,
                      t_match=t_match, t_ppl=t_ppl))
    info["distributed"] = ranks_info
    info["protocol"] = protocol
    if sae is not None:
        info["sae"] = "(given)"
    _release_compared(compared, info)
    log.info("survival audit done in %.1f s: %r", info["seconds"]["total"], result)
    return result


def _checked(config: SurvivalConfig, model: HookedTransformer) -> list[Condition]:
    """Refuse before any pass: non-finite reference weights, a group size that does not divide
    a weight it edits, a compared checkpoint that does not fit; the compared conditions."""
    check_finite_weights(model, what=f"the reference model {model.cfg.model_name!r}")
    check_condition_shapes(config, model)
    return compared_conditions(config.compare, model)


def _with_compared(conds: list[Condition], compared: list[Condition],
                   matches: dict[str, Any]) -> list[Condition]:
    """The compared checkpoints after the in-place conditions, before the matched pruning."""
    return [c for c in conds if c.name not in matches] + compared + \
        [c for c in conds if c.name in matches]


def _release_compared(compared: list[Condition], info: dict[str, Any]) -> None:
    """Drop the compared weights still held; record each compared checkpoint's path, format."""
    for c in compared:
        c.plan.slot.clear()  # type: ignore[union-attr]
    if compared:
        info["compared"] = {c.name: {"path": str(c.plan.model.path),  # type: ignore[union-attr]
                                     "format": c.plan.model.format}  # type: ignore[union-attr]
                            for c in compared}


def _targets(config: SurvivalConfig, model: HookedTransformer, sae: SAE | None,
             second_sae: SAE | None) -> list[SAETarget]:
    """The read-out SAE, and the second one when given or configured."""
    targets = [sae_target(model, sae, config.sae_source, config=config, hook=config.hook)]
    if second_sae is not None or config.second_sae is not None:
        spec = parse_sae(config.second_sae) if config.second_sae else ("", None)
        targets.append(sae_target(model, second_sae, spec, config=config, hook=None))
    return targets


def _analyses(config: SurvivalConfig, sums: SweepSums, targets: list[SAETarget],
              conds: list[Condition], *, ppl: dict[str, tuple[float | None, float | None]],
              matches: dict[str, Any], info: dict[str, Any]) -> SurvivalResult:
    """Table 1, overlaps, deciles, fragility and the stability checks from the sweep's sums."""
    key = targets[0].key
    r_intervals: dict[str, np.ndarray] = {}
    rows, r, ref, active = _table(config, sums, key, conds, ppl=ppl,
                                  layer=layer_of(targets[0].hook), intervals=r_intervals)
    second = None
    if len(targets) > 1:
        second = summary_table(_table(config, sums, targets[1].key, conds, ppl=ppl,
                                      layer=layer_of(targets[1].hook))[0])
    focus = config.focus_name
    overlaps = []
    for name, target, _ in config.matched:
        if target in r:
            res, _ = _attempt("overlap", lambda n=name, t=target: overlap(
                r[t], r[n], active, survived=config.survived, names=(t, n)))
            overlaps += [res] if res is not None else []
    compressed_r = {c.name: r[c.name] for c in conds if c.name != NULL_NAME}
    deciles = decile_table(ref.firing_rate, compressed_r, active, survived=config.survived,
                           n_bins=min(10, int(active.sum())))
    fragility, note = _attempt("fragility predictor",
                               lambda: _fragility(config, ref, r[focus], active, focus))
    stability = _stability(config, sums, key=key, focus=focus, r=r, active=active,
                           second=second)
    return SurvivalResult(
        config=config, conditions=tuple(rows), r=r, reference=ref, active=active, read_out=key,
        overlaps=tuple(overlaps), deciles=deciles, fragility=fragility, fragility_note=note,
        stability=stability, matches=matches, info=info, r_intervals=r_intervals)


def _info(config: SurvivalConfig, model: HookedTransformer, targets: list[SAETarget], *,
          sets: dict[str, Tensor | None], sums: SweepSums,
          ppl: dict[str, tuple[float | None, float | None]], t_start: float, t_match: float,
          t_ppl: float) -> dict[str, Any]:
    sliding = {k: v[1] for k, v in ppl.items() if v[1] is not None}
    return {
        "model": getattr(model.cfg, "model_name", config.model), "sae": config.sae,
        "read_out_sites": [t.key for t in targets], "d_sae": int(targets[0].sae.cfg.d_sae),
        "device": str(next(model.parameters()).device),
        "tokens": {k: (0 if v is None else int(v.numel())) for k, v in sets.items()},
        "block_len": int(sets["features"].shape[1]),  # type: ignore[union-attr]
        "shard_tokens": list(sums.n_tokens), "n_chunks": sums.n_chunks,
        "cache_peak_mb": round(sums.cache_peak_bytes / 2**20, 3),
        "sliding_ppl": sliding or None,
        "seconds": {"total": round(time.perf_counter() - t_start, 2),
                    "sweep": round(sums.seconds, 2), "matching": round(t_match, 2),
                    "perplexity": round(t_ppl, 2)},
    }
