import numpy as np
import pytest
import torch
from scipy import stats

from cgc_lens.analysis.importance import (
    magnitude_head_importance,
    rank_correlation,
    wanda_head_importance,
)
from cgc_lens.errors import CgcLensError


def naive_wanda(W_O, z_norms):
    n_layers, n_heads, d_head, d_model = W_O.shape
    out = np.zeros((n_layers, n_heads))
    for ell in range(n_layers):
        for h in range(n_heads):
            for j in range(d_head):
                for o in range(d_model):
                    out[ell, h] += abs(W_O[ell, h, j, o]) * z_norms[ell, h, j]
    return out


def test_wanda_matches_naive_loop_and_accepts_torch_and_one_layer():
    rng = np.random.default_rng(0)
    W_O, z = rng.normal(size=(2, 3, 4, 5)), rng.random((2, 3, 4))
    ref = naive_wanda(W_O, z)
    np.testing.assert_allclose(wanda_head_importance(W_O, z), ref, rtol=1e-12)
    got = wanda_head_importance(torch.tensor(W_O, dtype=torch.float32), torch.tensor(z).float())
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(wanda_head_importance(W_O[1], z[1]), ref[1], rtol=1e-12)


def test_zero_W_O_head_has_wanda_zero():
    rng = np.random.default_rng(1)
    W_O, z = rng.normal(size=(2, 3, 4, 5)), rng.random((2, 3, 4)) + 0.5
    W_O[1, 2] = 0.0
    scores = wanda_head_importance(W_O, z)
    assert scores[1, 2] == 0.0
    assert (np.delete(scores.ravel(), 5) > 0).all()


def test_wanda_on_a_model_from_hook_z(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (3, 12))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    z_norms = torch.stack(
        [
            cache[f"blocks.{ell}.attn.hook_z"].pow(2).sum((0, 1)).sqrt()
            for ell in range(tiny_model.cfg.n_layers)
        ]
    )  # [n_layers, n_heads, d_head]
    W_O = tiny_model.W_O.detach()
    np.testing.assert_allclose(
        wanda_head_importance(W_O, z_norms),
        naive_wanda(W_O.double().numpy(), z_norms.double().numpy()),
        rtol=1e-5,
    )


def test_magnitude_importance():
    rng = np.random.default_rng(2)
    W_O = rng.normal(size=(2, 3, 4, 5))
    np.testing.assert_allclose(magnitude_head_importance(W_O), np.abs(W_O).sum((-1, -2)))
    np.testing.assert_allclose(
        magnitude_head_importance(W_O, norm="l2"), np.linalg.norm(W_O.reshape(2, 3, -1), axis=-1)
    )


def test_magnitude_importance_unknown_norm(unchecked):  # our check, which users meet
    with pytest.raises(CgcLensError, match="norm must be 'l1' or 'l2', got 'l3'"):
        magnitude_head_importance(np.ones((2, 3, 4, 5)), norm="l3")


def test_rank_correlation_matches_scipy():
    rng = np.random.default_rng(3)
    d, w = rng.random((4, 6)), rng.random((4, 6))
    res = rank_correlation(d, w)
    ref = stats.spearmanr(d.ravel(), w.ravel())
    assert res.rho == pytest.approx(ref.statistic, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    assert res.pearson_r == pytest.approx(stats.pearsonr(d.ravel(), w.ravel())[0], abs=1e-12)
    for ell in range(4):
        layer_ref = stats.spearmanr(d[ell], w[ell])
        assert res.layer_rho[ell] == pytest.approx(layer_ref.statistic, abs=1e-12)
        assert res.layer_p[ell] == pytest.approx(layer_ref.pvalue, abs=1e-12)
    frame = res.to_frame()
    assert len(frame) == 5 and frame.scope.tolist()[0] == "all" and res.n == 24
    assert np.isfinite(res.mean_layer_rho)
    assert np.isnan(rank_correlation(d, w, within_layers=False).layer_rho).all()


def test_rank_correlation_constant_layer_is_nan_and_errors():
    d = np.array([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    w = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    res = rank_correlation(d, w)
    assert np.isnan(res.layer_rho[0]) and res.layer_rho[1] == pytest.approx(-1.0)
    with pytest.raises(CgcLensError, match="finite"):
        rank_correlation(d, np.full_like(w, np.nan))


def test_rank_correlation_shape_mismatch(unchecked):  # our check, which users meet
    with pytest.raises(CgcLensError, match=r"importance .*got \(2, 3\) and \(2, 2\)"):
        rank_correlation(np.ones((2, 3)), np.ones((2, 2)))


def test_wanda_bad_input(unchecked):  # our checks, which users meet
    with pytest.raises(CgcLensError, match=r"z_norms \(2, 3, 5\)"):
        wanda_head_importance(np.ones((2, 3, 4, 5)), np.ones((2, 3, 5)))
    with pytest.raises(CgcLensError, match=">= 0"):
        wanda_head_importance(np.ones((3, 4, 5)), -np.ones((3, 4)))


def test_finite_rank_correlation_drops_non_finite_pairs() -> None:
    from cgc_lens.analysis.importance import finite_rank_correlation

    x = np.array([[0.1, np.nan, 0.3], [0.4, 0.2, 0.5]])
    y = np.array([[1.0, 9.0, 3.0], [4.0, 2.0, np.inf]])
    r = finite_rank_correlation(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    assert r.n == 4 and r.rho == pytest.approx(rank_correlation(
        x[ok][None], y[ok][None], within_layers=False).rho)
    short = finite_rank_correlation(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert short.n == 1 and np.isnan(short.rho) and np.isnan(short.p_value)
