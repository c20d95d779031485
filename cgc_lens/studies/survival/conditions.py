"""The compared conditions of the survival audit, its token sets, and their perplexities.

- :func:`token_sets`: feature, perplexity and matched-search tokens; sets drawn from one split
  come from one seeded draw of blocks, shuffled and cut, so they never share a block.
- :func:`resolve_conditions`: the null, RTN per bit-width, the conditions given by spec
  (GPTQ, AWQ and Wanda calibrated on the calibration tokens), plans, and magnitude pruning
  whose perplexity on the held-out match tokens equals a named condition's (§3.6, App. F),
  each with its format and effective bits per weight; :func:`check_condition_shapes` refuses
  a group size that does not divide a weight before anything runs.
- :func:`condition_perplexities`: chunked (and sliding-window) perplexity of each condition on
  the evaluation tokens (§3.5, App. D), every weight edit restored bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cgc_lens.compress import RTN, MagnitudePrune, MatchResult, Plan, compressed, match_level
from cgc_lens.compress.operators.bits import DENSE_BITS
from cgc_lens.compress.specs import check_plan_shapes, parse_condition, plan_bits_per_weight
from cgc_lens.data import TokenBlocks, draw_blocks, load_corpus, token_stream
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import perplexity, perplexity_result
from cgc_lens.progress import progress_bar
from cgc_lens.saes import load_sae, validate_sae
from cgc_lens.saes.attach import SAETarget
from cgc_lens.studies.survival.config import NULL_NAME, PlanCondition, SurvivalConfig

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = [
    "Condition", "calibrated", "check_condition_shapes", "condition_perplexities", "edited",
    "resolve_conditions", "sae_target", "spec_condition", "token_sets",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Condition:
    """One compared condition: its name, its plan, its Table 1 bits / sparsity, and what its
    results row records of its format (see :class:`~cgc_lens.compress.specs.ConditionSpec`)."""

    name: str
    plan: Plan | Any | None  # None: the null (model untouched); Any: a checkpoint's WeightSwap
    bits: float | None
    sparsity: float | None
    spec: str | None = None
    format: str | None = None
    group_size: int | None = None
    bits_per_weight: float | None = None


def edited(model: HookedTransformer, plan: Plan | Any | None,
           ) -> contextlib.AbstractContextManager:
    """``compressed(model, plan)``, or nothing for the null condition (``plan=None``); a
    compared checkpoint's weight swap (an edit with ``swapped``) swaps its weights in."""
    if plan is None:
        return contextlib.nullcontext()
    swap = getattr(plan, "swapped", None)
    return swap(model) if swap is not None else compressed(model, plan)


def sae_target(model: HookedTransformer, sae: SAE | None, spec: tuple[str, str | None], *,
               config: SurvivalConfig, hook: str | None) -> SAETarget:
    """The SAE (given, or loaded by ``spec``) validated at its read-out hook on ``model``."""
    device = next(model.parameters()).device
    if sae is None:
        sae = load_sae(spec[0], spec[1], device=str(device), dtype=config.sae_dtype)
    elif next(sae.parameters()).device != device:
        raise CgcLensError(f"The SAE is on {next(sae.parameters()).device} but the model on "
                           f"{device}; move one of them (sae.to(device)).")
    try:
        return validate_sae(model, sae, hook=hook)
    except CgcLensError as err:
        if spec[0] == "cgc-tiny" and config.model != "cgc-tiny":
            raise CgcLensError(f"{err} The default SAE is cgc-tiny's; pass --sae for "
                               f"{config.model}.") from err
        raise


def _as_tokens(tokens: Tensor | TokenBlocks, d_vocab: int, what: str) -> Tensor:
    rows = tokens.tokens if isinstance(tokens, TokenBlocks) else torch.as_tensor(tokens)
    if rows.ndim != 2 or rows.numel() == 0:
        raise CgcLensError(f"Expected {what} tokens [n_blocks, block_len] with at least one "
                           f"block, got shape {tuple(rows.shape)}.")
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise CgcLensError(f"Expected integer {what} token ids, got dtype {rows.dtype}; token ids "
                           "are never fractional: pass a torch.long tensor (tokenizer output).")
    if int(rows.min()) < 0 or int(rows.max()) >= d_vocab:
        raise CgcLensError(f"Expected {what} token ids in [0, d_vocab={d_vocab}), got "
                           f"[{int(rows.min())}, {int(rows.max())}].")
    return rows.long()


def token_sets(config: SurvivalConfig, model: HookedTransformer,
               given: dict[str, Tensor | TokenBlocks | None]) -> dict[str, Tensor | None]:
    """Feature, perplexity and match tokens; sets drawn from one split are disjoint blocks."""
    n_ctx = model.cfg.n_ctx - int(bool(config.prepend_bos))  # None: resolved by run_survival
    block_len = config.block_len or min(n_ctx, 512)
    if block_len > n_ctx:
        raise CgcLensError(f"block_len={block_len} does not fit the model's n_ctx "
                           f"{model.cfg.n_ctx}{' with a bos token' if config.prepend_bos else ''}.")
    if config.ppl_window is not None and config.ppl_window > n_ctx:
        raise CgcLensError(f"ppl_window={config.ppl_window} does not fit the model's n_ctx "
                           f"{model.cfg.n_ctx}{' with a bos token' if config.prepend_bos else ''}; "
                           f"set ppl_window <= {n_ctx}.")
    sizes = {"features": (config.split, config.tokens),
             "eval": (config.eval_split, config.eval_tokens),
             "match": (config.match_split, config.match_tokens if config.matched else 0)}
    if config.needs_calibration:  # only then: the other sets are drawn as before
        sizes["calibration"] = (config.calibration_split, config.calibration_tokens)
    out: dict[str, Tensor | None] = {}
    by_split: dict[str, list[tuple[str, int]]] = {}
    for name, (split, n_tokens) in sizes.items():
        if given.get(name) is not None:
            out[name] = _as_tokens(given[name], model.cfg.d_vocab, name)  # type: ignore[arg-type]
        elif n_tokens == 0:
            out[name] = None
        elif n_tokens < block_len:
            raise CgcLensError(f"{name} token budget {n_tokens} is below one block of "
                               f"{block_len} tokens.")
        else:
            by_split.setdefault(split, []).append((name, n_tokens // block_len))
    for split, wanted in by_split.items():
        corpus = load_corpus(config.corpus, split=split, max_documents=config.max_documents)
        total = sum(n for _, n in wanted)
        blocks = draw_blocks(corpus, model, block_len=block_len, n_blocks=total,
                             seed=config.seed, max_documents=config.max_documents,
                             asked=" + ".join(f"{name} ({n})" for name, n in wanted)).tokens
        order = torch.randperm(total, generator=torch.Generator().manual_seed(config.seed))
        start = 0
        for name, n in wanted:  # blocks come in stream order; a seeded shuffle mixes categories
            out[name] = blocks[order[start:start + n].sort().values]
            start += n
    return out


def _plan_levels(plan: Plan) -> tuple[float | None, float | None]:
    bits = [s.operator.bits for s in plan if isinstance(s.operator, RTN)]
    sparsity = [getattr(s.operator, "sparsity", None) for s in plan]
    sparsity = [s for s in sparsity if s is not None]
    return (min(bits) if bits else None), (max(sparsity) if sparsity else None)


def check_condition_shapes(config: SurvivalConfig, model: HookedTransformer) -> None:
    """Refuse, before any pass, a condition whose group size (or n:m group) does not divide
    the input dimension of a weight it edits on ``model`` (the error names both)."""
    specs = [*config.condition_specs, *[(t, t) for _, _, t in config.matched if t]]
    for name, spec in specs:
        check_plan_shapes(Plan.of(parse_condition(spec)[0]), model, name=name)
    for p in config.plans:
        check_plan_shapes(p.plan, model, name=p.name)


def calibrated(plan: Plan, model: HookedTransformer, tokens: Tensor | None, *,
               batch_size: int) -> Plan:
    """``plan`` with every operator that needs calibration (GPTQ, AWQ, Wanda scores)
    calibrated on ``tokens`` through the model as it is (the reference)."""
    steps = []
    for step in plan:
        op = step.operator
        wanda = getattr(op, "input_norms", False) is None and getattr(op, "score", "wanda") == \
            "wanda"
        needs = wanda or bool(getattr(op, "needs_calibration", False))
        if needs:
            if tokens is None:
                raise CgcLensError(f"{type(op).__name__} needs calibration tokens: set "
                                   "calibration_tokens > 0.")
            op = op.calibrate(model, tokens, step.targets,  # type: ignore[attr-defined]
                              batch_size=batch_size)
        steps.append(dataclasses.replace(step, operator=op))
    return Plan(tuple(steps))


def spec_condition(name: str, spec: str, model: HookedTransformer, tokens: Tensor | None, *,
                   batch_size: int) -> Condition:
    """The condition a spec names, calibrated when it needs it, with its row's format."""
    op, meta = parse_condition(spec)
    plan = calibrated(Plan.of(op), model, tokens, batch_size=batch_size)
    return Condition(name, plan, None if meta.bits is None else float(meta.bits), meta.sparsity,
                     spec=spec, format=meta.format, group_size=meta.group_size,
                     bits_per_weight=plan_bits_per_weight(plan, model))


def _plan_condition(p: PlanCondition, model: HookedTransformer) -> Condition:
    ops = {s.operator.name for s in p.plan}
    sizes = {getattr(s.operator, "group_size", None) for s in p.plan} - {None}
    return Condition(p.name, p.plan, *_plan_levels(p.plan),
                     format=ops.pop() if len(ops) == 1 else "plan",
                     group_size=sizes.pop() if len(sizes) == 1 else None,
                     bits_per_weight=plan_bits_per_weight(p.plan, model))


def resolve_conditions(
    config: SurvivalConfig, model: HookedTransformer, match_tokens: Tensor | None,
    calibration_tokens: Tensor | None = None,
) -> tuple[list[Condition], dict[str, MatchResult]]:
    """Every condition with its plan; magnitude sparsity found by the matched search."""
    ref_bits = float(torch.finfo(next(model.parameters()).dtype).bits)
    conds = [Condition(NULL_NAME, None, ref_bits, None, format="dense",
                       bits_per_weight=float(DENSE_BITS))] if config.null else []
    matched = {name for name, _, _ in config.matched}
    for name, spec in config.condition_specs:
        if name not in matched:
            conds.append(spec_condition(name, spec, model, calibration_tokens,
                                        batch_size=config.batch_size))
    conds += [_plan_condition(p, model) for p in config.plans]
    matches: dict[str, MatchResult] = {}
    for name, target_name, target_spec in config.matched:
        assert match_tokens is not None  # token_sets draws them whenever matching is asked
        plans = {c.name: c.plan for c in conds}
        target_plan = plans.get(target_name) or spec_condition(
            target_name, target_spec, model, calibration_tokens,  # type: ignore[arg-type]
            batch_size=config.batch_size).plan
        match = _match(config, model, match_tokens, name, target_plan)
        plan = Plan.of(MagnitudePrune(match.level))
        conds.append(Condition(name, plan, None, match.level, spec=_matched_spec(name, config),
                               format="magnitude", bits_per_weight=plan_bits_per_weight(
                                   plan, model)))
        matches[name] = match
    return conds, matches


def _matched_spec(name: str, config: SurvivalConfig) -> str | None:
    """The spec of a matched condition: its own, or ``matched:int<b>`` for match_pruning."""
    if name in config.conditions:
        return name
    target = config.matched[-1][2]
    return None if target is None else f"matched:{target}"


def _match(config: SurvivalConfig, model: HookedTransformer, match_tokens: Tensor, name: str,
           target_plan: Plan | Any) -> MatchResult:
    """Magnitude sparsity whose perplexity on ``match_tokens`` equals ``target_plan``'s."""

    def evaluate(m: HookedTransformer) -> float:
        return perplexity(m, match_tokens, batch_size=config.batch_size,
                          prepend_bos=config.prepend_bos, progress=False)

    t0 = time.perf_counter()
    with edited(model, target_plan):
        target = evaluate(model)
    reference = evaluate(model)
    # The tolerance is a fraction of the gap being matched: a compression may move
    # perplexity by well under 1% (RTN INT6 on cgc-tiny), where a relative tolerance on
    # the perplexity itself would accept sparsity 0.
    atol = config.match_tolerance * abs(target - reference)
    match = match_level(model, MagnitudePrune(0.0), evaluate, target,
                        method=config.match_method, rtol=0.0, atol=atol,
                        value_at_lo=reference, progress=config.progress, desc=f"match {name}")
    log.info("%s: sparsity %.4f gives ppl %.4f on %d held-out tokens (target %.4f, "
             "reference %.4f; %d evaluations, %.1f s)", name, match.level, match.value,
             match_tokens.numel(), target, reference, match.n_evaluations,
             time.perf_counter() - t0)
    if match.is_poor():  # off by more than 0.1% of the target: a step the search cannot split
        log.warning("%s: the search did not come within %.4g of the target perplexity "
                    "(closest: %+.3f%%).", name, atol, 100 * match.relative_error)
    return match


def condition_perplexities(
    config: SurvivalConfig, model: HookedTransformer, conds: list[Condition],
    eval_tokens: Tensor | None,
) -> dict[str, tuple[float | None, float | None]]:
    """Chunked (and sliding-window) perplexity per condition; the reference under ``None``."""
    stream = None
    if config.ppl_window is not None and eval_tokens is not None:
        corpus = load_corpus(config.corpus, split=config.eval_split,
                             max_documents=config.max_documents)
        stream = token_stream(corpus, model)[: max(config.eval_tokens, config.ppl_window)]
        if config.eval_split == config.split:
            log.warning("The sliding-window stream comes from the feature tokens' split %r; "
                        "set eval_split to keep them apart.", config.split)
    out: dict[str, tuple[float | None, float | None]] = {}
    todo = [(n, p) for n, p in [(None, None), *[(c.name, c.plan) for c in conds]]
            if eval_tokens is not None and not (n is None and config.null)]
    bar = progress_bar(total=len(todo), desc="perplexity", enabled=config.progress)
    for name, plan in todo:
        bar.set_description(f"perplexity: {name or 'reference'}")
        with edited(model, plan):
            chunked = perplexity_result(model, eval_tokens, batch_size=config.batch_size,
                                        prepend_bos=config.prepend_bos, progress=False).perplexity
            sliding = None if stream is None else perplexity(
                model, stream, window=config.ppl_window,
                stride=config.ppl_stride or max(1, config.ppl_window // 4),  # type: ignore[operator]
                batch_size=config.batch_size, progress=False)
        out[NULL_NAME if name is None else name] = (chunked, sliding)
        bar.update()
    bar.close()
    return out
