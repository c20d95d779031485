"""Capability probes: what a compressed model can still do, beside its perplexity.

A probe is a callable ``probe(model) -> dict[str, float]``. Built in:

- ``induction``: in-context copying of uniformly random token ids repeated twice; reports the
  mean loss on each copy and their ratio (second / first: near 1 with no induction heads, near
  0 with working ones).
- ``arithmetic``, ``recall``, ``brackets``, ``copy_text``: teacher-forced top-1 accuracy and
  mean NLL on the answer tokens of fresh synthetic task documents (the categories of the
  embedded corpus, generated with a seed the corpus does not use). They need a tokenizer.

Register your own with :func:`register_probe`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformer_lens import HookedTransformer

from cgc_lens.data.synth import synthetic_documents
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.forward.metrics import token_nll
from cgc_lens.progress import progress_bar

__all__ = [
    "InductionProbe",
    "Probe",
    "TaskProbe",
    "get_probe",
    "probe_names",
    "register_probe",
    "run_probes",
]

Probe = Callable[[HookedTransformer], dict[str, float]]


@dataclass(frozen=True, kw_only=True)
class InductionProbe:
    """Loss on the second copy of random tokens relative to the first (in-context copying)."""

    n_seqs: int = 32
    """Number of sequences."""
    span: int | None = None
    """Length of the random span; each sequence is the span twice. ``None``: 64, or half the
    model's context if that is shorter."""
    seed: int = 0
    """Seed of the random tokens."""
    batch_size: int = 16
    """Sequences per forward pass."""

    def __post_init__(self) -> None:
        if self.n_seqs < 1 or (self.span is not None and self.span < 2):
            raise CgcLensError(f"InductionProbe needs n_seqs ≥ 1 and span ≥ 2, got {self}.")

    def tokens(self, d_vocab: int, span: int) -> torch.Tensor:
        """The probe's token ids ``[n_seqs, 2 * span]``, uniform in ``[1, d_vocab)``."""
        gen = torch.Generator().manual_seed(self.seed)
        first = torch.randint(1, d_vocab, (self.n_seqs, span), generator=gen)
        return torch.cat([first, first], dim=1)

    def span_for(self, model: HookedTransformer) -> int:
        """The span used on ``model``."""
        if self.span is None:
            return min(64, model.cfg.n_ctx // 2)
        if 2 * self.span > model.cfg.n_ctx:
            raise CgcLensError(
                f"InductionProbe span {self.span} × 2 exceeds the model's n_ctx {model.cfg.n_ctx}; "
                f"use span ≤ {model.cfg.n_ctx // 2}."
            )
        return self.span

    @torch.inference_mode()
    def __call__(self, model: HookedTransformer) -> dict[str, float]:
        span = self.span_for(model)
        tokens = self.tokens(model.cfg.d_vocab, span).to(model.cfg.device)
        nll = torch.cat([token_nll(model(b), b) for b in tokens.split(self.batch_size)])
        # nll[:, i] scores token i + 1: the first copy is tokens 1..span-1, the second span..end.
        first = nll[:, : span - 1].mean().item()
        second = nll[:, span - 1 :].mean().item()
        return {"first_copy_loss": first, "second_copy_loss": second, "copy_ratio": second / first}


_ANSWER_PATTERNS: dict[str, re.Pattern[str]] = {
    "arithmetic": re.compile(r"= (\d+)\."),
    "recall": re.compile(r"answer: (\d+ \w+)\."),
    "brackets": re.compile(r"([\)\]\}>])"),
    "copy_text": re.compile(r"\| ([^|.]+)"),
}


@dataclass(frozen=True, kw_only=True)
class TaskProbe:
    """Teacher-forced accuracy on the answer tokens of synthetic task documents."""

    task: str
    """One of ``arithmetic``, ``recall``, ``brackets``, ``copy_text``."""
    n_docs: int = 64
    """Documents to score."""
    seed: int = 7
    """Generator seed; the embedded corpus uses 0, so these documents are unseen."""
    batch_size: int = 16
    """Documents per forward pass."""
    _docs: list[str] = field(default_factory=list, init=False, repr=False, compare=False)
    _encoded: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """Token rows and answer masks by (tokenizer id, n_ctx): built once per tokenizer."""

    def __post_init__(self) -> None:
        if self.task not in _ANSWER_PATTERNS:
            raise unknown_name("task", self.task, _ANSWER_PATTERNS)
        category = "copy" if self.task == "copy_text" else self.task
        docs = [d["text"] for d in synthetic_documents(seed=self.seed, per_category=self.n_docs)
                if d["category"] == category]
        self._docs.extend(docs[: self.n_docs])

    def _encode(self, model: HookedTransformer) -> tuple[torch.Tensor, torch.Tensor]:
        tok = model.tokenizer
        if tok is None:
            raise CgcLensError(f"TaskProbe({self.task!r}) needs a model with a tokenizer.")
        key = (id(tok), model.cfg.n_ctx)
        if key not in self._encoded:
            self._encoded[key] = self._tokenize(tok, model.cfg.n_ctx)
        return self._encoded[key]

    def _tokenize(self, tok: Any, n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        pad = tok.eos_token_id or 0
        rows, masks = [], []
        for text in self._docs:
            enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
            ids, offsets = enc["input_ids"][:n_ctx], enc["offset_mapping"][:n_ctx]
            spans = [m.span(1) for m in _ANSWER_PATTERNS[self.task].finditer(text)]
            # a token scores an answer when it overlaps it: byte-level BPE tokens carry the
            # space before a word (" 85", " )"), so their start lies before the answer's
            mask = [any(a < e and b > s for s, e in spans) for a, b in offsets]
            rows.append(ids + [pad] * (n_ctx - len(ids)))
            masks.append(mask + [False] * (n_ctx - len(mask)))
        mask = torch.tensor(masks)
        mask[:, 0] = False  # position 0 has no context to predict it from
        return torch.tensor(rows), mask

    @torch.inference_mode()
    def __call__(self, model: HookedTransformer) -> dict[str, float]:
        tokens, mask = self._encode(model)
        tokens = tokens.to(model.cfg.device)
        correct, nll_sum, count = 0, 0.0, 0
        for b, m in zip(tokens.split(self.batch_size), mask.split(self.batch_size), strict=True):
            logits = model(b)
            target_mask = m[:, 1:].to(b.device)
            pred = logits[:, :-1].argmax(-1)
            correct += int((pred == b[:, 1:])[target_mask].sum())
            nll_sum += float(token_nll(logits, b)[target_mask].sum())
            count += int(target_mask.sum())
        if count == 0:
            raise CgcLensError(f"TaskProbe({self.task!r}) found no answer tokens to score.")
        return {"accuracy": correct / count, "answer_nll": nll_sum / count,
                "n_answer_tokens": count}


_REGISTRY: dict[str, Callable[[], Probe]] = {
    "induction": InductionProbe,
    "arithmetic": lambda: TaskProbe(task="arithmetic"),
    "recall": lambda: TaskProbe(task="recall"),
    "brackets": lambda: TaskProbe(task="brackets"),
    "copy_text": lambda: TaskProbe(task="copy_text"),
}


def register_probe(name: str, factory: Callable[[], Probe]) -> None:
    """Add a probe under ``name``; ``factory()`` returns the callable. Duplicates raise."""
    if name in _REGISTRY:
        raise CgcLensError(f"A probe named {name!r} is already registered.")
    _REGISTRY[name] = factory


def probe_names() -> list[str]:
    """Names of the registered probes.

    Example:
        >>> "induction" in probe_names()
        True
    """
    return sorted(_REGISTRY)


def get_probe(name: str) -> Probe:
    """A fresh instance of the probe registered under ``name``."""
    if name not in _REGISTRY:
        raise unknown_name("probe", name, _REGISTRY)
    return _REGISTRY[name]()


def run_probes(
    model: HookedTransformer,
    names: list[str] | tuple[str, ...],
    *,
    progress: bool = True,
    desc: str = "probes",
    instances: Mapping[str, Probe] | None = None,
) -> dict[str, float]:
    """Run probes and flatten their results to ``{"probe.metric": value}``.

    Args:
        model: the model to probe (as it is now: compressed or not).
        names: registered probe names (:func:`probe_names`), run in this order.
        progress: show a bar over the probes (:func:`cgc_lens.progress.progress_bar`) whose
            description names the probe running (``"{desc}: {name}"``).
        desc: what the bar's description starts with (e.g. the allocation probed).
        instances: probes already made, by name (a study probing several models makes each
            once, so its prompts are built once); a name not in it is made by
            :func:`get_probe`.
    """
    out: dict[str, float] = {}
    with progress_bar(total=len(names), desc=desc, enabled=progress, unit="probe") as bar:
        for name in names:
            bar.set_description(f"{desc}: {name}")
            probe = instances[name] if instances and name in instances else get_probe(name)
            for key, value in probe(model).items():
                out[f"{name}.{key}"] = float(value)
            bar.update(1)
    return out
