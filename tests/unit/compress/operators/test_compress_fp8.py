"""FP8 against torch's own float8 cast applied one value at a time, and against
compressed-tensors' FP8 fake_quantize (e4m3, channel and tensor strategies)."""

from __future__ import annotations

import pytest
import torch
from test_compress_rtn import weight

from cgc_lens.compress import OUT_AXES, as_matrix
from cgc_lens.compress.operators import FP8, fp8_quantize
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError

FMAX = {"e4m3": 448.0, "e5m2": 57344.0}
DTYPE = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def naive_fp8(hf: torch.Tensor, fmt: str, scale: str) -> torch.Tensor:
    out = torch.empty_like(hf)
    whole = hf.abs().max().item()
    for r in range(hf.shape[0]):
        amax = hf[r].abs().max().item() if scale == "channel" else whole
        s = torch.tensor(amax / FMAX[fmt] if amax else torch.finfo(torch.float32).tiny)
        for c in range(hf.shape[1]):
            x = (hf[r, c] / s).clamp(-FMAX[fmt], FMAX[fmt])
            out[r, c] = x.to(DTYPE[fmt]).float() * s
    return out


@pytest.mark.parametrize("scale", ["channel", "tensor"])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("name", ["W_Q", "W_O", "W_out"])
def test_matches_naive_cast_on_every_family(name, fmt, scale):
    w = weight(name, 4)
    w.view(-1)[5] = 0.0
    hf = as_matrix(w, OUT_AXES[name])
    hf[3] = 0.0  # an all-zero output channel stays zero (no NaN)
    w = w.clone()
    expected = naive_fp8(as_matrix(w, OUT_AXES[name]), fmt, scale)
    got = w.clone()
    FP8(fmt, scale=scale).apply_(got, WeightRef(0, name, f"blocks.0.{name}"))
    assert torch.equal(as_matrix(got, OUT_AXES[name]), expected)
    assert torch.isfinite(got).all()


def test_scaled_values_are_representable_and_max_hits_448():
    w = torch.randn(32, 64)
    got = fp8_quantize(w, "e4m3", "channel", out_axes=(0,))
    scale = w.abs().amax(1, keepdim=True) / 448
    scaled = got / scale
    torch.testing.assert_close(scaled.to(torch.float8_e4m3fn).float(), scaled)
    torch.testing.assert_close(scaled.abs().amax(1), torch.full((32,), 448.0))


ct = pytest.importorskip("compressed_tensors.quantization")
ct_utils = pytest.importorskip("compressed_tensors.quantization.utils")


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_e4m3_equals_compressed_tensors(strategy):
    for seed in range(5):
        w = torch.randn(48, 256, generator=torch.Generator().manual_seed(seed)) * 3
        args = ct.QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy=strategy)
        x = w if strategy == "channel" else w.reshape(1, -1)
        s, z = ct_utils.calculate_qparams(x.amin(1, True) if strategy == "channel" else x.min(),
                                          x.amax(1, True) if strategy == "channel" else x.max(),
                                          args)
        expected = ct.fake_quantize(w, s, z, args)
        assert torch.equal(fp8_quantize(w, "e4m3", strategy, out_axes=(0,)), expected)


def test_bits_per_weight_and_bad_names():
    assert FP8().bits_per_weight((768, 3072)) == 8 + 32 / 3072
    assert FP8(scale="tensor").bits_per_weight((768, 3072)) == 8 + 32 / (768 * 3072)
    assert FP8("e5m2").bits_per_weight((12, 64, 64), OUT_AXES["W_Q"]) == 8 + 32 / 64
    with pytest.raises((CgcLensError, TypeError), match=r"FP8 format|'fmt'"):
        fp8_quantize(torch.randn(2, 2), "e3m4", out_axes=(0,))  # type: ignore[arg-type]

