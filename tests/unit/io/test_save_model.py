"""save_model: TransformerLens → folder → load_model is the identity on every state_dict entry
(cgc-tiny, random GPT-2- and Pythia-shaped models, a compressed model), the Hugging Face folder
computes what the TransformerLens model computes (transformers' own forward), and the folder
rule of results folders (refused when not empty, replaced whole with overwrite, atomic)."""

from __future__ import annotations

import pytest
import torch
from unit.fake_assets import bpe_tokenizer, tiny_gpt2, tiny_neox

from cgc_lens import CgcLensError, load_model
from cgc_lens.compress import RTN, compressed
from cgc_lens.io import hf_export
from cgc_lens.io.hf_export import save_model


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not diff, diff


def random_hf_folder(build, folder):
    """A Hugging Face folder of ``build()`` with every weight and bias randomised."""
    hf = build()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    hf.save_pretrained(folder)
    bpe_tokenizer(320).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_neox])
def test_hf_round_trip_is_exact_and_transformers_agrees(build, tmp_path):
    from transformers import AutoModelForCausalLM

    ref = load_model(random_hf_folder(build, tmp_path / "src"), device="cpu")
    with compressed(ref, RTN(4)):  # a compressed model, as the audit would save it
        out = save_model(ref, tmp_path / "out")
        back = load_model(out, device="cpu")
        assert_same_state(ref, back)
        assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
        tokens = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
        hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(tokens).logits, ref(tokens), rtol=0, atol=2e-5)
    assert back.tokenizer.get_vocab() == ref.tokenizer.get_vocab()


def test_cgc_tiny_round_trip(cgc_tiny, tmp_path):
    out = save_model(cgc_tiny, tmp_path / "auto")  # b_U is trained: the transformer_lens layout
    assert_same_state(cgc_tiny, load_model(out, device="cpu"))
    with pytest.raises(CgcLensError, match="b_U is non-zero"):
        save_model(cgc_tiny, tmp_path / "hf", layout="hf")
    with torch.no_grad():
        cgc_tiny.unembed.b_U.zero_()
    out = save_model(cgc_tiny, tmp_path / "hf", layout="hf")
    assert "model_type" in (out / "config.json").read_text()
    back = load_model(out, device="cpu")
    assert_same_state(cgc_tiny, back)
    tokens = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(back(tokens), cgc_tiny(tokens), rtol=0, atol=0)


def test_folder_rule_and_atomic_write(tiny_model, tmp_path, monkeypatch):
    tiny_model.set_tokenizer(bpe_tokenizer(61), default_padding_side="right")
    out = save_model(tiny_model, tmp_path / "m")
    assert_same_state(tiny_model, load_model(out, device="cpu"))
    with pytest.raises(CgcLensError, match="not empty"):
        save_model(tiny_model, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(model, stage):
        (stage / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(hf_export, "_write_transformer_lens", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging left behind


def test_refusals(tiny_model, tmp_path, unchecked):
    with pytest.raises(CgcLensError, match="architecture None is not one of"):
        save_model(tiny_model, tmp_path / "a", layout="hf")
    with pytest.raises(CgcLensError, match="no tokenizer"):
        save_model(tiny_model, tmp_path / "b")
    tiny_model.cfg.normalization_type = "LNPre"
    with pytest.raises(CgcLensError, match="processing=False"):
        save_model(tiny_model, tmp_path / "c")
    with pytest.raises(CgcLensError, match="layout must be"):
        save_model(tiny_model, tmp_path / "d", layout="onnx")
    assert not any(tmp_path.iterdir())
