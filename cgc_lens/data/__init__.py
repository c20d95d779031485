"""Corpora and token blocks: documents with categories in, fixed-length token blocks out."""

from cgc_lens.data.corpus import (
    CORPORA,
    LOCAL_SPLITS,
    SPLITS,
    Corpus,
    Document,
    HubCorpus,
    TokenBlocks,
    Window,
    hub_documents,
    load_corpus,
    sliding_windows,
    token_blocks,
    token_stream,
)
from cgc_lens.data.synth import SYNTHETIC_CATEGORIES, synthetic_documents

__all__ = [
    "CORPORA", "LOCAL_SPLITS", "SPLITS", "SYNTHETIC_CATEGORIES", "Corpus", "Document",
    "HubCorpus", "TokenBlocks", "Window", "hub_documents", "load_corpus", "sliding_windows",
    "synthetic_documents", "token_blocks", "token_stream",
]
