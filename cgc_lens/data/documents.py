"""Documents and corpora: what every source (embedded, local files, the hub) reads into.

A :class:`Corpus` is one split of a source. Records without a ``split`` field are cut at
whitespace into the :data:`LOCAL_SPLITS` fractions of their text (:func:`split_documents`), so
splits never share text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cgc_lens.errors import CgcLensError, unknown_name

__all__ = ["LOCAL_SPLITS", "SPLITS", "Corpus", "Document", "split_documents"]

Split = Literal["train", "calibration", "eval"]
SPLITS: tuple[str, ...] = ("train", "calibration", "eval")
LOCAL_SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.6), "calibration": (0.6, 0.7), "eval": (0.7, 1.0),
}
"""Character fractions of a document without a split label that each split takes."""


@dataclass(frozen=True, kw_only=True)
class Document:
    """One document of a corpus."""

    text: str
    """The document's text."""
    category: str
    """Its category: file name, record field, or dataset subset."""
    id: str
    """A stable identifier (record id, or file path with the split appended)."""


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """The documents of one split of one source."""

    name: str
    """The source: a registered or embedded name, a dataset repository, or a path."""
    split: str
    """Which split the documents are."""
    documents: tuple[Document, ...]
    """The documents, in source order."""

    def __post_init__(self) -> None:
        if not self.documents:
            raise CgcLensError(f"Expected documents in corpus {self.name!r} split "
                               f"{self.split!r}, got none.")

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def categories(self) -> tuple[str, ...]:
        """The categories, in order of first appearance."""
        return tuple(dict.fromkeys(d.category for d in self.documents))

    def select(self, categories: str | Iterable[str]) -> Corpus:
        """The documents of the given categories only."""
        wanted = {categories} if isinstance(categories, str) else set(categories)
        for name in wanted - set(self.categories):
            raise unknown_name("category", name, self.categories, where=f" in {self.name!r}")
        docs = tuple(d for d in self.documents if d.category in wanted)
        return Corpus(name=self.name, split=self.split, documents=docs)


def _cut(text: str, lo: float, hi: float) -> str:
    """The [lo, hi) fraction of ``text``, both ends moved forward to the next whitespace."""

    def snap(frac: float) -> int:
        i = round(len(text) * frac)
        while 0 < i < len(text) and not text[i].isspace():
            i += 1
        return i

    return text[snap(lo):snap(hi)].strip()


def split_documents(
    records: Iterable[Mapping[str, Any]], split: str, default_category: str, source: str,
    *, whole: bool = False,
) -> list[Document]:
    """Documents of ``split``: whole ones if ``whole``, else by their ``split`` field, else cut.

    Args:
        records: mappings with a ``text`` field and optional ``id``, ``category``, ``split``.
        split: the split to keep (a key of :data:`LOCAL_SPLITS` for records to cut).
        default_category: the category of records without one.
        source: where the records came from: the prefix of default ids and of error messages.
        whole: every record belongs to ``split`` as it is (split folders).

    Example:
        >>> [d.text for d in split_documents([{"text": "a b c d e f g h i j"}], "eval", "c", "s")]
        ['h i j']
    """
    docs = []
    for i, rec in enumerate(records):
        if "text" not in rec:
            raise CgcLensError(f"Expected a 'text' field in record {i} of {source}, "
                               f"got fields {sorted(rec)}.")
        doc_id = str(rec.get("id", f"{source}:{i}"))
        text = rec["text"]
        if not whole and "split" in rec and rec["split"] != split:
            continue
        if not whole and "split" not in rec:
            text = _cut(text, *LOCAL_SPLITS[split])
            doc_id = f"{doc_id}#{split}"
        if text:
            docs.append(Document(text=text, category=str(rec.get("category") or default_category),
                                 id=doc_id))
    return docs
