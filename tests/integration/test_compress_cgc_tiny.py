"""Matched compression on cgc-tiny: magnitude sparsity that reproduces an RTN condition's
perplexity to within 1%, measured on tokens held out from those used for statistics."""

from __future__ import annotations

import torch

from cgc_lens.compress import RTN, MagnitudePrune, WandaPrune, compressed, match_level, measure
from cgc_lens.forward.metrics import token_nll


def repeated_random_blocks(seed: int, *, n_blocks: int, period: int, n_ctx: int, d_vocab: int):
    """Random spans repeated to fill the context, as in cgc-tiny's synthetic training half."""
    g = torch.Generator().manual_seed(seed)
    spans = torch.randint(0, d_vocab, (n_blocks, period), generator=g)
    return spans.repeat(1, n_ctx // period)


def test_matched_magnitude_lands_within_1pct_of_rtn_perplexity(cgc_tiny):
    cfg = cgc_tiny.cfg
    shape = dict(n_blocks=16, period=32, n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab)
    statistics_tokens = repeated_random_blocks(1, **shape)  # for feature statistics only
    held_out = repeated_random_blocks(2, **shape)
    assert not (statistics_tokens == held_out).all(dim=1).any()

    def perplexity(model) -> float:
        with torch.no_grad():
            return float(token_nll(model(held_out), held_out).mean().exp())

    before = {n: p.detach().clone() for n, p in cgc_tiny.named_parameters()}
    base = perplexity(cgc_tiny)
    # The paper matches RTN INT6; on a tiny model INT6 may cost < 2%, so take the first bit
    # width that moves perplexity measurably (otherwise "matching" is trivially sparsity 0).
    costs = {b: measure(cgc_tiny, RTN(b), perplexity) for b in (6, 5, 4, 3)}
    bits = next((b for b, t in costs.items() if t > 1.02 * base), None)
    assert bits is not None, f"no RTN width raised perplexity 2% above {base:.2f}: {costs}"
    target = costs[bits]
    result = match_level(cgc_tiny, MagnitudePrune(0.0), perplexity, target, hi=0.95, rtol=0.005,
                         value_at_lo=base)
    assert result.converged, result
    assert abs(result.value / target - 1) <= 0.01, (bits, result)
    again = measure(cgc_tiny, MagnitudePrune(result.level), perplexity)
    assert abs(again / target - 1) <= 0.01
    paper = match_level(cgc_tiny, MagnitudePrune(0.0), perplexity, target, method="bisect",
                        hi=0.8 if result.level < 0.8 else 0.95)
    assert paper.n_evaluations == 6 and abs(paper.level - result.level) < 0.1
    assert all(torch.equal(p, before[n]) for n, p in cgc_tiny.named_parameters())


def test_wanda_calibrated_on_statistics_tokens_restores_cgc_tiny(cgc_tiny):
    cfg = cgc_tiny.cfg
    tokens = repeated_random_blocks(3, n_blocks=4, period=16, n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab)
    op = WandaPrune(0.5).calibrate(cgc_tiny, tokens)
    before = {n: p.detach().clone() for n, p in cgc_tiny.named_parameters()}
    with compressed(cgc_tiny, op) as record:
        assert all(abs(r.sparsity - 0.5) < 0.01 for r in record.tensors)
    assert all(torch.equal(p, before[n]) for n, p in cgc_tiny.named_parameters())
