"""Sparse probing (SAEBench's protocol, Gao et al. 2024 §4.5): can k latents tell classes apart?

For each task, on mean-pooled features of labelled examples (documents, or token blocks with
their category):

1. the ``k`` latents with the largest class-mean difference on the training examples are
   selected: ``|mean(x | class) − mean(x | rest)|``, maximised over classes for a multiclass
   task (for two classes both give the same score);
2. a logistic regression (scikit-learn, on standardised features) is fitted on those latents;
3. its test accuracy is reported beside the majority-class baseline: the accuracy of always
   predicting the training set's most frequent class.

Tasks: one binary task per class against the rest (SAEBench's; balanced by default, by
subsampling the larger side in train and test separately, so the baseline is ~50%), and one
multiclass task over all classes (unbalanced; its baseline is the majority share).

Arrays in, results out: the labelled examples come from elsewhere, e.g. SAEBench's probing
datasets by name (:func:`cgc_lens.data.probing.load_probing_corpus`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Real, Shaped
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cgc_lens.errors import CgcLensError

__all__ = [
    "ProbeScore", "ProbeTask", "ProbingConfig", "majority_accuracy", "probing_table",
    "probing_tasks", "sparse_probing", "top_k_by_mean_difference",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProbingConfig:
    """Which sparse-probing tasks to run and how to fit the probes."""

    ks: tuple[int, ...] = (1, 2, 5)
    """Numbers of latents a probe may use (SAEBench: 1, 2, 5, ...)."""
    one_vs_rest: bool = True
    """One binary task per class against all other classes."""
    multiclass: bool = True
    """One task over all classes at once."""
    balance: bool = True
    """Balance each one-vs-rest task by subsampling the larger side (train and test apart)."""
    min_per_class: int = 4
    """Skip a task (logged, listed in the result) whose train or test side has fewer examples
    of some class."""
    regularization: float = 1.0
    """Inverse L2 strength C of the logistic regression (scikit-learn's default)."""
    max_iter: int = 1000
    """Iterations of the logistic-regression solver."""
    probe_seed: int = 0
    """Seeds the balancing subsamples."""

    def __post_init__(self) -> None:
        ks = tuple(self.ks)
        if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1
                             for k in ks):
            raise CgcLensError(f"ks must be positive ints, got {self.ks!r}.")
        object.__setattr__(self, "ks", ks)
        if not (self.one_vs_rest or self.multiclass):
            raise CgcLensError("Expected one_vs_rest or multiclass (or both), got neither.")
        if self.min_per_class < 1 or self.max_iter < 1 or not self.regularization > 0:
            raise CgcLensError(
                f"Expected min_per_class >= 1, max_iter >= 1, regularization > 0; got "
                f"{self.min_per_class!r}, {self.max_iter!r}, {self.regularization!r}."
            )


@dataclass(frozen=True)
class ProbeTask:
    """A classification task on labelled examples."""

    name: str
    """``"<class> vs rest"`` or ``"multiclass"``."""
    positive: str | None
    """The class of a one-vs-rest task; ``None`` for the multiclass task."""


@dataclass(frozen=True, kw_only=True)
class ProbeScore:
    """One probe's result."""

    task: str
    """Task name."""
    k: int
    """Latents the probe used."""
    accuracy: float
    """Test accuracy."""
    majority_accuracy: float
    """Test accuracy of always predicting the training majority class."""
    n_train: int
    """Training examples."""
    n_test: int
    """Test examples."""
    latents: tuple[int, ...]
    """The latents selected (largest class-mean difference first)."""


def top_k_by_mean_difference(
    x: Real[np.ndarray, "n d"], labels: Shaped[np.ndarray, " n"], k: int
) -> np.ndarray:
    """The ``k`` columns of ``x`` with the largest ``max_c |mean(x | c) − mean(x | not c)|``.

    Example:
        >>> x = np.array([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [1.0, 5.0, 3.0], [1.0, 5.0, 3.0]])
        >>> top_k_by_mean_difference(x, np.array(["a", "a", "b", "b"]), 2)
        array([2, 0])
    """
    classes = np.unique(labels)
    if len(classes) < 2:
        raise CgcLensError(f"Expected at least two classes to compare, got {classes.tolist()}.")
    score = np.zeros(x.shape[1])
    for c in classes:
        inside = labels == c
        diff = np.abs(x[inside].mean(0) - x[~inside].mean(0))
        score = np.maximum(score, diff)
    # stable: equal scores keep the lower index first
    return np.argsort(-score, kind="stable")[: min(k, x.shape[1])]


def majority_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on ``test_labels`` of always predicting the most frequent training label.

    Example:
        >>> majority_accuracy(np.array([1, 1, 0]), np.array([1, 0, 0, 0]))
        0.25
    """
    values, counts = np.unique(train_labels, return_counts=True)
    return float(np.mean(test_labels == values[np.argmax(counts)]))


def probing_tasks(
    labels: Sequence[Any] | np.ndarray, cfg: ProbingConfig = ProbingConfig()
) -> list[ProbeTask]:
    """The tasks of ``cfg`` for these labels (classes in order of first appearance).

    Example:
        >>> [t.name for t in probing_tasks(["code", "fiction", "code"])]
        ['code vs rest', 'fiction vs rest', 'multiclass']
    """
    classes = [str(c) for c in dict.fromkeys(labels)]
    tasks = [ProbeTask(f"{c} vs rest", c) for c in classes] if cfg.one_vs_rest else []
    return tasks + ([ProbeTask("multiclass", None)] if cfg.multiclass else [])


def _balanced(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of an equal number of positives (True) and negatives, drawn without replacement."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    n = min(len(pos), len(neg))
    return np.sort(np.concatenate([rng.choice(pos, n, replace=False),
                                   rng.choice(neg, n, replace=False)]))


def _task_data(
    task: ProbeTask, labels: np.ndarray, rng: np.random.Generator, balance: bool
) -> tuple[np.ndarray, np.ndarray]:
    if task.positive is None:
        return np.arange(len(labels)), labels
    y = labels == task.positive
    idx = _balanced(y, rng) if balance else np.arange(len(labels))
    return idx, y[idx]


def sparse_probing(
    train_x: Real[np.ndarray, "n_train d"],
    train_labels: Sequence[Any] | np.ndarray,
    test_x: Real[np.ndarray, "n_test d"],
    test_labels: Sequence[Any] | np.ndarray,
    cfg: ProbingConfig = ProbingConfig(),
) -> tuple[list[ProbeScore], list[str]]:
    """Every task × k of ``cfg`` on pooled features; returns the scores and the skipped tasks.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.array(["a", "b"] * 20)
        >>> x = rng.normal(size=(40, 6)); x[:, 3] += 6 * (y == "b")
        >>> scores, skipped = sparse_probing(x[:30], y[:30], x[30:], y[30:],
        ...                                  ProbingConfig(ks=(1,), multiclass=False))
        >>> [(s.task, s.latents, s.accuracy, s.majority_accuracy) for s in scores][:1], skipped
        ([('a vs rest', (3,), 0.9, 0.5)], [])
    """
    train_labels, test_labels = np.asarray(train_labels).astype(str), np.asarray(
        test_labels).astype(str)
    if train_x.shape[0] != len(train_labels) or test_x.shape[0] != len(test_labels):
        raise CgcLensError(
            f"Expected one label per example; got {train_x.shape[0]} train examples with "
            f"{len(train_labels)} labels, {test_x.shape[0]} test examples with "
            f"{len(test_labels)} labels."
        )
    if train_x.shape[1] != test_x.shape[1]:
        raise CgcLensError(f"Train and test features differ in width: {train_x.shape[1]} vs "
                           f"{test_x.shape[1]}.")
    scores, skipped = [], []
    for t, task in enumerate(probing_tasks(train_labels, cfg)):
        rng = np.random.default_rng([cfg.probe_seed, t])
        tr, y_tr = _task_data(task, train_labels, rng, cfg.balance)
        te, y_te = _task_data(task, test_labels, rng, cfg.balance)
        counts = [np.unique(y, return_counts=True) for y in (y_tr, y_te)]
        if any(len(c) < 2 or n.min() < cfg.min_per_class for c, n in counts):
            reason = (f"{task.name}: fewer than {cfg.min_per_class} examples of a class "
                      f"(train {dict(zip(*counts[0], strict=True))}, "
                      f"test {dict(zip(*counts[1], strict=True))})")
            log.warning("sparse probing skips %s", reason)
            skipped.append(reason)
            continue
        base = majority_accuracy(y_tr, y_te)
        for k in cfg.ks:
            latents = top_k_by_mean_difference(train_x[tr], y_tr, k)
            probe = make_pipeline(StandardScaler(), LogisticRegression(
                C=cfg.regularization, max_iter=cfg.max_iter))
            probe.fit(train_x[tr][:, latents], y_tr)
            acc = float(np.mean(probe.predict(test_x[te][:, latents]) == y_te))
            scores.append(ProbeScore(task=task.name, k=k, accuracy=acc, majority_accuracy=base,
                                     n_train=len(tr), n_test=len(te),
                                     latents=tuple(int(i) for i in latents)))
    return scores, skipped


def probing_table(scores: Sequence[ProbeScore], **columns: Any) -> pd.DataFrame:
    """Scores as a DataFrame, with constant ``columns`` (method, site ...) added in front."""
    rows = [{**columns, **s.__dict__, "latents": list(s.latents)} for s in scores]
    return pd.DataFrame(rows)
