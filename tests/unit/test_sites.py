import pytest

from cgc_lens import CgcLensError, Head, Site, hook_name
from cgc_lens.sites import layer_of, validate_hook


def test_hook_names_match_transformer_lens(tiny_model):
    for kind in ("z", "resid_post", "resid_pre", "mlp_out", "mlp_post", "attn_out"):
        assert hook_name(kind, layer=1) in tiny_model.hook_dict


def test_bad_kind_and_layer_raise():
    with pytest.raises(CgcLensError, match="Closest"):
        hook_name("resid_pots", layer=0)
    with pytest.raises(CgcLensError, match="non-negative"):
        hook_name("z", layer=-1)


def test_validate_hook_names_closest(tiny_model):
    with pytest.raises(CgcLensError, match=r"blocks\.1\.attn\.hook_z"):
        validate_hook(tiny_model, "blocks.1.hook_z")
    assert validate_hook(tiny_model, "blocks.1.attn.hook_z") == "blocks.1.attn.hook_z"


def test_site_and_head():
    assert Site.z(2, head=1).hook == "blocks.2.attn.hook_z"
    assert layer_of(Site.resid_post(5).hook) == 5
    with pytest.raises(CgcLensError, match="no heads"):
        Site("resid_post", 0, head=1)
    with pytest.raises(CgcLensError):
        Head(-1, 0)


def test_head_check(tiny_model):
    assert Head(1, 3).check(tiny_model) == Head(1, 3)
    with pytest.raises(CgcLensError, match="outside the model"):
        Head(2, 0).check(tiny_model)
