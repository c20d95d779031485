"""Token blocks: a corpus split as one token stream, cut into fixed-length blocks or windows.

:func:`token_blocks` appends the eos token to every document of the split, concatenates them
into one stream (documents grouped by category, in order of first appearance, so most blocks
hold one category) and cuts it into non-overlapping blocks, without padding; each block keeps
the category of most of its tokens. Sampling is without replacement and nested: with one seed,
the blocks drawn for a smaller ``n_blocks`` are among those drawn for a larger one.
:func:`sliding_windows` lays out sliding-window evaluation over a stream.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from cgc_lens.data.cache import cached, digest, documents_digest, source_digest
from cgc_lens.data.corpus import load_corpus
from cgc_lens.data.documents import Corpus
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.models import EMBEDDED_MODELS, load_tokenizer

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "TokenBlocks", "Window", "draw_blocks", "sliding_windows", "token_blocks", "token_stream",
]


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
    """Token stream of the corpus, the category index of each token, and the category names.

    The embedded corpus's streams are cached on disk (:mod:`~cgc_lens.data.cache`), keyed by
    the documents' content, the tokenizer and this module's code: a later process loads them
    instead of tokenizing again (seconds per split), bit for bit the same.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CgcLensError(f"Expected a tokenizer with an eos token to join documents, got "
                           f"{type(tokenizer).__name__} {tokenizer.name_or_path!r} without one.")
    key = _stream_key(corpus, tokenizer) if corpus.name in EMBEDDED_MODELS else None
    if key is None:
        return _tokenize(corpus, tokenizer, eos)
    return cached(f"tokens-{corpus.name}-{corpus.split}", key,
                  lambda: _tokenize(corpus, tokenizer, eos), dump=_dump_stream, load=_load_stream)


def _tokenize(corpus: Corpus, tokenizer: Any, eos: int) -> tuple[Tensor, Tensor, tuple[str, ...]]:
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


def _stream_key(corpus: Corpus, tokenizer: Any) -> str | None:
    """The cache key of the corpus's stream: its documents, the whole tokenizer (a fast one's
    serialization; None for others) and the code that tokenizes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import tokenizers
    import transformers

    try:
        code = source_digest(_tokenize)
    except OSError:  # no sources installed: nothing to key the code on
        return None
    return digest("token-stream", code, type(tokenizer).__qualname__, backend.to_str(),
                  str(tokenizer.eos_token_id), transformers.__version__, tokenizers.__version__,
                  documents_digest((d.category, d.text) for d in corpus.documents))


def _dump_stream(stream: tuple[Tensor, Tensor, tuple[str, ...]]) -> bytes:
    ids, cats, names = stream
    buf = io.BytesIO()
    np.savez(buf, ids=ids.numpy().astype(np.min_scalar_type(int(ids.max()))),
             cats=cats.numpy().astype(np.min_scalar_type(len(names))), names=np.array(names))
    return buf.getvalue()


def _load_stream(payload: bytes) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
        return (torch.from_numpy(arrays["ids"].astype(np.int64)),
                torch.from_numpy(arrays["cats"].astype(np.int64)),
                tuple(str(n) for n in arrays["names"]))


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
    _check_ints(block_len=block_len, n_blocks=n_blocks, seed=seed)
    block_len, seed = int(block_len), int(seed)  # numpy ints too
    n_blocks = None if n_blocks is None else int(n_blocks)
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
        raise CgcLensError(f"Expected 1 <= n_blocks <= {total} (blocks of {block_len} in the "
                           f"{len(stream)} tokens of {len(corpus.documents)} documents of "
                           f"{corpus.name!r} split {corpus.split!r}), got {n_blocks}.")
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


def draw_blocks(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase | HookedTransformer, *, block_len: int,
    n_blocks: int, seed: int, max_documents: int | None, asked: str,
) -> TokenBlocks:
    """:func:`token_blocks` of a corpus cut to ``max_documents``, failing with an error that
    names ``max_documents`` (and ``asked``: what the blocks are for) when the cut corpus holds
    too few blocks. The blocks are those of :func:`token_blocks` with the same arguments."""
    try:
        return token_blocks(corpus, tokenizer, block_len=block_len, n_blocks=n_blocks, seed=seed)
    except CgcLensError as err:
        if max_documents is None:
            raise
        have = len(token_stream(corpus, tokenizer)) // block_len
        if have >= n_blocks:
            raise
        raise CgcLensError(
            f"max_documents={max_documents} keeps {len(corpus.documents)} documents of "
            f"{corpus.name!r} split {corpus.split!r}: {have} blocks of {block_len} tokens, but "
            f"{asked} need {n_blocks}. Raise max_documents (or leave it unset), or ask for "
            "fewer tokens.") from err


def _check_ints(**values: int | None) -> None:
    """Refuse a block length, block count or seed that is not an int (``64.5``, ``'abc'``)."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, Integral) or isinstance(value, bool)):
            raise CgcLensError(f"Expected {name} to be an int, got {value!r} "
                               f"({type(value).__name__}); pass a whole number such as "
                               f"{name}={_EXAMPLES[name]}.")


_EXAMPLES = {"block_len": 128, "n_blocks": 64, "seed": 0}


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
