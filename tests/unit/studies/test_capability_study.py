"""The capability study end to end on a random tiny model with tiny SAEs trained for a few steps."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from cgc_lens.analysis.density import DensityConfig
from cgc_lens.analysis.evolution import EvoConfig
from cgc_lens.cli import add_study_arguments
from cgc_lens.data import TokenBlocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import perplexity
from cgc_lens.io.configs import CONFIG_DIR
from cgc_lens.studies.capability import CapabilityConfig, run_capability
from cgc_lens.studies.capability.result import METHODS, CapabilityResult
from conftest import make_tiny_model


def _blocks(n: int, seed: int, cats=("prose", "code", "maths")) -> TokenBlocks:
    tokens = torch.randint(0, 61, (n, 32), generator=torch.Generator().manual_seed(seed))
    return TokenBlocks(tokens=tokens, categories=tuple(cats[i % len(cats)] for i in range(n)),
                       starts=torch.arange(n) * 32, source="random", split="x", seed=seed,
                       stream_len=n * 32)


CONFIG = CapabilityConfig(
    model="random-tiny", saes="train", d_sae=32, k=4, sae_max_steps=5, sae_batch_size=64,
    density=DensityConfig(n_pairs=200),
    evo=EvoConfig(generations=2, offspring=4, survivors_per_stage=(2, 1),
                  tokens_per_stage=(64, 192), progress=False),
    probes=("induction",), survival_retentions=(0.75, 0.5, 0.1), survival_tokens=256,
    progress=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.manual_seed(0)
    model = make_tiny_model()
    with torch.no_grad():
        model.blocks[1].attn.W_O[2] = 0.0  # a dead head: Wanda 0 and ΔPPL 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration, evaluation = _blocks(24, 0), _blocks(12, 1)
    result = run_capability(CONFIG, model=model, calibration=calibration, evaluation=evaluation)
    out = result.save(tmp_path_factory.mktemp("capability"))
    return {"model": model, "before": before, "result": result, "out": out,
            "evaluation": evaluation}


def test_runs_end_to_end_and_restores_the_model(study):
    model, before = study["model"], study["before"]
    after = model.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in before.items())
    res = study["result"]
    assert res.scores["dense"]["ppl"] == pytest.approx(
        perplexity(model, study["evaluation"], progress=False), rel=1e-6)
    assert list(res.table().index) == list(METHODS)
    assert "induction.copy_ratio" in res.table().columns
    assert res.to_frame().shape[0] == 8


def test_results_json_has_the_keys_and_shapes(study):
    doc = json.loads((study["out"] / "results.json").read_text())
    for key in ("density", "breadth", "entropy", "consistency", "wanda", "ablation_dppl"):
        assert np.asarray(doc[key], dtype=float).shape == (2, 4), key
    assert set(doc["spearman_density_wanda"]) >= {"rho", "p"}
    assert set(doc["corr_density_ablation"]) >= {"pearson", "pearson_p", "spearman",
                                                  "spearman_p"}
    assert set(doc["allocations"]) == set(METHODS)
    for method, row in doc["allocations"].items():
        assert {"ppl", "delta_ppl", "probes", "retention"} <= set(row), method
        assert np.asarray(row["retention"]).shape == (2, 4)
        assert "induction.copy_ratio" in row["probes"]
    assert doc["allocations"]["dense"]["delta_ppl"] == 0.0
    assert doc["config"]["model"] == "random-tiny" and "torch" in doc["versions"]
    t1 = doc["theorem1"]
    assert np.asarray(t1["destruction"], dtype=float).shape == (2, 4, 3)
    assert len(t1["spearman_density"]) == 3
    figures = {p.stem for p in (study["out"] / "figures").glob("*.html")}
    assert {"density_heatmap", "density_wanda_ranks", "density_vs_ablation",
            "reallocation_cgc_l", "allocation_bars", "search_history",
            "destruction_vs_density"} <= figures


def test_dead_head_has_zero_wanda_and_zero_dppl(study):
    res = study["result"]
    assert res.wanda[1, 2] == 0.0 and res.ablation.delta_ppl[1, 2] == 0.0
    assert (np.delete(res.wanda.ravel(), 6) > 0).all()


def test_allocations_spend_the_budget_and_respect_ceilings(study):
    allocs = study["result"].allocations
    for method in ("uniform", "cgc_l", "inverted", "cgc_f"):
        assert allocs[method].global_retention == pytest.approx(0.5, abs=1e-9), method
    for method in ("cgc_l", "inverted", "cgc_f"):
        a = allocs[method]
        assert (a.retention <= a.ceilings + 1e-9).all(), method
    np.testing.assert_array_equal(allocs["dense"].retention, 1.0)
    # CGC-F is never worse than its starts on the calibration fitness (elitism)
    res = study["result"]
    kl = {m: res.scores[m]["kl_calibration"] for m in ("uniform", "cgc_l", "cgc_f")}
    assert kl["cgc_f"] <= min(kl["uniform"], kl["cgc_l"]) + 1e-12
    assert res.search is not None and res.search.n_evaluations > 0


def test_theorem1_measurements(study):
    t = study["result"].theorem1
    assert t.destruction.shape == (2, 4, 3) and t.n_active.shape == (2, 4)
    finite = t.destruction[np.isfinite(t.destruction)]
    assert finite.size > 0 and ((finite >= 0) & (finite <= 1)).all()
    # the dead head writes nothing: every active feature of it is lost when pruned
    assert t.delta_ppl is not None and (t.delta_ppl[1, 2] == 0).all()
    assert t.ptp_destruction.shape == (2, 4)


def test_save_load_round_trip(study):
    res, back = study["result"], CapabilityResult.load(study["out"])
    assert back.config == res.config
    np.testing.assert_array_equal(back.density.density, res.density.density)
    np.testing.assert_array_equal(back.ablation.delta_ppl, res.ablation.delta_ppl)
    np.testing.assert_array_equal(back.allocations["cgc_f"].retention,
                                  res.allocations["cgc_f"].retention)
    np.testing.assert_array_equal(back.theorem1.destruction, res.theorem1.destruction)
    assert back.wanda_corr.rho == pytest.approx(res.wanda_corr.rho)
    pd_equal = back.table().round(12).equals(res.table().round(12))
    assert pd_equal
    assert set(back.figures()) == set(res.figures())


def test_config_validation_json_and_cli(tmp_path):
    with pytest.raises(CgcLensError, match=r"retention: expected a global retention in \(0, 1\]"):
        CapabilityConfig(retention=0.0)
    with pytest.raises(CgcLensError, match="survival_retentions: expected >= 2 distinct"):
        CapabilityConfig(survival_retentions=(0.5,))
    with pytest.raises(CgcLensError, match=r"Unknown CapabilityConfig fields \['modle'\]"):
        CapabilityConfig.from_dict({"modle": "x"})
    with pytest.raises(CgcLensError, match="No config file"):
        CapabilityConfig.from_json(tmp_path / "missing.json")
    medium = CapabilityConfig.from_json(CONFIG_DIR / "cgc_gpt2_medium.json")
    assert (medium.model, medium.block_len, medium.calibration_tokens, medium.eval_tokens,
            medium.d_sae, medium.k, medium.retention) == ("gpt2-medium", 512, 128 * 512,
                                                          32 * 512, 512, 25, 0.5)
    assert CapabilityConfig.from_json("cgc_gpt2_medium") == medium  # a shipped config by name
    assert CapabilityConfig.from_json("gpt2_medium") == medium
    with pytest.raises(CgcLensError, match=r"closest: \['cgc_gpt2_medium'"):
        CapabilityConfig.from_json("cgc_gpt2_meduim")
    with pytest.raises(CgcLensError, match="no such file"):  # a missing path is never a name
        CapabilityConfig.from_json(tmp_path / "cgc_gpt2_medium.json")
    assert CapabilityConfig.from_dict(CONFIG.to_dict()) == CONFIG
    parser = argparse.ArgumentParser()
    add_study_arguments(parser, "cgc")
    args = parser.parse_args(["--out", str(tmp_path), "--retention", "0.4", "--tokens", "4096",
                              "--seed", "3", "--no-cgc-f", "--probes", "induction"])
    assert (args.retention, args.calibration_tokens, args.seed, args.cgc_f, args.probes) == (
        0.4, 4096, 3, False, ["induction"])


def test_without_cgc_f_and_with_given_saes_and_mean_ablation(tmp_path):
    from dataclasses import replace

    from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE

    model = make_tiny_model()
    sae = BatchedTopKSAE(BatchedSAEConfig.for_heads(model, expansion=4, k=4), seed=0)
    config = replace(CONFIG, cgc_f=False, survival_dppl=False, ablation_mode="mean",
                     consistency_categories="block", survival_pruning="random")
    res = run_capability(config, model=model, calibration=_blocks(16, 0, cats=("one",)),
                         evaluation=_blocks(8, 1), sae=sae)
    assert res.consistency_categories == "block" and res.d_sae == 32
    assert "cgc_f" not in res.allocations and res.search is None
    assert list(res.table().index) == ["dense", "uniform", "cgc_l", "inverted"]
    assert res.ablation.mode == "mean" and res.theorem1.delta_ppl is None
    back = CapabilityResult.load(res.save(tmp_path))
    assert back.search is None and back.theorem1.ptp_dppl is None
    assert set(back.figures()) == set(res.figures())
    with pytest.raises(CgcLensError, match="needs calibration blocks of >= 2 categories"):
        run_capability(replace(config, consistency_categories="corpus"), model=model,
                       calibration=_blocks(16, 0, cats=("one",)), evaluation=_blocks(8, 1),
                       sae=sae)


def test_every_headline_correlation_has_its_interval_and_permutation_p(study):
    from cgc_lens.analysis.uncertainty import correlation_interval

    doc = json.loads((study["out"] / "results.json").read_text())
    res = study["result"]
    w = doc["spearman_density_wanda"]
    for d, stat in ((w, "rho"), (w, "pearson"), (doc["spearman_density_magnitude"], "rho"),
                    (doc["corr_density_ablation"], "spearman"),
                    (doc["corr_density_ablation"], "pearson")):  # fmt: skip
        assert d[f"{stat}_ci_low"] <= d[stat] <= d[f"{stat}_ci_high"], stat
        assert 0 < d[f"{stat}_perm_p"] <= 1
    # recomputed independently of the study's plumbing: same seed, same numbers
    ref = correlation_interval(res.density.density, res.wanda, seed=CONFIG.seed,
                               n_resamples=CONFIG.bootstrap_resamples)  # fmt: skip
    assert (w["rho_ci_low"], w["rho_ci_high"], w["rho_perm_p"]) == (ref.ci_low, ref.ci_high,
                                                                    ref.p)  # fmt: skip
    for level in doc["theorem1"]["spearman_density"]:
        assert {"rho_ci_low", "rho_ci_high", "rho_perm_p"} <= set(level["destruction"])
    assert doc["consistency_mode"] == "cross-category"
    assert doc["consistency_method"] == "all-pairs"
    se = np.asarray(doc["density_se"], dtype=float)
    assert se.shape == (2, 4) and (se > 0).all()
    np.testing.assert_allclose(np.asarray(doc["density_ci_high"]) - np.asarray(doc["density"]),
                               1.959963984540054 * se, rtol=1e-12)  # fmt: skip
    s = doc["density_summary"]
    assert s["mean_ci_low"] < s["mean"] < s["mean_ci_high"]
    table = (study["out"] / "tables" / "correlations.csv").read_text()
    assert "Spearman ρ(density, Wanda)" in table and "±" in table
    report = (study["out"] / "report.html").read_text(encoding="utf-8")
    assert "How sure are we" in report and "heads" in report
    back = CapabilityResult.load(study["out"])
    assert back.wanda_corr.intervals["rho"].ci_low == w["rho_ci_low"]
    np.testing.assert_array_equal(back.density.density_se, res.density.density_se)


def test_group_counts_sum_to_the_pooled_counts():
    from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE
    from cgc_lens.studies.capability.passes import block_labels, calibration_pass

    model = make_tiny_model()
    sae = BatchedTopKSAE(BatchedSAEConfig.for_heads(model, expansion=4, k=4), seed=0)
    blocks = _blocks(10, 0)
    cats, _ = block_labels(blocks, "corpus")
    stats = calibration_pass(model, blocks.tokens, cats, sae, sample_per_category=16, seed=0,
                             n_groups=4, batch_size=3, progress=False)  # fmt: skip
    groups, pooled = stats.groups, stats.features.stats()
    assert groups.counts.shape == (4, 2, 4, 32)
    np.testing.assert_array_equal(groups.counts.sum(0), pooled.counts)
    np.testing.assert_array_equal(groups.n_tokens.sum(0), pooled.n_tokens)
    assert groups.n_tokens[:, 0].tolist() == [96, 64, 96, 64]  # blocks 3 + 2 + 3 + 2, whole


def test_cross_sequence_mode_is_named_and_warned(tmp_path):
    from dataclasses import replace

    from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE

    model = make_tiny_model()
    sae = BatchedTopKSAE(BatchedSAEConfig.for_heads(model, expansion=4, k=4), seed=0)
    config = replace(CONFIG, cgc_f=False, survival_dppl=False, probes=(),
                     bootstrap_resamples=99)  # fmt: skip
    with pytest.warns(UserWarning, match="cross-sequence, not cross-category"):
        res = run_capability(config, model=model, calibration=_blocks(12, 0, cats=("one",)),
                             evaluation=_blocks(4, 1), sae=sae)  # fmt: skip
    doc = json.loads((res.save(tmp_path) / "results.json").read_text())
    assert doc["consistency_mode"] == "cross-sequence"
    assert "cross-sequence" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_category_field_of_a_local_jsonl_gives_def3_categories(tmp_path):
    from cgc_lens.data import load_corpus
    from cgc_lens.studies.capability.passes import block_labels

    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"document {i} " * 20, "topic": "law" if i % 2 else "bio",
             "split": "calibration"} for i in range(6)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    plain = load_corpus(path, split="calibration")
    assert plain.categories == ("docs",)  # no field named: one category per file
    corpus = load_corpus(path, split="calibration", category_field="topic")
    assert corpus.categories == ("bio", "law")
    blocks = TokenBlocks(tokens=torch.zeros(6, 4, dtype=torch.long),
                         categories=tuple(d.category for d in corpus.documents),
                         starts=torch.arange(6) * 4, source=str(path), split="calibration",
                         seed=0, stream_len=24)  # fmt: skip
    labels, mode = block_labels(blocks)
    assert mode == "corpus" and labels.tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(CgcLensError, match=r"category_field 'subject': record 0 .* \(fields: "):
        load_corpus(path, split="calibration", category_field="subject")
    with pytest.raises(CgcLensError, match="category_field: expected None or a non-empty"):
        CapabilityConfig(category_field="")
    parser = argparse.ArgumentParser()
    add_study_arguments(parser, "cgc")
    args = parser.parse_args(["--out", str(tmp_path), "--category-field", "topic"])
    assert args.category_field == "topic"
