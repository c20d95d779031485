"""Protocol checks of the survival audit: the bos policy follows the SAE's metadata, and a
broken baseline (a tiny model trained with bos, evaluated without it) is refused unless
allowed; results.json records the policy, both perplexities and the check's outcome."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cgc_lens import CgcLensError
from cgc_lens.forward.metrics import perplexity_result
from cgc_lens.studies.survival import SurvivalConfig, run_survival
from cgc_lens.studies.survival.protocol import bos_policy, unigram_perplexity

BOS, L = 2, 16
HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def trained():
    """A one-layer model that memorises one fixed 0/1 sequence read after a bos token (a few
    hundred Adam steps, about a second): it predicts each token from its position, so the same
    tokens without the bos, shifted by one, are predicted confidently wrong."""
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=32,
        n_heads=2,
        d_head=16,
        n_ctx=L + 1,
        d_vocab=3,
        act_fn="relu",
        d_mlp=64,
        seed=0,
    )
    model = HookedTransformer(cfg)
    model.tokenizer = SimpleNamespace(bos_token_id=BOS, padding_side="right")
    seq = torch.randint(0, 2, (L,), generator=torch.Generator().manual_seed(1))
    batch = torch.cat([torch.tensor([BOS]), seq]).repeat(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model(batch, return_type="loss").backward()
        opt.step()
    model.eval()
    return model, seq.repeat(12, 1)


def _sae(prepend_bos):
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK, prepend_bos=prepend_bos)
    return TopKSAE(TopKSAEConfig(d_in=32, d_sae=16, k=4, metadata=meta))


def test_the_bos_trained_model_without_bos_is_worse_than_unigram(trained):
    model, tokens = trained
    unigram_off = unigram_perplexity(tokens, prepend_bos=False)
    counts = torch.bincount(tokens[:, 1:].reshape(-1)).double()
    p = counts / counts.sum()
    assert unigram_off == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-12)
    with_bos = perplexity_result(model, tokens, prepend_bos=True, progress=False).perplexity
    without = perplexity_result(model, tokens, prepend_bos=False, progress=False).perplexity
    assert with_bos < 1.2 < unigram_off < without


def test_survival_refuses_the_broken_baseline_unless_allowed(trained, tmp_path):
    model, tokens = trained
    kw = dict(tokens=tokens, eval_tokens=tokens, match_tokens=tokens)
    base = dict(
        bits=(4,),
        match_pruning=None,
        batch_size=4,
        n_shards=2,
        n_groups=3,
        active_rate=0.0,
        progress=False,
        fragility_folds=2,
    )
    with pytest.raises(CgcLensError, match=r"above their unigram perplexity.*--allow"):
        run_survival(SurvivalConfig(prepend_bos=False, **base), model=model, sae=_sae(True), **kw)
    # unset: the SAE's prepend_bos=True is followed and the baseline is sound
    ok = run_survival(SurvivalConfig(**base), model=model, sae=_sae(True), **kw)
    protocol = ok.info["protocol"]
    assert protocol["prepend_bos"] is True and protocol["source"] == "sae"
    assert protocol["baseline_check"] == "passed"
    assert protocol["baseline_ppl"] < protocol["unigram_ppl"]
    assert ok.config.prepend_bos is None  # the config is kept as given
    allowed = run_survival(
        SurvivalConfig(prepend_bos=False, allow=("baseline-perplexity",), **base),
        model=model,
        sae=_sae(True),
        **kw,
    )
    protocol = allowed.info["protocol"]
    assert protocol["baseline_check"] == "failed (allowed)" and protocol["source"] == "config"
    assert protocol["baseline_ppl"] > protocol["unigram_ppl"]
    doc = (allowed.save(tmp_path / "run") / "results.json").read_text()
    assert '"baseline_check": "failed (allowed)"' in doc and '"unigram_ppl"' in doc


def test_bos_policy_and_allow_names():
    assert bos_policy(None, _sae(None))[0] is False
    assert bos_policy(None, _sae(True)) == (
        True,
        {"prepend_bos": True, "source": "sae", "sae_prepend_bos": True},
    )
    assert bos_policy(False, _sae(True))[1]["source"] == "config"
    with pytest.raises(CgcLensError, match="unknown check"):
        SurvivalConfig(allow=("baseline",))
