"""The forward ledger counts what it claims, and the passes kept to avoid repeats (the dense
pass, CGC-F's known fitness values, SAE evaluation with each SAE spliced alone) give exactly
the numbers of running everything afresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgc_lens.forward.ablation import head_ablation
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.ledger import forward_ledger
from cgc_lens.forward.prune_sweep import head_prune_sweep
from cgc_lens.saes.per_head import BatchedSAEConfig, BatchedTopKSAE
from cgc_lens.saes.quality import evaluate_saes
from cgc_lens.sites import Head, Site
from cgc_lens.studies.capability.passes import KLFitness, evaluate_allocations
from tests.conftest import make_tiny_model


@pytest.fixture
def tokens():
    return torch.randint(0, 61, (6, 16), generator=torch.Generator().manual_seed(0))


def test_ledger_counts_tokens_times_blocks_and_repeats(tiny_model, tokens):
    """A naive count: 2 layers, 6 × 16 tokens; start/stop layers count only the blocks run; a
    reading hook does not make a pass new, an editing hook does; run_with_hooks is counted
    but not matched."""
    n = tokens.numel()
    resid = tiny_model(tokens, stop_at_layer=1)
    with forward_ledger(tiny_model) as ledger:
        tiny_model(tokens)  # 2n, new
        tiny_model(tokens, stop_at_layer=1)  # n, new
        tiny_model(resid, start_at_layer=1)  # n, new
        tiny_model(tokens)  # 2n, repeat
        with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: None)]):
            tiny_model(tokens)  # 2n, repeat (reads only)
        with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z * 0)]):
            tiny_model(tokens)  # 2n, new (edits)
        tiny_model.run_with_hooks(tokens, fwd_hooks=[])  # 2n, unmatched
    report = ledger.report()
    assert (report.forwards, report.repeats) == (6, 2)
    assert report.run == 12 * n and report.needed == 8 * n
    assert report.ratio == pytest.approx(1.5) and report.repeat_fraction == pytest.approx(1 / 3)
    assert sum(report.repeat_sites.values()) == 2
    assert not tiny_model._forward_hooks and not tiny_model._forward_pre_hooks
    assert all(not b._forward_hooks for b in tiny_model.blocks)


def test_ledger_sees_changed_weights(tiny_model, tokens):
    with forward_ledger(tiny_model) as ledger:
        tiny_model(tokens)
        with torch.no_grad():
            tiny_model.blocks[1].attn.W_O.mul_(0.5)
        tiny_model(tokens)
        with torch.no_grad():
            tiny_model.unembed.W_U.mul_(0.5)
        tiny_model(tokens)
    assert ledger.report().repeats == 0


def test_dense_pass_is_run_once_and_equals_a_fresh_forward(tiny_model, tokens):
    dense = DensePass(tiny_model)
    hooks = ["blocks.0.attn.hook_z", "blocks.1.hook_resid_mid"]
    with forward_ledger(tiny_model) as ledger:
        first = dense(tokens[:3], hooks)
        assert dense(tokens[:3], hooks[:1]) is first
        dense(tokens[3:])
    assert dense.forwards == 2 and ledger.report().repeats == 0
    fresh = torch.log_softmax(tiny_model(tokens[:3]).float(), -1)
    torch.testing.assert_close(first.log_probs, fresh, rtol=0, atol=1e-6)
    full = DensePass(tiny_model, max_bytes=0)
    full(tokens[:3])
    full(tokens[:3])
    assert full.forwards == 2 and full.nbytes == 0


def test_sweeps_sharing_the_dense_pass_equal_their_own(tiny_model, tokens):
    """Ablation and the Theorem-1 sweep read one dense pass: identical sums, no repeat."""
    alone = (
        head_ablation(tiny_model, tokens, batch_size=4, progress=False),
        head_prune_sweep(tiny_model, tokens, [0.5, 0.25], batch_size=4, progress=False),
    )
    dense = DensePass(tiny_model)
    with forward_ledger(tiny_model) as ledger:
        shared = (
            head_ablation(tiny_model, tokens, batch_size=4, progress=False, dense=dense),
            head_prune_sweep(
                tiny_model, tokens, [0.5, 0.25], batch_size=4, progress=False, dense=dense
            ),
        )
    assert ledger.report().repeats == 0 and dense.forwards == 2
    np.testing.assert_array_equal(shared[0].delta_ppl, alone[0].delta_ppl)
    np.testing.assert_array_equal(shared[0].delta_kl, alone[0].delta_kl)
    np.testing.assert_array_equal(shared[1].delta_ppl, alone[1].delta_ppl)
    np.testing.assert_array_equal(shared[1].delta_kl, alone[1].delta_kl)


def test_evaluate_allocations_with_the_dense_pass_is_unchanged(tiny_model, tokens):
    heads = [Head(ell, h) for ell in range(2) for h in range(4)]
    allocs = {"dense": dict.fromkeys(heads, 1.0), "half": dict.fromkeys(heads, 0.5)}
    alone = evaluate_allocations(tiny_model, tokens, allocs, batch_size=4, progress=False)
    dense = DensePass(tiny_model)
    with forward_ledger(tiny_model) as ledger:
        cached = evaluate_allocations(
            tiny_model, tokens, allocs, batch_size=4, progress=False, dense=dense
        )
    assert cached == alone
    assert alone["dense"]["kl"] == 0.0
    # per batch (2): the dense pass and the "half" allocation; nothing repeated
    assert ledger.report().forwards == 4 and ledger.report().repeats == 0


def test_kl_fitness_known_values_equal_fresh_ones(tiny_model):
    """Elitism's parent and a later stage's blocks reuse the values already scored: the same
    floats as a fresh fitness, with fewer forwards."""
    cal = torch.randint(0, 61, (8, 16), generator=torch.Generator().manual_seed(1))
    heads = [Head(ell, h) for ell in range(2) for h in range(4)]
    a = dict.fromkeys(heads, 0.5)
    b = {h: 0.25 if h.head == 0 else 0.75 for h in heads}
    calls = [(a, 32), (a, 128), (b, 64), (a, 128), (b, 128), (a, 48)]
    with forward_ledger(tiny_model) as ledger:
        memo = KLFitness(tiny_model, cal, max_tokens=128, batch_size=2)
        got = [memo(m, n) for m, n in calls]
    fresh = [KLFitness(tiny_model, cal, max_tokens=128, batch_size=2)(m, n) for m, n in calls]
    assert got == fresh
    report = ledger.report()
    # dense: 4 batches; a: 1 + 3 new batches (the 48-token call needs half a batch: 1 forward);
    # b: 2 + 2 new batches
    assert report.forwards == 4 + 4 + 1 + 4 and report.repeats == 0


def test_evaluate_saes_each_equals_one_call_per_sae(tiny_model, tokens):
    """Each SAE spliced alone, all read in one clean pass: the figures of one call per SAE,
    and the zero-ablated pass of a site run once for the SAEs that read it."""
    sites = (Site.resid_post(0), Site.resid_post(1))
    cfg = BatchedSAEConfig(sites=sites, d_in=32, d_sae=64, k=8, model_name="tiny")
    one, two = BatchedTopKSAE(cfg, seed=0), BatchedTopKSAE(cfg, seed=1)
    named = {"one 0": one.select([0]), "two 0": two.select([0]), "one 1": one.select([1])}
    with torch.no_grad():  # with zero biases, zeroing either residual gives the same logits
        for block in tiny_model.blocks:
            block.mlp.b_out.normal_(generator=torch.Generator().manual_seed(2))
    floors = {"two 1 read": two.select([1])}
    with forward_ledger(tiny_model) as ledger:
        each = evaluate_saes(
            tiny_model, tokens, named, splice="each", read_only=floors, batch_size=4, progress=False
        )
    # per batch (2): 1 clean + 3 spliced + 2 zero-ablated (one per site)
    assert ledger.report().forwards == 2 * 6 and ledger.report().repeats == 0
    for name, sae in named.items():
        alone = evaluate_saes(tiny_model, tokens, [sae], batch_size=4, progress=False)
        assert each.per_sae[name] == next(iter(alone.per_sae.values()))
        assert each.spliced_each[name] == alone.spliced
    read = evaluate_saes(
        tiny_model, tokens, [two.select([1])], splice=False, batch_size=4, progress=False
    )
    assert each.per_sae["two 1 read"] == next(iter(read.per_sae.values()))


def test_evaluate_saes_each_refuses_sites_shared_by_a_name(tiny_model, tokens):
    sae = BatchedTopKSAE(
        BatchedSAEConfig(sites=(Site.resid_post(0), Site.resid_post(1)), d_in=32, d_sae=64, k=8),
        seed=0,
    )
    with pytest.raises(Exception, match="one SAE at one site per name"):
        evaluate_saes(tiny_model, tokens, {"both": sae}, splice="each", progress=False)
    with pytest.raises(Exception, match="splice='each'"):
        evaluate_saes(tiny_model, tokens, {"both": sae}, progress=False)


def test_make_tiny_model_is_deterministic():
    """The fixtures above compare runs of one model; a second model would not be comparable."""
    a, b = make_tiny_model(), make_tiny_model()
    assert torch.equal(a.W_O, b.W_O)


def test_equal_allocations_are_scored_once(tiny_model, tokens):
    heads = [Head(ell, h) for ell in range(2) for h in range(4)]
    half = dict.fromkeys(heads, 0.5)
    alone = evaluate_allocations(tiny_model, tokens, {"a": half}, batch_size=4, progress=False)
    with forward_ledger(tiny_model) as ledger:
        both = evaluate_allocations(
            tiny_model, tokens, {"a": half, "b": dict(half)}, batch_size=4, progress=False
        )
    assert both == {"a": alone["a"], "b": alone["a"]} and list(both) == ["a", "b"]
    assert ledger.report().forwards == 4 and ledger.report().repeats == 0
