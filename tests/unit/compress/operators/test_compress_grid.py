"""The shared group-wise grid (and RTN on it) against compressed-tensors' own quantize /
dequantize with the same QuantizationArgs, bit for bit, and the TransformerLens axis mapping
by a round trip through the HuggingFace [out, in] layout."""

from __future__ import annotations

import pytest
import torch
from test_compress_rtn import SHAPES, from_hf, to_hf, weight

from cgc_lens.compress import OUT_AXES, RTN, as_matrix, rtn_quantize
from cgc_lens.compress.operators import (
    fake_quantize,
    grid_range,
    group_qparams,
    quantize_groups,
    rtn_bits_per_weight,
)
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError

ct = pytest.importorskip("compressed_tensors.quantization")
ct_utils = pytest.importorskip("compressed_tensors.quantization.utils")


def random_matrix(seed: int, n_out: int = 48, n_in: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * torch.rand(n_out, 1, generator=g) * 3
    w.view(-1)[::37] *= 8  # outliers
    w[1] = w[1].abs()  # an all-positive row: the asymmetric range widens to 0
    w[2] = 0.0  # an all-zero row
    return w


def ct_args(bits: int, group_size: int | None, symmetric: bool):
    strategy = "channel" if group_size is None else "group"
    return ct.QuantizationArgs(num_bits=bits, symmetric=symmetric, strategy=strategy,
                               group_size=group_size)


def ct_groups(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    return w.unsqueeze(1) if group_size is None else w.view(w.shape[0], -1, group_size)


@pytest.mark.parametrize("group_size", [None, 32, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_asymmetric_grid_equals_compressed_tensors(bits, group_size):
    for seed in range(5):
        w = random_matrix(seed)
        args = ct_args(bits, group_size, symmetric=False)
        x = ct_groups(w, group_size)
        scale, zero = ct_utils.calculate_qparams(x.amin(-1), x.amax(-1), args)
        expected = ct.fake_quantize(w, scale, zero, args)
        assert torch.equal(quantize_groups(w, bits, group_size, False), expected)
        ours = group_qparams(w, bits, group_size, False)
        # their scale and their int8 zero shifted by 2^(b-1), except all-zero groups (their
        # scale floors at eps, ours at the smallest normal; both dequantize to 0)
        live = x.abs().amax(-1) > 0
        assert not live.all() and live.any()
        assert torch.equal(ours.scale[live], scale[live])
        assert torch.equal(ours.zero[live], zero[live].float() + 2 ** (bits - 1))
        assert ours.zero.min() >= 0 and ours.zero.max() <= 2**bits - 1
        q_int = ct.quantize(w, scale, zero, args, dtype=torch.int8)  # their integers
        assert torch.equal(ct.dequantize(q_int, scale, zero, args, dtype=torch.float32),
                           expected)


@pytest.mark.parametrize("group_size", [None, 32, 128])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_symmetric_grid_equals_compressed_tensors_on_eq2_scales(bits, group_size):
    """compressed-tensors' symmetric scale is max|w| / 2^(b-1) - 1/2 (integers -2^(b-1)..);
    ours is Eq. 2's max|w| / (2^(b-1) - 1). Given our scales, its fake_quantize must give our
    values exactly, and with its own scale it matches RTN's 'symmetric_full' grid."""
    for seed in range(5):
        w = random_matrix(seed)
        ours = group_qparams(w, bits, group_size, True)
        args = ct_args(bits, group_size, symmetric=True)
        scale = ours.scale if group_size else ours.scale.squeeze(1)
        scale = scale if group_size else scale.unsqueeze(1)
        expected = ct.fake_quantize(w, scale, torch.zeros_like(scale, dtype=torch.int8), args)
        assert torch.equal(quantize_groups(w, bits, group_size, True), expected)
        assert torch.equal(ours.zero, torch.zeros_like(ours.scale))


def test_symmetric_full_per_channel_differs_from_compressed_tensors_only_at_near_ties():
    """RTN's per-channel kernels multiply by 1 / scale (torch.fake_quantize's arithmetic); where
    w / scale lies within float32 rounding of a half-integer the two round to neighbours. That
    is why the shared grid divides, as compressed-tensors does."""
    w = random_matrix(7)
    n_diff = 0
    for bits in (3, 4, 8):
        args = ct_args(bits, None, symmetric=True)
        scale, zero = ct_utils.calculate_qparams(w.amin(1, True), w.amax(1, True), args)
        expected = ct.fake_quantize(w, scale, zero, args)
        got = rtn_quantize(w, bits, out_axes=(0,), convention="symmetric_full")
        diff = got != expected
        n_diff += int(diff.sum())
        ratio = (w / scale)[diff]
        assert ((ratio - ratio.floor() - 0.5).abs() < 1e-5).all()  # near-ties only
        assert torch.allclose((got - expected).abs()[diff], scale.expand_as(w)[diff])  # 1 step
    assert n_diff <= 3 * w.numel() // 1000


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", list(SHAPES))
def test_rtn_groups_run_along_each_family_input_axis(name, symmetric):
    """W_Q/K/V along d_model, W_O along n_heads * d_head, W_in along d_model, W_out along
    d_mlp: RTN of the TL weight is the grid of its HF [out, in] matrix, mapped back."""
    group = {"W_O": 6, "W_out": 8}.get(name, 4)
    w = weight(name, 11)
    hf = to_hf(name, w)
    assert torch.equal(as_matrix(w, OUT_AXES[name]), hf)
    expected = from_hf(name, quantize_groups(hf, 4, group, symmetric))
    op = RTN(4, group_size=group, symmetric=symmetric)
    got = w.clone()
    op.apply_(got, WeightRef(0, name, f"blocks.0.{name}"))
    assert torch.equal(got, expected)
    assert not torch.equal(got, w)


def test_fake_quantize_column_by_column_equals_quantize_groups():
    """The step GPTQ takes: one column at a time with its group's scale and zero."""
    w = random_matrix(3, 16, 64)
    for symmetric in (True, False):
        p = group_qparams(w, 4, 16, symmetric)
        cols = [fake_quantize(w[:, j], p.scale[:, j // 16], p.zero[:, j // 16], 4, symmetric)
                for j in range(64)]
        assert torch.equal(torch.stack(cols, 1), quantize_groups(w, 4, 16, symmetric))


def test_asymmetric_zero_point_convention_and_levels():
    w = random_matrix(5, 8, 64)
    for bits in (2, 4):
        p = group_qparams(w, bits, 16, False)
        g = w.view(8, 4, 16)
        lo = g.amin(-1).clamp(max=0)
        assert torch.equal(p.zero, torch.round(-lo / p.scale))  # round(-min / scale)
        q = quantize_groups(w, bits, 16, False).view(8, 4, 16) / p.scale.unsqueeze(-1)
        q = q + p.zero.unsqueeze(-1)
        torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)
        assert q.round().min() >= 0 and q.round().max() <= 2**bits - 1
    assert grid_range(4, False) == (0, 15) and grid_range(4, True) == (-7, 7)


def test_bad_group_size_and_shapes_raise():
    with pytest.raises(CgcLensError, match=r"group_size 48 does not divide the input dimension "
                       r"256 of W; valid group sizes: 1, 2, 4, 8, 16, 32, 64, 128, 256"):
        quantize_groups(random_matrix(0), 4, 48, True, name="W")
    with pytest.raises((CgcLensError, TypeError), match=r"2-d|w2d"):
        quantize_groups(torch.randn(2, 3, 4), 4, None, True)
    with pytest.raises(CgcLensError, match="bits"):
        group_qparams(random_matrix(0), 1, None, True)


def test_bits_per_weight_counts_scales_and_zero_points():
    assert RTN(4).bits_per_weight((64, 20, 6), OUT_AXES["W_Q"]) == 4 + 16 / 20
    assert RTN(4, group_size=32).bits_per_weight((768, 3072)) == 4.5
    assert RTN(4, group_size=128, symmetric=False).bits_per_weight((768, 768)) == 4 + 20 / 128
    assert RTN(8).bits_per_weight((4, 8)) == 8 + 16 / 8
    assert RTN(16).bits_per_weight((4, 8)) == 16
    assert rtn_bits_per_weight(3, (10, 4, 32), (2,), group_size=4) == 3 + 16 / 4  # W_O: in 128
