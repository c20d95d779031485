"""The sparse SAE encoder against SAELens's ``encode`` (bit for bit), its float64 sums against
dense ones, and the exact two-stage top-k."""

from __future__ import annotations

import pytest
import torch
from unit.fake_releases import random_saelens_sae

from cgc_lens.saes import SparseCodes, SparseEncoder, topk_rows
from cgc_lens.saes.attach import SAETarget

HOOK = "blocks.1.hook_resid_post"


def test_sparse_codes_round_trip_and_sums():
    x = torch.relu(torch.randn(40, 30) - 1.0)
    c = SparseCodes.of(x)
    assert c.dense is None and torch.equal(c.to_dense(), x)
    d = x.double()
    torch.testing.assert_close(c.moments(), torch.stack([d.sum(0), (d * d).sum(0)]),
                               rtol=1e-12, atol=1e-12)
    y = torch.relu(x + 0.3 * torch.randn(40, 30))
    torch.testing.assert_close(SparseCodes.of(y).cross(c), (d * y.double()).sum(0),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["topk", "jumprelu", "relu"])
@pytest.mark.parametrize(("d_sae", "k"), [(64, 8), (512, 16), (48, 20)])
def test_sparse_encoder_bit_identical_to_sae_encode(kind, d_sae, k):
    # 512/16 takes the two-stage top-k; 48/20 stores TopK codes dense (k > d_sae / 3).
    sae = random_saelens_sae(kind, 32, d_sae, k)
    encode = SparseEncoder.for_target(SAETarget(key="h", hook=HOOK, sae=sae))
    assert encode is not None
    x = 3 * torch.randn(4, 50, 32)
    expected = sae.encode(x).reshape(-1, d_sae)
    codes = encode(x)
    assert torch.equal(codes.to_dense(), expected)  # exact, not within float32 rounding
    if codes.dense is None:
        assert set(codes.flat.tolist()) >= set(expected.reshape(-1).nonzero().squeeze(1).tolist())
        torch.testing.assert_close(codes.moments(), SparseCodes.of(expected).moments(),
                                   rtol=1e-12, atol=0)


def test_sparse_encoder_declines_what_it_cannot_reproduce():
    sae = random_saelens_sae("topk", 32, 64)
    target = SAETarget(key="h", hook=HOOK, sae=sae)
    assert SparseEncoder.for_target(target) is not None
    sae.encode = lambda x: x  # replaced on the instance: the sweep must call it
    assert SparseEncoder.for_target(target) is None
    del sae.encode
    handle = sae.hook_sae_acts_post.register_forward_hook(lambda *a: None)
    assert SparseEncoder.for_target(target) is None
    handle.remove()
    sae.cfg.k = 2  # SAELens keeps the k its activation module was built with; so must we
    x = torch.randn(50, 32)
    torch.testing.assert_close(SparseEncoder.for_target(target)(x).to_dense(), sae.encode(x),
                               rtol=0, atol=0)
    sae.activation_fn = torch.nn.Identity()  # a replaced activation: only sae.encode is exact
    assert SparseEncoder.for_target(target) is None
    sae.cfg.normalize_activations = "constant_norm_rescale"
    assert SparseEncoder.for_target(target) is None


def test_two_stage_topk_is_exact():
    pre = torch.randn(200, 1024)
    values, cols = topk_rows(pre, 32)
    expected = pre.topk(32, sorted=False)
    assert torch.equal(values.sort(-1).values, expected.values.sort(-1).values)
    assert torch.equal(cols.sort(-1).values, expected.indices.sort(-1).values)
    assert torch.equal(pre.gather(1, cols), values)
    tied = torch.randint(0, 4, (200, 1024)).float()  # ties everywhere: the values are still exact
    values, cols = topk_rows(tied, 32)
    assert torch.equal(values.sort(-1).values, tied.topk(32).values.sort(-1).values)
    assert torch.equal(tied.gather(1, cols), values)
    assert (cols.sort(-1).values.diff(dim=-1) > 0).all()  # distinct columns per row
