"""load_model / load_tokenizer: embedded layout, local HF folders, and names through a hub cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_assets import bpe_tokenizer, tiny_gpt2, tiny_neox, write_fake_embedded
from fake_releases import gpt2_config_files
from hub_cache import offline_hub, repo_folder, write_hub_snapshot

from cgc_lens import models
from cgc_lens.errors import CgcLensError
from cgc_lens.models import (
    embedded_asset_dir,
    load_model,
    load_model_shape,
    load_tokenizer,
    resolve_dtype,
)


@pytest.fixture
def fake_assets(tmp_path, monkeypatch):
    """cgc-tiny replaced by a random model in the embedded layout; returns the source model."""
    model = write_fake_embedded(tmp_path / "assets" / "cgc-tiny")
    monkeypatch.setattr(models, "ASSETS_ROOT", tmp_path / "assets")
    return model


def _hf_files(hf_model, tmp_path: Path, vocab_size: int = 300) -> dict[str, Path]:
    folder = tmp_path / "hf_export"
    hf_model.save_pretrained(folder)
    bpe_tokenizer(vocab_size).save_pretrained(folder)
    return {p.name: p for p in folder.iterdir()}


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("torch.float32") is torch.float32
    with pytest.raises(CgcLensError, match=r"Expected a floating dtype, got 'int8'.*Valid"):
        resolve_dtype("int8")
    with pytest.raises(CgcLensError, match="floating dtype"):
        resolve_dtype(torch.int64)


def test_embedded_asset_dir_unknown():
    assert embedded_asset_dir().parts[-2:] == ("assets", "cgc-tiny")
    with pytest.raises(CgcLensError, match=r"Unknown embedded model 'cgc-tiyn'\. Closest: \['cgc"):
        embedded_asset_dir("cgc-tiyn")


def test_load_embedded_keeps_weights_as_deployed(fake_assets):
    model = load_model("cgc-tiny", device="cpu")
    assert not model.training and model.cfg.model_name == "cgc-tiny"
    assert model.cfg.normalization_type == "LN"  # not folded into LNPre
    source = fake_assets.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, source[name], rtol=0, atol=0)
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(model(tokens), fake_assets(tokens), rtol=0, atol=0)
    # tokenizer attached, no network round-trip, TransformerLens string path works
    assert model.tokenizer.eos_token_id == 0 and model.tokenizer.name_or_path == "cgc-tiny"
    assert model.to_tokens("the quick fox", prepend_bos=True)[0, 0].item() == 0
    assert model.to_tokens("the quick fox", prepend_bos=False)[0, 0].item() != 0


def test_load_embedded_dtype_and_processing(fake_assets):
    bf16 = load_model("cgc-tiny", device="cpu", dtype="bfloat16")
    assert bf16.W_E.dtype is torch.bfloat16
    processed = load_model("cgc-tiny", device="cpu", processing=True)
    assert processed.cfg.normalization_type == "LNPre"
    assert not torch.equal(processed.W_O, fake_assets.W_O)  # what processing=False protects
    tokens = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(processed(tokens).log_softmax(-1),
                               fake_assets(tokens).log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_load_embedded_layout_from_path(tmp_path):
    source = write_fake_embedded(tmp_path / "mine")
    model = load_model(tmp_path / "mine", device="cpu")
    torch.testing.assert_close(model.W_Q, source.W_Q, rtol=0, atol=0)
    assert load_tokenizer(tmp_path / "mine").eos_token_id == 0


def test_load_embedded_missing_or_bad_files(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "ASSETS_ROOT", tmp_path)
    (tmp_path / "cgc-tiny").mkdir()
    with pytest.raises(CgcLensError, match=r"missing \['config.json', 'model.safetensors'"):
        load_model("cgc-tiny")
    write_fake_embedded(tmp_path / "cgc-tiny")
    cfg = json.loads((tmp_path / "cgc-tiny" / "config.json").read_text())
    (tmp_path / "cgc-tiny" / "config.json").write_text(json.dumps({**cfg, "d_model": 64}))
    with pytest.raises(CgcLensError, match=r"do not fit the config|Bad HookedTransformerConfig"):
        load_model("cgc-tiny", device="cpu")


def test_load_tokenizer_embedded(fake_assets):
    tok = load_tokenizer("cgc-tiny")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 0, 0)
    ids = tok("the quick brown fox", add_special_tokens=False)["input_ids"]
    assert ids and 0 not in ids
    assert tok.decode(ids) == "the quick brown fox"


@pytest.mark.parametrize(
    ("name", "repo", "make"),
    [("gpt2", "gpt2", tiny_gpt2),
     ("pythia-70m-deduped", "EleutherAI/pythia-70m-deduped", tiny_neox)],
)
def test_load_by_name_offline_from_hub_cache(name, repo, make, tmp_path, monkeypatch):
    hub = offline_hub(monkeypatch, tmp_path / "hf")
    hf_model = make()
    write_hub_snapshot(hub, repo, _hf_files(hf_model, tmp_path))
    model = load_model(name, device="cpu")
    assert model.cfg.normalization_type == "LN" and model.tokenizer is not None
    tokens = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, rtol=1e-5, atol=1e-5)
    assert load_tokenizer(name)("fox jumps", add_special_tokens=False)["input_ids"]


def test_missing_model_offline_names_cache_and_fix(tmp_path, monkeypatch):
    hub = offline_hub(monkeypatch, tmp_path / "hf")
    expected = str(repo_folder(hub, "gpt2-medium"))
    with pytest.raises(CgcLensError, match="gpt2-medium") as info:
        load_model("gpt2-medium", device="cpu")
    message = str(info.value)
    assert expected in message and "HF_HUB_OFFLINE" in message and "To fix" in message
    with pytest.raises(CgcLensError, match=r"tokenizer|model 'gpt2-medium'"):
        load_tokenizer("gpt2-medium")


def test_unknown_names_and_bad_paths(tmp_path):
    with pytest.raises(CgcLensError, match=r"Unknown model 'gtp2-medium'\. Closest: .*'gpt2-med"):
        load_model("gtp2-medium")
    with pytest.raises(CgcLensError, match="no such path"):
        load_model(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CgcLensError, match=r"config\.json and weights"):
        load_model(tmp_path / "empty")
    tiny_gpt2().config.save_pretrained(tmp_path / "config-only")
    with pytest.raises(CgcLensError, match=r"Hugging Face causal LM \(config\.json and weights"):
        load_model(tmp_path / "config-only")


def test_load_local_hf_directory(tmp_path):
    hf_model = tiny_gpt2()
    folder = tmp_path / "local-gpt2"
    hf_model.save_pretrained(folder)
    bpe_tokenizer(300).save_pretrained(folder)
    model = load_model(folder, device="cpu")
    assert model.cfg.normalization_type == "LN" and model.tokenizer is not None
    tokens = torch.randint(0, 320, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, rtol=1e-5, atol=1e-5)
    processed = load_model(folder, device="cpu", processing=True)
    assert processed.cfg.normalization_type == "LNPre"


def test_local_hf_directory_without_n_ctx_says_what_to_add(tmp_path):
    folder = tmp_path / "no-n-ctx"
    tiny_gpt2().save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("n_ctx", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CgcLensError, match="n_ctx"):
        load_model(folder, device="cpu")


def test_model_shape_matches_the_loaded_model_without_weights(fake_assets, tmp_path):
    shape, model = load_model_shape("cgc-tiny"), load_model("cgc-tiny", device="cpu")
    assert shape.cfg.d_model == model.cfg.d_model and shape.cfg.n_layers == model.cfg.n_layers
    assert set(shape.hook_dict) == set(model.hook_dict)
    assert {n: p.shape for n, p in shape.named_parameters()} == {
        n: p.shape for n, p in model.named_parameters()}
    assert all(p.device.type == "meta" for p in shape.parameters())
    tiny_gpt2().save_pretrained(tmp_path / "hf")  # a local HF folder: config only is read
    assert load_model_shape(tmp_path / "hf").cfg.d_model == tiny_gpt2().config.n_embd


def test_model_shape_by_name_reads_only_the_config(tmp_path, monkeypatch):
    hub = offline_hub(monkeypatch, tmp_path / "hf")
    write_hub_snapshot(hub, "gpt2", gpt2_config_files())  # no weights in the cache
    shape = load_model_shape("gpt2")
    assert (shape.cfg.n_layers, shape.cfg.d_model, shape.cfg.d_vocab) == (12, 768, 50257)
    assert shape.W_E.device.type == "meta"
    with pytest.raises(CgcLensError, match=r"gpt2-medium.*HF_HUB_OFFLINE"):
        load_model_shape("gpt2-medium")
    with pytest.raises(CgcLensError, match="Unknown model 'gtp2'"):
        load_model_shape("gtp2")


def _corrupt_config(folder: Path) -> str:
    (folder / "config.json").write_text('{"d_model": 32, "n_layers": ')
    return r"config .*config\.json is not valid JSON.*restore it from the model's source"


def _truncate_weights(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return r"weights file .*model\.safetensors \(\d+ bytes\) cannot be read.*truncated or corrupt"


def _config_not_an_object(folder: Path) -> str:
    (folder / "config.json").write_text("[1, 2]")
    return r"config\.json must hold a JSON object, got list"


@pytest.mark.parametrize("spoil", [_corrupt_config, _truncate_weights, _config_not_an_object])
def test_corrupt_model_files_are_refused_naming_the_file(tmp_path, spoil):
    write_fake_embedded(tmp_path / "mine")
    match = spoil(tmp_path / "mine")
    with pytest.raises(CgcLensError, match=match):
        load_model(tmp_path / "mine", device="cpu")


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_load_model_on_an_existing_file_names_the_folder_to_pass(tmp_path, name):
    write_fake_embedded(tmp_path / "mine")
    with pytest.raises(CgcLensError, match=rf"model directory, got the file .*{name}.*pass the "
                                           rf"folder holding it \('.*mine'\)"):
        load_model(tmp_path / "mine" / name, device="cpu")


@pytest.mark.parametrize(("device", "match"), [
    ("tpu:0", r"Unknown device 'tpu:0'. Expected one of \['cpu', 'cuda', 'mps', 'meta'\]"),
    ("cuda:x", r"Unknown device 'cuda:x'.*with an index \('cuda:1'\)"),
    ("cuda:99", r"Device 'cuda:99' is not available: this machine has .*Pass device='cpu'"),
])
def test_bad_devices_are_refused_before_loading(fake_assets, device, match):
    with pytest.raises(CgcLensError, match=match):
        load_model("cgc-tiny", device=device)
