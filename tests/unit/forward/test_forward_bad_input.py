"""Bad input to the forward metrics is refused up front with the value and the fix; nothing is
silently read another way (a zero stride as the window, float ids truncated, a NaN loss)."""

from __future__ import annotations

import pytest
import torch

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import perplexity, perplexity_result


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"window": 16, "stride": 0}, r"1 <= stride <= window=16, got stride=0.*window // 4"),
    ({"window": 16, "stride": -2}, r"1 <= stride <= window=16, got stride=-2"),
    ({"window": 16, "stride": 17}, r"1 <= stride <= window=16, got stride=17"),
    ({"window": 16, "stride": 2.5}, r"Expected int window and stride.*stride=2\.5"),
    ({"window": 40, "stride": 10}, r"window of at most n_ctx=32.*window=40; pass window <= 32"),
])
def test_sliding_window_arguments_are_refused(tiny_model, unchecked, kwargs, match):
    stream = torch.randint(0, 61, (100,))
    with pytest.raises(CgcLensError, match=match):
        perplexity(tiny_model, stream, progress=False, **kwargs)


def test_window_over_n_ctx_with_bos_names_the_room_left(tiny_model):
    tiny_model.tokenizer = type("T", (), {"bos_token_id": 0})()
    with pytest.raises(CgcLensError, match=r"window=32 \+ 1 bos; pass window <= 31"):
        perplexity(tiny_model, torch.randint(0, 61, (100,)), window=32, stride=8,
                   prepend_bos=True, progress=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_non_integer_token_ids_are_refused(tiny_model, unchecked, dtype):
    tokens = (torch.randint(0, 2, (2, 16)) + (0.7 if dtype.is_floating_point else 0)).to(dtype)
    with pytest.raises(CgcLensError, match=rf"integer token ids, got dtype {dtype}.*torch\.long"):
        perplexity_result(tiny_model, tokens, progress=False)


@pytest.mark.parametrize(("param", "value"), [("unembed.b_U", float("nan")),
                                                ("blocks.1.mlp.W_out", float("inf"))])
def test_non_finite_logits_are_refused_naming_the_tensor(tiny_model, param, value):
    with torch.no_grad():
        dict(tiny_model.named_parameters())[param].view(-1)[0] = value
    with pytest.raises(CgcLensError, match=rf"Perplexity is undefined.*{param}.*reload the "):
        perplexity(tiny_model, torch.randint(0, 61, (2, 16)), progress=False)
