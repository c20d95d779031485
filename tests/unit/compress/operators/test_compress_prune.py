"""Pruning, Wanda and low-rank against naive re-computations."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.compress import (
    OUT_AXES,
    HeadPrune,
    MagnitudePrune,
    Targets,
    WandaPrune,
    collect_input_norms,
    compressed,
    head_prune_,
    low_rank_,
    magnitude_prune_,
    wanda_prune_,
    wanda_scores,
)
from cgc_lens.compress.operators.magnitude import magnitude_prune_global_
from cgc_lens.compress.operators.sparsity import n_pruned
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head


def test_magnitude_zeroes_exactly_the_smallest():
    w = torch.randn(17, 23)
    original = w.clone()
    magnitude_prune_(w, 0.4)
    k = n_pruned(w.numel(), 0.4)
    assert int((w == 0).sum()) == k
    order = original.abs().flatten().argsort()
    assert (w.flatten()[order[:k]] == 0).all()
    assert torch.equal(w.flatten()[order[k:]], original.flatten()[order[k:]])


def test_magnitude_ties_go_to_the_earliest_entries():
    w = torch.tensor([1.0, 0.5, 0.5, 0.5, 2.0])
    assert torch.equal(magnitude_prune_(w, 0.4), torch.tensor([1.0, 0.0, 0.0, 0.5, 2.0]))


def test_global_magnitude_uses_one_threshold():
    a, b = torch.randn(10, 10) * 0.1, torch.randn(20, 5)
    all_abs = torch.cat([a.abs().flatten(), b.abs().flatten()])
    threshold = all_abs.sort().values[n_pruned(all_abs.numel(), 0.5) - 1]
    expected = [t.masked_fill(t.abs() <= threshold, 0) for t in (a, b)]
    magnitude_prune_global_([a, b], 0.5)
    assert torch.equal(a, expected[0]) and torch.equal(b, expected[1])
    assert (a == 0).float().mean() > (b == 0).float().mean()  # the small tensor loses more


def test_wanda_scores_match_the_formula_loop():
    for name, shape, norm_shape in (("W_Q", (3, 8, 4), (8,)), ("W_O", (3, 4, 8), (3, 4)),
                                    ("W_in", (8, 16), (8,)), ("W_out", (16, 8), (16,))):
        w, norms = torch.randn(shape), torch.rand(norm_shape) + 0.1
        scores = wanda_scores(w, norms, out_axes=OUT_AXES[name])
        for cell in torch.cartesian_prod(*[torch.arange(s) for s in shape]):
            idx = tuple(int(i) for i in cell)
            j = {"W_Q": idx[1:2], "W_O": idx[0:2], "W_in": idx[0:1], "W_out": idx[0:1]}[name]
            assert scores[idx] == abs(float(w[idx])) * float(norms[j]), (name, idx)


def test_wanda_prunes_lowest_scores_per_output_row():
    w, norms = torch.randn(3, 4, 8), torch.rand(3, 4) + 0.1  # W_O: rows are d_model indices
    original = w.clone()
    wanda_prune_(w, norms, 0.5, out_axes=(2,))
    for m in range(8):
        row = original[:, :, m].flatten()
        scores = row.abs() * norms.flatten()
        expected = row.clone()
        expected[scores.argsort()[:6]] = 0
        assert torch.equal(w[:, :, m].flatten(), expected)


def test_wanda_rejects_norms_of_the_wrong_shape():
    with pytest.raises(CgcLensError, match=r"shape of the weight's input axes \(3, 4\)"):
        wanda_scores(torch.randn(3, 4, 8), torch.rand(8), out_axes=(2,))


def _naive_input_norms(model, tokens):
    """Sum of squares of what each linear layer reads, via module forward hooks (not TL hooks)."""
    sums, handles = {}, []

    def keep(key):
        def hook(module, args, output):
            x = output if key.endswith("_in") else args[0]
            sums[key] = sums.get(key, 0) + x.detach().double().pow(2).flatten(0, 1).sum(0)
        return hook

    for layer, block in enumerate(model.blocks):
        handles.append(block.ln1.register_forward_hook(keep(f"blocks.{layer}.attn_in")))
        handles.append(block.ln2.register_forward_hook(keep(f"blocks.{layer}.mlp_in")))
        handles.append(block.attn.hook_z.register_forward_hook(
            lambda m, a, o, layer=layer: sums.__setitem__(
                f"blocks.{layer}.z", sums.get(f"blocks.{layer}.z", 0)
                + o.detach().double().pow(2).sum((0, 1)))))
        handles.append(block.mlp.hook_post.register_forward_hook(
            lambda m, a, o, layer=layer: sums.__setitem__(
                f"blocks.{layer}.mlp_post", sums.get(f"blocks.{layer}.mlp_post", 0)
                + o.detach().double().pow(2).sum((0, 1)))))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return sums


def test_collect_input_norms_matches_module_outputs(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (5, 12))
    norms = collect_input_norms(tiny_model, tokens, batch_size=2)
    naive = _naive_input_norms(tiny_model, tokens)
    assert set(norms.sum_sq) == set(naive) and norms.n_tokens == 60
    for key, value in naive.items():
        torch.testing.assert_close(norms.sum_sq[key], value, rtol=1e-10, atol=1e-10)
    assert norms.for_weight(1, "W_O").shape == (4, 8)
    z_norms = norms.stacked("W_O")  # what analysis.importance.wanda_head_importance takes
    assert z_norms.shape == (2, 4, 8) and torch.equal(z_norms[1], norms.for_weight(1, "W_O"))
    mlp_only = collect_input_norms(tiny_model, tokens[:1], Targets(families="mlp"))
    with pytest.raises(CgcLensError, match="No input norms for 'W_O'"):
        mlp_only.stacked("W_O")
    assert all(not hp._forward_hooks for hp in tiny_model.hook_dict.values())
    halves = (collect_input_norms(tiny_model, tokens[:2]) +
              collect_input_norms(tiny_model, tokens[2:]))
    torch.testing.assert_close(halves.for_weight(0, "W_Q"), norms.for_weight(0, "W_Q"))


def test_wanda_operator_matches_direct_recomputation(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (4, 16))
    op = WandaPrune(0.25).calibrate(tiny_model, tokens)
    naive = _naive_input_norms(tiny_model, tokens)
    site = {"W_Q": "attn_in", "W_K": "attn_in", "W_V": "attn_in", "W_O": "z",
            "W_in": "mlp_in", "W_out": "mlp_post"}
    refs = Targets().resolve(tiny_model)
    expected = {}
    for ref in refs:
        w = tiny_model.get_parameter(ref.param).detach().clone()
        norms = naive[f"blocks.{ref.layer}.{site[ref.name]}"].sqrt()
        expected[ref.param] = wanda_prune_(w, norms, 0.25, out_axes=ref.out_axes)
    with compressed(tiny_model, op) as record:
        for ref in refs:
            assert torch.equal(tiny_model.get_parameter(ref.param), expected[ref.param])
    assert all(r.sparsity == pytest.approx(0.25, abs=0.02) for r in record.tensors)


def test_wanda_on_head_slices_uses_those_heads_norms(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (3, 10))
    op = WandaPrune(0.5).calibrate(tiny_model, tokens)
    w_o = tiny_model.blocks[1].attn.W_O.detach().clone()
    expected = w_o.clone()
    norms = op.input_norms.for_weight(1, "W_O")
    expected[[1, 3]] = wanda_prune_(w_o[[1, 3]].clone(), norms[[1, 3]], 0.5, out_axes=(2,))
    with compressed(tiny_model, op, Targets(heads=[Head(1, 1), Head(1, 3)], names="W_O")):
        assert torch.equal(tiny_model.blocks[1].attn.W_O, expected)


def test_wanda_without_norms_raises_before_editing(tiny_model):
    before = tiny_model.blocks[0].attn.W_Q.detach().clone()
    with pytest.raises(CgcLensError, match=r"calibrate\(model, tokens\)"), \
            compressed(tiny_model, WandaPrune(0.5)):
        pass
    assert torch.equal(tiny_model.blocks[0].attn.W_Q, before)
    only_mlp = WandaPrune(0.5).calibrate(tiny_model, torch.zeros(1, 4, dtype=torch.long),
                                         Targets(families="mlp"))
    with pytest.raises(CgcLensError, match="No input norms for W_Q of block 0"), \
            compressed(tiny_model, only_mlp):
        pass


def test_head_prune_keeps_top_fraction_per_head():
    w = torch.randn(4, 8, 16)
    original = w.clone()
    head_prune_(w, [1.0, 0.25, 0.0, 0.5])
    assert torch.equal(w[0], original[0])
    assert int((w[1] != 0).sum()) == 32 and int((w[3] != 0).sum()) == 64
    assert (w[2] == 0).all()
    kept = original[1].abs().flatten().sort(descending=True).values[:32]
    assert torch.equal(w[1].abs().flatten().sort(descending=True).values[:32], kept)


def test_head_prune_operator_defaults_to_w_o_slices(tiny_model):
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    op = HeadPrune({Head(0, 1): 0.5, Head(1, 2): 0.0, Head(1, 3): 1.0})
    with compressed(tiny_model, op) as record:
        w0, w1 = tiny_model.blocks[0].attn.W_O, tiny_model.blocks[1].attn.W_O
        assert (w0[1] != 0).float().mean() == 0.5 and (w1[2] == 0).all()
        for layer, head in ((0, 0), (0, 2), (1, 0), (1, 3)):
            w = tiny_model.blocks[layer].attn.W_O[head]
            assert torch.equal(w, before[f"blocks.{layer}.attn.W_O"][head])
        changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(p, before[n])]
        assert changed == ["blocks.0.attn.W_O", "blocks.1.attn.W_O"]
    assert [(r.param, r.heads, r.numel) for r in record.tensors] == [
        ("blocks.0.attn.W_O", (1,), 8 * 32), ("blocks.1.attn.W_O", (2,), 8 * 32)]
    with pytest.raises(CgcLensError, match="has no heads"), \
            compressed(tiny_model, op, Targets(families="mlp")):
        pass


def test_low_rank_is_the_truncated_svd():
    w = torch.randn(4, 6, 10)  # W_Q-like: matrix [(h d_head) = 40, d_model = 6]
    original = w.clone()
    _, rank = low_rank_(w, 0.5, out_axes=(0, 2))
    assert rank == 3
    mat = original.permute(0, 2, 1).reshape(40, 6)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    expected = (u[:, :3] @ torch.diag(s[:3]) @ vh[:3]).reshape(4, 10, 6).permute(0, 2, 1)
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=1e-5)
    assert torch.linalg.matrix_rank(w.permute(0, 2, 1).reshape(40, 6)) == 3


def test_operator_levels_validate():
    with pytest.raises(CgcLensError, match=r"sparsity must be a number in \[0, 1\)"):
        MagnitudePrune(1.0)
    with pytest.raises((CgcLensError, TypeError), match="scope"):
        MagnitudePrune(0.5, scope="layer")
    with pytest.raises(CgcLensError, match=r"retention of L0H1 must be a number in \[0, 1\]"):
        HeadPrune({Head(0, 1): 1.5})
    with pytest.raises((CgcLensError, TypeError), match="Head"):  # TypeError: beartype in tests
        HeadPrune({(0, 1): 0.5})
