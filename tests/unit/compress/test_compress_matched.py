"""Matched compression: the paper's bisection (App. F) and the tolerance-driven root finder."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math

import numpy as np
import pytest
import scipy.optimize
import torch

from cgc_lens.compress import (
    RTN,
    HeadPrune,
    MagnitudePrune,
    MatchResult,
    bisect_level,
    match_level,
    measure,
    root_level,
)
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import kl_divergence
from cgc_lens.sites import Head

# Survival paper, App. F: (sparsity, perplexity) probes and the INT6 target of each model.
PYTHIA = ([0.0, 0.1, 0.15, 0.175, 0.1875, 0.2, 0.4, 0.8],
          [68.5, 69.90, 74.25, 76.99, 78.75, 82.77, 282.41, 9000.0], 77.828)
GEMMA = ([0.0, 0.1, 0.15, 0.1625, 0.175, 0.2, 0.4, 0.8],
         [450.0, 460.93, 484.27, 508.64, 530.74, 585.27, 8140.18, 9e4], 497.99)


def curve(points):
    xs, ys, _ = points
    return lambda s: float(np.interp(s, xs, ys))


@pytest.mark.parametrize(("points", "probes", "chosen"), [
    (PYTHIA, [0.4, 0.2, 0.1, 0.15, 0.175, 0.1875], 0.175),
    (GEMMA, [0.4, 0.2, 0.1, 0.15, 0.175, 0.1625], 0.1625),
])
def test_bisection_reproduces_the_papers_probes(points, probes, chosen):
    result = bisect_level(curve(points), points[2])
    assert [round(x, 6) for x, _ in result.evaluations] == probes
    assert result.level == pytest.approx(chosen) and result.method == "bisect"


def test_root_finder_reaches_tolerance_in_fewer_evaluations():
    def f(s):
        return 68.5 * math.exp(3.0 * s + 9.0 * s**3)

    target = f(0.33)
    root = root_level(f, target, rtol=0.005)
    assert root.converged and abs(root.relative_error) <= 0.005
    steps = next(n for n in range(1, 30)
                 if abs(bisect_level(f, target, steps=n).relative_error) <= 0.005)
    assert root.n_evaluations < steps
    saved = root_level(f, target, rtol=0.005, value_at_lo=f(0.0))
    assert saved.n_evaluations == root.n_evaluations  # the supplied value is listed, not computed


def test_root_finder_on_the_papers_curve_and_decreasing_levels():
    result = root_level(curve(PYTHIA), PYTHIA[2], rtol=0.001)
    assert result.converged and abs(result.value / PYTHIA[2] - 1) <= 0.001

    def by_bits(bits):  # perplexity falls as bits rise
        return 60.0 + 400.0 * math.exp(-bits)

    result = root_level(by_bits, by_bits(4.3), lo=2.0, hi=8.0, increasing=False, rtol=1e-3)
    assert result.converged and result.level == pytest.approx(4.3, abs=0.01)


def test_targets_outside_the_bracket_return_the_nearer_end():
    low = root_level(lambda s: 10 + s, 5.0)
    assert not low.converged and low.level == 0.0 and low.n_evaluations == 1
    high = root_level(lambda s: 10 + s, 50.0)
    assert not high.converged and high.level == 0.8
    zero = root_level(lambda s: s * s, 0.25, atol=1e-4)  # values of 0 use the linear scale
    assert zero.converged and zero.level == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(CgcLensError, match="lo < hi"):
        root_level(lambda s: s, 1.0, lo=0.5, hi=0.5)


def test_match_level_on_a_model_restores_it(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (4, 32),
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = tiny_model(tokens)

    def kl(model):  # a random model's perplexity is not monotone in sparsity; its KL is
        with torch.no_grad():
            return float(kl_divergence(dense, model(tokens)).mean())

    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    target = measure(tiny_model, RTN(3), kl)
    assert target > 0
    # 12 small tensors: sparsity moves the KL in steps, so ask for 5% here (1% on cgc-tiny)
    result = match_level(tiny_model, MagnitudePrune(0.0), kl, target, rtol=0.05, value_at_lo=0.0)
    assert result.converged, result
    assert measure(tiny_model, MagnitudePrune(result.level), kl) == pytest.approx(result.value)
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())
    bisected = match_level(tiny_model, MagnitudePrune(0.0), kl, target, method="bisect")
    assert bisected.n_evaluations == 6
    stepwise = root_level(lambda s: float(s > 0.3), 0.5, atol=0.1)  # a jump over the target
    assert not stepwise.converged and stepwise.n_evaluations < 20
    with pytest.raises(CgcLensError, match="no scalar level"):
        match_level(tiny_model, HeadPrune({Head(0, 0): 0.5}), kl, target)


@pytest.mark.parametrize("p", [1.5, 2.5, 4.0])
@pytest.mark.parametrize("s_star", [0.05, 0.15, 0.4])
def test_root_finder_within_8_evaluations_on_power_law_curves(p, s_star):
    """Perplexity rising as a power of the sparsity (the matched search's curve): the
    tolerance is met within 8 counted evaluations, at the level scipy's brentq finds."""
    calls = []

    def f(s):
        calls.append(s)
        return 22.4 + 40.0 * s**p

    target, atol = f(s_star), 0.05 * (f(s_star) - 22.4)  # 5% of the gap, as the study asks
    calls.clear()
    result = root_level(f, target, rtol=0.0, atol=atol, value_at_lo=22.4)
    assert result.converged and result.stop == "converged" and abs(result.value - target) <= atol
    assert len(calls) == result.n_evaluations - 1 <= 7  # the supplied value is listed, not run
    window = [scipy.optimize.brentq(lambda s, t=t: 22.4 + 40.0 * s**p - t, 0.0, 0.8)
              for t in (target - atol, target + atol)]
    assert window[0] <= result.level <= window[1]


def test_root_finder_says_why_it_stops_short(caplog):
    with caplog.at_level(logging.WARNING, logger="cgc_lens.compress.matched"):
        beyond = root_level(lambda s: 10 + s, 50.0)  # f(hi) = 10.8 is short of the target
    assert beyond.stop == "range" and not beyond.converged and beyond.level == 0.8
    assert "beyond the level interval" in caplog.text
    below = root_level(lambda s: 10 + s, 5.0)  # below f(lo): nothing to search
    assert below.stop == "range" and below.level == 0.0 and below.n_evaluations == 1
    # a jump over the tolerance window: the bracket closes on the jump, 0.3 up to xtol
    jump = root_level(lambda s: 1.0 + float(s > 0.3), 1.5, atol=0.1, max_evaluations=40)
    assert jump.stop == "step" and not jump.converged and jump.n_evaluations < 40
    levels = sorted(lvl for lvl, _ in jump.evaluations)
    gap = min(b - a for a, b in itertools.pairwise(levels) if a <= 0.3 < b)
    assert gap <= 1e-4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cgc_lens.compress.matched"):
        spent = root_level(lambda s: 10 * math.exp(8 * s * s), 40.0, rtol=1e-9,
                           max_evaluations=3)
    assert spent.stop == "budget" and spent.n_evaluations == 3 and not spent.converged
    assert "evaluation budget is spent" in caplog.text and spent.is_poor()
    assert abs(spent.value - 40.0) == min(abs(v - 40.0) for _, v in spent.evaluations)
    with pytest.raises(CgcLensError, match="max_evaluations"):
        root_level(lambda s: s, 0.5, max_evaluations=0)


def test_stop_is_recorded_by_bisection_and_survives_a_round_trip():
    fixed = bisect_level(curve(PYTHIA), PYTHIA[2], rtol=1e-6)
    assert fixed.stop == "budget" and not fixed.converged
    loose = bisect_level(curve(PYTHIA), PYTHIA[2], rtol=0.05)
    assert loose.stop == "converged"
    saved = json.loads(json.dumps(dataclasses.asdict(fixed)))  # as results.json stores it
    back = MatchResult(**{**saved, "evaluations": tuple(map(tuple, saved["evaluations"]))})
    assert back == fixed
    old = {k: v for k, v in saved.items() if k != "stop"}  # a result saved before the field
    assert MatchResult(**{**old, "evaluations": ()}).stop is None
