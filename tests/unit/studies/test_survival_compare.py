"""--compare: checkpoints audited as conditions on the reference's tokens with its frozen SAE.

A cgc-tiny saved with int4 through save_model reproduces the in-place int4 condition; a GGUF
file (written by the gguf package, Q8_0 and Q4_0) and a compressed-tensors int4 group checkpoint
(written by compressed-tensors' own compressor) give the r that numpy.corrcoef gives on the
codes of the model holding the library's own dequantized weights; other architectures,
sizes and tokenizers are refused up front, and the reference comes back bit for bit.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from unit.fake_assets import bpe_tokenizer, tiny_gpt2, tiny_neox
from unit.fake_releases import random_saelens_sae

from cgc_lens import CgcLensError, load_model
from cgc_lens.compress import RTN, compressed
from cgc_lens.io.hf_export import save_model
from cgc_lens.saes import attached, validate_sae
from cgc_lens.studies.survival import SurvivalConfig, run_survival
from cgc_lens.studies.survival.compare import describe

FAST = dict(
    batch_size=4,
    n_shards=2,
    active_rate=0.0,
    progress=False,
    fragility_folds=2,
    match_pruning=None,
    null=False,
)
GPT2_TENSORS = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def random_hf(build):
    hf = build()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return hf


def save_hf(hf, folder, vocab=320):
    hf.save_pretrained(folder)
    bpe_tokenizer(vocab).save_pretrained(folder)
    return folder


def write_gguf(hf, path, qtype):
    """``hf`` (GPT-2) as a GGUF file in llama.cpp's layout; returns the HF state the file
    dequantizes to, by the gguf package's own dequantize."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import dequantize, quantize

    cfg, tok = hf.config, json.loads(bpe_tokenizer(320).backend_tokenizer.to_str())
    w = GGUFWriter(str(path), "gpt2")
    w.add_context_length(cfg.n_ctx)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get))
    w.add_token_types([1] * len(tok["model"]["vocab"]))
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",
    }
    for layer in range(cfg.n_layer):
        for hf_name, g in GPT2_TENSORS.items():
            for s in ("weight", "bias"):
                names[f"transformer.h.{layer}.{hf_name}.{s}"] = f"blk.{layer}.{g}.{s}"
    sd, expected = hf.state_dict(), {}
    for hf_name, g in names.items():
        a = sd[hf_name].numpy().astype(np.float32)
        a = a.T.copy() if g.endswith(TRANSPOSED) else a
        if a.ndim == 2:
            q = quantize(a, qtype)
            w.add_tensor(g, q, raw_dtype=qtype)
            a = dequantize(q, qtype)
        else:
            w.add_tensor(g, a)
        expected[hf_name] = torch.from_numpy(a.T.copy() if g.endswith(TRANSPOSED) else a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert qtype in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0)
    return expected


def write_compressed_tensors(hf, folder, group_size=16):
    """``hf`` (GPT-NeoX) int4 symmetric group-quantized and saved pack-quantized by
    compressed-tensors; returns the HF state its fake_quantize gives."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    args = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size
    )
    apply_quantization_config(
        hf,
        QuantizationConfig(
            config_groups={"g": QuantizationScheme(targets=["Linear"], weights=args)},
            ignore=["lm_head"],
            quantization_status=QuantizationStatus.INITIALIZED,
        ),
    )
    expected = {k: v.clone() for k, v in hf.state_dict().items() if "weight_" not in k}
    for name, mod in hf.named_modules():
        if getattr(mod, "weight_scale", None) is not None:
            scale, zero = compute_dynamic_scales_and_zp(mod.weight.data, args, mod)
            mod.weight_scale.data.copy_(scale.reshape(mod.weight_scale.shape))
            mod.weight_zero_point.data.copy_(zero.reshape(mod.weight_zero_point.shape))
            expected[f"{name}.weight"] = fake_quantize(
                mod.weight.data, mod.weight_scale.data, mod.weight_zero_point.data, args
            )
    compressor = ModelCompressor.from_pretrained_model(hf, quantization_format="pack-quantized")
    compressor.compress_model(hf)
    save_hf(hf, folder)
    compressor.update_config(str(folder))
    return expected


def codes(model, sae, tokens):
    target = validate_sae(model, sae)
    with torch.no_grad(), attached(model, [target]) as reading:
        model(tokens, return_type=None)
        return reading.features[target.key].reshape(-1, sae.cfg.d_sae).double().numpy()


def expected_r(reference, dequantized, sae, tokens):
    """numpy.corrcoef per feature between the reference's codes and those of a model holding
    the library's dequantized weights."""
    x, y = codes(reference, sae, tokens), codes(dequantized, sae, tokens)
    varies = (x.std(0) > 0) & (y.std(0) > 0)
    assert varies.sum() >= 10
    return varies, np.array([np.corrcoef(x[:, i], y[:, i])[0, 1] for i in np.flatnonzero(varies)])


def test_saved_int4_reproduces_the_in_place_int4_condition(cgc_tiny, tmp_path):
    with compressed(cgc_tiny, RTN(4)):
        folder = save_model(cgc_tiny, tmp_path / "tiny-int4")
    before = state(cgc_tiny)
    config = SurvivalConfig(
        bits=(4,),
        compare=(f"saved={folder}",),
        tokens=4096,
        eval_tokens=1024,
        cache_mb=0.05,
        **{**FAST, "null": True},
    )
    result = run_survival(config, model=cgc_tiny)
    assert result.info["n_chunks"] > 1  # the checkpoint was swapped in once per chunk
    np.testing.assert_allclose(result.r["saved"], result.r["RTN INT4"], rtol=0, atol=1e-6)
    rows = {c.name: c for c in result.conditions}
    assert rows["saved"].ppl == pytest.approx(rows["RTN INT4"].ppl, rel=1e-6)
    assert result.info["compared"]["saved"]["format"] == "checkpoint"
    assert all(torch.equal(cgc_tiny.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("qname", ["Q8_0", "Q4_0"])
def test_gguf_file_is_audited_like_its_dequantized_weights(qname, tmp_path):
    from gguf import GGMLQuantizationType

    hf = random_hf(tiny_gpt2)
    reference = load_model(save_hf(hf, tmp_path / "ref"), device="cpu")
    expected = write_gguf(hf, tmp_path / f"tiny-{qname}.gguf", GGMLQuantizationType[qname])
    hf.load_state_dict(expected)
    dequantized = load_model(save_hf(hf, tmp_path / "deq"), device="cpu")
    sae = random_saelens_sae("topk", 32, 64)
    tokens = torch.randint(0, 320, (16, 32), generator=torch.Generator().manual_seed(2))
    before = state(reference)
    result = run_survival(
        SurvivalConfig(
            bits=(), compare=(str(tmp_path / f"tiny-{qname}.gguf"),), eval_tokens=0, **FAST
        ),
        model=reference,
        sae=sae,
        tokens=tokens,
    )
    name = f"tiny-{qname}.gguf"
    varies, r = expected_r(reference, dequantized, sae, tokens)
    np.testing.assert_allclose(result.r[name][varies], r, rtol=0, atol=1e-6)
    assert result.info["compared"][name]["format"] == "gguf"
    assert result.summary(name).bits == {"Q8_0": 8.0, "Q4_0": 4.0}[qname]
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in before.items())


def test_compressed_tensors_checkpoint_is_audited_like_its_dequantized_weights(tmp_path):
    hf = random_hf(tiny_neox)
    reference = load_model(save_hf(hf, tmp_path / "ref"), device="cpu")
    expected = write_compressed_tensors(hf, tmp_path / "ct-int4-g16")
    plain = random_hf(tiny_neox)
    plain.load_state_dict(expected)
    dequantized = load_model(save_hf(plain, tmp_path / "deq"), device="cpu")
    sae = random_saelens_sae("topk", 32, 64)
    tokens = torch.randint(0, 320, (16, 32), generator=torch.Generator().manual_seed(2))
    result = run_survival(
        SurvivalConfig(bits=(4,), compare=(str(tmp_path / "ct-int4-g16"),), eval_tokens=0, **FAST),
        model=reference,
        sae=sae,
        tokens=tokens,
    )
    varies, r = expected_r(reference, dequantized, sae, tokens)
    np.testing.assert_allclose(result.r["ct-int4-g16"][varies], r, rtol=0, atol=1e-6)
    assert result.info["compared"]["ct-int4-g16"]["format"] == "compressed-tensors"
    assert result.summary("ct-int4-g16").bits == 4.0
    assert not np.allclose(result.r["ct-int4-g16"], result.r["RTN INT4"])  # g16 ≠ per-channel


def test_different_models_are_refused_up_front(tmp_path):
    reference = load_model(save_hf(random_hf(tiny_gpt2), tmp_path / "ref"), device="cpu")
    before = state(reference)
    save_hf(random_hf(tiny_neox), tmp_path / "neox")
    save_hf(
        tiny_gpt2(vocab_size=320, n_ctx=64, seed=1).__class__(
            type(tiny_gpt2().config)(
                vocab_size=320, n_positions=64, n_ctx=64, n_embd=64, n_layer=2, n_head=4
            )
        ),
        tmp_path / "wide",
    )
    save_hf(random_hf(tiny_gpt2), tmp_path / "other-tok", vocab=300)
    (tmp_path / "bnb").mkdir()
    (tmp_path / "bnb" / "config.json").write_text(
        json.dumps({"model_type": "gpt2", "quantization_config": {"quant_method": "bitsandbytes"}})
    )
    cases = {
        "neox": "not the reference's architecture",
        "wide": "d_model: 32 vs 64",
        "other-tok": "tokenizer differs",
        "bnb": "quantized with 'bitsandbytes'",
        "missing": "no such path",
    }
    for name, match in cases.items():
        config = SurvivalConfig(bits=(4,), compare=(str(tmp_path / name),), **FAST)
        with pytest.raises(CgcLensError, match=match):
            run_survival(config, model=reference, tokens=torch.zeros(4, 8, dtype=torch.long))
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in before.items())


def test_config_and_missing_gguf_package(tmp_path, monkeypatch):
    config = SurvivalConfig(bits=(4,), compare=("a=/x/y", "/x/z.gguf"), match_pruning="RTN INT4")
    assert config.condition_names[-3:] == ("a", "z.gguf", "magnitude matched RTN INT4")
    assert SurvivalConfig.from_dict(config.to_dict()) == config
    with pytest.raises(CgcLensError, match="Condition names must be unique"):
        SurvivalConfig(bits=(4,), compare=("/x/a", "/y/a"))
    with pytest.raises(CgcLensError, match="cannot name the compared checkpoint"):
        SurvivalConfig(bits=(4,), compare=("/x/a",), match_pruning="a")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(CgcLensError, match="needs the 'gguf' package"):
        describe("m", tmp_path / "m.gguf")


def test_several_checkpoints_are_each_loaded_once_over_many_chunks(cgc_tiny, tmp_path):
    """Two checkpoints over several chunks: each read from its folder once (the second streams
    after the chunk loop over reference codes kept on disk), sums bit-identical to one chunk and
    to the batch-outer order, and the int4 checkpoint's sums equal the in-place RTN(4)'s."""
    from cgc_lens.compress import Plan
    from cgc_lens.saes import load_sae
    from cgc_lens.studies.survival.compare import compared_conditions
    from cgc_lens.studies.survival.passes import stream_conditions

    folders = []
    for bits in (8, 4):
        with compressed(cgc_tiny, RTN(bits)):
            folders.append(save_model(cgc_tiny, tmp_path / f"int{bits}"))
    before = state(cgc_tiny)
    target = validate_sae(cgc_tiny, load_sae("cgc-tiny"))
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cgc_tiny.cfg.d_vocab, (12, 32), generator=gen)
    runs = {}
    for cache_bytes in (20_000, 1 << 30, 0):
        specs = (f"c8={folders[0]}", f"c4={folders[1]}")
        conds = compared_conditions(specs, cgc_tiny)
        pairs = [("rtn4", Plan.of(RTN(4))), *[(c.name, c.plan) for c in conds]]
        runs[cache_bytes] = sums = stream_conditions(
            cgc_tiny,
            tokens,
            [target],
            pairs,
            batch_size=2,
            n_shards=3,
            cache_bytes=cache_bytes,
            progress=False,
        )
        assert conds[0].plan.slot.loads == {"c8": 1, "c4": 1}
        conds[0].plan.slot.clear()
    assert runs[20_000].n_chunks > 2 and runs[1 << 30].n_chunks == 1 and runs[0].n_chunks == 6
    key = target.key
    for other in (runs[1 << 30], runs[0]):
        assert torch.equal(runs[20_000].cond_sums[key], other.cond_sums[key])
        assert torch.equal(runs[20_000].ref_moments[key], other.ref_moments[key])
    sums = runs[20_000].cond_sums[key]
    assert torch.equal(sums[0], sums[2])  # the saved int4 is the in-place int4, bit for bit
    assert not torch.equal(sums[1], sums[2])
    assert all(torch.equal(cgc_tiny.state_dict()[k], v) for k, v in before.items())
