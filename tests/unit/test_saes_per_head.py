"""Batched TopK SAEs: per-head maths against a one-SAE reference, batched training equals
training one at a time, save/load, SAELens export."""

from __future__ import annotations

import copy

import pytest
import torch

from cgc_lens import CgcLensError, Head, Site
from cgc_lens.saes import (
    BatchedSAEConfig,
    BatchedTopKSAE,
    TrainConfig,
    fit_sae,
    site_activations,
    train_batched,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _sae(n=3, d_in=6, d_sae=24, k=4, seed=0):
    cfg = BatchedSAEConfig(sites=tuple(Site.z(0, head=h) for h in range(n)), d_in=d_in,
                           d_sae=d_sae, k=k)
    sae = BatchedTopKSAE(cfg, seed=seed)
    with torch.no_grad():  # non-trivial biases, so that bias handling is checked too
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def _reference_encode(sae, x, i):
    """SAE i alone, written out plainly."""
    pre = (x - sae.b_dec[i]) @ sae.W_enc[i] + sae.b_enc[i]
    values, indices = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def test_encode_decode_match_one_sae_at_a_time():
    sae = _sae()
    x = torch.randn(2, 5, 3, 6)
    feats = sae.encode(x)
    for i in range(3):
        ref = _reference_encode(sae, x[:, :, i], i)
        torch.testing.assert_close(feats[:, :, i], ref, **TOL)
        torch.testing.assert_close(
            sae.decode(feats)[:, :, i], ref @ sae.W_dec[i] + sae.b_dec[i], **TOL
        )
    assert int((feats > 0).sum(-1).max()) <= 4
    values, indices = sae.encode_topk(x)
    torch.testing.assert_close(torch.zeros_like(feats).scatter(-1, indices, values), feats)
    sub = sae.encode(x[:, :, [2, 0]], [2, 0])
    torch.testing.assert_close(sub, feats[:, :, [2, 0]])
    torch.testing.assert_close(sae.select([2, 0]).encode(x[:, :, [2, 0]]), sub)


def test_firing_counts_match_dense_counts():
    sae = _sae()
    x = torch.randn(7, 3, 6)
    values, indices = sae.encode_topk(x)
    counts = BatchedTopKSAE.firing_counts(values, indices, sae.cfg.d_sae)
    torch.testing.assert_close(counts, (sae.encode(x) > 0).sum(0))


def test_batched_training_equals_training_each_sae_alone():
    sae = _sae(n=3)
    acts = torch.randn(3, 200, 6) * torch.tensor([1.0, 2.0, 0.5])[:, None, None] + 0.3
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, dead_after_tokens=64, log_every=5)
    alone = [sae.select([i]) for i in range(3)]
    together = copy.deepcopy(sae)
    res = train_batched(together, acts, cfg, progress=False)
    assert res.steps == 14 and res.tokens == 400
    for i, one in enumerate(alone):
        train_batched(one, acts[i : i + 1], cfg, progress=False)
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(one, name)[0], getattr(together, name)[i],
                                       atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together.W_dec.norm(dim=-1), torch.ones(3, 24), **TOL)
    assert res.losses[-1] < res.losses[0]


def test_fit_on_model_learns(tiny_model):
    tokens = torch.randint(0, 61, (16, 32))
    cfg = BatchedSAEConfig.for_heads(tiny_model, layers=[1], expansion=4, k=4)
    assert [s.key for s in cfg.sites][:2] == ["blocks.1.attn.hook_z[0]", "blocks.1.attn.hook_z[1]"]
    sae, res = fit_sae(tiny_model, tokens, cfg, TrainConfig(epochs=4, batch_size=64, lr=3e-3,
                                                            log_every=4), progress=False)
    acts = site_activations(tiny_model, tokens, cfg.sites, progress=False)
    assert acts.shape == (4, 16 * 32, 8)
    x = acts.transpose(0, 1)
    with torch.no_grad():
        ev = 1 - (x - sae(x)).pow(2).sum((0, 2)) / (x - x.mean(0)).pow(2).sum((0, 2))
    assert float(ev.min()) > 0.5, ev
    assert res.losses[-1] < res.losses[0]


def test_save_load_roundtrip_and_index(tmp_path):
    sae = _sae()
    sae.save(tmp_path / "s")
    back = BatchedTopKSAE.load(tmp_path / "s")
    assert back.cfg == sae.cfg
    for name, p in sae.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], p, atol=0, rtol=0)
    assert back.index(Head(0, 2)) == 2 and back.index("blocks.0.attn.hook_z[1]") == 1
    with pytest.raises(CgcLensError, match="Closest"):
        back.index("blocks.0.attn.hook_z[7]")
    with pytest.raises(CgcLensError, match="batched SAE folder"):
        BatchedTopKSAE.load(tmp_path)


def test_export_to_saelens_is_exact():
    sae = _sae()
    x = torch.randn(2, 5, 3, 6)
    for i in range(3):
        lens = sae.to_saelens(i)
        assert type(lens).__name__ == "TopKSAE"
        assert lens.cfg.metadata.hook_name == "blocks.0.attn.hook_z"
        assert lens.cfg.metadata.hook_head_index == i
        torch.testing.assert_close(lens.encode(x[:, :, i]), sae.encode(x)[:, :, i], **TOL)
        torch.testing.assert_close(lens(x[:, :, i]), sae(x)[:, :, i], **TOL)


def test_config_validation():
    with pytest.raises(CgcLensError, match="k must be at most d_sae"):
        BatchedSAEConfig(sites=(Site.z(0, head=0),), d_in=4, d_sae=8, k=9)
    with pytest.raises(CgcLensError, match="distinct"):
        BatchedSAEConfig(sites=(Site.z(0, head=0), Site.z(0, head=0)), d_in=4, d_sae=8, k=2)
    with pytest.raises(CgcLensError, match="non-empty"):
        BatchedSAEConfig(sites=(), d_in=4, d_sae=8)
    with pytest.raises(CgcLensError, match="init_b_dec"):
        TrainConfig(init_b_dec="median")
    with pytest.raises(CgcLensError, match=r"\[n=3, tokens, d_in=6\]"):
        train_batched(_sae(), torch.randn(2, 10, 6), progress=False)
    with pytest.raises(CgcLensError, match=r"n=3, d_in=6"):
        _sae().encode(torch.randn(4, 3, 5))
