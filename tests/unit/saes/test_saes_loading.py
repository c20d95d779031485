"""load_sae by name from a hub-layout cache (offline), by folder, and the embedded names;
validation of SAEs against the model they are attached to."""

from __future__ import annotations

import pytest
import torch
from unit.fake_releases import (
    GEMMA_PATH,
    GEMMA_REPO,
    KK_REPO,
    PYTHIA_REPO,
    gemma_scope_npz,
    kk_files,
    pythia_res_sm_files,
)
from unit.hub_cache import offline_hub, write_hub_snapshot

from cgc_lens import CgcLensError, Site
from cgc_lens.saes import (
    BatchedSAEConfig,
    BatchedTopKSAE,
    attached,
    embedded_sae_ids,
    load_batched_sae,
    load_sae,
    validate_sae,
)
from cgc_lens.saes import loading as loading_mod
from conftest import make_tiny_model


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory: pytest.TempPathFactory):
    """One hub-layout cache with the three named releases, written once per session."""
    home = tmp_path_factory.mktemp("hf")
    hub = home / "hub"
    write_hub_snapshot(hub, GEMMA_REPO, {f"{GEMMA_PATH}/params.npz": gemma_scope_npz()})
    write_hub_snapshot(hub, PYTHIA_REPO, pythia_res_sm_files())
    write_hub_snapshot(hub, KK_REPO, kk_files())
    return home


@pytest.fixture
def offline(hf_home, monkeypatch):
    return offline_hub(monkeypatch, hf_home)


def test_gemma_scope_loads_offline_and_attaches_at_layer_12(offline):
    sae = load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical")
    assert type(sae).__name__ == "JumpReLUSAE"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (2304, 16384)
    assert sae.cfg.metadata.hook_name == "blocks.12.hook_resid_post"
    model = make_tiny_model(n_layers=13, d_model=2304, n_heads=1, d_head=8, d_mlp=8, n_ctx=8)
    assert validate_sae(model, sae).hook == "blocks.12.hook_resid_post"
    with attached(model, [sae]) as reading:
        model(torch.randint(0, 61, (1, 4)))
    assert reading.features["blocks.12.hook_resid_post"].shape == (1, 4, 16384)
    small = make_tiny_model(n_layers=13, d_model=64, n_heads=1, d_head=8, d_mlp=8)
    with pytest.raises(CgcLensError, match=r"d_in=2304 does not fit .*expected d_in=64"):
        validate_sae(small, sae)
    shallow = make_tiny_model(n_layers=4, d_model=2304, n_heads=1, d_head=8, d_mlp=8)
    with pytest.raises(CgcLensError, match=r"Unknown hook 'blocks\.12\.hook_resid_post'.*Closest"):
        with attached(shallow, [sae]):
            pass


def test_pythia_res_sm_loads_offline_and_attaches_at_layer_4(offline):
    sae = load_sae("pythia-70m-deduped-res-sm", "blocks.4.hook_resid_post")
    assert sae.cfg.d_in == 512 and sae.cfg.metadata.hook_name == "blocks.4.hook_resid_post"
    model = make_tiny_model(n_layers=5, d_model=512, n_heads=2, d_head=8, d_mlp=8)
    with attached(model, [sae], mode="splice") as reading:
        logits = model(torch.randint(0, 61, (2, 5)))
    assert logits.shape == (2, 5, 61)
    assert reading.features["blocks.4.hook_resid_post"].shape == (2, 5, sae.cfg.d_sae)
    with pytest.raises(CgcLensError, match="d_in=512 does not fit"):
        validate_sae(make_tiny_model(n_layers=5, d_model=256), sae)


def test_gpt2_hook_z_kk_loads_offline_and_reads_all_heads(offline):
    sae = load_sae("gpt2-small-hook-z-kk", "blocks.5.hook_z")
    assert sae.cfg.metadata.hook_name == "blocks.5.attn.hook_z"
    assert sae.cfg.reshape_activations == "hook_z"
    model = make_tiny_model(n_layers=6, d_model=64, n_heads=12, d_head=64, d_mlp=8)
    target = validate_sae(model, sae)
    assert target.flatten_heads and target.heads is None
    tokens = torch.randint(0, 61, (1, 3))
    with attached(model, [sae], mode="splice") as reading:
        model(tokens)
    assert reading.features["blocks.5.attn.hook_z"].shape == (1, 3, sae.cfg.d_sae)
    with pytest.raises(CgcLensError, match=r"d_in=768 does not fit .*expected d_in=384"):
        validate_sae(make_tiny_model(n_layers=6, d_model=64, n_heads=6, d_head=64), sae)


def test_unknown_names_and_missing_cache_raise(offline, tmp_path):
    with pytest.raises(CgcLensError, match=r"Unknown SAE id 'layer_12/width_16k/canonicl'"):
        load_sae("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonicl")
    with pytest.raises(CgcLensError, match=r"needs a sae_id"):
        load_sae("pythia-70m-deduped-res-sm")
    with pytest.raises(CgcLensError, match=r"Closest: \['pythia-70m-deduped-res-sm'"):
        load_sae("pythia-70m-dedupd-res-sm", "blocks.4.hook_resid_post")
    with pytest.raises(CgcLensError, match="not in the local hub cache"):
        load_sae("pythia-70m-deduped-res-sm", "blocks.3.hook_resid_post")
    with pytest.raises(CgcLensError, match="has neither"):
        load_sae(tmp_path)


def test_per_head_sae_without_head_index_is_refused(tiny_model):
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(hook_name="blocks.0.attn.hook_z", hook_head_index=None)
    sae = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=2, metadata=meta))
    with pytest.raises(CgcLensError, match="applied to each of the 4 heads alike"):
        validate_sae(tiny_model, sae)
    meta.hook_head_index = 7
    with pytest.raises(CgcLensError, match="hook_head_index=7"):
        validate_sae(tiny_model, sae)
    meta.hook_head_index, meta.hook_name = None, None
    with pytest.raises(CgcLensError, match="no hook_name"):
        validate_sae(tiny_model, sae)


@pytest.fixture
def embedded(tmp_path, monkeypatch, tiny_model):
    """A fake embedded release: a residual SAE (SAELens folder) and per-head SAEs."""
    root = tmp_path / "saes"
    heads = BatchedTopKSAE(BatchedSAEConfig.for_heads(tiny_model, expansion=2, k=3), seed=0)
    heads.save(root / "per_head_z")
    resid_cfg = BatchedSAEConfig(sites=(Site.resid_post(1),), d_in=32, d_sae=64, k=4)
    BatchedTopKSAE(resid_cfg, seed=1).to_saelens(0).save_model(root / "resid_post_layer1")
    monkeypatch.setitem(loading_mod.EMBEDDED_SAE_DIRS, "cgc-tiny", root)
    return heads


def test_embedded_names_resolve(embedded, tiny_model):
    ids = embedded_sae_ids("cgc-tiny")
    assert next(iter(ids)) == "blocks.1.hook_resid_post"
    assert "blocks.1.attn.hook_z[3]" in ids and len(ids) == 1 + 8
    resid = load_sae("cgc-tiny")
    assert resid.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    validate_sae(tiny_model, resid)
    head = load_sae("cgc-tiny", "blocks.1.attn.hook_z[2]")
    assert head.cfg.metadata.hook_head_index == 2
    torch.testing.assert_close(head.W_enc, embedded.W_enc[6], atol=0, rtol=0)
    assert validate_sae(tiny_model, head).heads == [2]
    assert load_batched_sae("cgc-tiny").n == 8
    with pytest.raises(CgcLensError, match=r"Closest: \['blocks\.1\.attn\.hook_z\[2\]'"):
        load_sae("cgc-tiny", "blocks.1.hook_z[2]")


def test_load_from_folders(tmp_path, tiny_model):
    sae = BatchedTopKSAE(BatchedSAEConfig.for_heads(tiny_model, expansion=2, k=3), seed=0)
    sae.save(tmp_path / "b")
    with pytest.raises(CgcLensError, match="pass sae_id"):
        load_sae(tmp_path / "b")
    one = load_sae(tmp_path / "b", "blocks.0.attn.hook_z[1]")
    one.save_model(tmp_path / "one")
    again = load_sae(str(tmp_path / "one"))
    torch.testing.assert_close(again.W_dec, sae.W_dec[1], atol=0, rtol=0)
    assert again.cfg.metadata.hook_head_index == 1
