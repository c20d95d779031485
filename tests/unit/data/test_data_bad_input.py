"""Bad input to the corpus readers and the block cutter is refused with the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest
from unit.fake_assets import bpe_tokenizer

from cgc_lens.data import Corpus, Document, load_corpus, token_blocks
from cgc_lens.errors import CgcLensError

WORDS = " ".join(f"w{i}" for i in range(400))


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(300)


@pytest.fixture
def corpus() -> Corpus:
    return Corpus(name="mem", split="eval", documents=(Document(text=WORDS, category="a", id="0"),))


@pytest.mark.parametrize(("lines", "match"), [
    (['{"text": "fine"}', '{"text": "broken'], r"docs\.jsonl, line 2: not valid JSON"),
    (['{"text": "fine"}', "", "{'text': 'single quotes'}"], r"docs\.jsonl, line 3: not valid JSON"),
    (['["a", "list"]'], r"docs\.jsonl, line 1: expected a JSON object.*got list"),
])
def test_invalid_jsonl_line_names_file_and_line(tmp_path, lines, match):
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CgcLensError, match=rf"{match}.*fix or delete that line"):
        load_corpus(tmp_path / "docs.jsonl", split="eval")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"block_len": 64.5}, r"block_len to be an int, got 64\.5 \(float\).*block_len=128"),
    ({"block_len": 16, "seed": "abc"}, r"seed to be an int, got 'abc' \(str\).*seed=0"),
    ({"block_len": 16, "n_blocks": 2.0}, r"n_blocks to be an int, got 2\.0 \(float\)"),
    ({"block_len": True}, r"block_len to be an int, got True \(bool\)"),
])
def test_token_blocks_refuses_non_int_sizes_and_seeds(corpus, tok, unchecked, kwargs, match):
    with pytest.raises(CgcLensError, match=match):
        token_blocks(corpus, tok, **kwargs)


def test_numpy_ints_are_ints(corpus, tok, unchecked):
    a = token_blocks(corpus, tok, block_len=np.int64(16), n_blocks=np.int64(3), seed=np.int64(1))
    b = token_blocks(corpus, tok, block_len=16, n_blocks=3, seed=1)
    assert a.tokens.equal(b.tokens)


def test_too_many_blocks_names_the_documents_and_tokens(corpus, tok):
    with pytest.raises(CgcLensError, match=r"n_blocks <= \d+ \(blocks of 16 in the \d+ tokens of "
                                           r"1 documents of 'mem' split 'eval'\), got 999"):
        token_blocks(corpus, tok, block_len=16, n_blocks=999)
