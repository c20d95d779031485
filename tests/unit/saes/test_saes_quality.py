"""SAE quality metrics: the formulas on known data, and agreement with SAELens's own evals."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler

from cgc_lens import Site
from cgc_lens.saes import (
    BatchedSAEConfig,
    BatchedTopKSAE,
    ReconstructionStats,
    TrainConfig,
    evaluate_saes,
    fit_sae,
)


def test_reconstruction_stats_formulas():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 2, 4, generator=gen) + torch.tensor([3.0, -1.0, 0.0, 2.0])
    x_hat = x + 0.1 * torch.randn(50, 2, 4, generator=gen)
    feats = torch.zeros(50, 2, 5)
    feats[:, :, 0] = 1.0                    # fires on every token: dense
    feats[:3, :, 1] = 2.0                   # 3 / 50 tokens: neither dense nor dead
    stats = ReconstructionStats(2, 4, 5)
    for part in range(0, 50, 20):           # streamed in uneven batches
        sl = slice(part, part + 20)
        stats.update(x[sl], x_hat[sl], feats[sl])
    q0 = stats.result(dense_threshold=0.5)[0]
    xd, xh = x[:, 0].double(), x_hat[:, 0].double()
    ev = 1 - (xd - xh).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()
    assert q0.explained_variance == pytest.approx(float(ev), rel=1e-9)
    assert q0.mse == pytest.approx(float((xd - xh).pow(2).mean()), rel=1e-9)
    assert q0.sse_per_token == pytest.approx(float((xd - xh).pow(2).sum(-1).mean()), rel=1e-9)
    assert q0.l0 == pytest.approx(1 + 3 / 50) and q0.l1 == pytest.approx(1 + 6 / 50)
    assert q0.dead_fraction == pytest.approx(3 / 5) and q0.dense_fraction == pytest.approx(1 / 5)
    saelens = ExplainedVarianceCalculator()
    saelens.add_batch(sae_output=x_hat[:, 0], hidden_acts=x[:, 0])
    assert q0.explained_variance == pytest.approx(saelens.compute(), rel=1e-6)


@pytest.fixture
def trained(tiny_model):
    tokens = torch.randint(0, 61, (16, 32))
    cfg = BatchedSAEConfig.for_heads(tiny_model, expansion=4, k=4)
    sae, _ = fit_sae(tiny_model, tokens, cfg, TrainConfig(epochs=2, batch_size=64, lr=3e-3),
                     progress=False)
    return sae


def test_per_head_figures_agree_with_saelens_evals(tiny_model, trained):
    tokens = torch.randint(0, 61, (4, 32))
    i = trained.index(Site.z(1, head=2))
    ours = evaluate_saes(tiny_model, tokens, [trained.select([i])], batch_size=4, progress=False)
    lens = get_recons_loss(trained.to_saelens(i), tiny_model, ActivationScaler(), tokens,
                           compute_kl=True, compute_ce_loss=True)
    spliced = ours.spliced
    assert spliced.kl == pytest.approx(float(lens["kl_div_with_sae"].mean()), rel=1e-4)
    assert spliced.kl_zero_ablated == pytest.approx(float(lens["kl_div_with_ablation"].mean()),
                                                    rel=1e-4)
    assert spliced.ce_clean == pytest.approx(float(lens["ce_loss_without_sae"].mean()), rel=1e-5)
    assert spliced.ce_spliced == pytest.approx(float(lens["ce_loss_with_sae"].mean()), rel=1e-5)
    assert spliced.ce_zero_ablated == pytest.approx(float(lens["ce_loss_with_ablation"].mean()),
                                                    rel=1e-5)
    q = ours.per_sae["blocks.1.attn.hook_z[2]"]
    _, cache = tiny_model.run_with_cache(tokens)
    x = cache["blocks.1.attn.hook_z"][:, :, 2].flatten(0, 1)
    lens_sae = trained.to_saelens(i)
    with torch.no_grad():
        x_hat = lens_sae(x)
        feats = lens_sae.encode(x)
    calc = ExplainedVarianceCalculator()
    calc.add_batch(sae_output=x_hat, hidden_acts=x)
    assert q.explained_variance == pytest.approx(calc.compute(), abs=1e-5)
    assert q.l0 == pytest.approx(float((feats != 0).sum(-1).float().mean()), rel=1e-6)
    assert q.n_tokens == 4 * 32


def test_all_heads_and_a_saelens_sae_together(tiny_model, trained):
    resid = BatchedTopKSAE(
        BatchedSAEConfig(sites=(Site.resid_post(0),), d_in=32, d_sae=64, k=8), seed=0
    ).to_saelens(0)
    tokens = torch.randint(0, 61, (4, 16))
    result = evaluate_saes(tiny_model, tokens, [trained, resid], batch_size=2, progress=False)
    assert set(result.per_sae) == {s.key for s in trained.sites} | {"blocks.0.hook_resid_post"}
    assert all(q.l0 <= 8 for q in result.per_sae.values())
    s = result.spliced
    assert s.ce_loss_recovered == pytest.approx(
        (s.ce_zero_ablated - s.ce_spliced) / (s.ce_zero_ablated - s.ce_clean)
    )
    quick = evaluate_saes(tiny_model, tokens, [resid], splice=False, progress=False)
    assert quick.spliced is None
    key = "blocks.0.hook_resid_post"
    assert asdict(quick.per_sae[key]) == pytest.approx(asdict(result.per_sae[key]), rel=1e-9)
    assert "spliced" in result.to_dict()
