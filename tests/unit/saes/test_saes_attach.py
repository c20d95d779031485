"""Attaching SAEs: reading leaves the model alone, splicing touches only the SAE's heads,
hooks go away on exit (also on errors), streaming stops after the deepest SAE."""

from __future__ import annotations

import pytest
import torch

from cgc_lens import CgcLensError, Site
from cgc_lens.saes import BatchedSAEConfig, BatchedTopKSAE, attached, run_features


@pytest.fixture
def heads(tiny_model):
    return BatchedTopKSAE(BatchedSAEConfig.for_heads(tiny_model, expansion=2, k=3), seed=0)


def _no_hooks(model):
    return all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_read_leaves_logits_unchanged_and_matches_direct_encode(tiny_model, heads):
    tokens = torch.randint(0, 61, (2, 7))
    clean, cache = tiny_model.run_with_cache(tokens)
    with attached(tiny_model, [heads]) as reading:
        logits = tiny_model(tokens)
    torch.testing.assert_close(logits, clean, atol=0, rtol=0)
    for layer in range(2):
        z = cache[f"blocks.{layer}.attn.hook_z"]
        want = heads.encode(z, slice(4 * layer, 4 * layer + 4))
        torch.testing.assert_close(reading.features[f"blocks.{layer}.attn.hook_z"], want)
    assert _no_hooks(tiny_model)


def test_splice_replaces_only_the_chosen_head(tiny_model, heads):
    one = heads.select([Site.z(1, head=2)])
    tokens = torch.randint(0, 61, (2, 5))
    _, cache = tiny_model.run_with_cache(tokens)
    seen = {}

    def capture(act, hook):
        seen["z"] = act.detach().clone()

    with attached(tiny_model, [one], mode="splice"):
        # added after the SAE's hook at the same point, so it sees the spliced activation
        tiny_model.add_hook("blocks.1.attn.hook_z", capture)
        tiny_model(tokens)
    tiny_model.reset_hooks()
    z = cache["blocks.1.attn.hook_z"]
    torch.testing.assert_close(seen["z"][:, :, [0, 1, 3]], z[:, :, [0, 1, 3]], atol=0, rtol=0)
    torch.testing.assert_close(seen["z"][:, :, 2], one(z[:, :, 2:3])[:, :, 0])
    with attached(tiny_model, [one], mode="zero"):
        tiny_model.add_hook("blocks.1.attn.hook_z", capture)
        tiny_model(tokens)
    tiny_model.reset_hooks()
    assert float(seen["z"][:, :, 2].abs().max()) == 0.0
    torch.testing.assert_close(seen["z"][:, :, 0], z[:, :, 0], atol=0, rtol=0)


def test_hooks_removed_on_error_and_bad_input_raises(tiny_model, heads):
    with pytest.raises(RuntimeError, match="inside"), attached(tiny_model, [heads]):
        raise RuntimeError("inside")
    assert _no_hooks(tiny_model)
    with pytest.raises(CgcLensError, match="mode must be"), attached(tiny_model, [heads],
                                                                     mode="swap"):
        pass
    with pytest.raises(CgcLensError, match="same features"):
        with attached(tiny_model, [heads, heads]):
            pass
    wide = BatchedTopKSAE(BatchedSAEConfig(sites=(Site.z(0, head=0),), d_in=16, d_sae=8, k=2))
    with pytest.raises(CgcLensError, match="d_in=16 per head"):
        with attached(tiny_model, [wide]):
            pass
    assert _no_hooks(tiny_model)


def test_run_features_streams_and_stops_early(tiny_model, heads):
    layer0 = heads.select(list(range(4)))
    fired, got = [], []

    class Acc:
        def update(self, feats, batch_index):
            got.append((batch_index, feats["blocks.0.attn.hook_z"]))

    tiny_model.add_hook("blocks.1.hook_resid_pre", lambda act, hook: fired.append(1))
    n = run_features(tiny_model, torch.randint(0, 61, (5, 6)), [layer0], batch_size=2,
                     accumulators=[Acc()], sparse=True, progress=False)
    tiny_model.reset_hooks()
    assert n == 3 and not fired
    values, indices = got[0][1]
    assert values.shape == indices.shape == (2, 6, 4, 3)


def test_hook_shape_matches_a_forward_pass(tiny_model):
    from cgc_lens.saes import hook_shape

    _, cache = tiny_model.run_with_cache(torch.zeros(1, 2, dtype=torch.long))
    for hook in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.0.mlp.hook_post",
                 "blocks.1.hook_mlp_out", "hook_embed", "blocks.0.attn.hook_v"):
        assert hook_shape(tiny_model, hook) == tuple(cache[hook].shape[2:]), hook
