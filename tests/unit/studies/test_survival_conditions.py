"""Survival conditions by spec on a random tiny model: bits as shorthand for int<b>, every row
with its format and effective bits per weight, Wanda calibrated on the calibration tokens,
matched:SPEC, and a group size not dividing a weight refused before anything runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from cgc_lens import CgcLensError
from cgc_lens.compress import Plan, WandaPrune
from cgc_lens.compress.specs import parse_condition, plan_bits_per_weight
from cgc_lens.studies.survival import SurvivalConfig, SurvivalResult, run_survival
from cgc_lens.studies.survival.config import PlanCondition
from conftest import make_tiny_model

FAST = dict(batch_size=4, n_shards=4, active_rate=0.0, progress=False, fragility_folds=2,
            allow=("baseline-perplexity",))  # random untrained models: worse than unigram


@pytest.fixture(scope="module")
def model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    cfg = TopKSAEConfig(
        d_in=32, d_sae=64, k=6, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")
    )
    return TopKSAE(cfg)


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(1)
    return {
        "tokens": torch.randint(0, 61, (24, 16), generator=gen),
        "eval_tokens": torch.randint(0, 61, (8, 16), generator=gen),
        "match_tokens": torch.randint(0, 61, (8, 16), generator=gen),
        "calibration_tokens": torch.randint(0, 61, (8, 16), generator=gen),
    }


def _run(model, sae, tokens, **config):
    cfg = SurvivalConfig(**{**FAST, "match_pruning": None, **config})
    return run_survival(cfg, model=model, sae=sae, **tokens)


def test_bits_are_shorthand_for_int_specs(model, sae, tokens):
    by_bits = _run(model, sae, tokens, bits=(8, 4))
    by_spec = _run(model, sae, tokens, conditions=("int8", "int4"))
    assert [c.name for c in by_bits.conditions] == ["reference", "RTN INT8", "RTN INT4"]
    assert [c.name for c in by_spec.conditions] == ["reference", "int8", "int4"]
    for old, new in (("RTN INT8", "int8"), ("RTN INT4", "int4")):
        np.testing.assert_array_equal(by_bits.r[old], by_spec.r[new])
        a, b = by_bits.summary(old), by_spec.summary(new)
        assert (a.spec, a.format, a.bits, a.bits_per_weight) == (
            b.spec,
            b.format,
            b.bits,
            b.bits_per_weight,
        )
        assert a.spec == new and a.format == "rtn"
    # int4 per channel: 4 bits + a float16 scale per output row; per layer W_Q, W_K, W_V, W_O
    # are 32 x 32, W_in 64 x 32, W_out 32 x 64: 224 rows over 8192 weights
    assert by_spec.summary("int4").bits_per_weight == pytest.approx(4 + 16 * 224 / 8192)
    assert SurvivalConfig(conditions=("nf4",)).bits == ()
    assert SurvivalConfig().bits == (8, 7, 6, 5, 4)


def test_every_row_records_its_format_and_bits_per_weight(model, sae, tokens, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    specs = ("int4-g16-asym", "nf4", "fp8", "2:4", "wanda-0.5", "matched:int4")
    result = _run(model, sae, tokens, conditions=specs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    rows = {c.name: c for c in result.conditions}
    assert list(rows) == ["reference", *specs]
    assert (rows["reference"].format, rows["reference"].bits_per_weight) == ("dense", 16.0)
    for spec in specs[:-1]:
        op, meta = parse_condition(spec)
        row = rows[spec]
        assert (row.spec, row.format, row.group_size) == (spec, meta.format, meta.group_size)
        assert row.bits_per_weight == plan_bits_per_weight(Plan.of(op), model)
    assert rows["int4-g16-asym"].bits_per_weight == pytest.approx(4 + (16 + 4) / 16)
    assert rows["nf4"].bits_per_weight == 4.5 and rows["2:4"].bits_per_weight == 9.0
    level = result.matches["matched:int4"].level
    assert rows["matched:int4"].sparsity == level
    assert rows["matched:int4"].bits_per_weight == pytest.approx(16 * (1 - level) + 1)
    assert rows["matched:int4"].format == "magnitude"
    assert "int4" not in rows and result.overlaps == ()  # the target only sets the search

    fig = result.figures()["bits_per_weight"]  # one marker per condition, one colour a format
    drawn = {
        (name, x) for t in fig.data if t.xaxis == "x" for name, x in zip(t.text, t.x, strict=True)
    }
    assert drawn == {(c.name, c.bits_per_weight) for c in result.conditions}
    assert {t.name for t in fig.data} == {c.format for c in result.conditions}
    out = result.save(tmp_path / "run")
    saved = json.loads((out / "results.json").read_text())["conditions"]
    assert [r["bits_per_weight"] for r in saved] == [rows[r["name"]].bits_per_weight for r in saved]
    assert SurvivalResult.load(out).summary("nf4") == rows["nf4"]


def test_wanda_is_calibrated_on_the_calibration_tokens(model, sae, tokens):
    by_spec = _run(model, sae, tokens, conditions=("wanda-0.5",))
    calibrated = Plan.of(WandaPrune(0.5)).calibrate(
        model, tokens["calibration_tokens"], batch_size=4
    )
    by_plan = _run(model, sae, tokens, bits=(), plans=(PlanCondition(name="w", plan=calibrated),))
    np.testing.assert_array_equal(by_spec.r["wanda-0.5"], by_plan.r["w"])
    other = {**tokens, "calibration_tokens": tokens["eval_tokens"]}
    assert not np.array_equal(
        _run(model, sae, other, conditions=("wanda-0.5",)).r["wanda-0.5"], by_spec.r["wanda-0.5"]
    )


def test_group_size_not_dividing_is_refused_before_anything_runs(model, sae, tokens):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_tokens = {**tokens, "tokens": tokens["tokens"] + 1000}  # would be refused later
    with pytest.raises(CgcLensError) as err:
        _run(model, sae, bad_tokens, conditions=("int4", "int4-g24"))
    assert "blocks.0.attn.W_Q" in str(err.value) and "'int4-g24'" in str(err.value)
    assert "1, 2, 4, 8, 16, 32" in str(err.value)
    with pytest.raises(CgcLensError, match=r"W_in.*'matched:int4-g48'|'int4-g48'"):
        _run(model, sae, bad_tokens, conditions=("matched:int4-g48",))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (dict(conditions=("int4-g128x",)), "Closest"),
        (dict(bits=(4,), conditions=("int4",)), "must not repeat"),
        (dict(conditions=("",)), "non-empty spec"),
    ],
)
def test_bad_conditions_are_refused_by_the_config(config, says):
    with pytest.raises(CgcLensError, match=says):
        SurvivalConfig(**config)


def test_config_round_trip_and_run_order():
    cfg = SurvivalConfig(bits=(6,), conditions=("matched:nf4", "nf4", "2:4"), match_pruning=6)
    assert cfg.condition_names == (
        "reference",
        "RTN INT6",
        "nf4",
        "2:4",
        "matched:nf4",
        "magnitude matched RTN INT6",
    )
    assert cfg.matched == (
        ("matched:nf4", "nf4", "nf4"),
        ("magnitude matched RTN INT6", "RTN INT6", "int6"),
    )
    assert SurvivalConfig.from_dict(cfg.to_dict()) == cfg
    assert not cfg.needs_calibration and SurvivalConfig(conditions=("wanda-2:4",)).needs_calibration
