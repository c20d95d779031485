"""AWQ: the scaled quantization against a direct evaluation on the calibration activations,
the α search against RTN (α = 0) on every cgc-tiny weight, and bad input."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.compress import Targets, as_matrix, compressed
from cgc_lens.compress.calibration import INPUT_SITE
from cgc_lens.compress.operators.awq import AWQ, awq_quantize, awq_scales, output_error
from cgc_lens.compress.operators.grid import quantize_groups
from cgc_lens.compress.operators.hessian import InputMoments, collect_layer_inputs
from cgc_lens.errors import CgcLensError
from conftest import make_tiny_model


def problem(seed=0, n_tok=300, n_in=32, n_out=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tok, n_in, generator=g, dtype=torch.float64)
    x = x * torch.logspace(-1, 1, n_in, dtype=torch.float64)  # salient channels, as in LLMs
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    return w, x, InputMoments(x.T @ x, x.abs().sum(0), n_tok)


def test_search_equals_a_direct_loop_over_alpha_on_the_activations():
    """Every α scored by ``||WX - Q(W diag s) diag(s)^-1 X||²`` on the activations themselves;
    the search returns the argmin (the error from XᵀX agrees to 1e-9 relative)."""
    w, x, m = problem()
    direct = []
    for i in range(20):
        s = x.abs().mean(0).pow(i / 20).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        q = quantize_groups(w * s, 3, 8, False) / s
        direct.append(float(((w @ x.T - q @ x.T) ** 2).sum()))
    (q,), alpha, err = awq_quantize([w], m, 3, group_size=8, symmetric=False)
    assert alpha == pytest.approx(min(range(20), key=direct.__getitem__) / 20)
    assert err == pytest.approx(min(direct), rel=1e-9)
    assert err < 0.9 * direct[0]  # a real gain over RTN (α = 0) on salient channels
    s = awq_scales(m.mean_abs(), alpha)
    torch.testing.assert_close(q, quantize_groups(w * s, 3, 8, False) / s, atol=0, rtol=0)


def test_one_grid_point_is_rtn_and_shared_inputs_share_alpha():
    w, _, m = problem(seed=1)
    (q,), alpha, _ = awq_quantize([w], m, 4, group_size=16, n_grid=1)
    assert alpha == 0 and torch.equal(q, quantize_groups(w, 4, 16, False))
    w2 = problem(seed=2)[0]
    qs, alpha, err = awq_quantize([w, w2], m, 4, group_size=16)
    s = awq_scales(m.mean_abs(), alpha)
    for a, b in zip((w, w2), qs, strict=True):
        torch.testing.assert_close(b, quantize_groups(a * s, 4, 16, False) / s, atol=0, rtol=0)
    assert err == pytest.approx(output_error(w - qs[0], m.xtx) + output_error(w2 - qs[1], m.xtx))


def test_error_not_above_rtn_on_every_cgc_tiny_weight(cgc_tiny):
    """Per block input (the weights sharing one s), AWQ's summed calibration output error is
    at most RTN's on the same grid; the operator in ``compressed`` reproduces it by hand."""
    model = cgc_tiny
    tokens = torch.randint(
        0, model.cfg.d_vocab, (8, 64), generator=torch.Generator().manual_seed(1)
    )
    op = AWQ(4, group_size=128).calibrate(model, tokens)
    refs = Targets().resolve(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with compressed(model, op):
        quantized = {r.param: model.get_parameter(r.param).detach().clone() for r in refs}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    gains = []
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            mine = [r for r in refs if r.layer == layer]
            moments = collect_layer_inputs(model, tokens, layer, [INPUT_SITE[r.name] for r in mine])
            for site in sorted({INPUT_SITE[r.name] for r in mine}):
                group = [r for r in mine if INPUT_SITE[r.name] == site]
                mats = [as_matrix(model.get_parameter(r.param).detach(), r.out_axes) for r in group]
                qs, _, err = awq_quantize(mats, moments[site], 4, group_size=128)
                rtn = sum(
                    output_error(m - quantize_groups(m, 4, 128, False), moments[site].xtx)
                    for m in mats
                )
                assert err <= rtn, (layer, site, err, rtn)
                gains.append(err / rtn)
                for r, q in zip(group, qs, strict=True):
                    got = as_matrix(quantized[r.param], r.out_axes)
                    assert torch.equal(got, q), r.param
            for r in mine:  # sequential: the next block reads this one quantized
                model.get_parameter(r.param).copy_(quantized[r.param])
    assert min(gains) < 0.95, gains  # the search found something better than RTN somewhere


def test_bits_per_weight_and_bad_input():
    assert AWQ(4).bits_per_weight((768, 768)) == 4 + 20 / 128
    assert AWQ(4, symmetric=True, group_size=None).bits_per_weight((768, 3072)) == 4 + 16 / 3072
    model = make_tiny_model(d_model=16, n_heads=4, d_head=4, d_mlp=32)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert AWQ(4).needs_calibration and not AWQ(4).calibrate(model, tokens).needs_calibration
    with (
        pytest.raises(CgcLensError, match=r"AWQ\(bits\)\.calibrate\(model, tokens\)"),
        compressed(model, AWQ(4, group_size=8)),
    ):
        pass
    with (
        pytest.raises(CgcLensError, match=r"group_size 128 does not divide .*valid group"),
        compressed(model, AWQ(4).calibrate(model, tokens)),
    ):
        pass
    with pytest.raises(CgcLensError, match="n_grid must be a positive int"):
        AWQ(4, n_grid=0)
    with pytest.raises(CgcLensError, match="bits must be an int in"):
        AWQ(1)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
