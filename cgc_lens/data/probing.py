"""Labelled corpora for sparse probing: SAEBench's probing datasets by name.

The datasets SAEBench probes on load by name (:data:`PROBING_DATASETS`) where the Hugging Face
hub or its cache can be reached; offline, :func:`load_probing_corpus` raises
:class:`~cgc_lens.errors.CgcLensError` saying where it looked and how to fix it. The probes
themselves are :mod:`cgc_lens.analysis.probing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cgc_lens.data.corpus import load_corpus
from cgc_lens.data.documents import Corpus
from cgc_lens.data.hub import CORPORA, HubCorpus, hub_documents
from cgc_lens.errors import unknown_name
from cgc_lens.models import EMBEDDED_MODELS

__all__ = ["PROBING_DATASETS", "ProbingDataset", "load_probing_corpus"]


@dataclass(frozen=True, kw_only=True)
class ProbingDataset:
    """A probing dataset on the Hugging Face hub, as SAEBench uses it."""

    parts: tuple[tuple[str, HubCorpus], ...]
    """(name, how to read it) of each part; a part without a category field labels all its
    documents with its name (Europarl: one part per language)."""
    classes: tuple[str, ...] | None = None
    """The classes SAEBench keeps; ``None``: all."""
    streaming: bool = False
    """Stream the rows (datasets too large to download whole)."""


def _part(
    path: str, text: str, label: str | None, config: str | None = None, *, eval_split: str = "test"
) -> HubCorpus:
    """A hub dataset read for probing: the study loads split "eval" and splits it itself."""
    return HubCorpus(path=path, config=config, text_field=text, category_field=label,
                     splits={"train": "train", "calibration": "train", "eval": eval_split})


def _europarl(lang: str, pair: str) -> tuple[str, HubCorpus]:
    # Europarl has only a train split.
    return lang, _part("Helsinki-NLP/europarl", f"translation.{lang}", None, pair,
                       eval_split="train")


PROBING_DATASETS: dict[str, ProbingDataset] = {
    "ag_news": ProbingDataset(parts=(("ag_news", _part("fancyzhx/ag_news", "text", "label")),),
                              classes=("0", "1", "2", "3")),
    "amazon_reviews": ProbingDataset(parts=(("amazon_reviews", _part(
        "canrager/amazon_reviews_mcauley_1and5", "text", "category")),)),
    "amazon_reviews_sentiment": ProbingDataset(parts=(("amazon_reviews_sentiment", _part(
        "canrager/amazon_reviews_mcauley_1and5", "text", "rating")),), classes=("1.0", "5.0")),
    "europarl": ProbingDataset(parts=(
        _europarl("en", "en-fr"), _europarl("fr", "en-fr"), _europarl("de", "de-en"),
        _europarl("es", "en-es"), _europarl("nl", "en-nl"))),
    "github_code": ProbingDataset(
        parts=(("github_code", _part("codeparrot/github-code", "code", "language",
                                     eval_split="train")),),
        classes=("C", "Python", "HTML", "Java", "PHP"), streaming=True),
    "bias_in_bios": ProbingDataset(parts=(("bias_in_bios", _part(
        "LabHC/bias_in_bios", "hard_text", "profession")),)),
}
"""SAEBench's sparse-probing datasets by name (Karvonen et al. 2025), with their text and label
fields; bias-in-bios keeps every profession (SAEBench splits them into three class sets)."""


def load_probing_corpus(
    name: str, *, split: str = "eval", max_documents: int | None = None
) -> Corpus:
    """A labelled corpus for probing: a name in :data:`PROBING_DATASETS`, or anything
    :func:`~cgc_lens.data.corpus.load_corpus` loads (categories are the labels).

    Example:
        >>> load_probing_corpus("ag_nws")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        cgc_lens.errors.CgcLensError: Unknown probing dataset 'ag_nws'. Closest: ['ag_news'...
    """
    if name not in PROBING_DATASETS:
        if name in CORPORA or name in EMBEDDED_MODELS or "/" in name or Path(name).exists():
            return load_corpus(name, split=split, max_documents=max_documents)
        raise unknown_name("probing dataset", name, [*PROBING_DATASETS, *EMBEDDED_MODELS])
    # load_corpus reads only the corpora registered in data.CORPORA; these parts go through
    # the same reader (and its offline error) until they are registered there.
    spec = PROBING_DATASETS[name]
    docs = []
    for part_name, hub in spec.parts:
        docs += hub_documents(hub, name=part_name, split=split, max_documents=max_documents,
                              streaming=spec.streaming)
    if spec.classes is not None:
        docs = [d for d in docs if d.category in spec.classes]
    return Corpus(name=name, split=split, documents=tuple(docs))
