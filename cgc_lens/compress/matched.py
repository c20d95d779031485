"""Matched compression: the level of one operator that reproduces another condition's cost.

The survival paper (§3.6, App. F) calibrates magnitude-pruning sparsity to the RTN INT6
perplexity by a fixed six-step bisection on ``[0, 0.8]`` (probes 0.4, 0.2, 0.1, ...) and keeps
the probe closest to the target. :func:`root_level` instead stops as soon as the value is within
a stated tolerance, using the Illinois variant of regula falsi on ``log(value)`` (perplexity
grows roughly exponentially with compression), with bisection as the fallback.

``evaluate`` is any ``Callable[[HookedTransformer], float]`` (perplexity, KL to the dense
model ...); compute it on tokens held out from those used for feature statistics or calibration.

A search that stops short of its tolerance is not necessarily a poor match: pruning a small
model moves perplexity in steps, so the tolerance (a fraction of a gap that may itself be 0.1%
of the perplexity) can be narrower than any step. :meth:`MatchResult.is_poor` calls a match
poor only when it is also off by more than :data:`POOR_MATCH_RTOL` of the target value; only
then is a warning logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

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
    """``"bisect"`` (the paper's fixed steps) or ``"root"`` (Illinois to a tolerance)."""
    converged: bool
    """Whether ``value`` is within the requested tolerance of ``target``."""

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
    return MatchResult(level=level, value=value, target=target, evaluations=tuple(evaluations),
                       method="bisect", converged=_within(value, target, rtol, atol))


class _Probes:
    """The evaluations of one :func:`root_level` search, and the residual it roots."""

    def __init__(self, f: Callable[[float], float], target: float, *, increasing: bool,
                 rtol: float, atol: float) -> None:
        self.f, self.target, self.rtol, self.atol = f, target, rtol, atol
        self.sign = 1.0 if increasing else -1.0
        self.evaluations: list[tuple[float, float]] = []

    def g(self, value: float) -> float:
        """The residual: log-ratio to the target (difference when the target is not > 0)."""
        target, sign = self.target, self.sign
        if target > 0:
            return sign * (math.log(value) - math.log(target)) if value > 0 else -sign * math.inf
        return sign * (value - target)

    def probe(self, x: float) -> tuple[float, float]:
        """Evaluate at ``x``; the value and its residual."""
        value = float(self.f(x))
        self.evaluations.append((x, value))
        return value, self.g(value)

    def within(self, value: float) -> bool:
        return _within(value, self.target, self.rtol, self.atol)

    def result(self, level: float, value: float, converged: bool) -> MatchResult:
        """The result at ``level``; without convergence, the closest probe instead."""
        if not converged:
            level, value = min(self.evaluations, key=lambda e: abs(e[1] - self.target))
        return MatchResult(level=level, value=value, target=self.target,
                           evaluations=tuple(self.evaluations), method="root",
                           converged=converged)


def root_level(
    f: Callable[[float], float], target: float, *, lo: float = 0.0, hi: float = 0.8,
    increasing: bool = True, rtol: float = 0.005, atol: float = 0.0, max_evaluations: int = 12,
    value_at_lo: float | None = None, xtol: float = 1e-4,
) -> MatchResult:
    """Find a level whose value is within ``max(rtol * |target|, atol)`` of ``target``.

    Brackets ``[lo, hi]`` (``value_at_lo`` saves the evaluation at ``lo``, e.g. the dense
    model's perplexity), then steps by Illinois regula falsi on ``log(value)`` (on the value
    itself when values can be 0 or negative). If the target lies outside the bracket, the
    nearer end is returned with ``converged=False``; so is the closest probe when the bracket
    shrinks below ``xtol`` (pruning a small model changes in steps that may jump the target).

    Example:
        >>> r = root_level(lambda s: 10 * math.exp(8 * s * s), 40.0, rtol=0.001)
        >>> round(r.level, 3), r.converged, r.n_evaluations <= 8
        (0.416, True, True)
    """
    _check(target, lo, hi)
    probes = _Probes(f, target, increasing=increasing, rtol=rtol, atol=atol)
    if value_at_lo is None:
        va, ga = probes.probe(lo)
    else:
        va, ga = float(value_at_lo), probes.g(float(value_at_lo))
        probes.evaluations.append((lo, va))
    if probes.within(va) or ga > 0:
        return probes.result(lo, va, probes.within(va))
    vb, gb = probes.probe(hi)
    if probes.within(vb) or gb < 0:
        return probes.result(hi, vb, probes.within(vb))
    return _illinois(probes, (lo, ga), (hi, gb, vb), max_evaluations=max_evaluations, xtol=xtol)


def _illinois(
    probes: _Probes, low: tuple[float, float], high: tuple[float, float, float], *,
    max_evaluations: int, xtol: float,
) -> MatchResult:
    """Illinois regula falsi inside a bracket: ``low = (a, g(a))``, ``high = (b, g(b), f(b))``."""
    (a, ga), (b, gb, vb) = low, high
    side, x, vx = 0, b, vb
    while len(probes.evaluations) < max_evaluations and b - a > xtol:
        x = b - gb * (b - a) / (gb - ga) if math.isfinite(ga) and math.isfinite(gb) else math.nan
        if not a < x < b:
            x = (a + b) / 2
        vx, gx = probes.probe(x)
        if probes.within(vx):
            return probes.result(x, vx, True)
        if gx > 0:
            b, gb = x, gx
            if side == 1:  # Illinois: the stale end's value is halved so it moves next time
                ga /= 2
            side = 1
        else:
            a, ga = x, gx
            if side == -1:
                gb /= 2
            side = -1
    result = probes.result(x, vx, False)
    logger.log(logging.WARNING if result.is_poor() else logging.DEBUG,
               "root_level stopped after %d evaluations (bracket %.3g wide) without reaching the "
               "tolerance; closest %+.4f%% off the target.", len(probes.evaluations), b - a,
               100 * result.relative_error)
    return result


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
    max_evaluations: int = 12, value_at_lo: float | None = None, xtol: float = 1e-4,
    progress: bool = False, desc: str = "matched search",
) -> MatchResult:
    """The level of ``operator`` at which ``evaluate`` matches ``target``.

    Args:
        model: the dense model (restored after every probe).
        operator: a template; its level field (:attr:`Operator.level_field`) is searched.
        evaluate: model → value (perplexity, KL ...), on held-out tokens.
        target: the value to match, e.g. ``measure(model, RTN(6), evaluate)``.
        targets: which weights the operator edits (default: the operator's default).
        method: ``"root"`` (to ``rtol``/``atol``) or ``"bisect"`` (the paper's ``steps``).
        lo: lower end of the level interval.
        hi: upper end of the level interval (the paper uses 0.8 for sparsity).
        steps: bisection steps.
        rtol: relative tolerance on the value.
        atol: absolute tolerance on the value (useful when matching a KL near 0).
        max_evaluations: evaluation budget of the root finder.
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
