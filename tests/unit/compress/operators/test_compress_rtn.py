"""RTN against torch.fake_quantize_per_channel_affine on the equivalent HuggingFace nn.Linear
(per-channel symmetric), and against compressed-tensors' arithmetic written out naively
(asymmetric, group-wise); the library itself is compared in test_compress_grid.py."""

from __future__ import annotations

import einops
import pytest
import torch
from torch import nn

from cgc_lens.compress import OUT_AXES, RTN, Targets, compressed, rtn_qparams, rtn_quantize
from cgc_lens.compress.operators.rtn import rtn_quantize_, rtn_quantize_stack_
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError
from conftest import make_tiny_model

N_HEADS, D_MODEL, D_HEAD, D_MLP = 3, 20, 6, 24
SHAPES = {
    "W_Q": (N_HEADS, D_MODEL, D_HEAD),
    "W_K": (N_HEADS, D_MODEL, D_HEAD),
    "W_V": (N_HEADS, D_MODEL, D_HEAD),
    "W_O": (N_HEADS, D_HEAD, D_MODEL),
    "W_in": (D_MODEL, D_MLP),
    "W_gate": (D_MODEL, D_MLP),
    "W_out": (D_MLP, D_MODEL),
}


def to_hf(name: str, w: torch.Tensor) -> torch.Tensor:
    """The HuggingFace ``nn.Linear.weight`` [out_features, in_features] of a TL weight."""
    if name in ("W_Q", "W_K", "W_V"):
        return einops.rearrange(w, "h m d -> (h d) m")
    if name == "W_O":
        return einops.rearrange(w, "h d m -> m (h d)")
    return w.T.contiguous()


def from_hf(name: str, hf: torch.Tensor) -> torch.Tensor:
    if name in ("W_Q", "W_K", "W_V"):
        return einops.rearrange(hf, "(h d) m -> h m d", h=N_HEADS)
    if name == "W_O":
        return einops.rearrange(hf, "m (h d) -> h d m", h=N_HEADS)
    return hf.T.contiguous()


def reference(hf: torch.Tensor, bits: int, convention: str) -> torch.Tensor:
    """Quantize each row (output channel) with torch's fake-quantize kernel."""
    if convention == "symmetric":
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale, zero = hf.abs().amax(1) / qmax, torch.zeros(hf.shape[0])
    elif convention == "symmetric_full":
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale, zero = hf.abs().amax(1) / ((2**bits - 1) / 2), torch.zeros(hf.shape[0])
    else:  # compressed-tensors: x / scale, zero point rounded in its signed frame
        half, tiny = 2 ** (bits - 1), torch.finfo(torch.float32).tiny
        lo, hi = hf.amin(1, True).clamp(max=0), hf.amax(1, True).clamp(min=0)
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(tiny)
        signed_zero = torch.round(torch.clamp(-half - lo / scale, -half, half - 1))
        assert ((signed_zero + half) - torch.round(-lo / scale)).abs().max() <= 1
        q = torch.round(torch.clamp(hf / scale + signed_zero, -half, half - 1))
        return (q - signed_zero) * scale
    scale = scale.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.fake_quantize_per_channel_affine(hf, scale, zero.int(), 0, qmin, qmax)


def weight(name: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPES[name], generator=g)
    w.view(-1)[::37] *= 8  # outliers, as real weights have
    return w


def test_hf_layout_is_what_nn_linear_computes():
    x, z = torch.randn(5, D_MODEL), torch.randn(5, N_HEADS, D_HEAD)
    for name in SHAPES:
        w = weight(name, 0)
        hf = to_hf(name, w)
        linear = nn.Linear(hf.shape[1], hf.shape[0], bias=False)
        linear.weight.data = hf
        if name in ("W_Q", "W_K", "W_V"):
            tl = einops.einsum(x, w, "b m, h m d -> b h d").flatten(1)
            out = linear(x)
        elif name == "W_O":
            tl, out = einops.einsum(z, w, "b h d, h d m -> b m"), linear(z.flatten(1))
        else:
            xin = x if name != "W_out" else torch.randn(5, D_MLP)
            tl, out = xin @ w, linear(xin)
        torch.testing.assert_close(out, tl, atol=1e-5, rtol=1e-5)
        assert torch.equal(from_hf(name, hf), w)


@pytest.mark.parametrize("convention", ["symmetric", "symmetric_full", "asymmetric"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_rtn_matches_fake_quantize_on_every_family(name, convention):
    for seed, bits in enumerate(range(2, 9)):
        w = weight(name, seed)
        expected = from_hf(name, reference(to_hf(name, w), bits, convention))
        got = rtn_quantize(w, bits, out_axes=OUT_AXES[name], convention=convention)
        assert torch.equal(got, expected), (name, bits, convention)
        in_place = w.clone()
        rtn_quantize_(in_place, bits, out_axes=OUT_AXES[name], convention=convention)
        assert torch.equal(in_place, expected)


@pytest.mark.parametrize("convention", ["symmetric", "symmetric_full", "asymmetric"])
def test_ties_and_zero_channels_match_reference(convention):
    # a grid of halves: w / scale lands exactly on .5 for many entries (round half to even)
    g = torch.Generator().manual_seed(1)
    hf = torch.randint(-62, 63, (16, 40), generator=g).float() / 2
    hf[:, 0] = 31.0
    hf[3] = 0.0  # an all-zero output channel
    hf[4] = torch.linspace(0.5, 3.0, 40)  # all positive: asymmetric widens to 0
    for bits in (3, 6, 7):
        got = rtn_quantize(hf, bits, out_axes=(0,), convention=convention)
        assert torch.equal(got, reference(hf, bits, convention))
        assert torch.equal(got[3], torch.zeros(40))


def grouped_reference(hf: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """Symmetric Eq. 2 grid per group of ``group`` inputs, one group at a time (x / scale)."""
    out = torch.empty_like(hf)
    qmax = 2 ** (bits - 1) - 1
    for r in range(hf.shape[0]):
        for g in range(0, hf.shape[1], group):
            x = hf[r, g : g + group]
            scale = (x.abs().max() / qmax).clamp_min(torch.finfo(torch.float32).tiny)
            out[r, g : g + group] = torch.round(torch.clamp(x / scale, -qmax, qmax)) * scale
    return out


GROUPS = {"W_Q": 5, "W_O": 6, "W_in": 4, "W_out": 8}  # divide d_model 20, n_heads*d_head 18, 24


def test_groupwise_matches_reference_on_groups():
    for name, group in GROUPS.items():
        w = weight(name, 3)
        expected = from_hf(name, grouped_reference(to_hf(name, w), 4, group))
        got = rtn_quantize(w, 4, out_axes=OUT_AXES[name], group_size=group)
        assert torch.equal(got, expected), name
        in_place = w.clone()
        RTN(4, group_size=group).apply_(in_place, WeightRef(0, name, f"blocks.0.{name}"))
        assert torch.equal(in_place, expected), name


def test_group_of_the_whole_row_is_per_channel_asymmetric():
    w = weight("W_in", 4)
    whole = rtn_quantize(w, 5, out_axes=(1,), group_size=D_MODEL, convention="asymmetric")
    assert torch.equal(whole, rtn_quantize(w, 5, out_axes=(1,), convention="asymmetric"))


def test_group_size_not_dividing_names_the_weight_and_valid_sizes():
    w = weight("W_O", 4)  # input n_heads * d_head = 18
    with pytest.raises(CgcLensError, match=r"group_size 4 does not divide the input dimension "
                       r"18 of blocks\.1\.attn\.W_O; valid group sizes: 1, 2, 3, 6, 9, 18"):
        RTN(4, group_size=4).apply_(w, WeightRef(1, "W_O", "blocks.1.attn.W_O"))
    assert torch.equal(w, weight("W_O", 4))
    model = make_tiny_model(n_layers=1, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD,
                            d_mlp=D_MLP, d_vocab=30, n_ctx=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CgcLensError, match=r"of blocks\.0\.attn\.W_O; valid"), \
            compressed(model, RTN(4, group_size=4, symmetric=False)):
        pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_symmetric_flag_is_the_asymmetric_convention():
    op = RTN(4, group_size=8, symmetric=False)
    assert op.convention == "asymmetric" and not op.symmetric
    assert RTN(4, convention="asymmetric").symmetric is False
    assert RTN.from_fields({k: v for k, v in op.to_dict().items() if k != "operator"}) == op
    with pytest.raises(CgcLensError, match="contradicts"):
        RTN(4, symmetric=False, convention="symmetric_full")


def test_paper_integer_grid_and_qparams():
    w = weight("W_out", 5)
    for bits in range(2, 9):
        p = rtn_qparams(w, bits, out_axes=(1,))
        q = rtn_quantize(w, bits, out_axes=(1,)) / p.scale
        torch.testing.assert_close(q, q.round(), atol=1e-4, rtol=0)
        assert q.round().abs().max() == 2 ** (bits - 1) - 1 == p.qmax == -p.qmin
        assert p.scale.shape == (1, D_MODEL)


def test_bits_16_is_an_unchanged_copy():
    w = weight("W_Q", 6)
    out = rtn_quantize(w, 16, out_axes=(0, 2))
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes_compute_in_float32_or_64(dtype):
    w = weight("W_O", 7).to(dtype)
    got = rtn_quantize(w, 4, out_axes=(2,))
    assert got.dtype == dtype
    if dtype == torch.float64:
        assert torch.equal(rtn_quantize(w, 4, out_axes=(2,)), got)
    else:
        expected = rtn_quantize(w.float(), 4, out_axes=(2,)).to(dtype)
        assert torch.equal(got, expected)
        in_place = w.clone()
        rtn_quantize_(in_place, 4, out_axes=(2,))
        assert torch.equal(in_place, expected)


def test_stacked_path_equals_one_by_one():
    ws = [weight("W_Q", s) for s in range(5)]
    expected = [rtn_quantize(w, 5, out_axes=(0, 2)) for w in ws]
    rtn_quantize_stack_(torch.stack(ws), 5, out_axes=(0, 2), targets=ws)
    assert all(torch.equal(a, b) for a, b in zip(ws, expected, strict=True))


@pytest.mark.parametrize("convention", ["symmetric", "asymmetric"])
def test_large_tensors_quantized_in_pieces_equal_reference(convention):
    w = torch.randn(600, 700)  # > 2**16 elements, axis 0 an input axis: scales, then pieces
    expected = reference(w.T.contiguous(), 6, convention).T
    rtn_quantize_(w, 6, out_axes=(1,), convention=convention)
    assert torch.equal(w, expected)
    q = torch.randn(6, 300, 64)  # W_Q-like: axis 0 an output axis, pieces of whole channels
    hf = einops.rearrange(q, "h m d -> (h d) m")
    expected = einops.rearrange(reference(hf, 5, convention), "(h d) m -> h m d", h=6)
    rtn_quantize_(q, 5, out_axes=(0, 2), convention=convention)
    assert torch.equal(q, expected)


def test_model_rtn_matches_reference_per_tensor():
    model = make_tiny_model(n_layers=2, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD,
                            d_mlp=D_MLP, d_vocab=30, n_ctx=8, act_fn="silu", gated=True,
                            normalization_type="RMS", seed=None)
    refs = Targets().resolve(model)
    assert {r.name for r in refs} == set(SHAPES)
    originals = {r.param: model.get_parameter(r.param).detach().clone() for r in refs}
    with compressed(model, RTN(5)) as record:
        for ref in refs:
            expected = from_hf(ref.name, reference(to_hf(ref.name, originals[ref.param]), 5,
                                                   "symmetric"))
            assert torch.equal(model.get_parameter(ref.param), expected), ref.param
    assert all(r.bits == 5 for r in record.tensors)


@pytest.mark.parametrize("bits", [0, 1, 17, 32])
def test_bad_bits_raise(bits):
    with pytest.raises(CgcLensError, match=r"bits must be an int in 2\.\.16"):
        RTN(bits)
    with pytest.raises(CgcLensError, match=r"bits must be an int in 2\.\.16"):
        rtn_quantize(torch.randn(3, 3), bits, out_axes=(0,))


def test_bad_convention_and_group_size_raise():
    with pytest.raises((CgcLensError, TypeError), match="convention"):
        RTN(4, convention="sym")
    with pytest.raises(CgcLensError, match="group_size must be a positive int"):
        RTN(4, group_size=0)
    with pytest.raises(CgcLensError, match="out_axes"):
        rtn_quantize(torch.randn(3, 3), 4, out_axes=(0, 1))


@pytest.mark.parametrize("convention", ["symmetric", "symmetric_full", "asymmetric"])
@pytest.mark.parametrize("name", list(SHAPES))
def test_stack_path_matches_reference_in_place_and_into_targets(name, convention):
    ws = [weight(name, s) for s in range(3)]
    expected = [from_hf(name, reference(to_hf(name, w), 4, convention)) for w in ws]
    stack = torch.stack(ws)
    rtn_quantize_stack_(stack, 4, out_axes=OUT_AXES[name], convention=convention)
    assert all(torch.equal(a, b) for a, b in zip(stack.unbind(0), expected, strict=True))
    stack = torch.stack(ws)
    targets = [w.clone() for w in ws]
    rtn_quantize_stack_(stack, 4, out_axes=OUT_AXES[name], convention=convention,
                        targets=targets)
    assert all(torch.equal(a, b) for a, b in zip(targets, expected, strict=True))
    assert torch.equal(stack, torch.stack(ws))  # the copies the scales came from are kept
