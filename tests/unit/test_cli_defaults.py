"""Defaults a first run meets (issue 14): matched pruning targets a condition that was asked
for, the tolerance warning fires only for a poor match, and a perplexity shows in its repr."""

from __future__ import annotations

import logging
import math

import pytest

from cgc_lens.compress.matched import POOR_MATCH_RTOL, MatchResult, root_level
from cgc_lens.forward.metrics import PerplexityResult
from cgc_lens.studies.survival.config import SurvivalConfig


@pytest.mark.parametrize(("kwargs", "target"), [
    ({}, "RTN INT6"),                                   # the paper's pair when INT6 is asked for
    ({"bits": (8, 4)}, "RTN INT4"),                     # the quickstart: no INT6 row appears
    ({"bits": (8, 5, 3)}, "RTN INT3"),
    ({"bits": (), "conditions": ("int8", "int4-g128", "int5")}, "int5"),
    ({"bits": (), "conditions": ("nf4",)}, None),       # nothing RTN asked for: no matching
    ({"bits": (8, 4), "match_pruning": 6}, "RTN INT6"),  # an explicit value is kept
    ({"bits": (8, 4), "match_pruning": None}, None),
])
def test_default_match_targets_a_requested_condition(kwargs, target) -> None:
    config = SurvivalConfig(**kwargs)
    assert config.match_target == target
    if target is None:
        assert not any(n.startswith("magnitude matched") for n in config.condition_names)
    else:
        assert config.condition_names[-1] == f"magnitude matched {target}"
    rtn = [n for n in config.condition_names if n.startswith("RTN INT")]
    assert rtn == [f"RTN INT{b}" for b in config.bits]  # no RTN row beyond those asked for
    assert SurvivalConfig.from_dict(config.to_dict()) == config


def test_match_pruning_names_and_none_from_the_command_line() -> None:
    assert SurvivalConfig(bits=(8, 4), match_pruning="none").match_target is None
    assert SurvivalConfig(bits=(8, 4), match_pruning="8").match_target == "RTN INT8"


def _steps(level: float) -> float:
    """A perplexity that moves in steps of 0.2 (pruning a small model)."""
    return 40.0 + 0.2 * math.floor(level * 100)


def test_a_close_miss_is_not_poor_and_does_not_warn(caplog) -> None:
    target = 40.3  # halfway between the steps 40.2 and 40.4
    with caplog.at_level(logging.DEBUG, logger="cgc_lens.compress.matched"):
        r = root_level(lambda s: 40.0 + 0.01 * math.floor(s * 100), 40.005, rtol=0.0,
                       atol=1e-6)
    assert not r.converged
    assert abs(r.relative_error) <= POOR_MATCH_RTOL and not r.is_poor()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    with caplog.at_level(logging.DEBUG, logger="cgc_lens.compress.matched"):
        far = root_level(_steps, target, rtol=0.0, atol=1e-6)
    # the closest step is 0.1 below or above: 0.25% off, more than POOR_MATCH_RTOL
    assert far.is_poor() and abs(far.value - target) == pytest.approx(0.1)
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING]


def test_is_poor_against_a_naive_rule() -> None:
    for value, converged in [(40.0, True), (40.01, False), (40.1, False), (39.0, True)]:
        r = MatchResult(level=0.1, value=value, target=40.0, evaluations=(), method="root",
                        converged=converged)
        assert r.is_poor() == (not converged and abs(value - 40.0) / 40.0 > 1e-3)


def test_perplexity_result_repr_shows_the_perplexity() -> None:
    r = PerplexityResult(nll_sum=300 * math.log(17.25), n_tokens=300, protocol="sliding",
                         window=64, stride=16)
    text = repr(r)
    assert text.startswith("PerplexityResult(perplexity=17.25,")
    assert "window=64" in text and "n_tokens=300" in text
    assert math.isclose(float(text.split("perplexity=")[1].split(",")[0]), r.perplexity,
                        rel_tol=1e-6)
