"""The survival audit on cgc-tiny with its embedded residual SAE: survival falls as bits fall,
the model comes back bit for bit, the results folder is complete, and the CLI runs."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

from cgc_lens.cli import add_study_arguments, run_study
from cgc_lens.studies.survival import SurvivalConfig, SurvivalResult, run_survival

SMALL = dict(tokens=8192, eval_tokens=4096, match_tokens=2048, progress=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: cgc-tiny's matrices are too small to gain from two, and on a machine
    other jobs keep busy two OpenMP threads ran this module 12× slower (220 s against 18 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def audit(_cgc_tiny_cached):
    model = copy.deepcopy(_cgc_tiny_cached)
    config = SurvivalConfig(bits=(8, 6, 4), match_pruning=6, **SMALL)
    return model, run_survival(config, model=model)


def test_survival_falls_as_bits_fall(audit, _cgc_tiny_cached):
    model, result = audit
    int8, int6, int4 = (result.summary(f"RTN INT{b}") for b in (8, 6, 4))
    assert int8.survived_pct >= int6.survived_pct >= int4.survived_pct
    assert int8.mean_corr >= int6.mean_corr >= int4.mean_corr
    assert int8.survived_pct > int4.survived_pct and int4.ppl > int8.ppl
    assert result.read_out == f"blocks.{model.cfg.n_layers // 2}.hook_resid_post"
    assert result.stability.null.passed and result.summary("reference").mean_corr == 1.0
    assert 0 < result.summary("magnitude matched RTN INT6").sparsity < 0.8
    reference = _cgc_tiny_cached.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_results_folder_complete(audit, tmp_path):
    _, result = audit
    out = result.save(tmp_path / "run")
    doc = json.loads((out / "results.json").read_text())
    names = [row["name"] for row in doc["conditions"]]
    assert names == ["reference", "RTN INT8", "RTN INT6", "RTN INT4", "magnitude matched RTN INT6"]
    for row in doc["conditions"]:
        assert {"name", "bits", "sparsity", "ppl", "ppl_delta_pct", "mean_corr", "median_corr",
                "survived_pct", "degraded_pct", "damaged_pct", "n_active"} <= set(row)
    assert doc["config"]["model"] == "cgc-tiny" and doc["versions"]["torch"]
    assert (out / "tables" / "features.csv").is_file() and (out / "report.html").is_file()
    figures = {p.stem for p in (out / "figures").glob("*.html")}
    assert {"taxonomy", "dissociation", "feature_scatter", "deciles"} <= figures
    back = SurvivalResult.load(out)
    assert back.conditions == result.conditions


def test_cli_runs(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_study_arguments(parser, "survival")
    args = parser.parse_args(["--bits", "8", "4", "--match-pruning", "none", "--tokens", "4096",
                              "--eval-tokens", "2048", "--no-progress", "--out", str(tmp_path)])
    assert run_study("survival", args) == 0
    printed = capsys.readouterr().out
    assert "RTN INT8" in printed and "survived_pct" in printed and "null check: passed" in printed
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [row["name"] for row in doc["conditions"]] == ["reference", "RTN INT8", "RTN INT4"]
    assert (tmp_path / "figures" / "taxonomy.html").is_file()
