"""Survival intervals on cgc-tiny: the sweep's blocked-jackknife SE of each feature's r agrees
with a naive bootstrap over blocks on materialised SAE activations, and the groups the sweep
kept add up to its pooled sums."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import cgc_lens
from cgc_lens.compress import RTN, compressed
from cgc_lens.saes import attached, load_sae, validate_sae
from cgc_lens.studies.survival import SurvivalConfig, run_survival

N_BLOCKS, BLOCK_LEN = 120, 64


@pytest.fixture(scope="module")
def setup(_cgc_tiny_cached):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = copy.deepcopy(_cgc_tiny_cached)
        corpus = cgc_lens.load_corpus("cgc-tiny", split="eval")
        tokens = cgc_lens.token_blocks(
            corpus, model, block_len=BLOCK_LEN, n_blocks=N_BLOCKS, seed=3
        ).tokens
        # blocks in stream order, as a run draws them: the groups deal them at random
        # (block_groups), so leaving a group out resamples blocks as the bootstrap below does
        config = SurvivalConfig(
            bits=(4,),
            match_pruning=None,
            null=False,
            eval_tokens=0,
            progress=False,
            n_groups=20,
            active_rate=0.01,
        )
        result = run_survival(config, model=model, tokens=tokens)
        target = validate_sae(model, load_sae("cgc-tiny"))
        with torch.no_grad(), attached(model, [target]) as reading:
            model(tokens, return_type=None)
            x = reading.features[target.key].double().numpy()
            with compressed(model, RTN(4)):
                model(tokens, return_type=None)
                y = reading.features[target.key].double().numpy()
        yield result, x, y
    finally:
        torch.set_num_threads(threads)


def _block_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n_blocks, 5, d_sae]``: Σx, Σy, Σx², Σy², Σxy of each block (a naive loop)."""
    return np.stack(
        [
            np.stack([xb.sum(0), yb.sum(0), (xb * xb).sum(0), (yb * yb).sum(0), (xb * yb).sum(0)])
            for xb, yb in zip(x, y, strict=True)
        ]
    )


def _r(s: np.ndarray, n: float) -> np.ndarray:
    sx, sy, sxx, syy, sxy = s
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sxy - sx * sy / n) / np.sqrt((sxx - sx**2 / n) * (syy - sy**2 / n))


def test_pooled_r_is_the_naive_r(setup):
    result, x, y = setup
    n = x.shape[0] * x.shape[1]
    r = _r(_block_sums(x, y).sum(0), n)
    ok = result.active & np.isfinite(r)
    np.testing.assert_allclose(result.r["RTN INT4"][ok], r[ok], rtol=0, atol=1e-9)


def test_jackknife_se_agrees_with_a_block_bootstrap(setup):
    """Naive bootstrap over blocks (2,000 resamples of the 120 blocks, r from the resampled
    sums) against the sweep's jackknife over 20 groups of 6 blocks: within 10% for the typical
    feature (the median of the ratio over active features; one feature's jackknife SE from 20
    groups is itself uncertain by ~16%, so the median is what the 10% can be held to)."""
    result, x, y = setup
    blocks = _block_sums(x, y)
    n_block = x.shape[1]
    rng = np.random.default_rng(0)
    boot = np.stack(
        [
            _r(blocks[rng.integers(0, N_BLOCKS, N_BLOCKS)].sum(0), N_BLOCKS * n_block)
            for _ in range(2000)
        ]
    )
    boot_se = np.nanstd(boot, axis=0, ddof=1)
    jack_se = result.r_intervals["RTN INT4"][0]
    ok = result.active & np.isfinite(jack_se) & np.isfinite(boot_se) & (boot_se > 0)
    assert ok.sum() > 200
    ratio = jack_se[ok] / boot_se[ok]
    assert abs(np.median(ratio) - 1) < 0.10, np.median(ratio)
    # and feature by feature they track each other (the SEs span decades across features)
    assert np.corrcoef(np.log(jack_se[ok]), np.log(boot_se[ok]))[0, 1] > 0.9
    row = result.summary("RTN INT4")
    assert row.mean_corr_ci_low < row.mean_corr < row.mean_corr_ci_high
    assert row.survived_pct_ci_low <= row.survived_pct <= row.survived_pct_ci_high
    assert row.n_groups == 20
