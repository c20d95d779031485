"""The Theorem-1 prune sweep (restart after the pruned head's attention, levels stacked along the
batch axis) equals the naive loop: one whole forward per head, level and batch with the slice
pruned in place by HeadPrune."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgc_lens.forward import prune_sweep
from cgc_lens.forward.prune_sweep import head_prune_sweep, head_prune_sweep_naive
from cgc_lens.sites import Head
from conftest import make_tiny_model

LEVELS = [0.9, 0.5, 0.25, 0.0]


def _tokens(model, n: int = 4, pos: int = 16) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, (n, pos), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    ("dtype", "atol", "batch_size", "heads_per_pass"),
    [
        (torch.float64, 1e-12, 3, None),  # exact: float64 leaves only rounding (~1e-14)
        (torch.float64, 1e-12, 2, 1),  # one edit per pass
        (torch.float64, 1e-12, 4, 6),  # a head's 4 levels and half the next head's in one pass
        (torch.float32, 1e-5, 4, None),  # the study's dtype
    ],
)
def test_sweep_equals_naive_loop(dtype, atol, batch_size, heads_per_pass):
    model = make_tiny_model(n_layers=3).to(dtype)
    tokens = _tokens(model)
    fast = head_prune_sweep(
        model, tokens, LEVELS, batch_size=batch_size, heads_per_pass=heads_per_pass, progress=False
    )
    naive = head_prune_sweep_naive(model, tokens, LEVELS, batch_size=batch_size, progress=False)
    assert fast.delta_ppl.shape == (3, 4, 4) and np.isfinite(fast.delta_ppl).all()
    np.testing.assert_allclose(fast.delta_ppl, naive.delta_ppl, rtol=0, atol=atol)
    np.testing.assert_allclose(fast.delta_kl, naive.delta_kl, rtol=0, atol=atol)
    assert fast.dense_ppl == naive.dense_ppl and fast.n_tokens == naive.n_tokens == 60
    # pruning more hurts more, on average over heads: the levels are in their own slots
    assert (np.diff(fast.delta_kl.mean((0, 1))) > 0).all()


def test_levels_share_a_pass_up_to_the_memory_cap(monkeypatch):
    model = make_tiny_model(n_layers=2).to(torch.float64)
    tokens = _tokens(model, n=2)
    rows = []
    model.blocks[1].hook_resid_post.add_hook(lambda act, hook: rows.append(act.shape[0]))
    per_edit = 2 * 16 * model.cfg.d_vocab  # logits of one edit's pass
    monkeypatch.setitem(prune_sweep.PASS_LOGITS_ELEMENTS, "cpu", 3 * per_edit)
    stacked = head_prune_sweep(model, tokens, LEVELS, progress=False)
    # the dense pass, then per layer 16 edits (4 heads × 4 levels) three at a time
    assert rows == [2] + [6, 6, 6, 6, 6, 2] * 2
    rows.clear()
    monkeypatch.setitem(prune_sweep.PASS_LOGITS_ELEMENTS, "cpu", per_edit)
    single = head_prune_sweep(model, tokens, LEVELS, progress=False)
    assert rows == [2] + [2] * 32
    model.reset_hooks()
    np.testing.assert_allclose(stacked.delta_ppl, single.delta_ppl, rtol=0, atol=1e-12)


def test_heads_subset_and_identity_level():
    model = make_tiny_model().to(torch.float64)
    tokens = _tokens(model)
    heads = [Head(1, 2), Head(0, 1)]
    fast = head_prune_sweep(model, tokens, [1.0, 0.3], heads=heads, progress=False)
    naive = head_prune_sweep_naive(model, tokens, [1.0, 0.3], heads=heads, progress=False)
    measured = np.zeros((2, 4), bool)
    measured[1, 2] = measured[0, 1] = True
    assert np.isnan(fast.delta_ppl[~measured]).all() and np.isfinite(fast.delta_ppl[measured]).all()
    assert (fast.delta_ppl[measured][:, 0] == 0).all()  # retention 1 is the dense model
    np.testing.assert_allclose(
        fast.delta_ppl[measured], naive.delta_ppl[measured], rtol=0, atol=1e-12
    )
