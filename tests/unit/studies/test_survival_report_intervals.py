"""What a survival result shows of its intervals: the figures' error bars are the rows'
intervals, the ± columns are t·SE (scipy's t), the printed table fits 100 columns, and the
report's "how sure are we" paragraph and protocol line are generated from the numbers; a run on
a random tiny model with 4 groups of token blocks (its baseline check fails, allowed)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from scipy import stats

from cgc_lens.analysis.survival_intervals import SURVIVAL_STATS
from cgc_lens.cli_tables import TABLE_WIDTH, format_table
from cgc_lens.studies.survival import SurvivalConfig, run_survival
from cgc_lens.studies.survival.intervals_text import how_sure, protocol_text
from conftest import make_tiny_model

HOOK = "blocks.1.hook_resid_post"
G = 4
_BOUNDS = {"mean_corr": (-1.0, 1.0), "median_corr": (-1.0, 1.0)}


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=6, metadata=SAEMetadata(hook_name=HOOK)))
    gen = torch.Generator().manual_seed(1)
    tokens = {k: torch.randint(0, 61, (n, 16), generator=gen)
              for k, n in (("tokens", 24), ("eval_tokens", 8), ("match_tokens", 8))}  # fmt: skip
    config = SurvivalConfig(bits=(8, 4), batch_size=4, n_shards=4, active_rate=0.0,
                            progress=False, fragility_folds=2, n_groups=G,
                            allow=("baseline-perplexity",))  # fmt: skip
    return run_survival(config, model=make_tiny_model(), sae=sae, **tokens)


def _without_intervals(result):
    blank = {f"{s}_{k}": None for s in SURVIVAL_STATS for k in ("se", "ci_low", "ci_high")}
    rows = tuple(dataclasses.replace(c, **blank, n_groups=None) for c in result.conditions)
    return dataclasses.replace(result, conditions=rows, r_intervals={})


def _ends(result, name, stat):
    row = result.summary(name)
    return getattr(row, f"{stat}_ci_low"), getattr(row, f"{stat}_ci_high")


def _assert_bars(trace, result, stat, names):
    for name, y, up, down in zip(names, trace.y, trace.error_y.array, trace.error_y.arrayminus,
                                 strict=True):  # fmt: skip
        low, high = _ends(result, name, stat)
        assert y == getattr(result.summary(name), stat)
        assert y + up == pytest.approx(high, abs=1e-12)
        assert y - down == pytest.approx(low, abs=1e-12)


def test_figures_error_bars_are_the_results_intervals(result):
    assert all(c.n_groups == G for c in result.conditions)
    figs = result.figures()
    for trace in figs["taxonomy"].data:
        _assert_bars(trace, result, f"{trace.name}_pct", list(trace.x))
    line = figs["dissociation"].data[0]  # mean r against bits: the RTN rows
    rtn = {c.bits: c.name for c in result.conditions if c.format == "rtn"}
    _assert_bars(line, result, "mean_corr", [rtn[b] for b in line.x])
    assert "bits_per_weight" in figs  # rtn and magnitude: two formats
    for trace in figs["bits_per_weight"].data:
        stat = "mean_corr" if trace.xaxis == "x" else "survived_pct"
        _assert_bars(trace, result, stat, list(trace.text))
    plain = _without_intervals(result).figures()
    assert all(t.error_y.array is None for t in plain["taxonomy"].data)


def test_plus_minus_columns_are_t_times_se(result):
    table = result.tables()["conditions"]
    t = stats.t.ppf(0.975, G - 1)
    checked = 0
    for stat in SURVIVAL_STATS:
        assert list(table.columns).index(f"{stat}_pm") == list(table.columns).index(stat) + 1
        lo, hi = _BOUNDS.get(stat, (0.0, 100.0))
        unclipped = (table[f"{stat}_ci_low"] > lo) & (table[f"{stat}_ci_high"] < hi)
        # the ends are stored, the ± is read back from them: rounding of |estimate| ~ 1e-16
        np.testing.assert_allclose(table.loc[unclipped, f"{stat}_pm"],
                                   t * table.loc[unclipped, f"{stat}_se"], rtol=1e-12,
                                   atol=1e-14)  # fmt: skip
        checked += int(unclipped.sum())
    assert checked >= 3  # INT4's mean and median r at least
    plain = _without_intervals(result).tables()["conditions"]
    assert not [c for c in plain.columns if c.endswith("_pm")]


def test_printed_table_shows_plus_minus_within_100_columns(result):
    text = format_table(result)
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH
    assert "nan" not in text.lower() and f"over {G} groups of token blocks" in text
    table = result.tables()["conditions"]
    for _, row in table.iterrows():
        assert f"{row['mean_corr']:.4g} ± {row['mean_corr_pm']:.2g}" in text
        assert f"{row['survived_pct']:.4g} ± {row['survived_pct_pm']:.2g}" in text
    plain = format_table(_without_intervals(result))
    assert "±" not in plain and max(len(line) for line in plain.splitlines()) <= TABLE_WIDTH


def test_how_sure_paragraph_is_generated_from_the_numbers(result, tmp_path):
    text = how_sure(result)
    assert text.startswith("**How sure are we.**") and f"over {G} groups" in text
    for c in result.conditions:
        line = (f"- {c.name}: mean r {c.mean_corr:.3f} [{c.mean_corr_ci_low:.3f}, "
                f"{c.mean_corr_ci_high:.3f}]; {c.survived_pct:.1f}% survived "
                f"[{c.survived_pct_ci_low:.1f}, {c.survived_pct_ci_high:.1f}]")  # fmt: skip
        assert (line in text) == (c.name != "reference")
    # the focus condition's features whose r interval crosses a threshold, by a plain loop
    focus = result.stability.condition
    r, iv, cfg = result.r[focus], result.r_intervals[focus], result.config
    n = k = 0
    for i in range(r.size):
        if not (result.active[i] and np.isfinite(r[i]) and np.isfinite(iv[:, i]).all()):
            continue
        if result.reference.constant[i]:
            continue
        n += 1
        k += any(iv[1, i] < tau <= iv[2, i] for tau in (cfg.survived, cfg.damaged))
    found = re.search(r"(\d+) of (\d+) classified active features", text)
    assert found is not None and (int(found[1]), int(found[2])) == (k, n) and n > 0
    assert "No intervals" in how_sure(_without_intervals(result))

    report = (result.save(tmp_path / "run") / "report.html").read_text()
    assert "How sure are we." in report and "Protocol." in report


def test_protocol_line_from_the_run_and_each_outcome(result):
    p = result.info["protocol"]
    assert p["baseline_check"] == "failed (allowed)"  # random weights: worse than unigram
    text = protocol_text(result.info)
    assert f"{p['baseline_ppl']:.4g}" in text and f"{p['unigram_ppl']:.4g}" in text
    assert "**the baseline check failed**" in text and "without a bos token" in text
    base = {"prepend_bos": True, "source": "sae", "sae_prepend_bos": True,
            "baseline_ppl": 12.5, "unigram_ppl": 480.0, "baseline_check": "passed"}  # fmt: skip
    assert protocol_text({"protocol": base}).endswith(
        "unigram perplexity of 480: the baseline check passed."
    )
    skipped = {**base, "baseline_ppl": None, "unigram_ppl": None, "baseline_check": "skipped"}
    assert "check was skipped" in protocol_text({"protocol": skipped})
    forced = {**base, "prepend_bos": False, "source": "config"}
    assert "against the SAE's prepend_bos=True" in protocol_text({"protocol": forced})
    assert protocol_text({}) == ""
