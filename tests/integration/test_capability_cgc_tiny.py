"""The capability study on cgc-tiny through the CLI (``--config`` plus overrides), few tokens.

One run (about a minute on 2 CPU cores) feeds every check: the results folder, the budget and
ceilings, CGC-F against CGC-L and Uniform, the probes and the Theorem 1 arrays.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cgc_lens.cli import main
from cgc_lens.studies.capability import CapabilityConfig
from cgc_lens.studies.capability.result import METHODS, CapabilityResult

SMALL = {
    "calibration_tokens": 4096, "eval_tokens": 1024, "survival_tokens": 2048,
    "survival_retentions": [0.75, 0.5, 0.25], "probes": ["induction", "arithmetic"],
    "evo": {"generations": 6, "offspring": 6, "survivors_per_stage": [2, 1],
            "tokens_per_stage": [512, 2048], "progress": False},
    "retention": 0.3,  # overridden on the command line below
}
# CGC-F is chosen on calibration tokens; on held-out tokens its KL may differ by sampling noise.
# 1,024 held-out tokens (8 blocks) give a mean KL with a few-percent standard error, so CGC-F
# may trail its competitors there by at most this fraction (it never trails on calibration).
HELD_OUT_RTOL = 0.05


@pytest.fixture(scope="module")
def run(_cgc_tiny_cached, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cgc")
    config = folder / "small.json"
    config.write_text(json.dumps(SMALL))
    t0 = time.perf_counter()
    status = main(["cgc", "--config", str(config), "--retention", "0.5", "--no-progress",
                   "--out", str(folder / "out")])
    return {"status": status, "out": folder / "out", "seconds": time.perf_counter() - t0}


def test_cli_writes_the_results_folder(run):
    assert run["status"] == 0
    out = run["out"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["retention"] == 0.5 and doc["config"]["calibration_tokens"] == 4096
    assert doc["config"]["evo"]["generations"] == 6
    for key in ("density", "breadth", "entropy", "consistency", "wanda", "ablation_dppl"):
        assert np.asarray(doc[key], dtype=float).shape == (4, 4), key
    density = np.asarray(doc["density"], dtype=float)
    assert ((density > 0) & (density <= 1)).all()
    assert doc["consistency_categories"] == "corpus"
    assert set(doc["allocations"]) == set(METHODS)
    assert (out / "report.html").is_file() and (out / "figures" / "density_heatmap.html").is_file()
    print(f"cgc-tiny study through the CLI: {run['seconds']:.1f} s; timings {doc['timings']}")


def test_budget_ceilings_and_cgc_f_against_cgc_l_and_uniform(run):
    res = CapabilityResult.load(run["out"])
    assert isinstance(res.config, CapabilityConfig)
    for method in ("uniform", "cgc_l", "inverted", "cgc_f"):
        a = res.allocations[method]
        assert a.global_retention == pytest.approx(0.5, abs=1e-9), method
        if a.ceilings is not None:
            assert (a.retention <= a.ceilings + 1e-9).all(), method
    cal = {m: res.scores[m]["kl_calibration"] for m in ("uniform", "cgc_l", "cgc_f")}
    assert cal["cgc_f"] <= min(cal["uniform"], cal["cgc_l"]) + 1e-12  # by construction
    held = {m: res.scores[m]["kl"] for m in ("uniform", "cgc_l", "cgc_f")}
    assert held["cgc_f"] <= min(held["uniform"], held["cgc_l"]) * (1 + HELD_OUT_RTOL), held
    assert res.search is not None and res.search.history[-1] <= res.search.history[0]


def test_probes_and_ablation_say_something(run):
    res = CapabilityResult.load(run["out"])
    table = res.table()
    # cgc-tiny copies in context: the second copy of random tokens is far easier than the first
    assert table.loc["dense", "induction.copy_ratio"] < 0.5
    assert table.loc["dense", "arithmetic.accuracy"] > 0.0
    assert (table["ppl"].drop("dense") >= table.loc["dense", "ppl"] * 0.99).all()
    assert np.nanmax(res.ablation.delta_ppl) > 0.0  # some head matters
    t1 = res.theorem1
    finite = t1.destruction[np.isfinite(t1.destruction)]
    assert finite.size and ((finite >= 0) & (finite <= 1)).all()
    assert t1.delta_ppl is not None and t1.delta_ppl.shape == (4, 4, 3)
