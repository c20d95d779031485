"""Per-head ablation and pruning sweeps: the restart-after-attention path equals the naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer

from cgc_lens.analysis.importance import wanda_head_importance
from cgc_lens.compress import HeadPrune, compressed
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.ablation import head_ablation, head_ablation_naive, head_means
from cgc_lens.forward.metrics import kl_divergence, perplexity, token_nll
from cgc_lens.forward.prune_sweep import head_prune_sweep
from cgc_lens.sites import Head
from conftest import make_tiny_model


def _tokens(model: HookedTransformer, n: int = 6, pos: int = 16) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("dtype", "atol", "batch_size", "heads_per_pass"), [
    (torch.float64, 1e-9, 2, 3),  # the method is exact: float64 leaves only rounding
    (torch.float32, 1e-5, 4, None),  # the default path, as the study runs it
    (torch.float32, 1e-5, 3, 4),  # all heads of a layer stacked in one forward
])
def test_batched_equals_naive_loop(dtype, atol, batch_size, heads_per_pass):
    model = make_tiny_model(n_layers=3).to(dtype)
    tokens = _tokens(model, n=4)
    fast = head_ablation(model, tokens, batch_size=batch_size, heads_per_pass=heads_per_pass,
                         progress=False)
    naive = head_ablation_naive(model, tokens, batch_size=batch_size, progress=False)
    assert fast.delta_ppl.shape == (3, 4) and np.isfinite(fast.delta_ppl).all()
    np.testing.assert_allclose(fast.delta_ppl, naive.delta_ppl, rtol=0, atol=atol)
    np.testing.assert_allclose(fast.delta_kl, naive.delta_kl, rtol=0, atol=atol)
    assert fast.dense_ppl == pytest.approx(naive.dense_ppl, abs=1e-12)
    assert np.abs(fast.delta_ppl).max() > 1e-3  # the ablations do something


def test_dense_and_ablated_losses_match_the_metrics_module():
    model = make_tiny_model()
    tokens = _tokens(model)
    res = head_ablation(model, tokens, heads=[Head(1, 2)], progress=False)
    assert res.dense_ppl == pytest.approx(perplexity(model, tokens, progress=False), rel=1e-6)
    assert np.isnan(res.delta_ppl[0]).all() and np.isfinite(res.delta_ppl[1, 2])

    def zero(z, hook):
        z[:, :, 2] = 0.0
        return z

    with torch.no_grad():
        dense = model(tokens)
        with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero)]):
            ablated = model(tokens)
    ppl = float(token_nll(ablated, tokens).double().mean().exp())
    assert res.ppl[1, 2] == pytest.approx(ppl, rel=1e-5)
    assert res.delta_kl[1, 2] == pytest.approx(float(kl_divergence(dense, ablated).mean()),
                                               rel=1e-4)
    assert res.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1)


def test_zero_W_O_head_has_zero_dppl_and_zero_wanda():
    model = make_tiny_model()
    with torch.no_grad():
        model.blocks[1].attn.W_O[2] = 0.0
    tokens = _tokens(model)
    fast = head_ablation(model, tokens, progress=False)
    naive = head_ablation_naive(model, tokens, progress=False)
    assert fast.delta_ppl[1, 2] == 0.0 and naive.delta_ppl[1, 2] == 0.0
    assert fast.delta_kl[1, 2] == 0.0
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    z_norms = torch.stack([cache[f"blocks.{ell}.attn.hook_z"].pow(2).sum((0, 1)).sqrt()
                           for ell in range(model.cfg.n_layers)])
    wanda = wanda_head_importance(model.W_O.detach(), z_norms)
    assert wanda[1, 2] == 0.0 and (np.delete(wanda.ravel(), 6) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mean_ablation_equals_naive(dtype):
    model = make_tiny_model(n_layers=2).to(dtype)
    tokens = _tokens(model)
    means = head_means(model, _tokens(model, n=4), progress=False).to(dtype)
    assert means.shape == (2, 4, 8)
    fast = head_ablation(model, tokens, mode="mean", means=means, heads_per_pass=2, progress=False)
    naive = head_ablation_naive(model, tokens, mode="mean", means=means, progress=False)
    atol = 1e-9 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(fast.delta_ppl, naive.delta_ppl, rtol=0, atol=atol)
    np.testing.assert_allclose(fast.delta_kl, naive.delta_kl, rtol=0, atol=atol)
    zero = head_ablation(model, tokens, progress=False)
    assert not np.allclose(zero.delta_ppl, fast.delta_ppl)  # the means are not zero


def test_head_means_is_the_mean_of_hook_z():
    model = make_tiny_model()
    tokens = _tokens(model, n=5)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    want = torch.stack([cache[f"blocks.{ell}.attn.hook_z"].double().mean((0, 1))
                        for ell in range(2)])
    torch.testing.assert_close(head_means(model, tokens, batch_size=2, progress=False), want,
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("arch", ["attn_only", "parallel"])
def test_other_block_layouts(arch):
    model = make_tiny_model(
        attn_only=arch == "attn_only", parallel_attn_mlp=arch == "parallel",
        positional_embedding_type="rotary", rotary_dim=8, dtype=torch.float64)
    tokens = _tokens(model)
    fast = head_ablation(model, tokens, progress=False)
    naive = head_ablation_naive(model, tokens, progress=False)
    np.testing.assert_allclose(fast.delta_ppl, naive.delta_ppl, rtol=0, atol=1e-9)


def test_prune_sweep_equals_pruning_one_head_at_a_time():
    model = make_tiny_model().to(torch.float64)
    tokens = _tokens(model)
    levels = [1.0, 0.5, 0.0]
    sweep = head_prune_sweep(model, tokens, levels, progress=False)
    assert sweep.delta_ppl.shape == (2, 4, 3)
    assert (sweep.delta_ppl[..., 0] == 0).all()  # retention 1 is the dense model
    np.testing.assert_allclose(sweep.delta_ppl[..., 2],
                               head_ablation(model, tokens, progress=False).delta_ppl, atol=1e-9)
    dense = perplexity(model, tokens, progress=False)
    for head in (Head(0, 1), Head(1, 3)):
        with compressed(model, HeadPrune({head: 0.5})):
            ppl = perplexity(model, tokens, progress=False)
        # metrics.perplexity takes its log_softmax in float32, hence 1e-5 on a float64 model
        assert sweep.delta_ppl[head.layer, head.head, 1] == pytest.approx(ppl - dense, abs=1e-5)


def test_model_untouched_and_errors(unchecked):
    model = make_tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = _tokens(model)
    head_ablation(model, tokens, progress=False)
    head_prune_sweep(model, tokens, [0.3], progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(CgcLensError, match="mode must be 'zero' or 'mean', got 'half'"):
        head_ablation(model, tokens, mode="half", progress=False)
    with pytest.raises(CgcLensError, match=r"Mean-ablation needs means .* got None"):
        head_ablation(model, tokens, mode="mean", progress=False)
    with pytest.raises(CgcLensError, match=r"Expected token blocks \[n_blocks, pos >= 2\]"):
        head_ablation(model, tokens[0], progress=False)
    with pytest.raises(CgcLensError, match=r"token ids in \[0, d_vocab=61\)"):
        head_ablation(model, tokens + 100, progress=False)
    with pytest.raises(CgcLensError, match="L5H0 is outside the model"):
        head_ablation(model, tokens, heads=[Head(5, 0)], progress=False)
    with pytest.raises(CgcLensError, match="heads_per_pass must be a positive int"):
        head_ablation(model, tokens, heads_per_pass=0, progress=False)
    with pytest.raises(CgcLensError, match=r"retention must be a number in \[0, 1\]"):
        head_prune_sweep(model, tokens, [1.5], progress=False)


def test_sandwich_norm_is_refused():
    model = make_tiny_model(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=11,
                            n_ctx=8, normalization_type="RMS",
                            use_normalization_before_and_after=True, seed=None)
    with pytest.raises(CgcLensError, match="normalises the attention output"):
        head_ablation(model, torch.randint(0, 11, (2, 8)), progress=False)
