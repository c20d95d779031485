"""Documents from files: local text and record files or folders, and the embedded corpus.

- ``.jsonl[.gz|.xz|.bz2]`` and ``.parquet`` records (and the embedded corpus) may carry a
  ``split`` field;
- a local folder with ``train``/``calibration``/``eval`` (or ``validation``/``test``)
  subfolders uses them;
- any other document is cut at whitespace into the :data:`~cgc_lens.data.documents.LOCAL_SPLITS`
  fractions of its text.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgc_lens.data.cache import cached, digest, source_digest
from cgc_lens.data.documents import SPLITS, Document, split_documents
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.models import embedded_asset_dir

__all__ = ["embedded_documents", "local_documents", "relabel"]

_SPLIT_DIRS = {"train": ("train",), "calibration": ("calibration", "validation", "val"),
               "eval": ("eval", "test")}
_TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz", ".jsonl.bz2", ".parquet")
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in (*_RECORD_SUFFIXES, *_TEXT_SUFFIXES) if name.endswith(s)), "")


def _read_records(path: Path) -> list[dict[str, Any]]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix.startswith(".jsonl"):
        opener = _OPENERS.get(path.suffix, open)
        with opener(path, "rt", encoding="utf-8") as f:
            return [_json_record(line, path, i) for i, line in enumerate(f, 1) if line.strip()]
    return [{"text": path.read_text(encoding="utf-8"), "id": path.as_posix()}]


def _json_record(line: str, path: Path, number: int) -> dict[str, Any]:
    """One ``.jsonl`` line as a record; a clear error naming the file and line otherwise."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CgcLensError(f"{path}, line {number}: not valid JSON ({err.msg} at column "
                           f"{err.colno}): {line.strip()[:80]!r}. Each line of a .jsonl file is "
                           'one JSON object such as {"text": "..."}; fix or delete that line.'
                           ) from err
    if not isinstance(record, dict):
        raise CgcLensError(f"{path}, line {number}: expected a JSON object such as "
                           f'{{"text": "..."}}, got {type(record).__name__} '
                           f"{line.strip()[:80]!r}; fix or delete that line.")
    return record


def relabel(records: list[dict[str, Any]], field: str, source: str) -> list[dict[str, Any]]:
    """The records with ``category`` taken from their ``field`` (a label column).

    Raises:
        CgcLensError: a record lacks the field, naming the record and the fields it has.
    """
    for i, rec in enumerate(records):
        if field not in rec or rec[field] is None:
            raise CgcLensError(f"category_field {field!r}: record {i} of {source} has no such "
                               f"value (fields: {sorted(rec)}). Name a column every record has.")
    return [{**rec, "category": str(rec[field])} for rec in records]


def local_documents(
    root: Path, split: str, category: str | Callable[[Path], str] | None,
    category_field: str | None = None,
) -> list[Document]:
    """The documents of ``split`` in a local file or folder (see the module docstring).

    Args:
        root: a file, or a folder searched recursively (hidden paths skipped).
        split: ``"train"``, ``"calibration"`` or ``"eval"``.
        category: one category for every document, or a function of the file path; None: one
            category per file (its path in the folder, without suffix).
        category_field: a record field (label column) holding each record's category; it
            wins over ``category``.
    """
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS, where=f" for local corpus {root}")
    split_names = {n for names in _SPLIT_DIRS.values() for n in names}
    split_dirs = {d.name for d in root.iterdir() if d.is_dir()} & split_names if root.is_dir() \
        else set()
    bases = [root / d for d in _SPLIT_DIRS[split] if d in split_dirs] if split_dirs else [root]
    files = [(base, path) for base in bases for path in (
        [base] if base.is_file() else sorted(
            p for p in base.rglob("*")
            if p.is_file() and _suffix(p) and not any(s.startswith(".") for s in p.parts)))]
    if not files:
        raise CgcLensError(f"Expected files ending in {[*_TEXT_SUFFIXES, *_RECORD_SUFFIXES]} "
                           f"in {root}{f' ({split} folders)' if split_dirs else ''}, found none.")
    docs: list[Document] = []
    for base, path in files:
        stem = path.name if base.is_file() else path.relative_to(base).as_posix()
        stem = stem[: len(stem) - len(_suffix(path))]
        records = _read_records(path)
        if category is not None:
            cat = category(path) if callable(category) else category
            records = [{**r, "category": cat} for r in records]
        if category_field is not None:
            records = relabel(records, category_field, path.as_posix())
        docs += split_documents(records, split, stem, path.as_posix(),
                                whole=bool(split_dirs))
    return docs


@functools.lru_cache(maxsize=4)
def _cached_records(path: Path, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(_read_records(path))


@functools.lru_cache(maxsize=4)
def _cached_synthetic(make: Callable[..., list[dict[str, Any]]]) -> tuple[dict[str, Any], ...]:
    """``make(seed=0)``, kept on disk (:mod:`~cgc_lens.data.cache`) keyed by ``make``'s code."""
    try:
        key = digest("synthetic-documents", source_digest(make), "seed=0",
                     "python {}.{}".format(*sys.version_info[:2]))  # random.Random's sequence
    except (OSError, TypeError):  # no source to key on: regenerate
        return tuple(make(seed=0))
    records = cached("synthetic-documents", key, lambda: make(seed=0),
                     dump=lambda r: json.dumps(r, ensure_ascii=False).encode(), load=json.loads)
    return tuple(records)


def embedded_documents(name: str, split: str) -> list[Document]:
    """The documents of ``split`` of an embedded corpus: its ``corpus.jsonl.xz`` and the
    synthetic documents (:func:`~cgc_lens.data.synth.synthetic_documents`)."""
    from cgc_lens.data import synth as corpus_synth

    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS, where=f" of corpus {name!r}")
    path = embedded_asset_dir(name) / "corpus.jsonl.xz"
    if not path.is_file():
        raise CgcLensError(f"Expected the embedded corpus at {path}; it is missing (reinstall "
                           "cgc-lens or rebuild it with scripts/build_corpus.py).")
    # decompressing and regenerating take seconds; callers load several splits
    records = [*_cached_records(path, path.stat().st_mtime_ns),
               *_cached_synthetic(corpus_synth.synthetic_documents)]
    return split_documents(records, split, name, name)
