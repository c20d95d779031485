"""Phase-transition points: where a destruction or ΔPPL curve turns sharply.

Ma et al. (2026) call the compression ratio at which performance collapses a Phase Transition Point
(PTP); Gupta (2026, Thm 1, Cor. 1) predicts that high-density heads reach theirs at lower sparsity.
Both need the PTP of a *measured* curve, sampled at a few compression ratios. Two documented
estimators, on the curve rescaled to the unit square (so the answer does not depend on units):

- ``kneedle`` (default; Satopää et al. 2011, in its distance-to-chord form): the sampled point
  farthest from the straight line joining the first and last points. Robust to noise and to the
  direction of the curve; a straight line has no knee.
- ``curvature``: the interior point of largest curvature |y''| / (1 + y'²)^(3/2), with y'' the
  three-point second divided difference and y' the central slope on the (possibly uneven) grid,
  i.e. the maximum of the discrete second difference, damped where the curve is steep. Sharper
  on clean curves, but noise-sensitive.

The estimate is one of the sampled x values: refine the grid near it to localise it better.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float, Real

from cgc_lens.errors import CgcLensError

__all__ = ["PhaseTransition", "phase_transition_point", "phase_transition_points"]

_EPS = 1e-12


@dataclass(frozen=True, kw_only=True, eq=False)
class PhaseTransition:
    """The knee of one curve."""

    x: float
    """Where the curve turns (NaN when ``found`` is False)."""
    y: float
    """The curve's value there (NaN when not found)."""
    index: int
    """Index of that point in the input arrays (-1 when not found)."""
    found: bool
    """False for a curve without a bend (a straight line, a constant) or below ``min_score``."""
    score: Float[np.ndarray, " n_points"]
    """The per-point score that was maximised, in input order (distance to chord or curvature)."""
    method: str
    """``kneedle`` or ``curvature``."""


def phase_transition_point(
    x: Real[np.ndarray, " n_points"],
    y: Real[np.ndarray, " n_points"],
    *,
    method: Literal["kneedle", "curvature"] = "kneedle",
    min_score: float = 0.0,
) -> PhaseTransition:
    """The point where the curve ``y(x)`` bends most sharply.

    Args:
        x: compression ratios (retention or sparsity), distinct, any order.
        y: the measured damage at each (ΔPPL, fraction of features destroyed …).
        method: ``kneedle`` (distance to chord) or ``curvature`` (see the module docstring).
        min_score: a knee is reported only if its score exceeds this (in unit-square units).

    Example:
        >>> sparsity = np.linspace(0.0, 0.9, 10)
        >>> dppl = np.where(sparsity <= 0.5, 0.1 * sparsity, 0.05 + 8 * (sparsity - 0.5))
        >>> float(phase_transition_point(sparsity, dppl).x)
        0.5
    """
    xa, ya = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xa.ndim != 1 or xa.shape != ya.shape or xa.size < 3:
        raise CgcLensError(
            f"x and y must be 1-D of the same length >= 3, got shapes {xa.shape} and {ya.shape}."
        )
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise CgcLensError("x and y must be finite (no NaN or inf).")
    order = np.argsort(xa, kind="stable")
    xs, ys = xa[order], ya[order]
    if (np.diff(xs) <= 0).any():
        raise CgcLensError(f"x values must be distinct, got {xa.tolist()}.")
    xn = (xs - xs[0]) / (xs[-1] - xs[0])
    span = ys.max() - ys.min()
    yn = (ys - ys.min()) / span if span > 0 else np.zeros_like(ys)
    if method == "kneedle":
        dx, dy = xn[-1] - xn[0], yn[-1] - yn[0]
        score_sorted = np.abs(dx * (yn - yn[0]) - dy * (xn - xn[0])) / np.hypot(dx, dy)
    elif method == "curvature":
        # three-point differences centred on each interior point, so a kink scores only there
        slope = np.diff(yn) / np.diff(xn)
        d2 = 2 * np.diff(slope) / (xn[2:] - xn[:-2])
        d1 = (yn[2:] - yn[:-2]) / (xn[2:] - xn[:-2])
        score_sorted = np.zeros_like(xn)
        score_sorted[1:-1] = np.abs(d2) / (1 + d1**2) ** 1.5
    else:
        raise CgcLensError(f"method must be 'kneedle' or 'curvature', got {method!r}.")
    score = np.empty_like(score_sorted)
    score[order] = score_sorted
    best = int(order[int(np.argmax(score_sorted))])
    if score[best] <= max(min_score, _EPS):
        return PhaseTransition(
            x=float("nan"), y=float("nan"), index=-1, found=False, score=score, method=method
        )
    return PhaseTransition(
        x=float(xa[best]), y=float(ya[best]), index=best, found=True, score=score, method=method
    )


def phase_transition_points(
    x: Real[np.ndarray, " n_points"],
    ys: Real[np.ndarray, "n_curves n_points"],
    *,
    method: Literal["kneedle", "curvature"] = "kneedle",
    min_score: float = 0.0,
    nonfinite: Literal["raise", "nan"] = "raise",
) -> Float[np.ndarray, " n_curves"]:
    """:func:`phase_transition_point` of many curves sampled on the same ``x`` (NaN: no knee).

    ``nonfinite="nan"`` gives a curve holding NaN or inf a NaN point instead of raising (a curve
    that could not be measured everywhere has no knee to report).

    Example:
        >>> s = np.linspace(0.0, 0.9, 10)
        >>> ys = np.stack([np.maximum(0, s - t) * 10 for t in (0.3, 0.6)])
        >>> phase_transition_points(s, ys).round(2).tolist()
        [0.3, 0.6]
        >>> phase_transition_points(s, ys * [[1.0], [np.nan]], nonfinite="nan").round(2).tolist()
        [0.3, nan]
    """
    ya = np.asarray(ys, np.float64)
    if ya.ndim != 2:
        raise CgcLensError(f"ys must be [n_curves, n_points], got shape {ya.shape}.")
    if nonfinite not in ("raise", "nan"):
        raise CgcLensError(f"nonfinite must be 'raise' or 'nan', got {nonfinite!r}.")
    return np.array([
        float("nan") if nonfinite == "nan" and not np.isfinite(row).all()
        else phase_transition_point(x, row, method=method, min_score=min_score).x
        for row in ya
    ])  # fmt: skip
