"""The AdaptiveCompress compressor: Eqs. 2-6 against hand computations, streamed training of
several layers in one pass, save/load, and the SAE-evaluation interface."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cgc_lens import CgcLensError, Site
from cgc_lens.adaptive import (
    AdaptiveCompressor,
    AdaptiveTrainConfig,
    CompressorConfig,
    compressor_loss,
    contrastive_loss,
    ema_update,
    n_retained,
    retention,
    train_compressors,
)
from cgc_lens.forward.streaming import collect_activations
from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE, evaluate_saes

SITES = [Site.resid_post(0), Site.resid_post(1)]
FAST = {"steps": 6, "batch_size": 4, "log_every": 2}


def _trained_like(comp: AdaptiveCompressor) -> AdaptiveCompressor:
    """Give a fresh compressor non-trivial biases, LayerNorm affine, importance and mask."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in comp.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        comp.importance.copy_(torch.rand(comp.importance.shape, generator=gen))
    comp.set_retention(0.75)
    return comp


# --------------------------------------------------------------------------- Eqs. 2-4


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_forward_matches_eqs_3_and_4(activation):
    comp = _trained_like(AdaptiveCompressor(SITES, 8, CompressorConfig(
        d_sae=12, activation=activation), seed=0))
    x = torch.randn(3, 5, 2, 8)
    for i in range(2):
        xi = x[:, :, i]
        ln = F.layer_norm(xi, (8,), comp.ln_w[i], comp.ln_b[i], eps=1e-5)
        pre = ln @ comp.W_enc[i] + comp.b_enc[i]
        act = pre.relu() if activation == "relu" else pre
        f = act * comp.importance[i] * comp.mask[i]
        x_hat = f @ comp.W_dec[i] + comp.b_dec[i] + 0.1 * xi
        torch.testing.assert_close(comp.encode(x)[:, :, i], f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(comp(x)[:, :, i], x_hat, atol=1e-5, rtol=1e-5)


def test_literal_reading_without_bias_or_importance_weighting():
    comp = AdaptiveCompressor(SITES[:1], 8, CompressorConfig(
        bias=False, importance_weighting=False, skip_scale=0.3), seed=0)
    assert comp.b_enc is None and comp.b_dec is None
    comp.importance.fill_(0.2)
    x = torch.randn(4, 1, 8)
    f = comp.encode(x)
    ln = F.layer_norm(x[:, 0], (8,), eps=1e-5)
    torch.testing.assert_close(f[:, 0], (ln @ comp.W_enc[0]).relu(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(comp(x), comp.decode(f, x))
    torch.testing.assert_close(comp(x)[:, 0], f[:, 0] @ comp.W_dec[0] + 0.3 * x[:, 0])


def test_ema_update_is_eq_2():
    comp = AdaptiveCompressor(SITES[:1], 4, CompressorConfig(d_sae=3, ema_decay=0.9), seed=0)
    acts = torch.tensor([[[1.0, 0.0, 2.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 1.0]]])
    comp.update_importance(acts)
    expected = [0.9 + 0.1 * 0.75, 0.9, 0.9 + 0.1 * 0.75]
    torch.testing.assert_close(comp.importance[0], torch.tensor(expected))
    comp.update_importance(acts)
    torch.testing.assert_close(
        comp.importance[0], 0.9 * torch.tensor(expected) + 0.1 * torch.tensor([0.75, 0.0, 0.75]))
    torch.testing.assert_close(ema_update(torch.ones(3), torch.zeros(3), 0.99),
                               torch.full((3,), 0.99))


# --------------------------------------------------------------------------- Eq. 6


def test_retention_schedule_is_eq_6():
    for t in range(0, 30):
        expected = 0.999 - (0.999 - 0.95) * min(1.0, max(0.0, (t - 10) / 8))
        assert retention(t, initial=0.999, final=0.95, warmup=10, period=8) == pytest.approx(
            expected, abs=1e-12)
    cfg = AdaptiveTrainConfig(steps=100)
    assert (cfg.warmup, cfg.period) == (20, 50)
    assert cfg.retention_at(20) == 0.999 and cfg.retention_at(45) == pytest.approx(0.9745)
    assert cfg.retention_at(70) == pytest.approx(0.95) and cfg.retention_at(99) == 0.95
    assert [n_retained(r, 20) for r in (1.0, 0.999, 0.95, 0.5, 0.01)] == [20, 20, 19, 10, 1]
    with pytest.raises(CgcLensError, match="period T"):
        retention(0, initial=1.0, final=0.5, warmup=0, period=0)


def test_retention_mask_keeps_top_latents_by_importance():
    comp = AdaptiveCompressor(SITES, 4, CompressorConfig(d_sae=6), seed=0)
    comp.importance.copy_(torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.0, 0.7],
                                        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3]]))
    comp.set_retention(0.5)
    assert comp.mask.tolist() == [[False, True, True, False, False, True],
                                  [True, True, True, False, False, False]]  # ties: lower index
    x = torch.randn(2, 2, 4)
    assert bool((comp.encode(x)[:, :, ~comp.mask.bool().any(0)] == 0).all())
    assert bool((comp.encode(x)[:, 0, ~comp.mask[0]] == 0).all())


# --------------------------------------------------------------------------- Eq. 5


def test_loss_terms_match_direct_computation():
    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(2, 7, 5, generator=gen), torch.randn(2, 7, 5, generator=gen)
    feats = torch.randn(2, 7, 4, generator=gen).relu()
    w_dec = torch.randn(2, 4, 5, generator=gen)
    terms = compressor_loss(x, x_hat, feats, w_dec, l1_coef=0.04, contrastive_coef=0.1)
    for i in range(2):
        recon = sum(float(((x[i, t] - x_hat[i, t]) ** 2).sum()) for t in range(7)) / 7
        l1 = float(feats[i].abs().sum()) / 7
        pairs = [(a, b) for a, b in itertools.permutations(range(4), 2)]
        cos_act = [float(F.cosine_similarity(feats[i, :, a], feats[i, :, b], dim=0)) ** 2
                   for a, b in pairs]
        cos_dec = [float(F.cosine_similarity(w_dec[i, a], w_dec[i, b], dim=0)) ** 2
                   for a, b in pairs]
        assert float(terms.reconstruction[i]) == pytest.approx(recon, rel=1e-5)
        assert float(terms.l1[i]) == pytest.approx(l1, rel=1e-5)
        assert float(terms.contrastive[i]) == pytest.approx(sum(cos_act) / len(pairs), rel=1e-4)
        assert float(contrastive_loss("decoder", feats, w_dec)[i]) == pytest.approx(
            sum(cos_dec) / len(pairs), rel=1e-4)
        assert float(terms.per_site[i]) == pytest.approx(
            recon + 0.04 * l1 + 0.1 * sum(cos_act) / len(pairs), rel=1e-5)
    assert float(terms.total) == pytest.approx(float(terms.per_site.sum()))
    assert contrastive_loss("none", feats, w_dec).tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- training


def test_training_streams_all_layers_in_one_forward_per_step(tiny_model):
    calls = []
    tiny_model.hook_embed.add_hook(lambda act, hook: calls.append(1))
    tiny_model.blocks[1].hook_resid_post.add_hook(lambda act, hook: calls.append("deep"))
    comp = AdaptiveCompressor(SITES[:1], 32, seed=0)
    train_compressors(tiny_model, torch.randint(0, 61, (8, 16)), comp,
                      AdaptiveTrainConfig(**FAST), progress=False)
    assert calls == [1] * 6          # one forward per step, stopped before block 1
    calls.clear()
    base = BatchedTopKSAE(BatchedSAEConfig(sites=tuple(SITES), d_in=32, d_sae=32, k=4), seed=0)
    hist = train_compressors(tiny_model, torch.randint(0, 61, (8, 16)),
                             AdaptiveCompressor(SITES, 32, seed=0), AdaptiveTrainConfig(**FAST),
                             baseline=base, progress=False)
    assert calls.count(1) == 6 and hist.tokens == 6 * 4 * 16
    frame = hist.to_frame()
    assert set(frame["method"]) == {"adaptive", "topk"} and len(frame) == 3 * 2 * 2
    tiny_model.reset_hooks()


def test_first_step_updates_importance_by_eq_2(tiny_model):
    tokens = torch.randint(0, 61, (4, 16))
    comp = AdaptiveCompressor(SITES, 32, seed=0)
    before = copy.deepcopy(comp)
    acts = collect_activations(tiny_model, tokens, SITES, progress=False)
    x = torch.stack([acts[s.key].reshape(-1, 32) for s in SITES])
    with torch.no_grad():
        before.b_dec.copy_(0.9 * x.mean(1))           # the first step's b_dec initialisation
        rate = (before._activations(x) > 0).float().mean(1)
    train_compressors(tiny_model, tokens, comp, AdaptiveTrainConfig(steps=1, batch_size=4),
                      progress=False)
    torch.testing.assert_close(comp.importance, 0.99 * 1.0 + 0.01 * rate)


def test_sites_train_independently_of_each_other(tiny_model):
    tokens = torch.randint(0, 61, (8, 16))
    cfg = AdaptiveTrainConfig(**FAST, lr=1e-2)
    both = AdaptiveCompressor(SITES, 32, seed=0)
    alone = AdaptiveCompressor(SITES[:1], 32, seed=0)
    train_compressors(tiny_model, tokens, both, cfg, progress=False)
    train_compressors(tiny_model, tokens, alone, cfg, progress=False)
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(both.state_dict()[name][:1], value, atol=1e-5, rtol=1e-4)


def test_training_reduces_the_loss_and_keeps_unit_decoder_rows(tiny_model):
    comp = AdaptiveCompressor(SITES, 32, seed=0)
    hist = train_compressors(tiny_model, torch.randint(0, 61, (16, 16)), comp,
                             AdaptiveTrainConfig(steps=40, batch_size=8, lr=3e-3, log_every=10),
                             progress=False)
    frame = hist.to_frame()
    for _, part in frame.groupby("site"):
        assert part["loss"].iloc[-1] < part["loss"].iloc[0]
    torch.testing.assert_close(comp.W_dec.norm(dim=-1), torch.ones(2, 32))
    assert frame["retention"].iloc[-1] == pytest.approx(0.95)
    assert int(comp.mask.sum(-1)[0]) == n_retained(0.95, 32) == 31
    assert not hist.first_nonfinite


def test_nonfinite_loss_is_recorded(tiny_model, caplog):
    comp = AdaptiveCompressor(SITES[:1], 32, seed=0)
    with torch.no_grad():
        comp.W_dec.fill_(float("nan"))
    hist = train_compressors(tiny_model, torch.randint(0, 61, (4, 16)), comp,
                             AdaptiveTrainConfig(steps=2, batch_size=4), progress=False)
    assert hist.first_nonfinite == {"adaptive/blocks.0.hook_resid_post": 0}
    assert "non-finite training loss" in caplog.text


# --------------------------------------------------------------------------- persistence, eval


def test_save_load_roundtrip_is_identical(tmp_path):
    comp = _trained_like(AdaptiveCompressor(SITES, 8, CompressorConfig(d_sae=16, ema_decay=0.9),
                                            model_name="m", seed=0))
    comp.save(tmp_path / "c", extra={"note": 1})
    back = AdaptiveCompressor.load(tmp_path / "c")
    assert back.sites == comp.sites and back.cfg == comp.cfg and back.model_name == "m"
    for name, value in comp.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = torch.randn(2, 3, 2, 8)
    assert torch.equal(back(x), comp(x))
    with pytest.raises(CgcLensError, match="Expected a compressor folder"):
        AdaptiveCompressor.load(tmp_path)
    BatchedTopKSAE(BatchedSAEConfig(sites=tuple(SITES), d_in=8, d_sae=8, k=2)).save(tmp_path / "b")
    with pytest.raises(CgcLensError, match=r"is not a cgc-lens\.adaptive-compressor"):
        AdaptiveCompressor.load(tmp_path / "b")


def test_as_target_agrees_with_the_forward_in_evaluate_saes(tiny_model):
    comp = _trained_like(AdaptiveCompressor(SITES, 32, seed=0))
    tokens = torch.randint(0, 61, (4, 16))
    result = evaluate_saes(tiny_model, tokens, [comp.as_target(1)], batch_size=2, progress=False)
    q = result.per_sae["blocks.1.hook_resid_post"]
    x = collect_activations(tiny_model, tokens, [SITES[1]], progress=False)[SITES[1].key]
    x = x.reshape(-1, 32).double()
    x_full = torch.stack([x, x], dim=1).float()
    with torch.no_grad():
        x_hat = comp(x_full)[:, 1].double()
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert q.explained_variance == pytest.approx(float(ev), rel=1e-4)
    assert q.l0 == pytest.approx(float((comp.encode(x_full)[:, 1] != 0).sum(-1).double().mean()))
    assert math.isfinite(result.spliced.kl) and result.spliced.kl > 0
    with pytest.raises(CgcLensError, match="index must be in"):
        comp.as_target(5)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"d_sae": 0}, "d_sae"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"activation": "gelu"}, "activation"), ({"importance_init": 2.0}, "importance_init"),
    ({"skip_scale": float("nan")}, "skip_scale"),
])
def test_compressor_config_rejects_bad_values(kwargs, match, unchecked):
    with pytest.raises(CgcLensError, match=match):
        CompressorConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"l1_coef": -1.0}, "l1_coef"),
    ({"retention_init": 0.9, "retention_final": 0.95}, "retention_final <= retention_init"),
    ({"contrastive": "infonce"}, "contrastive"), ({"warmup_steps": -1}, "warmup_steps"),
    ({"baseline_k": 0}, "baseline_k"),
])
def test_train_config_rejects_bad_values(kwargs, match, unchecked):
    with pytest.raises(CgcLensError, match=match):
        AdaptiveTrainConfig(**kwargs)


def test_bad_shapes_and_sites_raise(tiny_model, unchecked):
    comp = AdaptiveCompressor(SITES, 8, seed=0)
    with pytest.raises(CgcLensError, match=r"Expected activations \[\.\.\., n=2, d_in=8\]"):
        comp.encode(torch.randn(3, 1, 8))
    with pytest.raises(CgcLensError, match="distinct"):
        AdaptiveCompressor([SITES[0], SITES[0]], 8)
    with pytest.raises(CgcLensError, match="d_in must be"):
        AdaptiveCompressor(SITES, 0)
    base = BatchedTopKSAE(BatchedSAEConfig(sites=(SITES[1],), d_in=32, d_sae=8, k=2))
    with pytest.raises(CgcLensError, match="baseline must read the compressor's sites"):
        train_compressors(tiny_model, torch.randint(0, 61, (4, 8)),
                          AdaptiveCompressor(SITES[:1], 32), baseline=base, progress=False)
