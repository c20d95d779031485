"""GPTQ: the lazy-batch Cholesky kernel against a naive one-column-at-a-time OBQ loop written
from the paper, llm-compressor's own GPTQ where it is installed, the output-error property
against RTN on every cgc-tiny weight, sequential calibration, and bad input."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.compress import Targets, as_matrix, compressed, from_matrix
from cgc_lens.compress.calibration import INPUT_SITE
from cgc_lens.compress.operators.awq import output_error
from cgc_lens.compress.operators.gptq import GPTQ, gptq_quantize
from cgc_lens.compress.operators.grid import fake_quantize, group_qparams, quantize_groups
from cgc_lens.compress.operators.hessian import collect_layer_inputs, input_index
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head
from conftest import make_tiny_model


def naive_obq(w, h, bits, *, group_size, symmetric, act_order, damp):
    """GPTQ's Algorithm 1 without lazy batches or Cholesky: quantize one column, spread its
    error with the explicit inverse Hessian of the remaining columns, then remove that column
    from the inverse by Gaussian elimination (OBQ, Frantar & Alistarh 2022, Eq. 3-4). Float64.
    Groups are static (from the weight before any update, each column keeping its group)."""
    w = w.double().clone()
    h = h.double().clone()
    n = w.shape[1]
    scale, zero = group_qparams(w, bits, group_size, symmetric)
    width = group_size or n
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    order = (
        torch.argsort(torch.diagonal(h), descending=True, stable=True)
        if act_order
        else torch.arange(n)
    )
    hinv = torch.linalg.inv(h)
    remaining = list(range(n))
    for j in order.tolist():
        g = j // width
        q = fake_quantize(w[:, j], scale[:, g], zero[:, g], bits, symmetric)
        err = (w[:, j] - q) / hinv[j, j]
        rest = [k for k in remaining if k != j]
        w[:, rest] -= err[:, None] * hinv[j, rest][None, :]
        w[:, j] = q
        hinv = hinv - hinv[:, j : j + 1] @ hinv[j : j + 1, :] / hinv[j, j]  # drop column j
        remaining = rest
    return w


def random_problem(n_out=6, n_in=12, n_tok=40, seed=0, dead=(3,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tok, n_in, generator=g, dtype=torch.float64) * torch.linspace(
        0.2, 3.0, n_in, dtype=torch.float64
    )
    x[:, list(dead)] = 0
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    return w, 2 * x.T @ x, x


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize(("group_size", "block_size"), [(None, 5), (4, 3), (4, 8), (6, 128)])
def test_matches_naive_obq_loop(symmetric, act_order, group_size, block_size):
    w, h, _ = random_problem()
    got = gptq_quantize(
        w,
        h,
        3,
        group_size=group_size,
        symmetric=symmetric,
        act_order=act_order,
        damp=0.01,
        block_size=block_size,
    )
    want = naive_obq(
        w, h, 3, group_size=group_size, symmetric=symmetric, act_order=act_order, damp=0.01
    )
    # float64 both ways; the two differ only by rounding order (~1e-15), far from a grid tie
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert torch.equal(got[:, 3], torch.zeros(6, dtype=torch.float64))  # the dead input


def test_float32_kernel_close_to_float64():
    w, h, _ = random_problem(n_out=16, n_in=32, n_tok=200, seed=1, dead=())
    got = gptq_quantize(w.float(), h.float(), 4, group_size=8)
    want = gptq_quantize(w, h, 4, group_size=8)
    assert got.dtype == torch.float32
    # a float32 rounding can flip one grid step now and then: compare most entries exactly
    assert float((got.double() - want).abs().le(1e-5).float().mean()) > 0.98


@pytest.mark.parametrize("act_order", [False, True])
def test_matches_llm_compressor_gptq(act_order):
    """llm-compressor's own ``quantize_weight`` on the same weight, Hessian and qparams
    (compressed-tensors' asymmetric group grid, which ours equals bit for bit)."""
    gq = pytest.importorskip("llmcompressor.modifiers.gptq.gptq_quantize")
    from compressed_tensors.quantization import QuantizationArgs

    w, h, _ = random_problem(n_out=8, n_in=32, n_tok=100, seed=2, dead=(5,))
    w, h = w.float(), h.float()
    args = QuantizationArgs(
        num_bits=4,
        symmetric=False,
        strategy="group",
        group_size=8,
        actorder="weight" if act_order else None,
    )
    scale, zero = group_qparams(w, 4, 8, False)
    theirs, _, fallback = gq.quantize_weight(
        w[None].clone(),
        h[None].clone(),
        scale[None],
        (zero - 8)[None],
        None,
        args,
        blocksize=16,
        percdamp=0.01,
    )
    ours = gptq_quantize(w, h, 4, group_size=8, symmetric=False, act_order=act_order, block_size=16)
    assert not bool(fallback.any())
    # float32 both; llm-compressor factors H in float32, we in float64: ties may flip a step
    close = (theirs[0] - ours).abs().le(1e-4)
    assert float(close.float().mean()) >= 0.999, float(close.float().mean())


def test_error_below_rtn_on_every_cgc_tiny_weight_and_operator_is_sequential(cgc_tiny):
    """Sequential GPTQ by hand (collect block l's inputs, quantize, next block): every weight's
    calibration output error is below RTN's on the same grid, and the operator in
    ``compressed`` gives the same weights bit for bit."""
    model = cgc_tiny
    tokens = torch.randint(
        0, model.cfg.d_vocab, (8, 64), generator=torch.Generator().manual_seed(0)
    )
    op = GPTQ(4, group_size=128, symmetric=False).calibrate(model, tokens)
    refs = Targets().resolve(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    manual = {}
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            mine = [r for r in refs if r.layer == layer]
            moments = collect_layer_inputs(model, tokens, layer, [INPUT_SITE[r.name] for r in mine])
            for ref in mine:
                param = model.get_parameter(ref.param)
                mat = as_matrix(param.detach(), ref.out_axes)
                m = moments[INPUT_SITE[ref.name]]
                q = gptq_quantize(
                    mat, m.hessian(), 4, group_size=128, symmetric=False, name=ref.param
                )
                rtn = quantize_groups(mat, 4, 128, False)
                e_gptq, e_rtn = output_error(mat - q, m.xtx), output_error(mat - rtn, m.xtx)
                assert e_gptq <= e_rtn, (ref.param, e_gptq, e_rtn)
                assert e_gptq < 0.9 * e_rtn, (ref.param, e_gptq / e_rtn)  # a real gain
                manual[ref.param] = q
            for ref in mine:  # block l quantized before block l + 1's inputs are read
                param = model.get_parameter(ref.param)
                param.copy_(from_matrix(manual[ref.param], param.shape, ref.out_axes))
        for n, p in model.named_parameters():
            p.copy_(before[n])
    with compressed(model, op):
        for ref in refs:
            got = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
            assert torch.equal(got, manual[ref.param]), ref.param
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_head_subsets_read_their_heads_inputs():
    model = make_tiny_model(d_model=16, n_heads=4, d_head=4, d_mlp=32)
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 16))
    targets = Targets(names=["W_O"], heads=[Head(0, 0), Head(0, 2)])
    refs = targets.resolve(model)
    op = GPTQ(3, group_size=4).calibrate(model, tokens)
    w_o = model.blocks[0].attn.W_O.detach().clone()
    m = collect_layer_inputs(model, tokens, 0, ["z"])["z"]
    sel = input_index(refs[0], 4, 4)
    mat = as_matrix(w_o[[0, 2]], (2,))
    want = gptq_quantize(mat, m.hessian()[sel][:, sel], 3, group_size=4)
    with compressed(model, op, targets):
        got = model.blocks[0].attn.W_O.detach()
        assert torch.equal(as_matrix(got[[0, 2]], (2,)), want)
        assert torch.equal(got[[1, 3]], w_o[[1, 3]])


def test_streamed_moments_do_not_depend_on_the_batch_size():
    model = make_tiny_model()
    tokens = torch.randint(0, model.cfg.d_vocab, (6, 10))
    one = collect_layer_inputs(model, tokens, 1, ["attn_in", "z", "mlp_post"], batch_size=1)
    all_ = collect_layer_inputs(model, tokens, 1, ["attn_in", "z", "mlp_post"], batch_size=6)
    for site in one:
        torch.testing.assert_close(one[site].xtx, all_[site].xtx, atol=1e-9, rtol=1e-12)
        assert one[site].n_tokens == 60
    assert one["z"].xtx.shape == (32, 32)  # n_heads * d_head


def test_bits_per_weight():
    assert GPTQ(4, group_size=128).bits_per_weight((768, 768)) == 4 + 16 / 128
    assert GPTQ(4, group_size=128, symmetric=False).bits_per_weight((768, 768)) == 4 + 20 / 128
    assert GPTQ(4, group_size=None).bits_per_weight((12, 768, 64), (0, 2)) == 4 + 16 / 768


def test_bad_input_raises_and_leaves_weights():
    model = make_tiny_model(d_model=16, n_heads=4, d_head=4, d_mlp=32)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with (
        pytest.raises(CgcLensError, match=r"calibrate\(model, tokens\)"),
        compressed(model, GPTQ(4, group_size=8)),
    ):
        pass
    with (
        pytest.raises(CgcLensError, match=r"group_size 128 does not divide .*blocks.0"),
        compressed(model, GPTQ(4).calibrate(model, tokens)),
    ):
        pass
    with pytest.raises(CgcLensError, match="at least one calibration token"):
        GPTQ(4).calibrate(model, tokens[:, :0])
    for bad in (dict(damp=-0.1), dict(block_size=0), dict(group_size=0)):
        with pytest.raises(CgcLensError, match="must be"):
            GPTQ(4, **bad)
    model.blocks[1].mlp.W_out.data[0, 0] = float("nan")
    with (
        pytest.raises(CgcLensError, match="non-finite"),
        compressed(model, GPTQ(4, group_size=8).calibrate(model, tokens)),
    ):
        pass
    model.blocks[1].mlp.W_out.data[0, 0] = before["blocks.1.mlp.W_out"][0, 0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    w, h, _ = random_problem(dead=())
    with pytest.raises(CgcLensError, match=r"not positive definite.*raise damp"):
        gptq_quantize(w, h[:3, :3].new_zeros(12, 12) + 1.0, 3, group_size=None, damp=0.0)


def test_plan_calibrate_binds_gptq_and_awq():
    from cgc_lens.compress import Plan
    from cgc_lens.compress.operators.awq import AWQ

    model = make_tiny_model()
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 8))
    plan = Plan.of(
        (Targets(names="W_in"), GPTQ(3, group_size=8)),
        (Targets(names="W_out"), AWQ(3, group_size=8)),
    )
    calibrated = plan.calibrate(model, tokens)
    assert calibrated == plan  # the binding takes no part in equality or JSON
    assert not any(s.operator.needs_calibration for s in calibrated)
    assert all(s.operator.needs_calibration for s in plan)
    with compressed(model, calibrated) as record:
        assert {r.param.split(".")[-1] for r in record.tensors} == {"W_in", "W_out"}
