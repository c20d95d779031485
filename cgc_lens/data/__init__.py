"""Corpora and token blocks: documents with categories in, fixed-length token blocks out."""

from cgc_lens.data.blocks import (
    TokenBlocks,
    Window,
    draw_blocks,
    sliding_windows,
    token_blocks,
    token_stream,
)
from cgc_lens.data.cache import cache_dir
from cgc_lens.data.corpus import load_corpus
from cgc_lens.data.documents import LOCAL_SPLITS, SPLITS, Corpus, Document
from cgc_lens.data.hub import CORPORA, HubCorpus, hub_documents
from cgc_lens.data.probing import PROBING_DATASETS, ProbingDataset, load_probing_corpus
from cgc_lens.data.synth import SYNTHETIC_CATEGORIES, synthetic_documents

__all__ = [
    "CORPORA", "LOCAL_SPLITS", "PROBING_DATASETS", "SPLITS", "SYNTHETIC_CATEGORIES", "Corpus",
    "Document", "HubCorpus", "ProbingDataset", "TokenBlocks", "Window", "cache_dir", "draw_blocks",
    "hub_documents", "load_corpus", "load_probing_corpus", "sliding_windows", "synthetic_documents",
    "token_blocks", "token_stream",
]
