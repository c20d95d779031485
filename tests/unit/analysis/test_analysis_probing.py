"""Sparse probing: latent selection, probes cross-checked against scikit-learn, and the majority
baseline (the probing datasets by name are tests/unit/data/test_data_probing.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cgc_lens import CgcLensError
from cgc_lens.analysis.probing import (
    ProbingConfig,
    majority_accuracy,
    probing_table,
    probing_tasks,
    sparse_probing,
    top_k_by_mean_difference,
)

CLASSES = ["fiction", "code", "speech"]


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.array([CLASSES[i] for i in rng.integers(0, 3, n)])
    x = rng.normal(size=(n, 10))
    x[:, 4] += 2.0 * (labels == "code")          # a code latent
    x[:, 7] += 1.5 * (labels == "speech")        # a speech latent
    x[:, 2] -= 1.0 * (labels == "fiction")
    return x, labels


def test_top_k_by_mean_difference_binary_and_multiclass():
    x, labels = _data(300, 0)
    assert top_k_by_mean_difference(x, labels == "code", 1).tolist() == [4]
    assert top_k_by_mean_difference(x, labels == "speech", 1).tolist() == [7]
    top3 = top_k_by_mean_difference(x, labels, 3).tolist()
    assert top3[0] == 4 and set(top3) == {2, 4, 7}
    diffs = [abs(x[labels == c, 7].mean() - x[labels != c, 7].mean()) for c in CLASSES]
    assert max(diffs) == pytest.approx(abs(x[labels == "speech", 7].mean()
                                           - x[labels != "speech", 7].mean()))
    assert len(top_k_by_mean_difference(x, labels, 50)) == 10
    with pytest.raises(CgcLensError, match="at least two classes"):
        top_k_by_mean_difference(x, np.array(["a"] * 300), 1)


def test_probe_accuracy_matches_a_direct_sklearn_computation():
    (x_tr, y_tr), (x_te, y_te) = _data(240, 1), _data(120, 2)
    cfg = ProbingConfig(ks=(1, 2, 5), balance=False)
    scores, skipped = sparse_probing(x_tr, y_tr, x_te, y_te, cfg)
    assert not skipped
    assert {s.task for s in scores} == {"fiction vs rest", "code vs rest", "speech vs rest",
                                        "multiclass"}
    for s in scores:
        positive = s.task.removesuffix(" vs rest")
        a, b = (y_tr, y_te) if s.task == "multiclass" else (y_tr == positive, y_te == positive)
        diff = np.max([np.abs(x_tr[a == c].mean(0) - x_tr[a != c].mean(0)) for c in np.unique(a)],
                      axis=0)
        latents = np.argsort(-diff, kind="stable")[: s.k]
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        clf.fit(x_tr[:, latents], a)
        assert s.latents == tuple(latents.tolist())
        assert s.accuracy == pytest.approx(clf.score(x_te[:, latents], b), abs=1e-12)
        values, counts = np.unique(a, return_counts=True)
        assert s.majority_accuracy == pytest.approx(np.mean(b == values[np.argmax(counts)]))
        assert (s.n_train, s.n_test) == (240, 120)
    code = {s.k: s for s in scores if s.task == "code vs rest"}
    assert code[1].latents == (4,) and code[1].accuracy > code[1].majority_accuracy


def test_balanced_one_vs_rest_tasks_have_a_half_majority_baseline():
    (x_tr, y_tr), (x_te, y_te) = _data(240, 3), _data(120, 4)
    scores, _ = sparse_probing(x_tr, y_tr, x_te, y_te, ProbingConfig(ks=(1,), multiclass=False))
    for s in scores:
        positive = s.task.removesuffix(" vs rest")
        assert s.n_train == 2 * min((y_tr == positive).sum(), (y_tr != positive).sum())
        assert s.n_test == 2 * min((y_te == positive).sum(), (y_te != positive).sum())
        assert s.majority_accuracy == pytest.approx(0.5)
    table = probing_table(scores, method="adaptive", site="s")
    assert list(table.columns[:3]) == ["method", "site", "task"] and len(table) == 3


def test_tasks_majority_and_skipping():
    assert [t.name for t in probing_tasks(["b", "a", "b"], ProbingConfig(multiclass=False))] == [
        "b vs rest", "a vs rest"]
    assert majority_accuracy(np.array(["x", "x", "y"]), np.array(["y", "x"])) == 0.5
    x, labels = _data(60, 5)
    labels[:] = "code"
    labels[:3] = "speech"                       # 3 < min_per_class examples of a class
    scores, skipped = sparse_probing(x, labels, x, labels, ProbingConfig(min_per_class=4))
    assert scores == [] and len(skipped) == 3 and "fewer than 4" in skipped[0]


def test_bad_input_raises(unchecked):
    x, labels = _data(30, 6)
    with pytest.raises(CgcLensError, match="one label per example"):
        sparse_probing(x, labels[:-1], x, labels)
    with pytest.raises(CgcLensError, match="differ in width"):
        sparse_probing(x, labels, x[:, :3], labels)
    with pytest.raises(CgcLensError, match="ks must be positive"):
        ProbingConfig(ks=(0,))
    with pytest.raises(CgcLensError, match="one_vs_rest or multiclass"):
        ProbingConfig(one_vs_rest=False, multiclass=False)
