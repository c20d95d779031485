"""Bad input to compression is refused up front, with the value and the fix, and changes nothing."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.compress import (
    RTN,
    HeadPrune,
    InputNorms,
    LowRank,
    MagnitudePrune,
    Targets,
    WandaPrune,
    collect_input_norms,
    compress_permanently_,
    compressed,
    low_rank_,
)
from cgc_lens.compress.context import _ACTIVE
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head


def state(model):
    return {n: t.detach().clone() for n, t in [*model.named_parameters(),
                                                *model.named_buffers()]}


def bit_equal(model, before) -> bool:  # NaN-safe: compares the bits
    now = dict([*model.named_parameters(), *model.named_buffers()])
    return all(
        torch.equal(now[n].detach().view(torch.int32), t.view(torch.int32))
        if t.dtype == torch.float32 else torch.equal(now[n].detach(), t)
        for n, t in before.items()
    )


@pytest.mark.parametrize("shape", [(0, 8), (3, 0)])
def test_calibration_on_zero_tokens_is_refused(tiny_model, shape):
    before = state(tiny_model)
    tokens = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(CgcLensError, match=rf"at least one token.*{shape[0]}, {shape[1]}.*"
                                           r"non-empty \[batch, pos\]"):
        WandaPrune(0.5).calibrate(tiny_model, tokens)
    with pytest.raises(CgcLensError, match="at least one token"):
        collect_input_norms(tiny_model, tokens)
    assert bit_equal(tiny_model, before)


def test_wanda_without_calibration_or_with_empty_norms_is_refused(tiny_model):
    before = state(tiny_model)
    with pytest.raises(CgcLensError, match=r"needs input norms.*calibrate\(model, tokens\)"), \
            compressed(tiny_model, WandaPrune(0.5)):
        pytest.fail("the block must not run")  # pragma: no cover
    empty = InputNorms({}, n_tokens=0)
    with pytest.raises(CgcLensError, match=r"over 0 tokens.*calibrate on at least one token"):
        compress_permanently_(tiny_model, WandaPrune(0.5, input_norms=empty))
    assert bit_equal(tiny_model, before) and not _ACTIVE.get(tiny_model)


def operators(model):
    norms = WandaPrune(0.5).calibrate(model, torch.randint(0, 61, (2, 8))).input_norms
    return {
        "rtn": RTN(4),
        "rtn_grouped": RTN(4, group_size=8),
        "magnitude": MagnitudePrune(0.5),
        "wanda": WandaPrune(0.5, input_norms=norms),
        "head_prune": HeadPrune({Head(0, 1): 0.5}),
        "low_rank": LowRank(0.5),
    }


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("op_name", ["rtn", "rtn_grouped", "magnitude", "wanda", "head_prune",
                                     "low_rank"])
@pytest.mark.parametrize("how", ["copy", "swap", "offload", "permanent", "permanent_unsafe"])
def test_a_non_finite_weight_is_refused_by_name(tiny_model, value, op_name, how):
    op = operators(tiny_model)[op_name]
    with torch.no_grad():
        tiny_model.blocks[0].attn.W_O.view(-1)[[1, 5, 9]] = value
    before = state(tiny_model)
    message = (r"blocks\.0\.attn\.W_O has 3 non-finite values \(inf/NaN\); cgc-lens cannot "
               r"quantize, prune or factor a non-finite weight: check the checkpoint")
    with pytest.raises(CgcLensError, match=message):
        if how == "permanent":
            compress_permanently_(tiny_model, op)
        elif how == "permanent_unsafe":
            compress_permanently_(tiny_model, op, atomic=False)
        else:
            kwargs = {"offload_to_cpu": True} if how == "offload" else {"restore": how}
            with compressed(tiny_model, op, **kwargs):
                pytest.fail("the block must not run")  # pragma: no cover
    assert bit_equal(tiny_model, before) and not _ACTIVE.get(tiny_model)


def test_low_rank_kernel_refuses_a_nan_weight():
    w = torch.randn(6, 4)
    w[2, 1] = float("nan")
    before = w.clone()
    with pytest.raises(CgcLensError, match=r"1 non-finite values.*check the checkpoint"):
        low_rank_(w, 0.5, out_axes=(1,))
    assert torch.equal(w.nan_to_num(), before.nan_to_num()) and w.isnan().sum() == 1


def test_an_untargeted_non_finite_weight_is_not_refused(tiny_model):
    with torch.no_grad():
        tiny_model.blocks[1].mlp.W_in[0, 0] = float("inf")
    before = state(tiny_model)
    with compressed(tiny_model, RTN(4), Targets(layers=0)):
        assert not torch.equal(tiny_model.blocks[0].mlp.W_in, before["blocks.0.mlp.W_in"])
    assert bit_equal(tiny_model, before)
