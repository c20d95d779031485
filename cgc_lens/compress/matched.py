"""Matched compression: the level of one operator that reproduces another condition's cost.

The survival paper (§3.6, App. F) calibrates magnitude-pruning sparsity to the RTN INT6
perplexity by a fixed six-step bisection on ``[0, 0.8]`` (probes 0.4, 0.2, 0.1, ...) and keeps
the probe closest to the target. :func:`root_level` instead stops as soon as the value is within
a stated tolerance: it brackets the target by steps that assume the rise of perplexity above
the dense model's grows as a power of the sparsity, and closes the bracket with scipy's TOMS 748
(Alefeld, Potra & Shi 1995), within 8 evaluations by default.

``evaluate`` is any ``Callable[[HookedTransformer], float]`` (perplexity, KL to the dense
model ...); compute it on tokens held out from those used for feature statistics or calibration.

A search that stops short of its tolerance is not necessarily a poor match: pruning a small
model moves perplexity in steps, so the tolerance (a fraction of a gap that may itself be 0.1%
of the perplexity) can be narrower than any step. :meth:`MatchResult.is_poor` calls a match
poor only when it is also off by more than :data:`POOR_MATCH_RTOL` of the target value; only
then is a warning logged. :attr:`MatchResult.stop` says why a search ended (within tolerance,
target out of range, a step in the curve, or the evaluation budget spent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import scipy.optimize

from cgc_lens.compress.context import compressed
from cgc_lens.compress.operators.base import Operator
from cgc_lens.compress.plan import Plan, Step
from cgc_lens.compress.targets import Targets
from cgc_lens.errors import CgcLensError
from cgc_lens.progress import progress_bar

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "POOR_MATCH_RTOL", "MatchResult", "bisect_level", "match_level", "measure", "root_level",
]

POOR_MATCH_RTOL = 1e-3
"""A match off its target by more than this fraction of the target value is poor (0.1%: well
under the sampling error of a perplexity on some thousand tokens, so a closer match would not
change what a comparison shows)."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MatchResult:
    """Outcome of a matched-compression search."""

    level: float
    """The chosen level (sparsity, bits, ratio)."""
    value: float
    """``evaluate`` at that level."""
    target: float
    """The value that was to be matched."""
    evaluations: tuple[tuple[float, float], ...]
    """Every ``(level, value)`` evaluated, in order (a supplied ``value_at_lo`` included)."""
    method: Literal["bisect", "root"]
    """``"bisect"`` (the paper's fixed steps) or ``"root"`` (:func:`root_level`, to a tolerance)."""
    converged: bool
    """Whether ``value`` is within the requested tolerance of ``target``."""
    stop: Literal["converged", "range", "step", "budget"] | None = None
    """Why the search ended: ``"converged"`` (within tolerance), ``"range"`` (the target lies
    beyond the level interval; the nearer end is kept), ``"step"`` (the level bracket narrowed
    below ``xtol``: the value jumps over the tolerance window), ``"budget"`` (the evaluations
    or the bisection's steps ran out). ``None``: not recorded (a result saved before it was)."""

    @property
    def relative_error(self) -> float:
        """``value / target - 1``."""
        return self.value / self.target - 1

    @property
    def n_evaluations(self) -> int:
        """How many times the model was evaluated."""
        return len(self.evaluations)

    def is_poor(self, rtol: float = POOR_MATCH_RTOL) -> bool:
        """Not within the search's tolerance *and* off by more than ``rtol`` of the target.

        Example:
            >>> r = MatchResult(level=0.1, value=40.004, target=40.0, evaluations=(),
            ...                 method="root", converged=False)
            >>> r.is_poor(), r.is_poor(rtol=1e-5)
            (False, True)
        """
        return not self.converged and abs(self.relative_error) > rtol


def _check(target: float, lo: float, hi: float) -> None:
    if not math.isfinite(target):
        raise CgcLensError(f"target must be a finite number, got {target!r}.")
    if not lo < hi:
        raise CgcLensError(f"Need lo < hi for the search interval, got lo={lo}, hi={hi}.")


def _within(value: float, target: float, rtol: float, atol: float) -> bool:
    return abs(value - target) <= max(rtol * abs(target), atol)


def bisect_level(
    f: Callable[[float], float], target: float, *, lo: float = 0.0, hi: float = 0.8,
    steps: int = 6, increasing: bool = True, rtol: float = 0.01, atol: float = 0.0,
) -> MatchResult:
    """The paper's fixed-step bisection: probe midpoints ``steps`` times, keep the closest.

    Example:
        >>> r = bisect_level(lambda s: 70 + 40 * s, 77.83)  # probes as in the paper's App. F
        >>> [round(lvl, 4) for lvl, _ in r.evaluations], round(r.level, 4)
        ([0.4, 0.2, 0.1, 0.15, 0.175, 0.1875], 0.2)
    """
    _check(target, lo, hi)
    evaluations: list[tuple[float, float]] = []
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = float(f(mid))
        evaluations.append((mid, value))
        if (value > target) == increasing:
            hi = mid
        else:
            lo = mid
    level, value = min(evaluations, key=lambda e: abs(e[1] - target))
    converged = _within(value, target, rtol, atol)
    return MatchResult(level=level, value=value, target=target, evaluations=tuple(evaluations),
                       method="bisect", converged=converged,
                       stop="converged" if converged else "budget")


class _Stop(Exception):  # control flow out of scipy's toms748, not an error
    """Raised inside the root finder's residual to stop it: tolerance met or budget spent."""


class _Probes:
    """The evaluations of one :func:`root_level` search and the residual it roots.

    With ``d = level - lo``, ``Δ(d) = ±(f(level) - f(lo))`` (the sign making it grow with ``d``)
    and ``Δ* = ±(target - f(lo))``, the residual is ``h(d) = q^(1/P) - 1`` for ``q = Δ/Δ*``
    (signed root): a value that rises as a power ``c·d^p`` of the distance from ``lo`` (pruning
    error; ``p`` near :data:`_P`) is close to a straight line in ``d`` there, whatever its
    curvature, and a ``Δ`` at noise level near ``d = 0`` stays a small number (a log would send
    it to -inf and throw the interpolation off).
    """

    def __init__(self, f: Callable[[float], float], target: float, *, lo: float,
                 increasing: bool, rtol: float, atol: float, max_evaluations: int) -> None:
        self.f, self.target, self.lo, self.rtol, self.atol = f, target, lo, rtol, atol
        self.sign = 1.0 if increasing else -1.0
        self.max_evaluations = max_evaluations
        self.evaluations: list[tuple[float, float]] = []
        self.known: dict[float, float] = {}  # d -> h of every probe (scipy re-asks the ends)
        self.anchor = self.gap = math.nan

    def set_anchor(self, value_at_lo: float) -> None:
        self.anchor = value_at_lo
        self.gap = self.sign * (self.target - value_at_lo)

    def probe(self, x: float) -> float:
        """Evaluate at level ``x``; stop the search once the value is within tolerance."""
        if len(self.evaluations) >= self.max_evaluations:
            raise _Stop("budget")
        value = float(self.f(x))
        self.evaluations.append((x, value))
        if self.within(value):
            raise _Stop("converged")
        return value

    def h(self, d: float) -> float:
        """The residual at ``d = level - lo`` (probing the model unless known)."""
        d = float(d)  # scipy passes numpy floats
        if d not in self.known:
            q = self.sign * (self.probe(self.lo + d) - self.anchor) / self.gap
            self.known[d] = math.copysign(abs(q) ** (1 / _P), q) - 1
        return self.known[d]

    def within(self, value: float) -> bool:
        return _within(value, self.target, self.rtol, self.atol)

    def result(self, stop: str) -> MatchResult:
        """The result: the converged probe (the last), else the closest probe."""
        if stop == "converged":
            level, value = self.evaluations[-1]
        else:
            level, value = min(self.evaluations, key=lambda e: abs(e[1] - self.target))
        return MatchResult(level=level, value=value, target=self.target,
                           evaluations=tuple(self.evaluations), method="root",
                           converged=stop == "converged", stop=stop)  # type: ignore[arg-type]


# Magnitude pruning raises perplexity about as d^p near the INT6 match: p ≈ 2.4-2.9 on
# cgc-tiny, 3.4-3.9 on the paper's App. F curves. _P straightens that; a bracketing step aims
# _MARGIN (in h, ~25% in Δ) past the target so that it lands on the far side: a bracket, which
# toms748 then closes in a few steps on a near-straight residual.
_P, _MARGIN = 2.5, 0.1


def root_level(
    f: Callable[[float], float], target: float, *, lo: float = 0.0, hi: float = 0.8,
    increasing: bool = True, rtol: float = 0.005, atol: float = 0.0, max_evaluations: int = 8,
    value_at_lo: float | None = None, xtol: float = 1e-4,
) -> MatchResult:
    """Find a level whose value is within ``max(rtol * |target|, atol)`` of ``target``.

    ``f`` must move monotonically away from ``f(lo)`` as the level leaves ``lo``
    (``increasing``: upwards). The search brackets the target from a first probe at a quarter
    of ``[lo, hi]`` on a residual that straightens a power-law rise
    (``((f - f(lo)) / (target - f(lo)))^(1/2.5) - 1``, :class:`_Probes`), then runs scipy's
    TOMS 748 inside the bracket, stopping at the first probe within tolerance. ``value_at_lo`` (e.g.
    the dense model's perplexity) saves the evaluation at ``lo``; it is listed in
    ``evaluations`` and counts against ``max_evaluations`` like a probe.

    When it cannot reach the tolerance the result says why (:attr:`MatchResult.stop`) and holds
    the closest probe with ``converged=False``: ``"range"`` when the target lies beyond
    ``[lo, hi]`` (the nearer end is returned), ``"step"`` when the bracket shrank below ``xtol``
    (pruning a small model moves the value in steps that may jump the target), ``"budget"``
    when ``max_evaluations`` were spent. A warning is logged if the miss is poor
    (:meth:`MatchResult.is_poor`).

    Example:
        >>> r = root_level(lambda s: 10 * math.exp(8 * s * s), 40.0, rtol=0.001)
        >>> round(r.level, 3), r.converged, r.n_evaluations <= 8, r.stop
        (0.416, True, True, 'converged')
    """
    _check(target, lo, hi)
    if max_evaluations < 1:
        raise CgcLensError(f"max_evaluations must be at least 1, got {max_evaluations}.")
    probes = _Probes(f, target, lo=lo, increasing=increasing, rtol=rtol, atol=atol,
                     max_evaluations=max_evaluations)
    try:
        if value_at_lo is None:
            value_at_lo = probes.probe(lo)
        else:
            probes.evaluations.append((lo, float(value_at_lo)))
            if probes.within(float(value_at_lo)):
                raise _Stop("converged")
        probes.set_anchor(float(value_at_lo))
        if not probes.gap > 0:  # the target is on the other side of f(lo): nothing to search
            raise _Stop("range")
        below, above = _bracket(probes, hi - lo)  # in that order when f is monotone; noise
        # near the target may swap them, and toms748 needs an interval
        scipy.optimize.toms748(probes.h, min(below, above), max(below, above), xtol=xtol,
                               rtol=1e-12, maxiter=100)
        stop = "step"  # scipy closed the bracket on no probe within tolerance
    except _Stop as why:
        stop = str(why)
    result = probes.result(stop)
    if not result.converged:
        logger.log(logging.WARNING if result.is_poor() else logging.DEBUG,
                   "root_level stopped after %d evaluations without reaching the tolerance "
                   "(%s); closest %+.4f%% off the target.", len(probes.evaluations),
                   _STOPS[stop], 100 * result.relative_error)
    return result


def _bracket(probes: _Probes, d_max: float) -> tuple[float, float]:
    """``(d_below, d_above)`` with ``h`` below and above 0, stepping from ``d = d_max / 4``.

    Each step follows the line through the last two probes, or through the last one and the
    anchor (``h = -1`` at ``d = 0``), aiming :data:`_MARGIN` past the target; a probe whose
    value has not left the anchor's doubles ``d``. Raises ``_Stop("range")`` if the value at
    ``d_max`` (``hi``) is still short of the target.
    """
    below: float | None = None
    above: float | None = None
    d, prev = d_max / 4, (0.0, -1.0)
    while below is None or above is None:
        h = probes.h(d)
        if h > 0:
            above = d  # each step leaves the last probe towards the target: the newest bounds
        elif d >= d_max:
            raise _Stop("range")
        else:
            below = d
        slope = (h - prev[1]) / (d - prev[0])
        if not slope > 0:  # the last two probes do not rise: use the anchor's line
            slope = (h + 1) / d
        aim = -_MARGIN if h > 0 else _MARGIN
        d_next = d + (aim - h) / slope if slope > 0 else 2 * d
        prev, d = (d, h), min(max(d_next, d / 8), d_max)
    return below, above


_STOPS = {
    "converged": "within tolerance",
    "range": "the target lies beyond the level interval",
    "step": "the level bracket narrowed below xtol: the value jumps over the tolerance window",
    "budget": "the evaluation budget is spent",
}


def measure(
    model: HookedTransformer, plan_or_operator: Plan | Step | Operator,
    evaluate: Callable[[HookedTransformer], float], targets: Targets | None = None,
) -> float:
    """``evaluate(model)`` under a compression, restored afterwards (e.g. the INT6 target)."""
    with compressed(model, plan_or_operator, targets):
        return float(evaluate(model))


def match_level(
    model: HookedTransformer, operator: Operator, evaluate: Callable[[HookedTransformer], float],
    target: float, *, targets: Targets | None = None, method: Literal["bisect", "root"] = "root",
    lo: float = 0.0, hi: float = 0.8, steps: int = 6, rtol: float = 0.005, atol: float = 0.0,
    max_evaluations: int = 8, value_at_lo: float | None = None, xtol: float = 1e-4,
    progress: bool = False, desc: str = "matched search",
) -> MatchResult:
    """The level of ``operator`` at which ``evaluate`` matches ``target``.

    Args:
        model: the dense model (restored after every probe).
        operator: a template; its level field (:attr:`Operator.level_field`) is searched.
        evaluate: model → value (perplexity, KL ...), on held-out tokens.
        target: the value to match, e.g. ``measure(model, RTN(6), evaluate)``.
        targets: which weights the operator edits (default: the operator's default).
        method: ``"root"`` (to ``rtol``/``atol``, :func:`root_level`) or ``"bisect"`` (the
            paper's ``steps``).
        lo: lower end of the level interval.
        hi: upper end of the level interval (the paper uses 0.8 for sparsity).
        steps: bisection steps.
        rtol: relative tolerance on the value.
        atol: absolute tolerance on the value (useful when matching a KL near 0).
        max_evaluations: evaluation budget of the root finder (a supplied ``value_at_lo``
            counts as one).
        value_at_lo: ``evaluate`` at ``lo`` if already known (root finder only).
        xtol: the root finder gives up once the level bracket is narrower than this.
        progress: show a bar over the evaluations (at most ``max_evaluations`` or ``steps``).
        desc: the bar's description (which condition is matched).
    """
    if operator.level_field is None:
        raise CgcLensError(f"{type(operator).__name__} has no scalar level to search.")
    if method not in ("bisect", "root"):
        raise CgcLensError(f"method must be 'root' or 'bisect', got {method!r}.")
    bar = progress_bar(desc=desc, total=steps if method == "bisect" else max_evaluations,
                       enabled=progress, unit="eval")

    def f(level: float) -> float:
        value = measure(model, operator.at_level(level), evaluate, targets)
        bar.set_postfix(level=f"{level:.4f}", value=f"{value:.5g}", refresh=False)
        bar.update()
        return value

    increasing = operator.higher_is_harsher
    with bar:
        if method == "bisect":
            return bisect_level(f, target, lo=lo, hi=hi, steps=steps, increasing=increasing,
                                rtol=rtol, atol=atol)
        return root_level(f, target, lo=lo, hi=hi, increasing=increasing, rtol=rtol, atol=atol,
                          max_evaluations=max_evaluations, value_at_lo=value_at_lo, xtol=xtol)
