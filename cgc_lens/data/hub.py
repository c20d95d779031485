"""Corpora on the Hugging Face hub: how to read a dataset as documents, and the ones we use.

Hugging Face splits map ``train``/``calibration``/``eval`` to ``train``/``validation``/``test``
unless a :class:`HubCorpus` says otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from cgc_lens.data.documents import Document
from cgc_lens.errors import CgcLensError

__all__ = ["CORPORA", "HubCorpus", "hub_documents"]

_WIKITEXT_HEADING = re.compile(r"^ = [^=].* = \n?$")


@dataclass(frozen=True, kw_only=True)
class HubCorpus:
    """How to read one Hugging Face dataset as a corpus."""

    path: str
    """Dataset repository on the hub."""
    config: str | None = None
    """Dataset configuration name."""
    splits: Mapping[str, str] = field(
        default_factory=lambda: {"train": "train", "calibration": "validation", "eval": "test"}
    )
    """cgc-lens split → dataset split; other split names pass through unchanged."""
    text_field: str = "text"
    """Record field holding the text."""
    category_field: str | None = None
    """Dotted path of the field holding the category (``meta.pile_set_name``); None: the
    corpus name is every document's category."""
    wikitext_articles: bool = False
    """Rows are the lines of Wikipedia articles: join them back into one document per article."""


CORPORA: dict[str, HubCorpus] = {
    "wikitext-2-raw-v1": HubCorpus(
        path="Salesforce/wikitext", config="wikitext-2-raw-v1", wikitext_articles=True),
    "wikitext-103-raw-v1": HubCorpus(
        path="Salesforce/wikitext", config="wikitext-103-raw-v1", wikitext_articles=True),
    "pile-uncopyrighted": HubCorpus(
        path="monology/pile-uncopyrighted", category_field="meta.pile_set_name"),
}
"""Corpora the papers use, by the name cgc-lens knows them."""


def _field(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for key in dotted.split("."):
        value = value[key]
    return value


def hub_documents(
    spec: HubCorpus,
    *,
    name: str,
    split: str = "eval",
    max_documents: int | None = None,
    streaming: bool = False,
) -> list[Document]:
    """The documents of one split of a Hugging Face dataset read as ``spec`` says.

    :func:`~cgc_lens.data.corpus.load_corpus` calls this for the datasets in :data:`CORPORA`
    and for ``"ORG/NAME"``; call it directly for a dataset that needs a :class:`HubCorpus` of
    its own (other text or category fields, other split names) without registering it.

    Args:
        spec: which dataset and how to read it.
        name: the corpus name: the category of every document when ``spec`` has no
            ``category_field``, and the prefix of each document's ``id``.
        split: ``"train"``, ``"calibration"`` or ``"eval"`` (mapped by ``spec.splits``; other
            names pass through).
        max_documents: keep at most this many (non-empty) documents.
        streaming: stream the dataset instead of downloading whole splits (needs network).

    Raises:
        CgcLensError: the dataset cannot be loaded (offline and not cached, or unknown); the
            message names the caches searched and how to fix it.
    """
    import datasets
    from huggingface_hub import constants

    hf_split = spec.splits.get(split, split)
    sliced = max_documents is not None and not streaming and not spec.wikitext_articles
    try:
        ds = datasets.load_dataset(spec.path, spec.config, streaming=streaming,
                                   split=f"{hf_split}[:{max_documents}]" if sliced else hf_split)
    except (OSError, ValueError) as err:
        state = "offline (HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else "online"
        raise CgcLensError(
            f"Could not load dataset {name!r} ({spec.path}, config {spec.config}, split "
            f"{hf_split!r}) while {state}. Searched the datasets cache "
            f"{datasets.config.HF_DATASETS_CACHE} and the hub cache {constants.HF_HUB_CACHE}. "
            "To fix: load it once with network access (unset HF_HUB_OFFLINE), point "
            "HF_DATASETS_CACHE / HF_HOME at a cache that holds it, or pass a local path of "
            f"text, .jsonl or .parquet files. Cause: {type(err).__name__}: {str(err)[:300]}"
        ) from err
    rows: Iterable[Mapping[str, Any]] = ds
    if streaming and max_documents is not None and not spec.wikitext_articles:
        rows = islice(ds, max_documents)
    records = ({"text": _field(r, spec.text_field), "id": f"{name}:{split}:{i}", "category":
                _field(r, spec.category_field) if spec.category_field else name}
               for i, r in enumerate(rows))
    if spec.wikitext_articles:
        records = _wikitext_articles(records, name, split)
    docs = (Document(text=r["text"], category=str(r["category"]), id=r["id"])
            for r in records if r["text"].strip())
    return list(islice(docs, max_documents))


def _wikitext_articles(
    rows: Iterable[Mapping[str, Any]], name: str, split: str
) -> Iterator[dict[str, Any]]:
    """Rejoin wikitext's line rows into articles: a new one starts at each `` = Title = `` line."""
    lines: list[str] = []
    has_text = False
    n = 0
    for row in rows:
        if has_text and _WIKITEXT_HEADING.match(row["text"]):
            yield {"text": "".join(lines), "id": f"{name}:{split}:{n}", "category": name}
            lines, has_text, n = [], False, n + 1
        lines.append(row["text"] or "\n")
        has_text = has_text or bool(row["text"].strip())
    if has_text:
        yield {"text": "".join(lines), "id": f"{name}:{split}:{n}", "category": name}
