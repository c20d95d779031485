"""Corpora (embedded, local, Hugging Face by name offline), token blocks and sliding windows."""

from __future__ import annotations

import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from unit.fake_assets import TEXTS, bpe_tokenizer, write_fake_embedded
from unit.hub_cache import offline_hub, write_datasets_cache

import cgc_lens.data.synth
from cgc_lens import data, models
from cgc_lens.data import (
    Corpus,
    Document,
    load_corpus,
    sliding_windows,
    token_blocks,
    token_stream,
)
from cgc_lens.errors import CgcLensError

WORDS = " ".join(f"w{i}" for i in range(400))


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer(300)


def _corpus(*docs: tuple[str, str], split: str = "eval") -> Corpus:
    return Corpus(name="mem", split=split, documents=tuple(
        Document(text=t, category=c, id=str(i)) for i, (c, t) in enumerate(docs)))


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    write_fake_embedded(tmp_path / "assets" / "cgc-tiny")
    monkeypatch.setattr(models, "ASSETS_ROOT", tmp_path / "assets")
    synthetic = [{"id": f"syn-{s}", "category": "copy", "split": s, "text": "ab ab ab ab"}
                 for s in ("train", "calibration", "eval")]
    monkeypatch.setattr(cgc_lens.data.synth, "synthetic_documents", lambda seed=0: synthetic)


# --------------------------------------------------------------------------- corpora


def test_embedded_corpus_splits_and_categories(fake_embedded):
    ids = {}
    for split in ("train", "calibration", "eval"):
        corpus = load_corpus("cgc-tiny", split=split)
        assert corpus.categories == ("prose", "code", "copy") and corpus.split == split
        ids[split] = {d.id for d in corpus.documents}
    assert not ids["calibration"] & ids["eval"] and not ids["train"] & ids["eval"]
    with pytest.raises(CgcLensError, match=r"Unknown split 'test'.*Closest: \['train'\]|Valid"):
        load_corpus("cgc-tiny", split="test")


def test_local_file_is_cut_into_disjoint_splits(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(WORDS)
    parts = {s: load_corpus(path, split=s).documents for s in ("train", "calibration", "eval")}
    assert all(len(p) == 1 and p[0].category == "notes" for p in parts.values())
    rebuilt = " ".join(parts[s][0].text for s in ("train", "calibration", "eval"))
    assert rebuilt.split() == WORDS.split()  # disjoint, nothing lost
    n_eval = len(parts["eval"][0].text.split())
    assert 0.25 < n_eval / 400 < 0.35


def test_local_folder_categories_and_override(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text(WORDS)
    (tmp_path / "sub" / "b.md").write_text(WORDS)
    (tmp_path / ".hidden.txt").write_text(WORDS)
    (tmp_path / "skip.bin").write_bytes(b"\0\1")
    assert load_corpus(tmp_path).categories == ("a", "sub/b")
    assert load_corpus(tmp_path, category="notes").categories == ("notes",)
    assert load_corpus(tmp_path, category=lambda p: p.suffix).categories == (".txt", ".md")


def test_local_folder_with_split_subfolders_keeps_documents_whole(tmp_path):
    for split, name in (("calibration", "x"), ("test", "y"), ("train", "z")):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{name}.txt").write_text(f"{name} " + WORDS)
    assert [d.category for d in load_corpus(tmp_path, split="eval").documents] == ["y"]
    (doc,) = load_corpus(tmp_path, split="calibration").documents
    assert doc.text == "x " + WORDS


def test_local_records_jsonl_xz_and_parquet(tmp_path):
    rows = [{"id": "1", "text": "alpha beta", "category": "greek", "split": "eval"},
            {"id": "2", "text": "gamma delta", "category": "greek", "split": "calibration"},
            {"id": "3", "text": "one two", "split": "eval"}]
    with lzma.open(tmp_path / "recs.jsonl.xz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "more.parquet")
    corpus = load_corpus(tmp_path, split="eval")
    assert [(d.id, d.category) for d in corpus.documents] == [
        ("1", "greek"), ("3", "more"), ("1", "greek"), ("3", "recs")]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(CgcLensError, match="Expected a 'text' field"):
        load_corpus(tmp_path / "bad.jsonl")


def test_empty_and_missing_corpora(tmp_path):
    with pytest.raises(CgcLensError, match="got none"):
        Corpus(name="x", split="eval", documents=())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CgcLensError, match="found none"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("   \n")
    with pytest.raises(CgcLensError, match="got none"):
        load_corpus(tmp_path / "blank.txt")
    with pytest.raises(CgcLensError, match=r"Unknown corpus 'wikitext-2-raw'.*Closest"):
        load_corpus("wikitext-2-raw")
    with pytest.raises(CgcLensError, match="max_documents"):
        load_corpus(tmp_path, max_documents=0)


WIKI_TEST = ["", " = Alpha = \n", "", " Alpha is first . \n", " = = History = = \n",
             " It began . \n", " = Beta = \n", " Beta is second . \n"]


def test_hub_corpus_by_name_offline(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "hf")
    write_datasets_cache(tmp_path / "hf" / "datasets", "Salesforce/wikitext", "wikitext-2-raw-v1",
                         {"test": [{"text": t} for t in WIKI_TEST],
                          "validation": [{"text": " = Gamma = \n"}, {"text": " g . \n"}]})
    corpus = load_corpus("wikitext-2-raw-v1", split="eval")
    assert [d.text.split("\n")[0] for d in corpus.documents] == ["", " = Beta = "]
    assert "History" in corpus.documents[0].text and corpus.categories == ("wikitext-2-raw-v1",)
    assert len(load_corpus("wikitext-2-raw-v1", split="eval", max_documents=1)) == 1
    assert load_corpus("wikitext-2-raw-v1", split="calibration").documents[0].text.startswith(
        " = Gamma")


def test_hub_corpus_missing_offline_says_where_and_what(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "hf")
    with pytest.raises(CgcLensError, match="wikitext-103-raw-v1") as info:
        load_corpus("wikitext-103-raw-v1", split="eval")
    message = str(info.value)
    assert str(tmp_path / "hf" / "datasets") in message and "HF_HUB_OFFLINE" in message
    assert "To fix" in message
    with pytest.raises(CgcLensError, match="someone/nothing"):
        load_corpus("someone/nothing:cfg", split="test")


def test_hub_category_field_and_streaming(monkeypatch):
    rows = [{"text": f"doc {i}", "meta": {"pile_set_name": "ArXiv" if i % 2 else "Github"}}
            for i in range(10)]
    calls = []

    def fake_load_dataset(path, config, *, split, streaming):
        calls.append((path, config, split, streaming))
        return iter(rows)

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    corpus = load_corpus("pile-uncopyrighted", split="calibration", streaming=True,
                         max_documents=3)
    assert calls == [("monology/pile-uncopyrighted", None, "validation", True)]
    assert [d.category for d in corpus.documents] == ["Github", "ArXiv", "Github"]


# --------------------------------------------------------------------------- blocks


def test_token_stream_joins_documents_with_eos_grouped_by_category(tok):
    corpus = _corpus(("a", TEXTS[0]), ("b", TEXTS[1]), ("a", TEXTS[2]))
    stream = token_stream(corpus, tok)
    expected = []
    for text in (TEXTS[0], TEXTS[2], TEXTS[1]):
        expected += [*tok(text, add_special_tokens=False)["input_ids"], 0]
    assert stream.tolist() == expected


def test_token_blocks_non_overlapping_deterministic_nested(tok):
    corpus = _corpus(*[("prose", TEXTS[0] * 5), ("code", TEXTS[1] * 5)] * 3)
    stream = token_stream(corpus, tok)
    blocks = token_blocks(corpus, tok, block_len=16, n_blocks=10, seed=3)
    assert blocks.tokens.shape == (10, 16) and len(blocks) == 10 and blocks.block_len == 16
    assert (blocks.starts % 16 == 0).all() and len(set(blocks.starts.tolist())) == 10
    assert torch.equal(blocks.starts, blocks.starts.sort().values)
    for row, start in zip(blocks.tokens, blocks.starts.tolist(), strict=True):
        assert torch.equal(row, stream[start:start + 16])
    again = token_blocks(corpus, tok, block_len=16, n_blocks=10, seed=3)
    assert torch.equal(again.tokens, blocks.tokens)
    other = token_blocks(corpus, tok, block_len=16, n_blocks=10, seed=4)
    assert not torch.equal(other.starts, blocks.starts)
    fewer = token_blocks(corpus, tok, block_len=16, n_blocks=4, seed=3)
    assert set(fewer.starts.tolist()) <= set(blocks.starts.tolist())
    every = token_blocks(corpus, tok, block_len=16)
    assert len(every) == len(stream) // 16 == blocks.stream_len // 16


def test_block_category_is_the_majority_one(tok):
    corpus = _corpus(("prose", TEXTS[0] * 8), ("code", TEXTS[1] * 8))
    n_prose = len(tok(TEXTS[0] * 8, add_special_tokens=False)["input_ids"]) + 1
    blocks = token_blocks(corpus, tok, block_len=8)
    for start, cat in zip(blocks.starts.tolist(), blocks.categories, strict=True):
        prose_tokens = max(0, min(n_prose, start + 8) - start)
        assert cat == ("prose" if prose_tokens >= 4 else "code")
    code = blocks.select("code")
    assert set(code.categories) == {"code"} and len(code) < len(blocks)
    with pytest.raises(CgcLensError, match="Unknown category 'cod'"):
        blocks.select("cod")


def test_calibration_and_eval_blocks_never_share_text(tmp_path, tok):
    (tmp_path / "a.txt").write_text(WORDS)
    calibration = token_blocks(tmp_path, tok, block_len=8, split="calibration")
    evaluation = token_blocks(tmp_path, tok, block_len=8, split="eval")
    cal_text = tok.decode(calibration.tokens.flatten())
    eval_text = tok.decode(evaluation.tokens.flatten())
    cal_words = {w for w in cal_text.split() if w.startswith("w")}
    eval_words = {w for w in eval_text.split() if w.startswith("w")}
    assert cal_words and eval_words and not cal_words & eval_words


def test_token_blocks_errors(tok, tiny_model):
    tiny_model.set_tokenizer(tok)
    corpus = _corpus(("a", TEXTS[0]))
    with pytest.raises(CgcLensError, match="n_blocks <= "):
        token_blocks(corpus, tok, block_len=4, n_blocks=1000)
    with pytest.raises(CgcLensError, match="at least block_len=4096"):
        token_blocks(corpus, tok, block_len=4096)
    with pytest.raises(CgcLensError, match="block_len >= 2"):
        token_blocks(corpus, tok, block_len=1)
    with pytest.raises(CgcLensError, match=r"n_ctx 32, got 64"):
        token_blocks(corpus, tiny_model, block_len=64)  # a model's tokenizer and its n_ctx
    with pytest.raises(CgcLensError, match="split 'eval'"):
        token_blocks(corpus, tok, block_len=4, split="calibration")


def test_token_blocks_from_names(fake_embedded):
    blocks = token_blocks("cgc-tiny", "cgc-tiny", block_len=8, n_blocks=3, split="calibration")
    assert blocks.source == "cgc-tiny" and blocks.split == "calibration" and len(blocks) == 3


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(("n", "window", "stride"), [(50, 8, 3), (50, 8, 1), (7, 16, 4),
                                                      (64, 16, 8), (65, 16, 15)])
@pytest.mark.parametrize("bos", [False, True])
def test_sliding_windows_score_every_position_once(n, window, stride, bos):
    scored = []
    for w in sliding_windows(n, window=window, stride=stride, prepend_bos=bos):
        assert w.end - w.begin <= window
        assert w.begin + (0 if bos else 1) <= w.score_from < w.end
        scored += range(w.score_from, w.end)
    assert scored == list(range(0 if bos else 1, n))


def test_sliding_windows_stride_equal_window_is_chunked():
    wins = sliding_windows(12, window=4, stride=4)
    assert [(w.begin, w.end, w.score_from) for w in wins] == [(0, 4, 1), (4, 8, 5), (8, 12, 9)]


def test_sliding_windows_errors():
    with pytest.raises(CgcLensError, match="stride <= window=4, got stride=5"):
        sliding_windows(10, window=4, stride=5)
    with pytest.raises(CgcLensError, match="stride=0"):
        sliding_windows(10, window=4, stride=0)
    with pytest.raises(CgcLensError, match="n_tokens > 1"):
        sliding_windows(1, window=4, stride=2)


def test_registry_is_consistent():
    assert {"wikitext-2-raw-v1", "wikitext-103-raw-v1", "pile-uncopyrighted"} <= set(data.CORPORA)
    assert all(set(spec.splits) >= set(data.SPLITS) for spec in data.CORPORA.values())
