"""The AdaptiveCompress study end to end on a random tiny model: both methods side by side,
probing against the majority baseline, collapse diagnostics, results folder, CLI."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cgc_lens import CgcLensError
from cgc_lens.adaptive import (
    DIAGNOSTICS,
    AdaptiveCompressor,
    AdaptiveTrainConfig,
    CollapseThresholds,
    collapse_diagnostics,
)
from cgc_lens.adaptive.data import StudyData
from cgc_lens.adaptive.evaluate import LabelledTokens, evaluate_methods, pooled_features
from cgc_lens.cli import add_study_arguments, run_study
from cgc_lens.forward.streaming import collect_activations
from cgc_lens.plots.adaptive import plot_probing, plot_quality_comparison
from cgc_lens.saes import SAEQuality
from cgc_lens.studies.adaptive import AdaptiveResult, AdaptiveStudyConfig, run_adaptive
from cgc_lens.studies.adaptive import run as study

CATS = ("fiction", "code", "speech")


def _labelled(n: int, seed: int) -> LabelledTokens:
    """Rows whose first half comes from a category-specific token range."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 61, (n, 16), generator=gen)
    for i in range(n):
        tokens[i, :8] = 20 * (i % 3) + torch.randint(0, 10, (8,), generator=gen)
    return LabelledTokens(tokens=tokens, labels=tuple(CATS[i % 3] for i in range(n)))


@pytest.fixture
def data() -> StudyData:
    gen = torch.Generator().manual_seed(0)
    return StudyData(train=torch.randint(0, 61, (32, 16), generator=gen),
                     eval=torch.randint(0, 61, (8, 16), generator=gen),
                     probes={"toy": (_labelled(48, 1), _labelled(24, 2))})


def _config(**train) -> AdaptiveStudyConfig:
    return AdaptiveStudyConfig(model="random-tiny", model_batch_size=8, progress=False,
                               train=AdaptiveTrainConfig(**{"steps": 8, "batch_size": 8,
                                                            "log_every": 2, **train}))


def test_study_reports_both_methods_probing_and_diagnostics(tiny_model, data, tmp_path):
    result = run_adaptive(_config(lr=3e-3), model=tiny_model, data=data)
    m = result.metrics
    assert sorted(zip(m["method"], m["layer"], strict=True)) == [
        ("adaptive", 0), ("adaptive", 1), ("topk", 0), ("topk", 1)]
    for column in ("mse", "explained_variance", "l0", "l1", "kl", "ce_loss_recovered",
                   "latent_contribution"):
        assert m[column].notna().all(), column
    assert (m.loc[m["method"] == "topk", "l0"] <= 32 // 8).all()    # baseline k = d_sae // 8
    p = result.probing
    assert set(p["method"]) == {"resid", "adaptive", "topk"} and set(p["k"]) == {1, 2, 5}
    assert set(p["task"]) == {f"{c} vs rest" for c in CATS} | {"multiclass"}
    assert np.allclose(p.loc[p["task"] == "multiclass", "majority_accuracy"], 1 / 3)
    assert (p.loc[p["task"] != "multiclass", "majority_accuracy"] == 0.5).all()
    assert len(result.diagnostics) == 2 * 2 * len(DIAGNOSTICS)
    assert set(result.collapsed) == {"adaptive", "topk"}

    out = result.save(tmp_path / "run")
    doc = json.loads((out / "results.json").read_text())
    assert doc["study"] == "adaptive" and doc["config"]["train"]["steps"] == 8
    assert set(doc["metrics"]["blocks.1.hook_resid_post"]) == {"adaptive", "topk"}
    assert {"accuracy", "majority_accuracy", "k", "method"} <= set(doc["probing"][0])
    assert len(doc["diagnostics"]) == len(result.diagnostics) and "any_collapsed" in doc
    for name in ("quality", "probing", "training_curves", "diagnostics"):
        assert (out / "figures" / f"{name}.html").is_file()
    assert (out / "compressor" / "weights.safetensors").is_file()
    assert (out / "baseline" / "weights.safetensors").is_file()
    back = AdaptiveResult.load(out)
    assert back.config == result.config and back.diagnostics == result.diagnostics
    pd.testing.assert_frame_equal(back.metrics, result.metrics, check_dtype=False)
    assert back.probing["latents"].tolist() == result.probing["latents"].tolist()
    loaded = AdaptiveCompressor.load(out / "compressor")
    x = torch.randn(3, 2, 32)
    torch.testing.assert_close(loaded(x), result.compressor(x))


def test_far_too_high_l1_is_reported_as_collapse(tiny_model, data, caplog):
    caplog.set_level(logging.WARNING)
    result = run_adaptive(_config(l1_coef=1e3, lr=5e-2, steps=16, baseline=False),
                          model=tiny_model,
                          data=data)
    assert set(result.metrics["method"]) == {"adaptive"}
    fired = result.collapsed["adaptive"]
    for site in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        assert {"zero_l0", "dead_latents", "latents_unused"} <= set(fired[site]), fired
    assert result.any_collapsed
    assert "collapse: adaptive at blocks.0.hook_resid_post: zero_l0" in caplog.text
    healthy = run_adaptive(_config(lr=3e-3), model=tiny_model, data=data)
    assert not healthy.collapsed["adaptive"]["blocks.1.hook_resid_post"]


def test_collapse_checks_fire_on_their_own_conditions(caplog):
    def q(**kw):
        base = {"n_tokens": 9, "mse": 1.0, "sse_per_token": 1.0, "explained_variance": 0.8,
                "l0": 5.0, "l1": 3.0, "dead_fraction": 0.1, "dense_fraction": 0.0}
        return SAEQuality(**{**base, **kw})

    quality = {"ok": q(), "ev": q(explained_variance=-0.785), "nan": q(l0=float("nan")),
               "dead": q(dead_fraction=0.6)}
    losses = {"ok": [3.0, 2.0, 1.0], "ev": [1.0, 20.0], "nan": [1.0, float("nan")],
              "dead": [2.0, 1.5]}
    gain = {"ok": 0.6, "ev": 0.3, "nan": 0.2, "dead": 0.01}
    diags = collapse_diagnostics(quality, method="adaptive", losses=losses,
                                 latent_contribution=gain,
                                 thresholds=CollapseThresholds(max_loss_growth=10))
    fired = {(d.site, d.name) for d in diags if d.fired}
    assert fired == {("ev", "negative_explained_variance"), ("ev", "exploding_loss"),
                     ("nan", "zero_l0"), ("nan", "exploding_loss"), ("dead", "dead_latents"),
                     ("dead", "latents_unused")}
    assert len(diags) == 4 * len(DIAGNOSTICS) and caplog.text.count("collapse:") == 6
    assert len(collapse_diagnostics(quality, method="m")) == 4 * 3   # no losses, no gains
    with pytest.raises(CgcLensError, match="max_loss_growth"):
        CollapseThresholds(max_loss_growth=1.0)


def test_latent_contribution_is_measured_against_the_zeroed_code(tiny_model):
    comp = AdaptiveCompressor([study.Site.resid_post(1)], 32, seed=0)
    with torch.no_grad():
        comp.b_dec.normal_()
    tokens = torch.randint(0, 61, (4, 16))
    (row,) = evaluate_methods(tiny_model, tokens, comp, batch_size=2, progress=False)
    x = collect_activations(tiny_model, tokens, comp.sites, progress=False)
    x = x["blocks.1.hook_resid_post"].reshape(-1, 32).double()
    floor = 0.1 * x + comp.b_dec[0].detach().double()
    ev0 = 1 - (x - floor).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert row["explained_variance_without_latents"] == pytest.approx(float(ev0), rel=1e-5)
    assert row["latent_contribution"] == pytest.approx(
        row["explained_variance"] - float(ev0), rel=1e-5)


def test_pooled_features_average_valid_positions_only(tiny_model):
    comp = AdaptiveCompressor([study.Site.resid_post(0)], 32, seed=0)
    tokens = torch.randint(0, 61, (3, 10))
    padded = tokens.clone()
    padded[0, 6:] = 0
    data = LabelledTokens(tokens=padded, labels=("a", "b", "a"), lengths=torch.tensor([6, 10, 10]))
    pooled = pooled_features(tiny_model, data, comp, batch_size=2, progress=False)
    short = pooled_features(tiny_model, LabelledTokens(tokens=tokens[:1, :6], labels=("a",)),
                            comp, progress=False)
    np.testing.assert_allclose(pooled["resid"][0], short["resid"][0], atol=1e-5)
    np.testing.assert_allclose(pooled["adaptive"][0], short["adaptive"][0], atol=1e-5)
    assert pooled["adaptive"].shape == (3, 1, 32) and "topk" not in pooled


def test_cli_parses_into_the_configs_and_writes_results(tiny_model, data, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_study_arguments(parser, "adaptive")
    args = parser.parse_args(["--layers", "1", "--steps", "4", "--batch-size", "8",
                              "--l1-coef", "0.5", "--no-progress", "--ks", "1", "2",
                              "--max-dead-fraction", "0.9", "--out", str(tmp_path / "o")])
    monkeypatch.setattr("cgc_lens.models.load_model", lambda name, device=None: tiny_model)
    monkeypatch.setattr(study, "study_data", lambda model, **kw: data)
    assert run_study("adaptive", args) == 0
    back = AdaptiveResult.load(tmp_path / "o")
    cfg = back.config
    assert cfg.model == "cgc-tiny" and cfg.layers == (1,) and cfg.train.steps == 4
    assert cfg.train.l1_coef == 0.5 and cfg.probing.ks == (1, 2)
    assert cfg.thresholds.max_dead_fraction == 0.9 and cfg.compressor.ema_decay == 0.99
    assert set(back.metrics["site"]) == {"blocks.1.hook_resid_post"}
    help_text = parser.format_help()
    assert "λ of Eq. 5" in help_text and "--out" in help_text


def test_bad_study_input_raises(tiny_model, data, unchecked):
    with pytest.raises(CgcLensError, match=r"Layers \[7\] do not exist.*valid are 0\.\.1"):
        run_adaptive(AdaptiveStudyConfig(layers=(7,), progress=False), model=tiny_model,
                     data=data)
    with pytest.raises(CgcLensError, match="layers must be distinct"):
        AdaptiveStudyConfig(layers=(1, 1))
    with pytest.raises(CgcLensError, match="train must be a AdaptiveTrainConfig"):
        AdaptiveStudyConfig(train={"steps": 3})
    with pytest.raises(CgcLensError, match="one label"):
        LabelledTokens(tokens=torch.zeros(2, 3, dtype=torch.long), labels=("a",))
    with pytest.raises(CgcLensError, match="needs columns"):
        plot_quality_comparison(pd.DataFrame({"method": ["adaptive"]}))
    with pytest.raises(CgcLensError, match="probing table is empty"):
        plot_probing(pd.DataFrame(columns=["method", "site", "task", "k", "accuracy",
                                           "majority_accuracy"]))
