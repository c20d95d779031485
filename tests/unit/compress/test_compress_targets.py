"""Target selection: families, names, layers, heads; embeddings, norms and biases never."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer

from cgc_lens.compress import Targets, WeightRef, as_matrix, from_matrix
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head
from conftest import make_tiny_model


def model(**kw) -> HookedTransformer:
    cfg = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, d_vocab=20, n_ctx=8,
               seed=None)
    cfg.update(kw)
    return make_tiny_model(**cfg)


def test_default_targets_are_block_linear_weights_only(tiny_model):
    refs = Targets().resolve(tiny_model)
    assert [r.param for r in refs[:6]] == [
        "blocks.0.attn.W_Q", "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O",
        "blocks.0.mlp.W_in", "blocks.0.mlp.W_out",
    ]
    assert len(refs) == 12
    params = {r.param for r in refs}
    for name, _ in tiny_model.named_parameters():
        excluded = ("embed" in name or "unembed" in name or ".ln" in name or "ln_final" in name
                    or ".b_" in name)
        assert (name in params) != excluded, name


def test_gated_model_adds_w_gate_and_attn_only_has_no_mlp():
    names = [r.name for r in Targets(layers=[1]).resolve(model(gated=True, act_fn="silu"))]
    assert names == ["W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out"]
    assert {r.name for r in Targets().resolve(model(attn_only=True))} == {"W_Q", "W_K", "W_V",
                                                                         "W_O"}


def test_select_by_family_name_layer_and_head(tiny_model):
    assert {r.name for r in Targets(families="mlp").resolve(tiny_model)} == {"W_in", "W_out"}
    refs = Targets(names=["W_O", "W_in"], layers=1).resolve(tiny_model)
    assert [r.param for r in refs] == ["blocks.1.attn.W_O", "blocks.1.mlp.W_in"]
    refs = Targets(heads=[Head(1, 2), Head(1, 0), Head(0, 3)], names="W_O").resolve(tiny_model)
    assert [(r.layer, r.heads) for r in refs] == [(0, (3,)), (1, (0, 2))]
    assert all(r.n_heads == 4 for r in refs)
    assert str(refs[1]) == "blocks.1.attn.W_O[heads 0,2]"
    # heads restrict attention weights and imply the attention family
    assert {r.name for r in Targets(heads=Head(0, 1)).resolve(tiny_model)} == {"W_Q", "W_K",
                                                                              "W_V", "W_O"}


def test_unknown_and_out_of_range_raise(tiny_model):
    with pytest.raises(CgcLensError, match=r"Unknown weight 'W_gate' in \('attn', 'mlp'\) of b"):
        Targets(names=["W_gate"]).resolve(tiny_model)
    with pytest.raises(CgcLensError, match=r"Unknown weight 'W_q'. Closest: \[.*'W_Q'"):
        Targets(names=["W_q"])
    with pytest.raises((CgcLensError, TypeError), match="attention"):  # beartype in tests
        Targets(families=["attention"])
    with pytest.raises(CgcLensError, match=r"Layer 5 is outside .*2 layers \(valid 0\.\.1\)"):
        Targets(layers=[5]).resolve(tiny_model)
    with pytest.raises(CgcLensError, match=r"L0H9 is outside the model"):
        Targets(heads=[Head(0, 9)]).resolve(tiny_model)
    with pytest.raises(CgcLensError, match="MLP weights have no heads"):
        Targets(heads=[Head(0, 1)], families=["attn", "mlp"])
    with pytest.raises(CgcLensError, match="non-negative ints"):
        Targets(layers=[-1])
    with pytest.raises((CgcLensError, TypeError), match="Head"):  # TypeError: beartype in tests
        Targets(heads=[(0, 1)])


def test_dict_round_trip():
    t = Targets(families=["attn"], names=["W_O"], layers=[0, 1], heads=[Head(1, 2)])
    assert Targets.from_dict(t.to_dict()) == t
    with pytest.raises(CgcLensError, match="Unknown Targets field"):
        Targets.from_dict({"layer": [0]})


def test_grouped_query_heads_map_to_their_kv_head():
    m = model(n_key_value_heads=2)
    refs = Targets(heads=[Head(0, 3)], layers=0).resolve(m)
    by_name = {r.name: r for r in refs}
    assert by_name["W_K"].param == "blocks.0.attn._W_K" and by_name["W_K"].heads == (1,)
    assert by_name["W_Q"].heads == (3,)


def test_matrix_round_trip_and_weight_ref_axes():
    for name, shape in (("W_Q", (3, 5, 2)), ("W_O", (3, 2, 5)), ("W_out", (7, 5))):
        ref = WeightRef(0, name, f"x.{name}")
        w = torch.randn(shape)
        mat = as_matrix(w, ref.out_axes)
        assert torch.equal(from_matrix(mat, w.shape, ref.out_axes), w)
    with pytest.raises(CgcLensError, match="out_axes must be distinct axes"):
        as_matrix(torch.randn(2, 3), (2,))
