"""The probing datasets by name: labels read from the hub's fields, SAEBench's classes kept,
and offline a clear error."""

from __future__ import annotations

import pytest
from unit.hub_cache import offline_hub

from cgc_lens import CgcLensError
from cgc_lens.data import PROBING_DATASETS, load_probing_corpus


@pytest.mark.parametrize("name", ["ag_news", "europarl", "bias_in_bios", "amazon_reviews"])
def test_probing_datasets_by_name_fail_clearly_offline(name, tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "hf")
    with pytest.raises(CgcLensError, match="Could not load dataset") as info:
        load_probing_corpus(name, max_documents=10)
    message = str(info.value)
    assert PROBING_DATASETS[name].parts[0][1].path in message
    assert "HF_HUB_OFFLINE" in message and "To fix" in message


def test_probing_dataset_by_name_reads_labels_and_keeps_saebench_classes(monkeypatch):
    rows = [{"text": f"news {i}", "label": i % 5} for i in range(10)]
    calls = []

    def fake_load_dataset(path, config, *, split, streaming):
        calls.append((path, config, split, streaming))
        return rows

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    corpus = load_probing_corpus("ag_news", split="eval")
    assert calls == [("fancyzhx/ag_news", None, "test", False)]
    assert corpus.categories == ("0", "1", "2", "3") and len(corpus) == 8   # label 4 dropped
    calls.clear()
    monkeypatch.setattr("datasets.load_dataset", lambda path, config, *, split, streaming: (
        calls.append(config) or [{"translation": {"en": "Hello", "fr": "Bonjour", "de": "Hallo",
                                                  "es": "Hola", "nl": "Hallo"}}]))
    europarl = load_probing_corpus("europarl")
    assert calls == ["en-fr", "en-fr", "de-en", "en-es", "en-nl"]
    assert [(d.category, d.text) for d in europarl.documents][:3] == [
        ("en", "Hello"), ("fr", "Bonjour"), ("de", "Hallo")]


def test_unknown_probing_dataset_lists_the_known_ones():
    with pytest.raises(CgcLensError, match=r"Unknown probing dataset 'ag-news'.*ag_news"):
        load_probing_corpus("ag-news")
    assert load_probing_corpus("cgc-tiny", split="eval").categories
