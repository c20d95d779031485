"""Corpora and token blocks: documents with categories in, fixed-length token blocks out.

A :class:`Corpus` is one split of a source: the embedded ``"cgc-tiny"`` corpus, a Hugging Face
dataset by name (through ``datasets``; see :data:`CORPORA`), or local files and folders.
Splits never share text, so calibration and evaluation tokens never overlap:

- embedded, ``.jsonl`` and ``.parquet`` records may carry a ``split`` field;
- Hugging Face splits map ``train``/``calibration``/``eval`` to ``train``/``validation``/``test``;
- a local folder with ``train``/``calibration``/``eval`` (or ``validation``/``test``)
  subfolders uses them;
- any other document is cut at whitespace into the :data:`LOCAL_SPLITS` fractions of its text.

:func:`token_blocks` appends the eos token to every document of the split, concatenates them
into one stream (documents grouped by category, in order of first appearance, so most blocks
hold one category) and cuts it into non-overlapping blocks, without padding; each block keeps
the category of most of its tokens. Sampling is without replacement and nested: with one seed,
the blocks drawn for a smaller ``n_blocks`` are among those drawn for a larger one.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import logging
import lzma
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.models import EMBEDDED_MODELS, embedded_asset_dir, load_tokenizer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CORPORA", "LOCAL_SPLITS", "SPLITS", "Corpus", "Document", "HubCorpus", "TokenBlocks",
    "Window", "hub_documents", "load_corpus", "sliding_windows", "token_blocks", "token_stream",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "calibration", "eval"]
SPLITS: tuple[str, ...] = ("train", "calibration", "eval")
LOCAL_SPLITS: dict[str, tuple[float, float]] = {
    "train": (0.0, 0.6), "calibration": (0.6, 0.7), "eval": (0.7, 1.0),
}
"""Character fractions of a document without a split label that each split takes."""
_SPLIT_DIRS = {"train": ("train",), "calibration": ("calibration", "validation", "val"),
               "eval": ("eval", "test")}
_TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
_RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz", ".jsonl.bz2", ".parquet")
_OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}
_WIKITEXT_HEADING = re.compile(r"^ = [^=].* = \n?$")


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
            return [json.loads(line) for line in f if line.strip()]
    return [{"text": path.read_text(encoding="utf-8"), "id": path.as_posix()}]


def _cut(text: str, lo: float, hi: float) -> str:
    """The [lo, hi) fraction of ``text``, both ends moved forward to the next whitespace."""

    def snap(frac: float) -> int:
        i = round(len(text) * frac)
        while 0 < i < len(text) and not text[i].isspace():
            i += 1
        return i

    return text[snap(lo):snap(hi)].strip()


def _documents(
    records: Iterable[Mapping[str, Any]], split: str, default_category: str, source: str,
    *, whole: bool = False,
) -> list[Document]:
    """Documents of ``split``: whole ones if ``whole``, else by their ``split`` field, else cut."""
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


def _local_documents(
    root: Path, split: str, category: str | Callable[[Path], str] | None
) -> list[Document]:
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
        docs += _documents(records, split, stem, path.as_posix(),
                           whole=bool(split_dirs))
    return docs


@functools.lru_cache(maxsize=4)
def _cached_records(path: Path, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(_read_records(path))


@functools.lru_cache(maxsize=4)
def _cached_synthetic(make: Callable[..., list[dict[str, Any]]]) -> tuple[dict[str, Any], ...]:
    return tuple(make(seed=0))


def _embedded_documents(name: str, split: str) -> list[Document]:
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
    return _documents(records, split, name, name)


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

    :func:`load_corpus` calls this for the datasets in :data:`CORPORA` and for ``"ORG/NAME"``;
    call it directly for a dataset that needs a :class:`HubCorpus` of its own (other text or
    category fields, other split names) without registering it.

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


def load_corpus(
    name_or_path: str | Path,
    *,
    split: str = "eval",
    category: str | Callable[[Path], str] | None = None,
    max_documents: int | None = None,
    streaming: bool = False,
) -> Corpus:
    """Load one split of a corpus: embedded, a Hugging Face dataset by name, or local files.

    Args:
        name_or_path: ``"cgc-tiny"``; a name in :data:`CORPORA`; a dataset repository
            (``"ORG/NAME"`` or ``"ORG/NAME:CONFIG"``); or a local file or folder of ``.txt``,
            ``.md``, ``.jsonl[.gz|.xz|.bz2]`` or ``.parquet`` files.
        split: ``"train"``, ``"calibration"`` or ``"eval"`` (other names pass through to
            unregistered datasets).
        category: local files only: one category for every document, or a function of the
            file path; default: one category per file (its path in the folder, no suffix).
        max_documents: keep at most this many documents.
        streaming: stream a hub dataset instead of downloading whole splits (needs network).

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
        docs = _embedded_documents(name, split)
    elif name in CORPORA:
        docs = hub_documents(CORPORA[name], name=name, split=split,
                             max_documents=max_documents, streaming=streaming)
    elif path.exists():
        docs = _local_documents(path, split, category)
    elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
        repo, _, config = name.partition(":")
        docs = hub_documents(HubCorpus(path=repo, config=config or None), name=name,
                             split=split, max_documents=max_documents, streaming=streaming)
    else:
        err = unknown_name("corpus", name, [*EMBEDDED_MODELS, *CORPORA])
        raise CgcLensError(f"{err} Or pass an existing local path or a dataset 'ORG/NAME'.")
    return Corpus(name=name, split=split, documents=tuple(docs[:max_documents]))


def _tokenizer(
    tokenizer: PreTrainedTokenizerBase | HookedTransformer | str,
) -> tuple[PreTrainedTokenizerBase, int | None]:
    if isinstance(tokenizer, str | Path):
        return load_tokenizer(tokenizer), None
    if hasattr(tokenizer, "cfg"):  # a HookedTransformer: its tokenizer, and n_ctx to check
        if tokenizer.tokenizer is None:
            raise CgcLensError(f"Expected a model with a tokenizer, got {tokenizer.cfg.model_name} "
                               "without one; pass a tokenizer instead.")
        return tokenizer.tokenizer, tokenizer.cfg.n_ctx
    return tokenizer, None


def _stream(corpus: Corpus, tokenizer: Any) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Token stream of the corpus, the category index of each token, and the category names."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CgcLensError(f"Expected a tokenizer with an eos token to join documents, got "
                           f"{type(tokenizer).__name__} {tokenizer.name_or_path!r} without one.")
    names = corpus.categories
    ids: list[int] = []
    cats: list[int] = []
    for c, name in enumerate(names):
        texts = [d.text for d in corpus.documents if d.category == name]
        for start in range(0, len(texts), 256):
            for toks in tokenizer(texts[start:start + 256], add_special_tokens=False)["input_ids"]:
                ids += [*toks, eos]
                cats += [c] * (len(toks) + 1)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(cats, dtype=torch.long), names


def token_stream(
    corpus: Corpus | str | Path, tokenizer: PreTrainedTokenizerBase | HookedTransformer | str,
    *, split: str | None = None,
) -> Int[Tensor, " pos"]:
    """The corpus split as one token stream: each document followed by eos, grouped by category.

    Example:
        >>> stream = token_stream("cgc-tiny", "cgc-tiny", split="calibration")
        >>> stream.ndim, int(stream[-1]) == load_tokenizer("cgc-tiny").eos_token_id
        (1, True)
    """
    return _stream(_corpus(corpus, split), _tokenizer(tokenizer)[0])[0]


def _corpus(corpus: Corpus | str | Path, split: str | None) -> Corpus:
    if not isinstance(corpus, Corpus):
        return load_corpus(corpus, split=split or "eval")
    if split is not None and split != corpus.split:
        raise CgcLensError(f"Expected split {corpus.split!r} (the corpus's own), got {split!r}; "
                           "load the other split with load_corpus.")
    return corpus


@dataclass(frozen=True, kw_only=True)
class TokenBlocks:
    """Non-overlapping fixed-length blocks cut from one corpus split's token stream."""

    tokens: Int[Tensor, "n_blocks block_len"]
    """The blocks, in stream order."""
    categories: tuple[str, ...]
    """Category of each block: that of most of its tokens."""
    starts: Int[Tensor, " n_blocks"]
    """Offset of each block in the stream."""
    source: str
    """The corpus the stream came from."""
    split: str
    """Its split."""
    seed: int
    """Seed of the sampling."""
    stream_len: int
    """Length of the whole stream in tokens."""

    def __post_init__(self) -> None:
        if not (self.tokens.ndim == 2 and len(self.categories) == len(self.starts)
                == self.tokens.shape[0]):
            raise CgcLensError(f"Expected tokens [n_blocks, block_len] with one category and start "
                               f"per block, got {tuple(self.tokens.shape)}, "
                               f"{len(self.categories)}, {len(self.starts)}.")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def block_len(self) -> int:
        """Tokens per block."""
        return self.tokens.shape[1]

    def select(self, categories: str | Sequence[str]) -> TokenBlocks:
        """The blocks of the given categories only."""
        wanted = {categories} if isinstance(categories, str) else set(categories)
        for name in wanted - set(self.categories):
            raise unknown_name("category", name, set(self.categories), where=" in these blocks")
        keep = [i for i, c in enumerate(self.categories) if c in wanted]
        return replace(self, tokens=self.tokens[keep], starts=self.starts[keep],
                       categories=tuple(self.categories[i] for i in keep))


def token_blocks(
    corpus: Corpus | str | Path,
    tokenizer: PreTrainedTokenizerBase | HookedTransformer | str,
    *,
    block_len: int,
    n_blocks: int | None = None,
    seed: int = 0,
    split: str | None = None,
) -> TokenBlocks:
    """Cut a corpus split into non-overlapping ``block_len`` blocks and sample ``n_blocks``.

    Args:
        corpus: a :class:`Corpus`, or a name or path for :func:`load_corpus`.
        tokenizer: a tokenizer, a HookedTransformer (its tokenizer; ``block_len`` is checked
            against its ``n_ctx``), or a name for :func:`~cgc_lens.models.load_tokenizer`.
        block_len: tokens per block.
        n_blocks: how many blocks to draw without replacement; all of them if None.
        seed: seed of the draw.
        split: the split to load when ``corpus`` is a name ("eval" if None).

    Example:
        >>> blocks = token_blocks("cgc-tiny", "cgc-tiny", block_len=64, n_blocks=8, split="eval")
        >>> tuple(blocks.tokens.shape), len(blocks.categories)
        ((8, 64), 8)
    """
    corpus = _corpus(corpus, split)
    tok, n_ctx = _tokenizer(tokenizer)
    if block_len < 2:
        raise CgcLensError(f"Expected block_len >= 2 (one token to predict), got {block_len}.")
    if n_ctx is not None and block_len > n_ctx:
        raise CgcLensError(f"Expected block_len <= the model's n_ctx {n_ctx}, got {block_len}.")
    stream, cats, names = _stream(corpus, tok)
    total = len(stream) // block_len
    if total == 0:
        raise CgcLensError(f"Expected a corpus of at least block_len={block_len} tokens, got "
                           f"{len(stream)} in {corpus.name!r} split {corpus.split!r}.")
    if n_blocks is None:
        index = torch.arange(total)
    elif not 1 <= n_blocks <= total:
        raise CgcLensError(f"Expected 1 <= n_blocks <= {total} (blocks of {block_len} in "
                           f"{len(stream)} tokens), got {n_blocks}.")
    else:
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        index = perm[:n_blocks].sort().values
    starts = index * block_len
    positions = starts[:, None] + torch.arange(block_len)
    counts = torch.zeros(len(index), len(names), dtype=torch.long)
    counts.scatter_add_(1, cats[positions], torch.ones_like(positions))
    return TokenBlocks(
        tokens=stream[positions], categories=tuple(names[c] for c in counts.argmax(1).tolist()),
        starts=starts, source=corpus.name, split=corpus.split, seed=seed, stream_len=len(stream),
    )


@dataclass(frozen=True)
class Window:
    """One window of sliding-window evaluation over a token stream."""

    begin: int
    """First stream position fed to the model."""
    end: int
    """One past the last position fed to the model."""
    score_from: int
    """First scored position; positions ``[score_from, end)`` are scored in this window."""


def sliding_windows(
    n_tokens: int, *, window: int, stride: int, prepend_bos: bool = False
) -> list[Window]:
    """Windows of ``window`` tokens every ``stride`` tokens; each scores only the new positions.

    The protocol of Hugging Face's perplexity guide and of the survival paper (App. D): the
    window starting at ``k * stride`` ends at ``min(k * stride + window, n_tokens)`` and scores
    the positions past the previous window's end that have context in the window (all of them
    when a bos token is prepended). With ``stride == window`` it is the chunked protocol.

    Example:
        >>> sliding_windows(10, window=4, stride=2)  # doctest: +NORMALIZE_WHITESPACE
        [Window(begin=0, end=4, score_from=1), Window(begin=2, end=6, score_from=4),
         Window(begin=4, end=8, score_from=6), Window(begin=6, end=10, score_from=8)]
    """
    if not 1 <= stride <= window:
        raise CgcLensError(f"Expected 1 <= stride <= window={window}, got stride={stride}.")
    first = 0 if prepend_bos else 1
    if window <= first or n_tokens <= first:
        raise CgcLensError(f"Expected window and n_tokens > {first}, got window={window}, "
                           f"n_tokens={n_tokens}.")
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        score_from = max(prev_end, begin + first)
        if score_from < end:
            windows.append(Window(begin, end, score_from))
        prev_end = end
        if end == n_tokens:
            break
    return windows
