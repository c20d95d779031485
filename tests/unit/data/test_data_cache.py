"""The on-disk cache: where it lives, entries written whole, spoilt entries rebuilt, and the
embedded corpus's token streams and synthetic documents loaded from it bit for bit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from unit.fake_assets import bpe_tokenizer, write_fake_embedded

import cgc_lens.data.synth
from cgc_lens import models
from cgc_lens.data import cache, files, load_corpus, token_stream
from cgc_lens.data.cache import CACHE_ENV, cache_dir, cached, digest

DUMP = {"dump": lambda r: repr(r).encode(), "load": lambda b: eval(b.decode())}


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


class Builds:
    """A build function that counts its calls."""

    def __init__(self, value: object) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> object:
        self.calls += 1
        return self.value


def _entry(folder: Path) -> Path:
    (path,) = folder.glob("*.bin")
    return path


# --------------------------------------------------------------------------- where


def test_cache_dir_env_order(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.setenv(CACHE_ENV, "OFF")
    assert cache_dir() is None
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir() == tmp_path / "xdg" / "cgc-lens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):  # platformdirs or not, the XDG default
        assert cache_dir() == tmp_path / "home" / ".cache" / "cgc-lens"


def test_cache_off_always_builds(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "off")
    build = Builds([1, 2])
    assert [cached("x", digest("k"), build, **DUMP) for _ in range(2)] == [[1, 2], [1, 2]]
    assert build.calls == 2


# --------------------------------------------------------------------------- entries


def test_built_once_then_loaded(folder):
    build = Builds({"a": [1, 2.5, "x"]})
    first = cached("thing", digest("k1"), build, **DUMP)
    second = cached("thing", digest("k1"), build, **DUMP)
    assert first == second == {"a": [1, 2.5, "x"]} and build.calls == 1
    assert cached("thing", digest("k2"), build, **DUMP) == first and build.calls == 2  # new key
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["thing", "thing"]


@pytest.mark.parametrize("spoil", ["flip", "truncate", "empty", "foreign"])
def test_spoilt_entry_is_rebuilt_never_trusted(folder, caplog, spoil):
    build = Builds(list(range(100)))
    key = digest("k")
    cached("thing", key, build, **DUMP)
    path = _entry(folder)
    data = bytearray(path.read_bytes())
    if spoil == "flip":  # one payload byte: the checksum no longer matches
        data[-3] ^= 0x01
    elif spoil == "truncate":
        data = data[: len(data) // 2]
    elif spoil == "empty":
        data = bytearray()
    else:  # a whole entry, but for another key (as if renamed by hand)
        other = Builds([7])
        cached("other", digest("k-other"), other, **DUMP)
        data = bytearray(next(folder.glob("other-*.bin")).read_bytes())
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="cgc_lens.data.cache"):
        assert cached("thing", key, build, **DUMP) == list(range(100))
    assert build.calls == 2 and "rebuilding" in caplog.text
    assert cached("thing", key, build, **DUMP) == list(range(100)) and build.calls == 2


def test_payload_its_loader_refuses_is_rebuilt(folder, caplog):
    build = Builds([1])
    cached("thing", digest("k"), build, **DUMP)

    def refuse(payload: bytes) -> object:
        raise ZeroDivisionError("bad payload")

    with caplog.at_level(logging.WARNING, logger="cgc_lens.data.cache"):
        assert cached("thing", digest("k"), build, dump=DUMP["dump"], load=refuse) == [1]
    assert build.calls == 2 and "ZeroDivisionError" in caplog.text
    assert cached("thing", digest("k"), build, **DUMP) == [1] and build.calls == 2


def test_unwritable_folder_only_costs_the_build(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    build = Builds([3])
    assert cached("thing", digest("k"), build, **DUMP) == [3]
    assert cached("thing", digest("k"), build, **DUMP) == [3] and build.calls == 2


def test_failed_write_leaves_no_entry_and_no_temporary(folder, monkeypatch):
    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "fsync", crash)
    assert cached("thing", digest("k"), Builds([1]), **DUMP) == [1]
    assert list(folder.iterdir()) == []


def test_concurrent_writers_leave_one_whole_entry(folder):
    value = list(range(20000))
    threads = [threading.Thread(target=cached, args=("thing", digest("k"), Builds(value)),
                                kwargs=DUMP) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    build = Builds(None)
    assert cached("thing", digest("k"), build, **DUMP) == value and build.calls == 0


def test_entry_survives_a_writer_killed_mid_write(folder):
    """A process killed while writing (here: just before its rename) leaves the old entry whole
    and no temporary file that could be taken for it."""
    cached("thing", digest("k"), Builds([1]), **DUMP)
    script = (  # the cache module alone, without importing the package (seconds)
        "import importlib.util, os, sys\n"
        "spec = importlib.util.spec_from_file_location('c', sys.argv[1])\n"
        "cache = importlib.util.module_from_spec(spec); spec.loader.exec_module(cache)\n"
        "cache.Path.replace = lambda self, target: os._exit(9)\n"
        "cache.cached('thing', cache.digest('k'), lambda: [2], dump=lambda r: repr(r).encode(),"
        " load=lambda b: 1 / 0)\n"
    )
    env = {**os.environ, CACHE_ENV: str(folder)}
    done = subprocess.run([sys.executable, "-c", script, cache.__file__], env=env, check=False)
    assert done.returncode == 9
    assert cached("thing", digest("k"), Builds([3]), **DUMP) == [1]


# --------------------------------------------------------------------------- the corpus


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    write_fake_embedded(tmp_path / "assets" / "cgc-tiny")
    monkeypatch.setattr(models, "ASSETS_ROOT", tmp_path / "assets")
    monkeypatch.setattr(cgc_lens.data.synth, "synthetic_documents", _fake_synthetic)
    files._cached_synthetic.cache_clear()
    yield
    files._cached_synthetic.cache_clear()


def _fake_synthetic(seed: int = 0) -> list[dict[str, str]]:
    return [{"id": f"syn-{s}-{i}", "category": "copy", "split": s, "text": f"ab cd {i} " * 5}
            for s in ("train", "calibration", "eval") for i in range(30)]


def _naive_stream(corpus, tok) -> torch.Tensor:
    """The stream as documented, one document at a time: grouped by category, eos after each."""
    ids = []
    for category in corpus.categories:
        for d in corpus.documents:
            if d.category == category:
                ids += [*tok(d.text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    return torch.tensor(ids)


def test_stream_from_cache_is_bit_identical(fake_embedded, folder, monkeypatch):
    tok = bpe_tokenizer(300)
    monkeypatch.setenv(CACHE_ENV, "off")
    plain = {s: token_stream("cgc-tiny", tok, split=s) for s in ("train", "eval")}
    files._cached_synthetic.cache_clear()  # as in a new process
    monkeypatch.setenv(CACHE_ENV, str(folder))
    cold = {s: token_stream("cgc-tiny", tok, split=s) for s in ("train", "eval")}
    assert sorted(p.name.rsplit("-", 1)[0] for p in folder.iterdir()) == [
        "synthetic-documents", "tokens-cgc-tiny-eval", "tokens-cgc-tiny-train"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized although the stream is cached")

    with monkeypatch.context() as m:
        m.setattr(type(tok), "__call__", no_tokenizing)
        warm = {s: token_stream("cgc-tiny", tok, split=s) for s in ("train", "eval")}
    for s in ("train", "eval"):
        assert warm[s].dtype == torch.long and torch.equal(warm[s], cold[s])
        assert torch.equal(cold[s], plain[s])


def test_stream_matches_naive_tokenization_and_changes_with_the_corpus(
    fake_embedded, folder, monkeypatch
):
    tok = bpe_tokenizer(300)
    corpus = load_corpus("cgc-tiny", split="eval")
    assert torch.equal(token_stream(corpus, tok), _naive_stream(corpus, tok))
    assert torch.equal(token_stream(corpus, tok), _naive_stream(corpus, tok))  # from the cache
    fewer = load_corpus("cgc-tiny", split="eval", max_documents=3)  # same name, other content
    assert torch.equal(token_stream(fewer, tok), _naive_stream(fewer, tok))
    other_tok = bpe_tokenizer(280)
    assert torch.equal(token_stream(corpus, other_tok), _naive_stream(corpus, other_tok))
    assert len(list(folder.glob("tokens-*.bin"))) == 3


def test_synthetic_documents_cached_by_their_code(folder):
    files._cached_synthetic.cache_clear()
    try:
        first = files._cached_synthetic(_fake_synthetic)
        files._cached_synthetic.cache_clear()
        (path,) = folder.glob("synthetic-documents-*.bin")
        path.write_bytes(path.read_bytes()[:-1])  # truncated: rebuilt, not trusted
        assert files._cached_synthetic(_fake_synthetic) == first == tuple(_fake_synthetic())
        files._cached_synthetic.cache_clear()
        assert files._cached_synthetic(lambda seed: [{"text": "x"}]) == ({"text": "x"},)
        assert len(list(folder.glob("synthetic-documents-*.bin"))) == 2
    finally:
        files._cached_synthetic.cache_clear()
