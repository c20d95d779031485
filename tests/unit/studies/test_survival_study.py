"""The survival audit end to end on a random tiny model with random SAELens SAEs: streaming r
against numpy on materialised activations, the exact null, the model restored bit for bit (also
when the run raises), order independence, bad input, the results folder and the CLI options."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from sae_lens import (
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from unit.fake_assets import TEXTS, bpe_tokenizer
from unit.fake_releases import random_saelens_sae

from cgc_lens import CgcLensError
from cgc_lens.analysis import fragility_dataset
from cgc_lens.cli import add_study_arguments, study_config
from cgc_lens.compress import RTN, compressed
from cgc_lens.saes import attached, validate_sae
from cgc_lens.studies.survival import SurvivalConfig, SurvivalResult, run_survival
from conftest import make_tiny_model

HOOK = "blocks.1.hook_resid_post"
FAST = dict(batch_size=4, n_shards=4, active_rate=0.0, progress=False, fragility_folds=2,
            allow=("baseline-perplexity",))  # random untrained models: worse than unigram


def make_sae(kind: str = "topk", *, hook: str = HOOK, d_in: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook)
    if kind == "topk":  # sparse codes: the sparse path of the sums
        return TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=64, k=6, metadata=meta))
    return StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=48, metadata=meta))  # ~half fire


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(1)
    return {"tokens": torch.randint(0, 61, (24, 16), generator=gen),
            "eval_tokens": torch.randint(0, 61, (8, 16), generator=gen),
            "match_tokens": torch.randint(0, 61, (8, 16), generator=gen)}


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def codes(model, sae, tokens):
    """Materialised SAE codes ``[positions, d_sae]`` of all ``tokens`` (float64 numpy)."""
    target = validate_sae(model, sae)
    with torch.no_grad(), attached(model, [target]) as reading:
        model(tokens, stop_at_layer=2, return_type=None)
        return reading.features[target.key].reshape(-1, sae.cfg.d_sae).double().numpy()


def _assert_r_is_corrcoef(result, model, sae, tokens, *, bits: int) -> None:
    """The sweep's r of RTN INT``bits`` equals numpy.corrcoef on materialised codes (1e-9)."""
    x = codes(model, sae, tokens)
    with compressed(model, RTN(bits)):
        y = codes(model, sae, tokens)
    varies = (x.std(0) > 0) & (y.std(0) > 0)
    assert varies.sum() >= 10
    expected = np.array([np.corrcoef(x[:, i], y[:, i])[0, 1] for i in np.flatnonzero(varies)])
    np.testing.assert_allclose(result.r[f"RTN INT{bits}"][varies], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_streaming_r_equals_corrcoef(kind, tokens):
    model, sae = make_tiny_model(), make_sae(kind)
    config = SurvivalConfig(bits=(6, 3), match_pruning=None, cache_mb=0.001, **FAST)
    result = run_survival(config, model=model, sae=sae, **tokens)
    _assert_r_is_corrcoef(result, model, sae, tokens["tokens"], bits=3)
    assert result.conditions[0].tokens == tokens["tokens"].numel()
    assert result.info["n_chunks"] > 1  # the cache budget forced several chunks


def test_null_condition_is_exact_and_reference_row(tokens):
    model, sae = make_tiny_model(), make_sae()
    result = run_survival(SurvivalConfig(bits=(4,), match_pruning=None, **FAST),
                          model=model, sae=sae, **tokens)
    null = result.summary("reference")
    assert null.mean_corr == 1.0 and f"{null.mean_corr:.6f}" == "1.000000"
    assert null.survived_pct == 100.0 and null.damaged_pct == 0.0 and null.ppl_delta_pct == 0.0
    assert result.stability.null is not None and result.stability.null.passed
    assert null.bits == 32.0 and result.summary("RTN INT4").mean_corr < 1.0


def test_model_bit_identical_after_run_and_after_an_error(tokens):
    model, sae = make_tiny_model(), make_sae()
    before = state(model)
    config = SurvivalConfig(bits=(8, 3), match_pruning=4, **FAST)
    run_survival(config, model=model, sae=sae, **tokens)
    assert_same_state(model, before)

    calls = {"n": 0}
    encode = sae.encode

    def failing(x):  # fails inside a compressed(...) block of the sweep
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("boom")
        return encode(x)

    sae.encode = failing
    with pytest.raises(RuntimeError, match="boom"):
        run_survival(config, model=model, sae=sae, **tokens)
    assert calls["n"] == 9
    assert_same_state(model, before)


def test_conditions_order_independent(tokens):
    sae = make_sae()
    runs = [run_survival(SurvivalConfig(bits=bits, match_pruning=None, null=False, **FAST),
                         model=make_tiny_model(), sae=sae, **tokens) for bits in ((8, 3), (3, 8))]
    for name in ("RTN INT8", "RTN INT3"):
        np.testing.assert_array_equal(runs[0].r[name], runs[1].r[name])
        assert runs[0].summary(name) == runs[1].summary(name)


def test_chunking_does_not_change_the_sums(tokens):
    sae = make_sae()
    runs = [run_survival(SurvivalConfig(bits=(4,), match_pruning=None, cache_mb=mb, **FAST),
                         model=make_tiny_model(), sae=sae, **tokens) for mb in (0, 64)]
    assert runs[0].info["n_chunks"] == 6 and runs[1].info["n_chunks"] == 1
    np.testing.assert_array_equal(runs[0].r["RTN INT4"], runs[1].r["RTN INT4"])


@pytest.mark.parametrize("kind", ["jumprelu", "topk"])
def test_fast_sweep_matches_corrcoef(kind, tokens):
    model, sae = make_tiny_model(), random_saelens_sae(kind, 32, 96, 6)
    config = SurvivalConfig(bits=(4,), match_pruning=None, cache_mb=0.001, **FAST)
    result = run_survival(config, model=model, sae=sae, **tokens)
    _assert_r_is_corrcoef(result, model, sae, tokens["tokens"], bits=4)
    null = result.summary("reference")
    assert null.mean_corr == 1.0 and null.survived_pct == 100.0


def test_matched_pruning_analyses_and_results_folder(tokens, tmp_path):
    model, sae = make_tiny_model(), make_sae("relu")
    assert SurvivalConfig(bits=(8, 6, 3)).focus_name == "RTN INT6"
    config = SurvivalConfig(bits=(8, 6, 3), match_pruning=3, focus="RTN INT3", **FAST)
    result = run_survival(config, model=model, sae=sae, **tokens)
    name = "magnitude matched RTN INT3"
    match = result.matches[name]
    assert 0 < match.level < 0.8 and result.summary(name).sparsity == match.level
    assert result.overlaps[0].name_a == "RTN INT3" and result.overlaps[0].name_b == name
    assert result.stability.condition == "RTN INT3"
    assert len(result.stability.budget) == 3 and len(result.stability.subsets) == 3
    assert result.stability.thresholds.shape == (20, 5)
    assert set(result.deciles["condition"]) == {"RTN INT8", "RTN INT6", "RTN INT3", name}
    table = result.to_frame()
    assert list(table["name"]) == list(config.condition_names)
    assert (table["ppl"] > 0).all() and table.loc[0, "ppl_delta_pct"] == 0

    # the fragility AUC, by hand: sklearn's roc_auc_score on the same stratified folds
    X, y = fragility_dataset(result.reference, result.r["RTN INT3"], result.active)
    folds = StratifiedKFold(2, shuffle=True, random_state=config.seed).split(X, y)
    aucs = [roc_auc_score(y[test], make_pipeline(StandardScaler(), LogisticRegression())
                          .fit(X.values[train], y[train]).decision_function(X.values[test]))
            for train, test in folds]
    assert result.fragility is not None and result.fragility.n_features == len(y)
    np.testing.assert_allclose(result.fragility.fold_aucs, aucs, rtol=1e-12)
    assert result.fragility.cv_auc == pytest.approx(np.mean(aucs), rel=1e-12)

    out = result.save(tmp_path / "run")
    doc = json.loads((out / "results.json").read_text())
    keys = {"name", "bits", "sparsity", "ppl", "ppl_delta_pct", "mean_corr", "median_corr",
            "survived_pct", "degraded_pct", "damaged_pct", "n_active"}
    assert keys <= set(doc["conditions"][0]) and doc["config"]["bits"] == [8, 6, 3]
    assert "torch" in doc["versions"]
    assert (out / "tables" / "features.csv").is_file() and (out / "report.html").is_file()
    assert {p.stem for p in (out / "figures").glob("*.html")} >= {
        "taxonomy", "dissociation", "feature_scatter", "deciles"}
    back = SurvivalResult.load(out)
    assert back.conditions == result.conditions and back.config == config
    np.testing.assert_array_equal(back.r["RTN INT3"], result.r["RTN INT3"])
    assert back.matches[name] == match
    if result.fragility is not None:
        assert back.fragility.cv_auc == result.fragility.cv_auc
        assert len(back.fragility.roc_curves) == len(result.fragility.roc_curves)


def test_bad_inputs_raise(tokens, tmp_path, unchecked):
    model = make_tiny_model()
    config = SurvivalConfig(bits=(4,), match_pruning=None, **FAST)
    with pytest.raises(CgcLensError, match=r"Closest: \['blocks\.1\.hook_resid_post'"):
        run_survival(config, model=model, sae=make_sae(hook="blocks.1.hook_resid_pots"),
                     **tokens)
    with pytest.raises(CgcLensError, match="does not fit"):
        run_survival(config, model=model, sae=make_sae(d_in=16), **tokens)
    for bits in ((1,), (17,), (8, 8)):
        with pytest.raises(CgcLensError, match="bits"):
            SurvivalConfig(bits=bits)
    with pytest.raises(CgcLensError, match="at least one block"):
        run_survival(config, model=model, sae=make_sae(),
                     **{**tokens, "tokens": torch.zeros(0, 16, dtype=torch.long)})
    empty = tmp_path / "corpus"
    empty.mkdir()
    model.set_tokenizer(bpe_tokenizer(60))
    with pytest.raises(CgcLensError, match="found none"):
        run_survival(config.replace(corpus=str(empty)), model=model, sae=make_sae())
    with pytest.raises(CgcLensError, match="Closest"):
        SurvivalConfig(match_pruning="RTN INT7", bits=(8, 6))
    with pytest.raises(CgcLensError, match="Unknown SurvivalConfig field"):
        SurvivalConfig.from_dict({"bitz": [4]})


def test_tokens_drawn_from_a_local_corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, text in enumerate(TEXTS):
        (folder / f"doc{i}.txt").write_text(text * 150)
    model = make_tiny_model(d_vocab=320)
    model.set_tokenizer(bpe_tokenizer(300))
    config = SurvivalConfig(corpus=str(folder), bits=(4,), match_pruning=4, tokens=512,
                            block_len=16, eval_tokens=256, match_tokens=128, ppl_window=32,
                            ppl_stride=8, **FAST)
    result = run_survival(config, model=model, sae=make_sae())
    assert result.info["tokens"] == {"features": 512, "eval": 256, "match": 128}
    assert result.summary("RTN INT4").ppl is not None
    assert set(result.info["sliding_ppl"]) == set(config.condition_names)


def test_cli_options_build_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_study_arguments(parser, "survival")
    args = parser.parse_args(["--bits", "8", "4", "--match-pruning", "4", "--tokens", "2048",
                              "--seed", "3", "--no-null", "--out", str(tmp_path)])
    config = study_config("survival", args)
    assert config.bits == (8, 4) and config.match_pruning == 4 and config.tokens == 2048
    assert config.seed == 3 and not config.null and config.model == "cgc-tiny"
    args = parser.parse_args(["--config", "survival_pythia70m", "--tokens", "1024",
                              "--match-pruning", "none", "--out", str(tmp_path)])
    config = study_config("survival", args)
    assert config.model == "pythia-70m-deduped" and config.tokens == 1024
    assert config.match_pruning is None and config.block_len == 512


@pytest.mark.parametrize("name", ["survival_pythia70m", "survival_gemma2b"])
def test_reproduction_configs_load(name):
    config = SurvivalConfig.from_json(name)
    assert config.sae_source[1] is not None and config.bits == (8, 7, 6, 5, 4)
    assert config.match_pruning == 6


def test_second_read_out_layer_in_the_same_passes(tokens):
    model, sae = make_tiny_model(), make_sae()
    second = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    config = SurvivalConfig(bits=(6, 3), match_pruning=None, **FAST)
    result = run_survival(config, model=model, sae=sae, second_sae=second, **tokens)
    table = result.stability.second_layer
    assert list(table["layer"]) == [0, 0, 0] and list(table["name"]) == list(config.condition_names)
    assert table.loc[0, "mean_corr"] == 1.0 and result.conditions[0].layer == 1
    alone = run_survival(config, model=make_tiny_model(), sae=sae, **tokens)
    np.testing.assert_array_equal(alone.r["RTN INT3"], result.r["RTN INT3"])
