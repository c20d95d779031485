"""The tokens of the AdaptiveCompress study: training and evaluation blocks, probing examples.

- training: every ``block_len`` block of the corpus's train split (batches are drawn from them);
- evaluation: ``eval_blocks`` blocks of the eval split;
- probing on the corpus: blocks labelled with their category (that of most of their tokens),
  train from the calibration split, test from the eval split, so the compressor never trained
  on a probing example;
- probing on a labelled dataset by name (:data:`~cgc_lens.data.probing.PROBING_DATASETS`):
  one document per example, truncated to ``block_len`` tokens and right-padded, split 70/30.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from cgc_lens.adaptive.evaluate import LabelledTokens
from cgc_lens.data import Corpus, TokenBlocks, load_probing_corpus, token_blocks
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["StudyData", "document_tokens", "study_data"]


@dataclass(frozen=True, kw_only=True)
class StudyData:
    """Token sets of one study run."""

    train: Int[Tensor, "n_train pos"]
    """Training sequences."""
    eval: Int[Tensor, "n_eval pos"]
    """Evaluation sequences (quality metrics)."""
    probes: dict[str, tuple[LabelledTokens, LabelledTokens]] = field(default_factory=dict)
    """Probing dataset name → (train, test) examples."""


def _sample(blocks: TokenBlocks, n: int, seed: int) -> LabelledTokens:
    index = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))[:n]
    index = index.sort().values
    return LabelledTokens(tokens=blocks.tokens[index],
                          labels=tuple(blocks.categories[i] for i in index.tolist()))


def document_tokens(corpus: Corpus, model: HookedTransformer, *, max_len: int) -> LabelledTokens:
    """One right-padded row per document (truncated to ``max_len`` tokens), labelled by category."""
    tok = model.tokenizer
    if tok is None:
        raise CgcLensError(f"Expected a model with a tokenizer, got {model.cfg.model_name} "
                           "without one.")
    ids = tok([d.text for d in corpus.documents], add_special_tokens=False, truncation=True,
              max_length=max_len)["input_ids"]
    keep = [i for i, row in enumerate(ids) if row]
    if not keep:
        raise CgcLensError(f"Every document of {corpus.name!r} tokenized to nothing.")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(ids[i]) for i in keep)
    tokens = torch.full((len(keep), width), pad, dtype=torch.long)
    for row, i in enumerate(keep):
        tokens[row, : len(ids[i])] = torch.tensor(ids[i])
    return LabelledTokens(tokens=tokens,
                          labels=tuple(corpus.documents[i].category for i in keep),
                          lengths=torch.tensor([len(ids[i]) for i in keep]))


def _split(data: LabelledTokens, train_fraction: float, seed: int) -> tuple[LabelledTokens, ...]:
    n = data.tokens.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = round(train_fraction * n)
    parts = []
    for index in (perm[:cut].sort().values, perm[cut:].sort().values):
        parts.append(LabelledTokens(
            tokens=data.tokens[index], labels=tuple(data.labels[i] for i in index.tolist()),
            lengths=None if data.lengths is None else data.lengths[index]))
    return tuple(parts)


def study_data(
    model: HookedTransformer,
    *,
    corpus: str = "cgc-tiny",
    block_len: int = 128,
    eval_blocks: int = 64,
    probe_blocks: int = 512,
    probe_datasets: Sequence[str] = (),
    probe_documents: int = 1000,
    seed: int = 0,
) -> StudyData:
    """The study's token sets from ``corpus`` and the named probing datasets (module docstring)."""
    def blocks(split: str) -> TokenBlocks:
        return token_blocks(corpus, model, block_len=block_len, split=split)

    train = blocks("train").tokens
    evaluation = blocks("eval")
    probes = {corpus: (_sample(blocks("calibration"), probe_blocks, seed),
                       _sample(evaluation, probe_blocks, seed + 1))}
    for name in probe_datasets:
        docs = load_probing_corpus(name, split="eval", max_documents=probe_documents)
        probes[name] = _split(document_tokens(docs, model, max_len=block_len), 0.7, seed)
    return StudyData(train=train, eval=_sample(evaluation, eval_blocks, seed + 2).tokens,
                     probes=probes)
