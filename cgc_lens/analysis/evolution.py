"""CGC-F: EvoPress-style search for per-head retention on a grid of levels (Gupta 2026, §4.3
stage 2), under the density ceilings of :mod:`cgc_lens.analysis.allocation`.

:func:`cgc_f` refines one start allocation: EvoPress's (1 + λ) evolutionary search (Sieberling
et al. 2024) with multi-stage selection on a uniform grid of retention levels, and budget-neutral
level switches that never pass a ceiling. :func:`cgc_f_from_starts` runs it from the best of
several starts and keeps elitism across them: a start that stays better than the search's answer
is returned instead (readings in docs/methods_capability.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float

from cgc_lens.analysis.allocation import Allocation
from cgc_lens.errors import CgcLensError
from cgc_lens.progress import progress_bar
from cgc_lens.sites import Head

__all__ = [
    "EvoConfig",
    "Fitness",
    "SearchResult",
    "StartsResult",
    "cgc_f",
    "cgc_f_from_starts",
    "snap_to_levels",
]

logger = logging.getLogger(__name__)

Fitness = Callable[[dict[Head, float], int], float]
"""``fitness(retention_map, n_tokens) -> float``; lower is better (e.g. KL(dense ‖ compressed)).
A fitness object with a ``many(retention_maps, n_tokens) -> list[float]`` method is given each
selection stage's candidates (and the starts) at once, in order: it may score them in parallel
(the capability study splits them over the ranks of a process group); the values must be those
of one call each."""


@dataclass(frozen=True, kw_only=True)
class EvoConfig:
    """Settings of the CGC-F search (EvoPress, Sieberling et al. 2024, with ceilings)."""

    generations: int = 50
    """Number of generations."""
    offspring: int = 16
    """λ, offspring per generation (distinct from each other and from the parent)."""
    survivors_per_stage: tuple[int, ...] = (4, 1)
    """Candidates kept after each selection stage; the last must be 1."""
    tokens_per_stage: tuple[int, ...] = (2048, 8192)
    """Calibration tokens the fitness uses at each stage; non-decreasing."""
    level_step: float = 0.05
    """Spacing of the retention grid 0, step, …, 1; ``1 / level_step`` must be an integer."""
    max_switches: int = 3
    """An offspring makes min(U{1..m}, U{1..m}) level switches (biased to 1, as EvoPress)."""
    elitism: bool = True
    """The parent joins the last stage, so the best fitness never gets worse."""
    seed: int = 0
    """Seed of the mutations."""
    progress: bool = True
    """Show a tqdm bar over generations."""

    def __post_init__(self) -> None:
        surv, toks = self.survivors_per_stage, self.tokens_per_stage
        if self.generations < 0 or self.offspring < 1 or self.max_switches < 1:
            raise CgcLensError(
                "Need generations >= 0, offspring >= 1 and max_switches >= 1; got "
                f"{self.generations}, {self.offspring}, {self.max_switches}."
            )
        if not surv or len(surv) != len(toks) or surv[-1] != 1:
            raise CgcLensError(
                "survivors_per_stage and tokens_per_stage need one entry per stage and the last "
                f"stage keeps 1 survivor; got {surv} and {toks}."
            )
        if min(surv) < 1 or list(surv) != sorted(surv, reverse=True):
            raise CgcLensError(f"survivors_per_stage must be >= 1 and non-increasing, got {surv}.")
        if min(toks) < 1 or list(toks) != sorted(toks):
            raise CgcLensError(f"tokens_per_stage must be >= 1 and non-decreasing, got {toks}.")
        n = 1.0 / self.level_step if self.level_step > 0 else 0.0
        if not 0 < self.level_step <= 1 or abs(n - round(n)) > 1e-9:
            raise CgcLensError(
                f"level_step must divide 1 evenly (0.05, 0.1, 0.25 …), got {self.level_step!r}."
            )

    @property
    def n_levels(self) -> int:
        """Grid steps between retention 0 and 1."""
        return round(1.0 / self.level_step)


@dataclass(frozen=True, kw_only=True, eq=False)
class SearchResult:
    """What :func:`cgc_f` found, and how the fitness went."""

    allocation: Allocation
    """The best allocation (method ``cgc_f``)."""
    start: Allocation
    """The start allocation snapped to the grid (generation 0)."""
    history: Float[np.ndarray, " n_points"]
    """Fitness of the parent at the last stage's token count: start, then each generation."""
    n_evaluations: int
    """Calls made to the fitness."""
    config: EvoConfig = field(default_factory=EvoConfig)
    """The settings used."""

    def to_frame(self) -> pd.DataFrame:
        """One row per generation (0 = start): best fitness."""
        return pd.DataFrame({"generation": np.arange(len(self.history)), "fitness": self.history})


def _grid_bounds(
    alloc: Allocation, n_levels: int, floor: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-head level bounds and the level budget K = ρ N n_levels (checked to be an integer)."""
    s = alloc.sizes
    if not np.all(s == s.flat[0]):
        raise CgcLensError(
            "CGC-F's one-up-one-down level switch keeps the budget only when every head has the "
            f"same size; got sizes in [{s.min()}, {s.max()}]."
        )
    ceil = alloc.ceilings if alloc.ceilings is not None else np.ones(s.shape)
    kmax = np.floor(ceil.ravel() * n_levels + 1e-9).astype(np.int64)
    kmin = np.minimum(np.ceil(floor * n_levels - 1e-9), kmax).astype(np.int64)
    k_budget = alloc.rho * s.size * n_levels
    if abs(k_budget - round(k_budget)) > 1e-6:
        unit = 1.0 / (s.size * n_levels)
        lo, hi = np.floor(k_budget) * unit, np.ceil(k_budget) * unit
        raise CgcLensError(
            f"rho={alloc.rho} is not reachable on a grid of step 1/{n_levels} over {s.size} heads; "
            f"the nearest budgets on the grid are {lo:.6g} and {hi:.6g}."
        )
    k_budget = round(k_budget)
    if not kmin.sum() <= k_budget <= kmax.sum():
        raise CgcLensError(
            f"Infeasible on the grid: the ceilings and floor allow a global retention in "
            f"[{kmin.sum() / kmin.size / n_levels:.6g}, {kmax.sum() / kmax.size / n_levels:.6g}]"
            f", but rho={alloc.rho} was asked."
        )
    return kmin, kmax, k_budget


def _snap(x: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, k_budget: int) -> np.ndarray:
    """Largest-remainder rounding of ``x`` (in level units) to integers with Σ = k_budget."""
    k = np.clip(np.floor(x + 1e-9), kmin, kmax).astype(np.int64)
    frac = x - k
    while (gap := k_budget - int(k.sum())) != 0:
        up = gap > 0
        elig = np.flatnonzero(k < kmax if up else k > kmin)
        if elig.size == 0:  # unreachable after _grid_bounds' check; kept as a guard
            raise CgcLensError("Cannot snap the allocation to the grid within the ceilings.")
        pick = elig[np.argsort(-frac[elig] if up else frac[elig], kind="stable")][: abs(gap)]
        k[pick] += 1 if up else -1
        frac[pick] -= 1 if up else -1
    return k


def snap_to_levels(
    allocation: Allocation, *, level_step: float = 0.05, floor: float = 0.0
) -> Allocation:
    """Round an allocation onto the grid 0, step, …, 1 keeping its budget exactly (equal sizes).

    Example:
        >>> from cgc_lens.analysis.allocation import cgc_l
        >>> a = snap_to_levels(cgc_l(np.array([[0.3, 0.5, 0.7, 0.9]]), rho=0.5), level_step=0.1)
        >>> a.retention.tolist(), round(a.global_retention, 12)
        ([[0.3, 0.4, 0.6, 0.7]], 0.5)
    """
    n_levels = EvoConfig(level_step=level_step, progress=False).n_levels
    kmin, kmax, k_budget = _grid_bounds(allocation, n_levels, floor)
    k = _snap(allocation.retention.ravel() * n_levels, kmin, kmax, k_budget)
    return _from_levels(k, allocation, n_levels, allocation.method)


def _from_levels(k: np.ndarray, like: Allocation, n_levels: int, method: str) -> Allocation:
    return Allocation(
        retention=(k / n_levels).reshape(like.sizes.shape),
        sizes=like.sizes,
        rho=like.rho,
        method=method,
        ceilings=like.ceilings,
    )


def _mutate(
    parent: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, rng: np.random.Generator, m: int
) -> np.ndarray:
    """EvoPress's level switch: one head up a level and another down, n times; never past a
    ceiling (ineligible heads are never drawn, which equals rejecting such mutations)."""
    child = parent.copy()
    for _ in range(min(int(rng.integers(1, m + 1)), int(rng.integers(1, m + 1)))):
        up = np.flatnonzero(child < kmax)
        if up.size == 0:
            break
        i = int(rng.choice(up))
        down = np.flatnonzero(child > kmin)
        down = down[down != i]
        if down.size == 0:
            break
        child[i] += 1
        child[int(rng.choice(down))] -= 1
    return child


class _Evaluator:
    """The fitness of level vectors (as ``cgc_f`` allocations like ``like``), counting calls; a
    non-finite value raises."""

    def __init__(self, fitness: Fitness, like: Allocation, n_levels: int) -> None:
        self.fitness, self.like, self.n_levels, self.calls = fitness, like, n_levels, 0

    def __call__(self, k: np.ndarray, n_tokens: int) -> float:
        return self.many([k], n_tokens)[0]

    def many(self, ks: list[np.ndarray], n_tokens: int) -> list[float]:
        """The fitness of each level vector, through the fitness's ``many`` when it has one."""
        self.calls += len(ks)
        maps = [_from_levels(k, self.like, self.n_levels, "cgc_f").by_head() for k in ks]
        return _scores(self.fitness, maps, n_tokens)


def _scores(fitness: Fitness, maps: list[dict[Head, float]], n_tokens: int) -> list[float]:
    """``fitness`` of each retention map (its ``many`` when it has one); a non-finite value
    raises."""
    many = getattr(fitness, "many", None)
    if many is not None and len(maps) > 1:
        values = [float(v) for v in many(maps, n_tokens)]
    else:
        values = [float(fitness(m, n_tokens)) for m in maps]
    for value in values:
        if not np.isfinite(value):
            raise CgcLensError(
                f"fitness returned {value} for {n_tokens} tokens; need a finite float."
            )
    return values


def _offspring(
    parent: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, rng: np.random.Generator,
    cfg: EvoConfig,
) -> list[np.ndarray]:
    """Up to ``cfg.offspring`` children, distinct from each other and from the parent."""
    seen, kids = {parent.tobytes()}, []
    for _attempt in range(50 * cfg.offspring):
        if len(kids) == cfg.offspring:
            break
        child = _mutate(parent, kmin, kmax, rng, cfg.max_switches)
        if child.tobytes() not in seen:
            seen.add(child.tobytes())
            kids.append(child)
    return kids


def _select(
    kids: list[np.ndarray],
    parent: np.ndarray,
    evaluate: _Evaluator,
    cfg: EvoConfig,
) -> tuple[list[np.ndarray], list[float]]:
    """Multi-stage selection: the best ``survivors_per_stage[i]`` on ``tokens_per_stage[i]``
    tokens, stage by stage; the parent joins the last stage when ``cfg.elitism``."""
    cands, fits = kids, []
    for stage, (n_keep, n_tokens) in enumerate(
        zip(cfg.survivors_per_stage, cfg.tokens_per_stage, strict=True)
    ):
        if stage == len(cfg.survivors_per_stage) - 1 and cfg.elitism:
            cands = [*cands, parent]
        fits = evaluate.many(cands, n_tokens)
        order = np.argsort(fits, kind="stable")[:n_keep]
        cands, fits = [cands[i] for i in order], [fits[i] for i in order]
    return cands, fits


def cgc_f(
    start: Allocation,
    fitness: Fitness,
    config: EvoConfig | None = None,
    *,
    floor: float = 0.0,
) -> SearchResult:
    """CGC-F: evolutionary refinement of ``start`` under its ceilings, budget kept exactly.

    ``start`` (usually :func:`~cgc_lens.analysis.allocation.cgc_l`) is snapped to the level
    grid; each generation makes ``offspring`` distinct children by level switches, keeps the best
    ``survivors_per_stage[i]`` on ``tokens_per_stage[i]`` tokens stage by stage (the parent
    joining the last stage when ``elitism``), and the single survivor becomes the parent. Masks
    live in memory only.

    Args:
        start: allocation to refine; all heads must have the same size.
        fitness: ``fitness({Head: retention}, n_tokens) -> float``, lower is better.
        config: search settings.
        floor: lowest retention any head may get.

    Example:
        >>> from cgc_lens.analysis.allocation import uniform
        >>> target = np.array([[0.2, 0.8, 0.4, 0.6]])
        >>> def fit(ret, n_tokens):
        ...     return sum((ret[Head(0, h)] - target[0, h]) ** 2 for h in range(4))
        >>> cfg = EvoConfig(generations=30, offspring=4, level_step=0.1, progress=False)
        >>> res = cgc_f(uniform((1, 4), 0.5), fit, cfg)
        >>> res.allocation.retention.tolist(), float(res.history[-1])
        ([[0.2, 0.8, 0.4, 0.6]], 0.0)
    """
    cfg = config or EvoConfig()
    n_levels = cfg.n_levels
    kmin, kmax, k_budget = _grid_bounds(start, n_levels, floor)
    parent = _snap(start.retention.ravel() * n_levels, kmin, kmax, k_budget)
    start_alloc = _from_levels(parent, start, n_levels, start.method)
    evaluate = _Evaluator(fitness, start, n_levels)
    rng = np.random.default_rng(cfg.seed)
    parent_fit = evaluate(parent, cfg.tokens_per_stage[-1])
    history = [parent_fit]
    bar = progress_bar(range(cfg.generations), desc="CGC-F", enabled=cfg.progress)
    for _ in bar:
        cands, fits = _select(_offspring(parent, kmin, kmax, rng, cfg), parent, evaluate, cfg)
        if cands:
            parent, parent_fit = cands[0], fits[0]
        history.append(parent_fit)
        bar.set_postfix(fitness=f"{parent_fit:.4g}")
    n_eval = evaluate.calls
    logger.info("CGC-F: fitness %.6g -> %.6g in %d evaluations.", history[0], history[-1], n_eval)
    return SearchResult(
        allocation=_from_levels(parent, start, n_levels, "cgc_f"),
        start=start_alloc,
        history=np.asarray(history, dtype=np.float64),
        n_evaluations=n_eval,
        config=cfg,
    )


@dataclass(frozen=True, kw_only=True, eq=False)
class StartsResult:
    """What :func:`cgc_f_from_starts` chose: the search, and the answer after elitism."""

    search: SearchResult
    """The search, run from the best start."""
    allocation: Allocation
    """CGC-F's answer (method ``cgc_f``): the search's, or a start that stayed better."""
    fitness: float
    """Fitness of ``allocation`` on the last stage's tokens."""
    origin: str
    """``search``, or the name of the start that stayed better than the search's answer."""
    start: str
    """Name of the start the search ran from (the lowest start fitness; the first on ties)."""
    start_fitness: dict[str, float]
    """Fitness of every start on the last stage's tokens, by name."""


def cgc_f_from_starts(
    starts: Mapping[str, Allocation],
    fitness: Fitness,
    config: EvoConfig | None = None,
    *,
    floor: float = 0.0,
) -> StartsResult:
    """CGC-F from the best of several starts, with elitism across the starts.

    Every start is scored on the last stage's tokens; :func:`cgc_f` runs from the best. Snapping
    to the grid can make the search's start worse than the unsnapped one, so the answer is
    whichever of {search result, starts} has the lowest fitness (a start keeps its retention,
    renamed ``cgc_f``).

    Example:
        >>> from cgc_lens.analysis.allocation import uniform
        >>> def fit(ret, n_tokens):
        ...     return abs(ret[Head(0, 0)] - 0.7)
        >>> cfg = EvoConfig(generations=5, offspring=2, level_step=0.1, progress=False)
        >>> best = cgc_f_from_starts({"uniform": uniform((1, 2), 0.5)}, fit, cfg)
        >>> best.origin, best.start, best.start_fitness["uniform"] > best.fitness
        ('search', 'uniform', True)
    """
    cfg = config or EvoConfig()
    if not starts:
        raise CgcLensError("cgc_f_from_starts needs at least one start allocation, got none.")
    n_tokens = cfg.tokens_per_stage[-1]
    maps = [a.by_head() for a in starts.values()]
    start_fit = dict(zip(starts, _scores(fitness, maps, n_tokens), strict=True))
    start = min(start_fit, key=start_fit.__getitem__)
    search = cgc_f(starts[start], fitness, cfg, floor=floor)
    best, best_fit, origin = search.allocation, float(search.history[-1]), "search"
    for m, value in start_fit.items():
        if value < best_fit:
            a = starts[m]
            best = Allocation(retention=a.retention, sizes=a.sizes, rho=a.rho, method="cgc_f",
                              ceilings=a.ceilings)
            best_fit, origin = value, m
    return StartsResult(search=search, allocation=best, fitness=best_fit, origin=origin,
                        start=start, start_fitness=start_fit)
