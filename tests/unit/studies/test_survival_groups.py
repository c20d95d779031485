"""The survival sweep's per-group sums: they add up to the pooled sums (1e-12) whatever the
batch size (batches straddling groups are cut by rows), and any split of the blocks streamed
apart with their global block indices gives the same groups (summed, as an all-reduce would)."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from cgc_lens.analysis import merge_all
from cgc_lens.compress import RTN, Plan
from cgc_lens.saes import validate_sae
from cgc_lens.studies.survival.groups import block_groups
from cgc_lens.studies.survival.passes import stream_conditions
from conftest import make_tiny_model

HOOK = "blocks.1.hook_resid_post"
CONDS = [("RTN INT4", Plan.of(RTN(4))), ("RTN INT3", Plan.of(RTN(3)))]


def _target(model, kind):
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK)
    sae = (
        TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=6, metadata=meta))
        if kind == "topk"
        else StandardSAE(StandardSAEConfig(d_in=32, d_sae=48, metadata=meta))
    )
    return validate_sae(model, sae)


def _stream(model, target, tokens, **kw):
    return stream_conditions(model, tokens, [target], CONDS, n_shards=2, progress=False, **kw)


@pytest.mark.parametrize(("kind", "batch_size"), [("topk", 3), ("topk", 5), ("relu", 4)])
def test_groups_add_up_to_the_pooled_sums(kind, batch_size):
    model = make_tiny_model()
    target = _target(model, kind)
    tokens = torch.randint(0, 61, (14, 8), generator=torch.Generator().manual_seed(1))
    sums = _stream(model, target, tokens, batch_size=batch_size, n_groups=4)
    key = target.key
    plain = _stream(model, target, tokens, batch_size=batch_size, n_groups=0)
    assert plain.groups is None
    assert torch.equal(sums.cond_sums[key], plain.cond_sums[key])  # pooled bit for bit
    assert sums.groups.tokens == [
        int(n) * 8
        for n in torch.bincount(block_groups(torch.arange(14), total_blocks=14, n_groups=4))
    ]
    for c, name in enumerate(sums.conditions):
        acc = sums.groups.pearson(key, c, merge_all(sums.pearson_shards(key, name)))
        state = acc.state_dict()
        for k in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy"):
            torch.testing.assert_close(state[f"group_{k}"].sum(0), state[k], rtol=1e-12, atol=1e-12)
    ref = sums.groups.reference_sums(key, merge_all(sums.reference_shards(key))).state_dict()
    assert torch.equal(ref["group_fire_count"].sum(0), ref["fire_count"])
    torch.testing.assert_close(ref["group_sum_act"].sum(0), ref["sum_act"], rtol=1e-12, atol=0)


def test_any_split_of_the_blocks_gives_the_same_groups():
    model = make_tiny_model()
    target = _target(model, "topk")
    tokens = torch.randint(0, 61, (14, 8), generator=torch.Generator().manual_seed(2))
    whole = _stream(model, target, tokens, batch_size=4, n_groups=4).groups
    index = torch.randperm(14, generator=torch.Generator().manual_seed(0))
    parts = [
        _stream(
            model, target, tokens[i], batch_size=3, n_groups=4, block_index=i, total_blocks=14
        ).groups
        for i in (index[:5], index[5:])
    ]
    key = target.key
    torch.testing.assert_close(
        parts[0].cond_sums[key] + parts[1].cond_sums[key],
        whole.cond_sums[key],
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        parts[0].ref_moments[key] + parts[1].ref_moments[key],
        whole.ref_moments[key],
        rtol=1e-12,
        atol=1e-12,
    )
    assert [a + b for a, b in zip(parts[0].tokens, parts[1].tokens, strict=True)] == whole.tokens
