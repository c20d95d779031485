"""AdaptiveCompress on cgc-tiny: a short run trains offline, reports the compressor beside its
TopK baseline and probing against the majority baseline; a far too high λ is reported as
collapse."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.adaptive import AdaptiveTrainConfig, LabelledTokens, StudyData
from cgc_lens.data import token_blocks
from cgc_lens.studies.adaptive import AdaptiveStudyConfig, run_adaptive

LAYERS = (1, 3)


@pytest.fixture(scope="module")
def data(_cgc_tiny_cached):
    """The study's token sets, small: training on the calibration split (tokenizing the train
    split alone takes ~20 s), quality and probing on disjoint blocks of the eval split."""
    train = token_blocks("cgc-tiny", _cgc_tiny_cached, block_len=128, split="calibration")
    held = token_blocks("cgc-tiny", _cgc_tiny_cached, block_len=128, split="eval")
    perm = torch.randperm(len(held), generator=torch.Generator().manual_seed(0))

    def part(index):
        index = index.sort().values
        return LabelledTokens(tokens=held.tokens[index],
                              labels=tuple(held.categories[i] for i in index.tolist()))

    return StudyData(train=train.tokens, eval=held.tokens[perm[:8]],
                     probes={"cgc-tiny": (part(perm[8:200]), part(perm[200:296]))})


def _config(**train) -> AdaptiveStudyConfig:
    return AdaptiveStudyConfig(layers=LAYERS, progress=False,
                               train=AdaptiveTrainConfig(**{"steps": 12, "batch_size": 16,
                                                            "log_every": 4, **train}))


def test_compressor_and_baseline_side_by_side(cgc_tiny, data, tmp_path):
    result = run_adaptive(_config(lr=3e-3), model=cgc_tiny, data=data)
    m = result.metrics.set_index(["site", "method"])
    for layer in LAYERS:
        for method in ("adaptive", "topk"):
            row = m.loc[(f"blocks.{layer}.hook_resid_post", method)]
            assert row["n_tokens"] == 8 * 128 and row["kl"] >= 0, row
    assert result.training["tokens"] == 12 * 16 * 128
    p = result.probing
    assert set(p["dataset"]) == {"cgc-tiny"} and set(p["method"]) == {"resid", "adaptive", "topk"}
    assert "code vs rest" in set(p["task"]) and "multiclass" in set(p["task"])
    multi = p[(p["task"] == "multiclass") & (p["method"] == "resid") & (p["k"] == 5)]
    assert (multi["accuracy"] > multi["majority_accuracy"]).all(), multi
    out = result.save(tmp_path / "run")
    assert (out / "results.json").is_file() and (out / "figures" / "quality.html").is_file()


def test_far_too_high_l1_collapses_and_is_reported(cgc_tiny, data):
    result = run_adaptive(_config(l1_coef=1e3, lr=5e-2, baseline=False), model=cgc_tiny,
                          data=data)
    for layer in LAYERS:
        fired = result.collapsed["adaptive"][f"blocks.{layer}.hook_resid_post"]
        assert {"zero_l0", "dead_latents", "latents_unused"} <= set(fired), result.collapsed
