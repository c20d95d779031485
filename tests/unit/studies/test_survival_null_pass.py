"""The survival sweep's null condition is taken from the reference pass (issue 18): no forward of
its own, and sums identical bit for bit to those of a condition that forwards the unedited model
again (the old way, kept here as the independent reference)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from cgc_lens.compress import RTN, Plan
from cgc_lens.saes import validate_sae
from cgc_lens.studies.survival.passes import stream_conditions
from conftest import make_tiny_model

HOOK = "blocks.1.hook_resid_post"


class _Unedited:
    """A condition that edits nothing but, not being ``None``, forwards the model again."""

    def swapped(self, model):
        return contextlib.nullcontext()


def _sae(kind: str):
    torch.manual_seed(0)
    meta = SAEMetadata(hook_name=HOOK)
    if kind == "topk":  # sparse codes
        return TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=6, metadata=meta))
    return StandardSAE(StandardSAEConfig(d_in=32, d_sae=48, metadata=meta))  # dense codes


@pytest.mark.parametrize(
    ("kind", "cache_bytes"), [("topk", 0), ("topk", 1 << 30), ("relu", 1 << 30)]
)
def test_null_runs_no_forward_and_equals_a_second_forward(kind, cache_bytes):
    model = make_tiny_model()
    target = validate_sae(model, _sae(kind))
    tokens = torch.randint(0, 61, (12, 16), generator=torch.Generator().manual_seed(3))
    forwards = []
    model.hook_embed.add_hook(lambda act, hook: forwards.append(act.shape[0]))
    conditions = [("reference", None), ("again", _Unedited()), ("RTN INT4", Plan.of(RTN(4)))]
    sums = stream_conditions(
        model,
        tokens,
        [target],
        conditions,
        batch_size=4,
        n_shards=3,
        cache_bytes=cache_bytes,
        progress=False,
    )
    model.reset_hooks()
    # 3 batches: the reference and two forwarding conditions; the null adds none
    assert len(forwards) == 3 * 3 and sum(forwards) == 3 * 12
    cond = sums.cond_sums[target.key]
    assert torch.equal(cond[0], cond[1])  # bit for bit the sums of a second forward
    assert torch.equal(cond[0, :, :2], sums.ref_moments[target.key])
    assert not torch.equal(cond[2], cond[0])  # INT4 does change the codes
    for null, again in zip(
        sums.pearson_shards(target.key, "reference"),
        sums.pearson_shards(target.key, "again"),
        strict=True,
    ):
        r = null.pearson()
        assert torch.equal(torch.as_tensor(r), torch.as_tensor(again.pearson()))
