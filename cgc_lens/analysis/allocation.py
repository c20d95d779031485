"""Per-head retention budgets: Uniform, CGC-L, Inverted and CGC-F (Gupta 2026, §4).

A budget is a retention ratio ξ_c per head c (the fraction of its W_O slice kept by magnitude
pruning), spent so that Σ_c ξ_c |θ_c| = ρ |θ|. Readings (docs/methods_capability.md):

- **Ceiling** (Def 5) is an upper bound on a head's *retention*: ξ_c ≤ ρ_min + (ρ_max − ρ_min)
  δ_c^(1/γ). Low-density heads may keep little; high-density heads may keep up to ρ_max.
- **CGC-L** is retention ∝ density, ξ_c = λ δ_c, with λ set so the budget is spent exactly
  (the §4.3 closed form with its normalisation corrected; see the docs). When ceilings clip, the
  budget they cut is water-filled back: λ rises until Σ_c clip(λ δ_c, floor, ceiling_c)|θ_c| = ρ|θ|,
  so unclipped heads stay proportional to density. Budgets the ceilings cannot hold raise.
- **Inverted** runs CGC-L on the mirrored map δ' = max δ + min δ − δ (ranks reversed, same range).
- **CGC-F** (:func:`cgc_f`) is EvoPress's (1 + λ) evolutionary search with multi-stage selection,
  on a uniform grid of retention levels, with budget-neutral level switches under the ceilings.

This module holds both the closed forms and the search (about 500 lines) because they share the
:class:`Allocation` contract and the ceiling/grid checks; splitting would scatter one concept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from jaxtyping import Float, Real
from tqdm.auto import tqdm

from cgc_lens.analysis.density import DensityResult
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head

__all__ = [
    "Allocation",
    "EvoConfig",
    "SearchResult",
    "cgc_f",
    "cgc_l",
    "density_ceilings",
    "inverted",
    "snap_to_levels",
    "uniform",
]

logger = logging.getLogger(__name__)

_TOL = 1e-9


def _frozen(x: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float64, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class Allocation:
    """A retention ratio per head, with the sizes and budget it was spent against."""

    retention: Real[np.ndarray, "n_layers n_heads"]
    """ξ_c ∈ [0, 1], the fraction of each head's W_O slice kept."""
    sizes: Real[np.ndarray, "n_layers n_heads"]
    """|θ_c|, parameters per head (d_head · d_model for W_O slices)."""
    rho: float
    """Target global retention ρ."""
    method: str
    """``uniform``, ``cgc_l``, ``inverted``, ``cgc_f`` …"""
    ceilings: Real[np.ndarray, "n_layers n_heads"] | None = None
    """Density-induced retention ceilings (Def 5) the allocation respects, if any."""

    def __post_init__(self) -> None:
        for name in ("retention", "sizes", "ceilings"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _frozen(value))
        r, s = self.retention, self.sizes
        if r.ndim != 2 or s.shape != r.shape:
            raise CgcLensError(
                f"retention and sizes must both be [n_layers, n_heads]; got {r.shape}, {s.shape}."
            )
        if not np.isfinite(r).all() or r.min() < -_TOL or r.max() > 1 + _TOL:
            raise CgcLensError(f"retention must lie in [0, 1], got [{r.min()}, {r.max()}].")
        if not (s > 0).all():
            raise CgcLensError("sizes must be > 0 for every head.")
        if not 0 < self.rho <= 1:
            raise CgcLensError(f"rho must lie in (0, 1], got {self.rho!r}.")
        if self.ceilings is not None:
            if self.ceilings.shape != r.shape:
                raise CgcLensError(
                    f"ceilings must match retention's shape {r.shape}, got {self.ceilings.shape}."
                )
            if (r > self.ceilings + _TOL).any():
                raise CgcLensError("retention exceeds a ceiling; the allocation is infeasible.")

    @property
    def global_retention(self) -> float:
        """Σ ξ_c |θ_c| / Σ |θ_c|, the budget actually spent."""
        return float((self.retention * self.sizes).sum() / self.sizes.sum())

    def by_head(self) -> dict[Head, float]:
        """``{Head(l, h): ξ}``, the form the HeadPrune operator takes."""
        return {Head(int(ell), int(h)): float(x) for (ell, h), x in np.ndenumerate(self.retention)}

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, retention, size, ceiling, method."""
        n_layers, n_heads = self.retention.shape
        layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
        ceil = self.ceilings.ravel() if self.ceilings is not None else np.nan
        return pd.DataFrame(
            {
                "layer": layer,
                "head": head,
                "retention": self.retention.ravel(),
                "size": self.sizes.ravel(),
                "ceiling": ceil,
                "method": self.method,
            }
        )


def _density_array(density: Real[np.ndarray, "n_layers n_heads"] | DensityResult) -> np.ndarray:
    d = np.asarray(density.density if isinstance(density, DensityResult) else density, np.float64)
    if d.ndim != 2:
        raise CgcLensError(f"density must be [n_layers, n_heads], got shape {d.shape}.")
    if not np.isfinite(d).all() or d.min() < 0 or d.max() > 1:
        raise CgcLensError(f"density must lie in [0, 1] (Def 5), got [{d.min()}, {d.max()}].")
    return d


def _sizes(
    sizes: Real[np.ndarray, "n_layers n_heads"] | None, shape: tuple[int, ...]
) -> np.ndarray:
    if sizes is None:
        return np.ones(shape)
    s = np.asarray(sizes, np.float64)
    if s.shape != shape:
        raise CgcLensError(f"sizes must have the density's shape {shape}, got {s.shape}.")
    return s


def density_ceilings(
    density: Real[np.ndarray, "n_layers n_heads"] | DensityResult,
    *,
    rho_min: float = 0.0,
    rho_max: float = 1.0,
    gamma: float = 2.0,
) -> Float[np.ndarray, "n_layers n_heads"]:
    """Def 5: ρ_max(c) = ρ_min + (ρ_max − ρ_min) · δ_c^(1/γ), an upper bound on retention.

    Example:
        >>> c = density_ceilings(np.array([[0.0, 0.25, 1.0]]), rho_min=0.2, rho_max=1.0)
        >>> c.round(6).tolist()
        [[0.2, 0.6, 1.0]]
    """
    if not 0 <= rho_min <= rho_max <= 1:
        raise CgcLensError(f"Need 0 <= rho_min <= rho_max <= 1, got {rho_min!r}, {rho_max!r}.")
    if not gamma > 0:
        raise CgcLensError(f"gamma must be > 0, got {gamma!r}.")
    return rho_min + (rho_max - rho_min) * _density_array(density) ** (1.0 / gamma)


def _water_fill(
    w: np.ndarray, s: np.ndarray, lo: np.ndarray, hi: np.ndarray, budget: float
) -> np.ndarray:
    """x_c = clip(λ w_c, lo_c, hi_c) with Σ x_c s_c = budget (1-D arrays, w ≥ 0, lo ≤ hi).

    Heads with w_c = 0 stay at lo_c until every other head is at its ceiling, then all of them
    rise by the same fraction of their headroom.
    """
    b_min, b_max = float((s * lo).sum()), float((s * hi).sum())
    if budget < b_min - _TOL * s.sum() or budget > b_max + _TOL * s.sum():
        which = "floor" if budget < b_min else "ceilings"
        raise CgcLensError(
            f"Infeasible budget: the {which} allow a global retention in "
            f"[{b_min / s.sum():.6g}, {b_max / s.sum():.6g}], but {budget / s.sum():.6g} was asked."
            " Raise rho_min / rho_max, lower the floor, or change rho."
        )
    x, pos = lo.copy(), w > 0
    top = float((s * np.where(pos, hi, lo)).sum())
    if budget >= top:  # every density-weighted head at its ceiling; the rest share what is left
        x[pos] = hi[pos]
        room = float((s * (hi - lo))[~pos].sum())
        x[~pos] += (hi - lo)[~pos] * (0.0 if room == 0 else (budget - top) / room)
        return x
    wp, sp, lop, hip = w[pos], s[pos], lo[pos], hi[pos]
    fixed = float((s * lo)[~pos].sum())
    bps = np.unique(np.concatenate([lop / wp, hip / wp]))
    f = (sp * np.clip(np.outer(bps, wp), lop, hip)).sum(1) + fixed  # non-decreasing in λ
    k = int(np.clip(np.searchsorted(f, budget, side="right") - 1, 0, len(bps) - 2))
    free = (lop / wp <= bps[k]) & (hip / wp >= bps[k + 1])
    slope = float((wp * sp)[free].sum())
    lam = bps[k] + ((budget - f[k]) / slope if slope > 0 else 0.0)
    xp = np.clip(lam * wp, lop, hip)
    residual = budget - fixed - float((sp * xp).sum())  # float rounding only; keep Σ exact
    inner = (xp > lop) & (xp < hip)
    if inner.any():
        xp[inner] += residual * wp[inner] / float((wp * sp)[inner].sum())
    x[pos] = xp
    return x


def uniform(
    sizes: Real[np.ndarray, "n_layers n_heads"] | tuple[int, int], rho: float
) -> Allocation:
    """Every head keeps ρ.

    Example:
        >>> uniform((2, 3), 0.5).global_retention
        0.5
    """
    s = np.ones(sizes) if isinstance(sizes, tuple) else np.asarray(sizes, np.float64)
    return Allocation(retention=np.full(s.shape, float(rho)), sizes=s, rho=rho, method="uniform")


def cgc_l(
    density: Real[np.ndarray, "n_layers n_heads"] | DensityResult,
    sizes: Real[np.ndarray, "n_layers n_heads"] | None = None,
    rho: float = 0.5,
    *,
    rho_min: float = 0.0,
    rho_max: float = 1.0,
    gamma: float = 2.0,
    floor: float = 0.0,
    method: str = "cgc_l",
) -> Allocation:
    """CGC-L (§4.3): retention ∝ density under Def 5's ceilings, spending ρ|θ| exactly.

    Without binding ceilings ξ_c = ρ w_c |θ| / Σ_c' w_c' |θ_c'|, w_c = δ_c / δ̄. Clipped budget
    is redistributed by water-filling (module docstring).

    Args:
        density: δ per head ``[n_layers, n_heads]`` in [0, 1], or a :class:`DensityResult`.
        sizes: |θ_c| per head; ``None`` means equal sizes (W_O slices all are).
        rho: global retention ρ.
        rho_min: ceiling of a density-0 head.
        rho_max: ceiling of a density-1 head.
        gamma: the concave transfer φ(δ) = δ^(1/γ) of Def 5.
        floor: lowest retention any head may get.
        method: name recorded in the result.

    Raises:
        CgcLensError: every density is 0, or the ceilings and floor cannot hold the budget.

    Example:
        >>> a = cgc_l(np.array([[0.2, 0.4], [0.6, 0.8]]), rho=0.5)
        >>> a.retention.round(3).tolist(), round(a.global_retention, 12)
        ([[0.2, 0.4], [0.6, 0.8]], 0.5)
    """
    d = _density_array(density)
    s = _sizes(sizes, d.shape)
    if not 0 < rho <= 1:
        raise CgcLensError(f"rho must lie in (0, 1], got {rho!r}.")
    if not 0 <= floor <= 1:
        raise CgcLensError(f"floor must lie in [0, 1], got {floor!r}.")
    if d.max() == 0:
        raise CgcLensError("Every head has density 0: CGC-L's weights δ/δ̄ are undefined.")
    hi = density_ceilings(d, rho_min=rho_min, rho_max=rho_max, gamma=gamma)
    if floor > hi.min() + _TOL:
        ell, h = np.unravel_index(int(hi.argmin()), hi.shape)
        raise CgcLensError(
            f"floor={floor} exceeds the ceiling {hi.min():.6g} of L{ell}H{h}; lower the floor or "
            "raise rho_min."
        )
    lo = np.minimum(np.full(d.shape, float(floor)), hi)
    w = d / d.mean()
    x = _water_fill(w.ravel(), s.ravel(), lo.ravel(), hi.ravel(), rho * float(s.sum()))
    return Allocation(
        retention=np.clip(x.reshape(d.shape), 0.0, hi), sizes=s, rho=rho, method=method, ceilings=hi
    )


def inverted(
    density: Real[np.ndarray, "n_layers n_heads"] | DensityResult,
    sizes: Real[np.ndarray, "n_layers n_heads"] | None = None,
    rho: float = 0.5,
    **ceilings: float,
) -> Allocation:
    """Inverted (sanity lower bound): CGC-L on the mirrored map δ' = max δ + min δ − δ.

    Ranks are exactly reversed and the budget is the same; with equal sizes, no binding ceilings
    and a density map symmetric about its mid-range, ξ' − ρ = −(ξ − ρ) exactly. ``ceilings``
    are :func:`cgc_l`'s keywords ``rho_min``, ``rho_max``, ``gamma`` and ``floor``.

    Example:
        >>> inverted(np.array([[0.2, 0.4], [0.6, 0.8]]), rho=0.5).retention.round(3).tolist()
        [[0.8, 0.6], [0.4, 0.2]]
    """
    d = _density_array(density)
    return cgc_l(d.max() + d.min() - d, sizes, rho, **ceilings, method="inverted")


# ---------------------------------------------------------------------------------------------
# CGC-F: EvoPress-style search on a grid of retention levels (§4.3 stage 2)
# ---------------------------------------------------------------------------------------------

Fitness = Callable[[dict[Head, float], int], float]
"""``fitness(retention_map, n_tokens) -> float``; lower is better (e.g. KL(dense ‖ compressed))."""


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


def cgc_f(
    start: Allocation,
    fitness: Fitness,
    config: EvoConfig | None = None,
    *,
    floor: float = 0.0,
) -> SearchResult:
    """CGC-F: evolutionary refinement of ``start`` under its ceilings, budget kept exactly.

    ``start`` (usually :func:`cgc_l`) is snapped to the level grid; each generation makes
    ``offspring`` distinct children by level switches, keeps the best ``survivors_per_stage[i]``
    on ``tokens_per_stage[i]`` tokens stage by stage (the parent joining the last stage when
    ``elitism``), and the single survivor becomes the parent. Masks live in memory only.

    Args:
        start: allocation to refine; all heads must have the same size.
        fitness: ``fitness({Head: retention}, n_tokens) -> float``, lower is better.
        config: search settings.
        floor: lowest retention any head may get.

    Example:
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
    n_eval = 0

    def evaluate(k: np.ndarray, n_tokens: int) -> float:
        nonlocal n_eval
        n_eval += 1
        value = float(fitness(_from_levels(k, start, n_levels, "cgc_f").by_head(), n_tokens))
        if not np.isfinite(value):
            raise CgcLensError(
                f"fitness returned {value} for {n_tokens} tokens; need a finite float."
            )
        return value

    rng = np.random.default_rng(cfg.seed)
    parent_fit = evaluate(parent, cfg.tokens_per_stage[-1])
    history = [parent_fit]
    bar = tqdm(range(cfg.generations), desc="CGC-F", disable=not cfg.progress, leave=False)
    for _ in bar:
        seen, kids = {parent.tobytes()}, []
        for _attempt in range(50 * cfg.offspring):
            if len(kids) == cfg.offspring:
                break
            child = _mutate(parent, kmin, kmax, rng, cfg.max_switches)
            if child.tobytes() not in seen:
                seen.add(child.tobytes())
                kids.append(child)
        cands = kids
        fits: list[float] = []
        for stage, (n_keep, n_tokens) in enumerate(
            zip(cfg.survivors_per_stage, cfg.tokens_per_stage, strict=True)
        ):
            if stage == len(cfg.survivors_per_stage) - 1 and cfg.elitism:
                cands = [*cands, parent]
            fits = [evaluate(c, n_tokens) for c in cands]
            order = np.argsort(fits, kind="stable")[:n_keep]
            cands, fits = [cands[i] for i in order], [fits[i] for i in order]
        if cands:
            parent, parent_fit = cands[0], fits[0]
        history.append(parent_fit)
        bar.set_postfix(fitness=f"{parent_fit:.4g}")
    logger.info("CGC-F: fitness %.6g -> %.6g in %d evaluations.", history[0], history[-1], n_eval)
    return SearchResult(
        allocation=_from_levels(parent, start, n_levels, "cgc_f"),
        start=start_alloc,
        history=np.asarray(history, dtype=np.float64),
        n_evaluations=n_eval,
        config=cfg,
    )
