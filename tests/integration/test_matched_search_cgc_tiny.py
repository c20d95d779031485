"""The matched search of a default survival audit on cgc-tiny (issue 18): magnitude sparsity
matched to RTN INT6's perplexity on the default held-out match tokens reaches the tolerance
(5% of the perplexity gap) within 8 perplexity evaluations, every one counted."""

from __future__ import annotations

import torch

from cgc_lens.compress import RTN, MagnitudePrune, match_level, measure
from cgc_lens.forward.metrics import perplexity
from cgc_lens.studies.survival import SurvivalConfig
from cgc_lens.studies.survival.conditions import token_sets


def test_default_match_converges_within_8_evaluations(cgc_tiny):
    config = SurvivalConfig(progress=False, prepend_bos=False)  # cgc-tiny has no bos token
    assert config.match_target == "RTN INT6" and config.match_tolerance == 0.05
    tokens = token_sets(config, cgc_tiny, {})["match"]
    assert tokens is not None and tokens.numel() == config.match_tokens
    calls: list[float] = []

    def evaluate(model) -> float:
        calls.append(perplexity(model, tokens, batch_size=config.batch_size, progress=False))
        return calls[-1]

    target = measure(cgc_tiny, RTN(6), evaluate)
    reference = evaluate(cgc_tiny)
    atol = config.match_tolerance * (target - reference)
    assert atol > 0
    before = {n: p.detach().clone() for n, p in cgc_tiny.named_parameters()}
    result = match_level(
        cgc_tiny, MagnitudePrune(0.0), evaluate, target, rtol=0.0, atol=atol, value_at_lo=reference
    )
    searched = len(calls) - 2
    # every perplexity the search computed, the target's and the reference's included: <= 8
    assert len(calls) <= 8 and searched == result.n_evaluations - 1 <= 7
    assert result.converged and result.stop == "converged"
    assert abs(result.value - target) <= atol
    # the chosen level reproduces its value, and every probe left the weights as they were
    assert measure(cgc_tiny, MagnitudePrune(result.level), evaluate) == result.value
    assert all(torch.equal(p, before[n]) for n, p in cgc_tiny.named_parameters())
    assert 0.05 < result.level < 0.2  # INT6 costs cgc-tiny about as much as 10% sparsity
