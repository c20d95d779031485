"""NF4 against bitsandbytes' quantize_4bit / dequantize_4bit on CPU (bit for bit without double
quantization), and against the published codebook with a naive loop (QLoRA's procedure)."""

from __future__ import annotations

import pytest
import torch
from test_compress_rtn import SHAPES, weight

from cgc_lens.compress import OUT_AXES, as_matrix
from cgc_lens.compress.operators import NF4, NF4_CODE, nf4_quantize, nf4_quantize_blocks
from cgc_lens.compress.operators.nf4 import double_quantize_absmax, dynamic_map
from cgc_lens.compress.targets import WeightRef


def naive_nf4(flat: torch.Tensor, block: int) -> torch.Tensor:
    """QLoRA: per block, x / absmax to the nearest NF4 level (ties to the lower), times absmax."""
    out = []
    for start in range(0, flat.numel(), block):
        chunk = flat[start : start + block].tolist()
        absmax = max(abs(v) for v in chunk)
        for v in chunk:
            x = v / absmax if absmax else 0.0
            best = min(range(16), key=lambda i: (abs(x - NF4_CODE[i]), i))
            out.append(NF4_CODE[best] * absmax)
    return torch.tensor(out, dtype=torch.float64)


def test_codebook_is_qlora_normal_float():
    assert len(NF4_CODE) == 16 and NF4_CODE[0] == -1 and NF4_CODE[7] == 0 and NF4_CODE[15] == 1
    assert list(NF4_CODE) == sorted(NF4_CODE)
    normal = torch.distributions.Normal(0.0, 1.0)  # positive half: quantiles of N(0, 1)
    q = normal.icdf(torch.linspace(0.5, 0.9677083, 9)[1:])
    torch.testing.assert_close(torch.tensor(NF4_CODE[8:]), q / q.max(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("block", [64, 32, 7])
def test_matches_naive_loop_with_a_short_last_block(block):
    w = torch.randn(13, 40, generator=torch.Generator().manual_seed(block))
    got = nf4_quantize_blocks(w.reshape(-1), block).double()
    torch.testing.assert_close(got, naive_nf4(w.reshape(-1), block), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", list(SHAPES))
def test_blocks_run_row_major_over_the_hf_matrix(name):
    w = weight(name, 2)
    op = NF4(8)
    got = w.clone()
    op.apply_(got, WeightRef(0, name, f"blocks.0.{name}"))
    hf = as_matrix(w, OUT_AXES[name])
    expected = naive_nf4(hf.reshape(-1), 8).float().view(hf.shape)
    torch.testing.assert_close(as_matrix(got, OUT_AXES[name]), expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(got, nf4_quantize(w, 8, out_axes=OUT_AXES[name]))


def test_double_quant_picks_the_nearest_dynamic_level():
    absmax = torch.rand(700, generator=torch.Generator().manual_seed(0)) * 3
    got = double_quantize_absmax(absmax)
    offset = absmax.mean()
    levels = dynamic_map()
    for start in range(0, 700, 256):
        c = (absmax[start : start + 256] - offset).tolist()
        a2 = max(abs(v) for v in c)
        for i, v in enumerate(c):
            best = min(levels, key=lambda lv: abs(v / a2 - lv))
            assert abs(got[start + i].item() - (best * a2 + offset.item())) < 1e-6


F = pytest.importorskip("bitsandbytes.functional")


@pytest.mark.parametrize("shape,block", [((64, 256), 64), ((48, 100), 64), ((300, 512), 128),
                                         ((16, 40), 32)])
def test_equals_bitsandbytes_bit_for_bit(shape, block):
    for seed in range(3):
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        w *= torch.rand(shape[0], 1, generator=torch.Generator().manual_seed(seed))
        q, state = F.quantize_4bit(w, blocksize=block, quant_type="nf4")
        expected = F.dequantize_4bit(q, state)
        assert torch.equal(nf4_quantize_blocks(w.reshape(-1), block).view(shape), expected)


def test_dynamic_map_is_bitsandbytes():
    assert torch.equal(torch.tensor(dynamic_map()), F.create_dynamic_map(signed=True))


def test_double_quant_close_to_bitsandbytes():
    """bitsandbytes' C kernel searches the 8-bit map approximately: it sometimes takes the
    second-nearest level. The absmax values agree to one level of the map, in all but <1%."""
    for seed in range(3):
        w = torch.randn(300, 512, generator=torch.Generator().manual_seed(seed))
        q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
        theirs = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
        absmax = w.reshape(-1, 64).abs().amax(1)
        ours = double_quantize_absmax(absmax)
        close = (ours - theirs).abs() <= 1e-6 * absmax
        assert close.float().mean() > 0.99
        step = 0.02 * absmax.max()  # widest gap between adjacent levels of the map, scaled
        assert (ours - theirs).abs().max() <= step
        got = nf4_quantize_blocks(w.reshape(-1), 64, double_quant=True).view(w.shape)
        expected = F.dequantize_4bit(q, state)
        assert (got - expected).abs().max() <= step


def test_bits_per_weight():
    assert NF4().bits_per_weight((768, 768)) == 4.5
    assert NF4(128).bits_per_weight((768, 768)) == 4.25
    assert NF4(double_quant=True).bits_per_weight((768, 768)) == pytest.approx(
        4 + 8 / 64 + 32 / (64 * 256) + 32 / 768**2)
