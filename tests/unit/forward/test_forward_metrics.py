"""Perplexity, chunked and sliding, against Hugging Face losses and naive per-window loops."""

from __future__ import annotations

import math

import pytest
import torch
from unit.fake_assets import bpe_tokenizer, tiny_gpt2

from cgc_lens.data import TokenBlocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import (
    PerplexityResult,
    kl_divergence,
    perplexity,
    perplexity_result,
    token_nll,
)
from cgc_lens.models import load_model

RTOL = 1e-5  # the bar: agree with the references to 1e-5 relative
N_CTX = 64


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """A random GPT2LMHeadModel and the same weights loaded through load_model(local dir)."""
    hf_model = tiny_gpt2(n_ctx=N_CTX, seed=1)
    folder = tmp_path_factory.mktemp("gpt2")
    hf_model.save_pretrained(folder)
    bpe_tokenizer(300).save_pretrained(folder)
    return hf_model, load_model(folder, device="cpu")


def _hf_sliding(hf_model, stream: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """The loop of Hugging Face's perplexity guide, counting the tokens actually scored."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + window, len(stream))
        trg_len = end - prev_end
        input_ids = stream[None, begin:end]
        labels = input_ids.clone()
        labels[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf_model(input_ids, labels=labels).loss
        n_scored = int((labels[:, 1:] != -100).sum())
        if n_scored:  # a one-token last window scores nothing; HF's loss is then nan
            nll_sum += float(loss) * n_scored
        n_tokens += n_scored
        prev_end = end
        if end == len(stream):
            break
    return nll_sum, n_tokens


def _naive_sliding(model, stream, window, stride, bos=None) -> tuple[float, int]:
    """One forward per window, every scored token's NLL looked up by hand."""
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(stream), stride):
        end = min(begin + window, len(stream))
        inputs = stream[begin:end]
        if bos is not None:
            inputs = torch.cat([torch.tensor([bos]), inputs])
        with torch.no_grad():
            logp = model(inputs[None]).log_softmax(-1)[0].double()
        offset = begin - (bos is not None)  # stream position of input position 0
        for pos in range(max(prev_end, begin + (bos is None)), end):
            nll_sum -= float(logp[pos - offset - 1, stream[pos]])
            n_tokens += 1
        prev_end = end
        if end == len(stream):
            break
    return nll_sum, n_tokens


def test_chunked_matches_hf_loss(gpt2_pair):
    hf_model, model = gpt2_pair
    blocks = torch.randint(0, 320, (6, 32))
    res = perplexity_result(model, blocks, batch_size=4, progress=False)
    with torch.no_grad():
        hf_loss = float(hf_model(blocks, labels=blocks).loss)
    assert res.protocol == "chunked" and res.n_tokens == 6 * 31
    assert res.mean_nll == pytest.approx(hf_loss, rel=RTOL)
    assert perplexity(model, blocks, progress=False) == pytest.approx(math.exp(hf_loss), rel=RTOL)


def test_chunked_with_bos_matches_hf_loss(gpt2_pair):
    hf_model, model = gpt2_pair
    blocks = torch.randint(1, 320, (3, 20))
    with_bos = torch.cat([torch.zeros(3, 1, dtype=torch.long), blocks], dim=1)
    labels = with_bos.clone()
    labels[:, 0] = -100
    with torch.no_grad():
        hf_loss = float(hf_model(with_bos, labels=labels).loss)
    res = perplexity_result(model, blocks, prepend_bos=True, progress=False)
    assert res.n_tokens == 3 * 20 and res.mean_nll == pytest.approx(hf_loss, rel=RTOL)


@pytest.mark.parametrize(("n", "window", "stride"), [(120, 32, 8), (150, 64, 16), (97, 32, 32),
                                                      (40, 64, 16)])
def test_sliding_matches_hf_guide_loop(gpt2_pair, n, window, stride):
    hf_model, model = gpt2_pair
    stream = torch.randint(0, 320, (n,), generator=torch.Generator().manual_seed(n))
    nll_sum, n_tokens = _hf_sliding(hf_model, stream, window, stride)
    res = perplexity_result(model, stream, window=window, stride=stride, batch_size=3,
                            progress=False)
    assert (res.protocol, res.window, res.stride) == ("sliding", window, stride)
    assert res.n_tokens == n_tokens
    assert res.nll_sum == pytest.approx(nll_sum, rel=RTOL)


@pytest.mark.parametrize(("bos", "batch_size"), [(None, 1), (0, 5)])
def test_sliding_matches_naive_loop(gpt2_pair, bos, batch_size):
    _, model = gpt2_pair
    stream = torch.randint(1, 320, (123,))
    nll_sum, n_tokens = _naive_sliding(model, stream, 24, 7, bos)
    res = perplexity_result(model, stream, window=24, stride=7, batch_size=batch_size,
                            prepend_bos=bos is not None, progress=False)
    assert res.n_tokens == n_tokens == 123 - (bos is None)
    assert res.nll_sum == pytest.approx(nll_sum, rel=RTOL)


def test_stride_equal_window_is_chunked_and_rows_are_separate_streams(gpt2_pair):
    _, model = gpt2_pair
    stream = torch.randint(0, 320, (96,))
    chunked = perplexity_result(model, stream.view(3, 32), progress=False)
    sliding = perplexity_result(model, stream, window=32, stride=32, progress=False)
    assert sliding.n_tokens == chunked.n_tokens
    assert sliding.nll_sum == pytest.approx(chunked.nll_sum, rel=RTOL)
    rows = torch.randint(0, 320, (2, 50))
    both = perplexity_result(model, rows, window=16, stride=4, progress=False)
    each = [perplexity_result(model, r, window=16, stride=4, progress=False) for r in rows]
    assert both.n_tokens == sum(e.n_tokens for e in each)
    assert both.nll_sum == pytest.approx(sum(e.nll_sum for e in each), rel=RTOL)


def test_token_blocks_input_and_uniform_model(tiny_model):
    with torch.no_grad():  # a model whose logits are all zero: NLL = log(d_vocab) everywhere
        tiny_model.unembed.W_U.zero_()
        tiny_model.unembed.b_U.zero_()
    blocks = TokenBlocks(tokens=torch.randint(0, 61, (4, 16)), categories=("a",) * 4,
                         starts=torch.arange(4) * 16, source="mem", split="eval", seed=0,
                         stream_len=64)
    res = perplexity_result(tiny_model, blocks, progress=False)
    assert res.n_tokens == 60 and res.perplexity == pytest.approx(61.0, rel=RTOL)
    int32 = perplexity_result(tiny_model, blocks.tokens.int(), progress=False)
    assert int32.perplexity == pytest.approx(61.0, rel=RTOL)
    assert isinstance(res, PerplexityResult)


def test_runs_under_inference_mode(tiny_model):
    seen = []
    tiny_model.blocks[0].hook_resid_pre.add_hook(
        lambda x, hook: seen.append(torch.is_inference_mode_enabled()))
    perplexity(tiny_model, torch.randint(0, 61, (2, 8)), progress=False)
    assert seen == [True]


def test_perplexity_errors(tiny_model):
    tokens = torch.randint(0, 61, (2, 16))
    with pytest.raises(CgcLensError, match="at most n_ctx=32"):
        perplexity(tiny_model, torch.randint(0, 61, (2, 40)), progress=False)
    with pytest.raises(CgcLensError, match="at most n_ctx=32"):
        perplexity(tiny_model, torch.randint(0, 61, (200,)), window=40, stride=8, progress=False)
    with pytest.raises(CgcLensError, match="stride <= window=16, got stride=20"):
        perplexity(tiny_model, tokens[0], window=16, stride=20, progress=False)
    with pytest.raises(CgcLensError, match="window and stride together"):
        perplexity(tiny_model, tokens, window=16, progress=False)
    with pytest.raises(CgcLensError, match=r"\[n_blocks, block_len\]"):
        perplexity(tiny_model, tokens[0], progress=False)
    with pytest.raises(CgcLensError, match="non-empty"):
        perplexity(tiny_model, torch.zeros(0, 8, dtype=torch.long), progress=False)
    with pytest.raises(CgcLensError, match=r"token ids in \[0, d_vocab=61\)"):
        perplexity(tiny_model, tokens + 60, progress=False)
    with pytest.raises(CgcLensError, match="batch_size >= 1"):
        perplexity(tiny_model, tokens, batch_size=0, progress=False)
    with pytest.raises(CgcLensError, match="bos token"):
        perplexity(tiny_model, tokens, prepend_bos=True, progress=False)  # no tokenizer


def test_token_nll_unchanged():
    logits = torch.zeros(1, 3, 4)
    torch.testing.assert_close(token_nll(logits, torch.tensor([[0, 1, 2]])),
                               torch.full((1, 2), math.log(4)))


def test_token_nll_keeps_float64_against_a_naive_float64_loop():
    gen = torch.Generator().manual_seed(0)
    # logits far apart: a float32 log-softmax would be off by ~1e-6 relative, float64 by ~1e-15
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64) * 30
    tokens = torch.randint(0, 7, (2, 5), generator=gen)
    nll = token_nll(logits, tokens)
    naive = torch.empty(2, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            row = logits[b, i].tolist()
            top = max(row)
            log_z = top + math.log(math.fsum(math.exp(x - top) for x in row))
            naive[b, i] = log_z - row[int(tokens[b, i + 1])]
    assert nll.dtype == torch.float64
    torch.testing.assert_close(nll, naive, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_token_nll_computes_low_precision_logits_in_float32(dtype):
    logits = torch.randn(1, 4, 9).to(dtype)
    tokens = torch.randint(0, 9, (1, 4))
    nll = token_nll(logits, tokens)
    assert nll.dtype == torch.float32
    expected = token_nll(logits.double(), tokens).float()
    torch.testing.assert_close(nll, expected, atol=1e-5, rtol=1e-5)


def test_kl_divergence_against_scipy_in_float64():
    """KL per position equals scipy.stats.entropy(p, q) of the softmaxes; float64 stays float64."""
    from scipy.stats import entropy

    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 4
    other = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 4
    kl = kl_divergence(ref, other)
    assert kl.dtype == torch.float64
    p, q = ref.softmax(-1).numpy(), other.softmax(-1).numpy()
    expected = entropy(p, q, axis=-1)
    assert torch.allclose(kl, torch.from_numpy(expected), rtol=1e-12, atol=1e-14)
    assert kl_divergence(ref.half(), other.half()).dtype == torch.float32
