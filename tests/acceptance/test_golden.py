"""Acceptance: cgc-tiny's golden numbers (survival audit, head density, perplexity) unchanged.

The numbers come from ``scripts/regenerate_golden.py`` (see tests/acceptance/golden.py); a
failure here means a change moved a result that users and the papers' tables rely on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.acceptance.golden import GOLDEN_FILE, RTOL, compute_golden


@pytest.fixture(scope="module")
def numbers():
    return compute_golden()


def _leaves(doc, prefix=""):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _leaves(value, f"{prefix}/{key}")
    else:
        yield prefix, doc


def test_golden_numbers_unchanged(numbers):
    golden = dict(_leaves(json.loads(GOLDEN_FILE.read_text())))
    fresh = dict(_leaves(numbers))
    assert set(fresh) == set(golden)
    for key, value in golden.items():
        np.testing.assert_allclose(fresh[key], value, rtol=RTOL, atol=0, err_msg=key)


def test_golden_numbers_are_plausible(numbers):
    """The stored numbers mean what they say: INT4 hurts more than INT8, densities in (0, 1]."""
    survival = numbers["survival"]
    assert survival["RTN INT8"]["mean_corr"] > survival["RTN INT4"]["mean_corr"]
    density = np.asarray(numbers["capability"]["density"])
    assert density.shape == (4, 4) and ((density > 0) & (density <= 1)).all()
    assert numbers["capability"]["ppl_eval_rtn4"] > numbers["capability"]["ppl_eval"]
