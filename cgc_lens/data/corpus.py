"""Corpora by name or path: the embedded ``"cgc-tiny"`` corpus, Hugging Face datasets, local files.

A :class:`~cgc_lens.data.documents.Corpus` is one split of a source: the embedded
``"cgc-tiny"`` corpus, a Hugging Face dataset by name (through ``datasets``; see
:data:`~cgc_lens.data.hub.CORPORA`), or local files and folders. Splits never share text, so
calibration and evaluation tokens never overlap:

- embedded, ``.jsonl`` and ``.parquet`` records may carry a ``split`` field;
- Hugging Face splits map ``train``/``calibration``/``eval`` to ``train``/``validation``/``test``;
- a local folder with ``train``/``calibration``/``eval`` (or ``validation``/``test``)
  subfolders uses them;
- any other document is cut at whitespace into the
  :data:`~cgc_lens.data.documents.LOCAL_SPLITS` fractions of its text.

Token blocks cut from a corpus are :mod:`cgc_lens.data.blocks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cgc_lens.data.documents import Corpus
from cgc_lens.data.files import embedded_documents, local_documents
from cgc_lens.data.hub import CORPORA, HubCorpus, hub_documents
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.models import EMBEDDED_MODELS

__all__ = ["load_corpus"]


def load_corpus(
    name_or_path: str | Path,
    *,
    split: str = "eval",
    category: str | Callable[[Path], str] | None = None,
    max_documents: int | None = None,
    streaming: bool = False,
    category_field: str | None = None,
) -> Corpus:
    """Load one split of a corpus: embedded, a Hugging Face dataset by name, or local files.

    Args:
        name_or_path: ``"cgc-tiny"``; a name in :data:`~cgc_lens.data.hub.CORPORA`; a dataset
            repository (``"ORG/NAME"`` or ``"ORG/NAME:CONFIG"``); or a local file or folder of
            ``.txt``, ``.md``, ``.jsonl[.gz|.xz|.bz2]`` or ``.parquet`` files.
        split: ``"train"``, ``"calibration"`` or ``"eval"`` (other names pass through to
            unregistered datasets).
        category: local files only: one category for every document, or a function of the
            file path; default: one category per file (its path in the folder, no suffix).
        max_documents: keep at most this many documents.
        streaming: stream a hub dataset instead of downloading whole splits (needs network).
        category_field: the record field (label column of a local ``.jsonl``/``.parquet``
            file, dotted field of a hub dataset) holding each document's category; None: the
            source's own (a ``category`` field, else one per file, or the dataset's).

    Example:
        >>> corpus = load_corpus("cgc-tiny", split="eval")
        >>> corpus.split, "code" in corpus.categories
        ('eval', True)
    """
    if max_documents is not None and max_documents < 1:
        raise CgcLensError(f"Expected max_documents >= 1 or None, got {max_documents}.")
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in EMBEDDED_MODELS:
        if category_field not in (None, "category"):
            raise CgcLensError(f"The embedded corpus {name!r} labels documents by 'category' "
                               f"only, got category_field={category_field!r}; leave it unset.")
        docs = embedded_documents(name, split)
    elif name in CORPORA:
        spec = CORPORA[name]
        spec = spec if category_field is None else replace(spec, category_field=category_field)
        docs = hub_documents(spec, name=name, split=split, max_documents=max_documents,
                             streaming=streaming)
    elif path.exists():
        docs = local_documents(path, split, category, category_field)
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        repo, _, config = name.partition(":")
        spec = HubCorpus(path=repo, config=config or None, category_field=category_field)
        docs = hub_documents(spec, name=name, split=split, max_documents=max_documents,
                             streaming=streaming)
    else:
        err = unknown_name("corpus", name, [*EMBEDDED_MODELS, *CORPORA])
        raise CgcLensError(f"{err} Or pass an existing local path or a dataset 'ORG/NAME'.")
    return Corpus(name=name, split=split, documents=tuple(docs[:max_documents]))

