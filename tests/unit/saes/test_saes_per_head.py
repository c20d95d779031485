"""Batched TopK SAEs: per-head maths against a one-SAE reference, batched training equals
training one at a time, save/load, SAELens export."""

from __future__ import annotations

import copy
from dataclasses import replace

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
from cgc_lens.saes.train import topk_loss, topk_loss_dense

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


def _loss_and_grads(loss_fn, sae, x, since_fired, cfg, *, dead_after, scale):
    sae = copy.deepcopy(sae)
    since_fired = since_fired.clone()
    loss = loss_fn(sae, x, since_fired, cfg, dead_after)
    (loss * scale).backward()
    grads = {name: getattr(sae, name).grad for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    return loss.detach(), grads, since_fired


@pytest.mark.parametrize(
    ("n_dead", "aux_k", "head_chunk"),
    [(0, None, None), (3, None, 2), (3, 5, 1), (12, 5, 2), (12, 5, None), (24, 5, 4)],
)
def test_sparse_kernel_equals_dense_autograd(n_dead, aux_k, head_chunk):
    """The sparse, chunked kernel gives the dense autograd loss and gradients (and the same
    dead-latent bookkeeping): no dead latent; fewer dead than aux_k (all taken); more (top-k
    among the dead); every latent dead; chunks of 1, 2, 4 and all of 5 heads."""
    sae = _sae(n=5, d_in=6, d_sae=24, k=4, seed=1)
    with torch.no_grad():  # SAE 2 mostly silent: top-k entries ≤ 0 get no gradient
        sae.b_enc[2] -= 3.0
    x = torch.randn(5, 16, 6) * 2 + 0.5
    since_fired = torch.zeros(5, 24, dtype=torch.long)
    since_fired[:, :n_dead] = 1000  # stays dead unless it fires on this batch
    since_fired[0] = 0  # SAE 0 has no dead latent: its AuxK term has no gradient
    cfg = TrainConfig(aux_k=aux_k, head_chunk=head_chunk, aux_k_coef=0.25)
    dense = _loss_and_grads(topk_loss_dense, sae, x, since_fired, cfg, dead_after=64, scale=3.0)
    sparse = _loss_and_grads(topk_loss, sae, x, since_fired, cfg, dead_after=64, scale=3.0)
    torch.testing.assert_close(sparse[0], dense[0], atol=1e-5, rtol=1e-5)
    for name, grad in dense[1].items():
        torch.testing.assert_close(sparse[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(sparse[2], dense[2], atol=0, rtol=0)
    if n_dead:  # the AuxK loss was on: it moved the dead latents' decoder rows
        assert float(dense[1]["W_dec"][1:, :n_dead].abs().sum()) > 0
    with torch.no_grad():
        since = since_fired.clone()
        torch.testing.assert_close(topk_loss(sae, x, since, cfg, 64), dense[0], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(since, dense[2], atol=0, rtol=0)


def test_sparse_and_dense_training_agree():
    sae = _sae(n=3)
    acts = torch.randn(3, 200, 6) + 0.3
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, dead_after_tokens=64, log_every=7)
    runs = {}
    for kernel in ("sparse", "dense"):
        runs[kernel] = copy.deepcopy(sae)
        res = train_batched(runs[kernel], acts, replace(cfg, kernel=kernel), progress=False)
        runs[kernel + "_losses"] = res.losses
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(runs["sparse"], name), getattr(runs["dense"], name),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(runs["sparse_losses"]),
                               torch.tensor(runs["dense_losses"]), atol=1e-4, rtol=1e-4)


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
    # (an unknown kernel name is refused by TrainConfig's check, and first by the jaxtyping
    # type check that pytest runs: both messages name the field)
    with pytest.raises(Exception, match="kernel"):
        TrainConfig(kernel="fast")
    with pytest.raises(CgcLensError, match="head_chunk"):
        TrainConfig(head_chunk=0)
    with pytest.raises(CgcLensError, match=r"\[n=3, tokens, d_in=6\]"):
        train_batched(_sae(), torch.randn(2, 10, 6), progress=False)
    with pytest.raises(CgcLensError, match=r"n=3, d_in=6"):
        _sae().encode(torch.randn(4, 3, 5))
