"""n:m semi-structured pruning against a naive loop over the groups of each HF row, by
magnitude and by Wanda score, on every TransformerLens family."""

from __future__ import annotations

import pytest
import torch
from test_compress_rtn import SHAPES, weight

from cgc_lens.compress import OUT_AXES, Targets, as_matrix, compressed, wanda_scores
from cgc_lens.compress.operators import SemiStructured, semi_structured_prune_
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError
from conftest import make_tiny_model


def naive_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per row, per group of m inputs: keep the n highest scores (ties: the earliest)."""
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for r in range(scores.shape[0]):
        for g in range(0, scores.shape[1], m):
            vals = scores[r, g : g + m].tolist()
            order = sorted(range(m), key=lambda j: -vals[j])  # stable: ties keep index order
            for j in order[:n]:
                keep[r, g + j] = True
    return keep


@pytest.mark.parametrize("name", list(SHAPES))
def test_magnitude_matches_naive_loop(name):
    w = weight(name, 5)
    hf = as_matrix(w, OUT_AXES[name])
    cases = [(n, m) for n, m in [(2, 4), (4, 8), (1, 2), (1, 3)] if hf.shape[1] % m == 0]
    assert len(cases) >= 2  # inputs 20 (2:4, 1:2), 18 (1:2, 1:3), 24 (all)
    for n, m in cases:
        expected = torch.where(naive_keep(hf.abs(), n, m), hf, 0.0)
        got = w.clone()
        stats = SemiStructured(n, m).apply_(got, WeightRef(0, name, f"blocks.0.{name}"))
        assert torch.equal(as_matrix(got, OUT_AXES[name]), expected), (n, m)
        assert stats.sparsity == pytest.approx(1 - n / m)


def test_ties_go_to_the_earliest_input():
    w = torch.tensor([[1.0, -1.0, 1.0, 0.5, 2.0, 2.0, -2.0, 2.0]])
    semi_structured_prune_(w, 2, 4, out_axes=(0,))
    assert torch.equal(w, torch.tensor([[1.0, -1.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0]]))


def test_wanda_scores_match_naive_loop_on_a_model():
    model = make_tiny_model(n_layers=1, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=23)
    tokens = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(0))
    op = SemiStructured(2, 4, score="wanda").calibrate(model, tokens)
    refs = Targets().resolve(model)
    before = {r.param: model.get_parameter(r.param).detach().clone() for r in refs}
    with compressed(model, op):
        for ref in refs:
            w = before[ref.param]
            norms = op.input_norms.for_weight(ref.layer, ref.name).float()
            scores = as_matrix(wanda_scores(w, norms, out_axes=ref.out_axes), ref.out_axes)
            hf = as_matrix(w, ref.out_axes)
            expected = torch.where(naive_keep(scores.float(), 2, 4), hf, 0.0)
            got = as_matrix(model.get_parameter(ref.param).detach(), ref.out_axes)
            assert torch.equal(got, expected), ref.param
            magnitude = torch.where(naive_keep(hf.abs(), 2, 4), hf, 0.0)
            assert not torch.equal(got, magnitude) or ref.name == "W_O"  # scores matter
    assert all(torch.equal(model.get_parameter(p), before[p]) for p in before)


def test_m_not_dividing_or_uncalibrated_is_refused_before_any_edit():
    model = make_tiny_model(n_layers=1, d_model=20, n_heads=3, d_head=6, d_mlp=24, d_vocab=23)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CgcLensError, match=r"2:8 sparsity needs m to divide the input dimension"
                       r" 20 of blocks\.0\.attn\.W_Q"), compressed(model, SemiStructured(2, 8)):
        pass
    with pytest.raises(CgcLensError, match=r"calibrate"), \
            compressed(model, SemiStructured(2, 4, score="wanda")):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_bits_per_weight_and_identity():
    assert SemiStructured(2, 4).bits_per_weight((768, 768)) == 9.0  # 8 value + 1 index bits
    assert SemiStructured(4, 8).bits_per_weight((768, 768)) == 9.5
    assert SemiStructured(4, 4).is_identity and SemiStructured(4, 4).bits_per_weight((4, 4)) == 16
    assert SemiStructured(2, 4).sparsity == 0.5


def test_plan_calibrate_fills_wanda_norms():
    from cgc_lens.compress import Plan

    model = make_tiny_model(n_layers=1, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=23)
    tokens = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(0))
    plan = Plan.of(SemiStructured(2, 4, score="wanda")).calibrate(model, tokens)
    op = plan.steps[0].operator
    assert op.input_norms is not None and op.input_norms.n_tokens == 16
    assert Plan.of(SemiStructured(2, 4)).calibrate(model, tokens).steps[0].operator.input_norms \
        is None  # magnitude scores need none
