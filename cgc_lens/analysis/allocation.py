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
- **CGC-F** (:func:`cgc_lens.analysis.evolution.cgc_f`) is EvoPress's (1 + λ) evolutionary
  search with multi-stage selection, on a uniform grid of retention levels, with budget-neutral
  level switches under the ceilings. It lives in :mod:`cgc_lens.analysis.evolution`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Float, Real

from cgc_lens.analysis.density import DensityResult
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head

__all__ = [
    "Allocation",
    "cgc_l",
    "density_ceilings",
    "inverted",
    "uniform",
]

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
