"""Fragility predictor: is survival predictable from reference statistics alone? (QDM §3.7, App. G).

Four reference-model statistics per active feature (:func:`fragility_features`) feed an
L2-regularised logistic regression on standardised inputs (:class:`FragilityPredictor`), scored
by 5-fold stratified cross-validated ROC AUC. :func:`survival_by_quartile` gives the marginal
view of Fig. 3 and :func:`marginal_aucs` the single-predictor AUCs.

The paper's formulas for the predictors are lost from our copy; the readings below are ours and
each is a choice in :class:`FragilityFeatureConfig` (see docs/methods_survival.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Bool, Float
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cgc_lens.analysis.accumulators import ReferenceStats
from cgc_lens.analysis.survival import equal_count_bins
from cgc_lens.errors import CgcLensError

__all__ = [
    "PREDICTORS",
    "FragilityFeatureConfig",
    "FragilityPredictor",
    "RocCurve",
    "fragility_dataset",
    "fragility_features",
    "marginal_aucs",
    "survival_by_quartile",
]

PREDICTORS = ("rarity", "log_mean_activation", "log_peak_activation", "log_concentration")
"""Column names of :func:`fragility_features`, in the paper's order."""


@dataclass(frozen=True, kw_only=True)
class FragilityFeatureConfig:
    """How the four predictors of §3.7 are computed from :class:`ReferenceStats`."""

    rarity: Literal["neg_log_rate", "one_minus_rate"] = "neg_log_rate"
    """``-log(p + eps)`` (default) or ``1 - p``, with p the firing rate: larger is rarer."""
    mean: Literal["when_firing", "all_tokens"] = "when_firing"
    """Mean activation μ over the positions where the feature fires (default) or over all."""
    concentration: Literal["peak_to_mean", "second_moment"] = "peak_to_mean"
    """``peak / (μ + eps)`` (default), or ``E[x²|fires] / (E[x|fires]² + eps)``."""
    eps: float = 1e-8
    """Numerical-stability constant inside every log and ratio."""

    def __post_init__(self) -> None:
        for field, valid in (
            ("rarity", ("neg_log_rate", "one_minus_rate")),
            ("mean", ("when_firing", "all_tokens")),
            ("concentration", ("peak_to_mean", "second_moment")),
        ):
            if getattr(self, field) not in valid:
                raise CgcLensError(f"{field} must be one of {valid}, got {getattr(self, field)!r}.")
        if not self.eps > 0:
            raise CgcLensError(f"eps must be > 0, got {self.eps!r}.")


def fragility_features(
    stats: ReferenceStats,
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    config: FragilityFeatureConfig = FragilityFeatureConfig(),
) -> pd.DataFrame:
    """The four §3.7 predictors for the active features: a DataFrame indexed by feature id.

    Example:
        >>> stats = ReferenceStats(n_tokens=100, fire_count=np.array([10, 50]),
        ...     sum_activation=np.array([20.0, 50.0]), sum_activation_firing=np.array([20.0, 50.0]),
        ...     sum_sq_firing=np.array([80.0, 50.0]), peak_activation=np.array([8.0, 1.0]))
        >>> fragility_features(stats, np.array([True, True])).round(3).values.tolist()
        [[2.303, 0.693, 2.079, 1.386], [0.693, 0.0, 0.0, 0.0]]
    """
    mask = np.asarray(active_mask)
    if mask.dtype != bool or mask.shape != (stats.d_sae,):
        raise CgcLensError(
            f"active_mask must be bool of shape ({stats.d_sae},), got {mask.dtype} {mask.shape}."
        )
    eps = config.eps
    rate = stats.firing_rate[mask]
    mean = (stats.mean_when_firing if config.mean == "when_firing" else stats.mean_activation)[mask]
    peak = stats.peak_activation[mask]
    if (mean < 0).any() or (peak < 0).any():
        raise CgcLensError("Fragility predictors take logs: expected activations >= 0 (SAE codes).")
    if config.concentration == "peak_to_mean":
        concentration = peak / (mean + eps)
    else:
        m1 = stats.mean_when_firing[mask]
        concentration = stats.second_moment_when_firing[mask] / (m1 * m1 + eps)
    rarity = -np.log(rate + eps) if config.rarity == "neg_log_rate" else 1.0 - rate
    columns = (rarity, np.log(mean + eps), np.log(peak + eps), np.log(concentration + eps))
    return pd.DataFrame(dict(zip(PREDICTORS, columns, strict=True)), index=np.flatnonzero(mask))


def fragility_dataset(
    stats: ReferenceStats,
    r: Float[np.ndarray, " d_sae"],
    active_mask: Bool[np.ndarray, " d_sae"],
    *,
    survived: float = 0.9,
    config: FragilityFeatureConfig = FragilityFeatureConfig(),
) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictors ``X`` and labels ``y = 1[r ≥ survived]`` over active features with defined r."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape != (stats.d_sae,):
        raise CgcLensError(f"r must have shape ({stats.d_sae},), got {r.shape}.")
    keep = np.asarray(active_mask, dtype=bool) & ~np.isnan(r)
    X = fragility_features(stats, keep, config=config)
    return X, (r[keep] >= survived).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class RocCurve:
    """One cross-validation fold's ROC curve (sklearn.metrics.roc_curve on held-out features)."""

    fold: int
    """Fold index, from 0."""
    fpr: np.ndarray
    """False-positive rates."""
    tpr: np.ndarray
    """True-positive rates."""
    auc: float
    """Area under this fold's curve (roc_auc_score)."""


def _check_xy(X: object, y: object) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [str(c) for c in X.columns] if isinstance(X, pd.DataFrame) else None
    X_arr = np.asarray(X, dtype=np.float64)
    y_arr = np.asarray(y)
    if X_arr.ndim != 2 or y_arr.shape != (X_arr.shape[0],):
        raise CgcLensError(
            f"Expected X [n_features, n_predictors] and y [n_features], got {X_arr.shape} and "
            f"{y_arr.shape}."
        )
    if not np.isfinite(X_arr).all():
        raise CgcLensError("X holds NaN or inf; predictors must be finite.")
    if not np.isin(y_arr, (0, 1)).all():
        raise CgcLensError(f"y must be 0/1 survival labels, got values {np.unique(y_arr)[:5]}.")
    return X_arr, y_arr.astype(np.int64), names or [f"x{i}" for i in range(X_arr.shape[1])]


class FragilityPredictor(ClassifierMixin, BaseEstimator):
    """L2 logistic regression on standardised predictors with stratified k-fold CV AUC (§3.7).

    ``fit`` runs the cross-validation (a fresh StandardScaler + LogisticRegression pipeline per
    fold, so scaling never sees held-out features), then refits on all features for the
    standardised coefficients.

    Args:
        C: inverse L2 regularisation strength of the logistic regression.
        n_splits: cross-validation folds.
        shuffle: shuffle before splitting into folds.
        random_state: seed of the fold shuffle.
        max_iter: iterations of the lbfgs solver.

    Fitted attributes: ``pipeline_``, ``coef_`` (one per predictor, standardised units),
    ``intercept_``, ``classes_``, ``feature_names_in_``, ``n_features_in_``, ``folds_`` (train
    and test indices), ``fold_aucs_``, ``cv_auc_`` (mean fold AUC), ``cv_auc_std_``,
    ``oof_scores_`` (held-out decision values), ``oof_auc_`` (AUC of those, pooled),
    ``roc_curves_``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 2))
        >>> y = (X[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)
        >>> model = FragilityPredictor().fit(X, y)
        >>> model.cv_auc_ > 0.85, bool(model.coef_[0] > abs(model.coef_[1]))
        (True, True)
    """

    def __init__(
        self,
        C: float = 1.0,
        n_splits: int = 5,
        *,
        shuffle: bool = True,
        random_state: int | None = 0,
        max_iter: int = 1000,
    ) -> None:
        self.C = C
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state
        self.max_iter = max_iter

    def _pipeline(self) -> Pipeline:
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter)
        )

    def fit(self, X: pd.DataFrame | np.ndarray, y: np.ndarray) -> FragilityPredictor:
        """Cross-validate, then refit on all features; returns ``self``."""
        if not (isinstance(self.n_splits, int) and self.n_splits >= 2) or not self.C > 0:
            raise CgcLensError(
                f"Expected n_splits >= 2 and C > 0, got n_splits={self.n_splits!r}, C={self.C!r}."
            )
        X_arr, y_arr, names = _check_xy(X, y)
        counts = np.bincount(y_arr, minlength=2)
        if counts.min() < self.n_splits:
            raise CgcLensError(
                f"Stratified {self.n_splits}-fold CV needs >= {self.n_splits} features of each "
                f"outcome; got {counts[1]} survived and {counts[0]} not survived (an all-survived "
                "condition such as the null has no fragility to predict)."
            )
        cv = StratifiedKFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)
        self.folds_ = list(cv.split(X_arr, y_arr))
        self.oof_scores_ = np.empty(len(y_arr))
        self.roc_curves_ = []
        for k, (train, test) in enumerate(self.folds_):
            fold_model = clone(self._pipeline()).fit(X_arr[train], y_arr[train])
            score = fold_model.decision_function(X_arr[test])
            self.oof_scores_[test] = score
            fpr, tpr, _ = roc_curve(y_arr[test], score)
            auc = float(roc_auc_score(y_arr[test], score))
            self.roc_curves_.append(RocCurve(fold=k, fpr=fpr, tpr=tpr, auc=auc))
        self.fold_aucs_ = np.array([c.auc for c in self.roc_curves_])
        self.cv_auc_ = float(self.fold_aucs_.mean())
        self.cv_auc_std_ = float(self.fold_aucs_.std(ddof=1))
        self.oof_auc_ = float(roc_auc_score(y_arr, self.oof_scores_))
        self.pipeline_ = self._pipeline().fit(X_arr, y_arr)
        logreg = self.pipeline_[-1]
        self.coef_ = logreg.coef_[0].copy()
        self.intercept_ = float(logreg.intercept_[0])
        self.classes_ = logreg.classes_
        self.feature_names_in_ = np.array(names, dtype=object)
        self.n_features_in_ = X_arr.shape[1]
        return self

    def _fitted(self) -> Pipeline:
        if not hasattr(self, "pipeline_"):
            raise CgcLensError("This FragilityPredictor is not fitted yet; call fit(X, y) first.")
        return self.pipeline_

    def decision_function(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Log-odds of survival from the model refitted on all features."""
        return self._fitted().decision_function(np.asarray(X, dtype=np.float64))

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Probabilities ``[P(not survived), P(survived)]`` per feature."""
        return self._fitted().predict_proba(np.asarray(X, dtype=np.float64))

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Predicted survival label (0/1) per feature."""
        return self._fitted().predict(np.asarray(X, dtype=np.float64))

    def coefficients(self) -> pd.DataFrame:
        """Standardised coefficients (Table 2 / App. G), largest magnitude first."""
        self._fitted()
        table = pd.DataFrame({"predictor": self.feature_names_in_, "coef": self.coef_})
        return table.reindex(table["coef"].abs().sort_values(ascending=False).index)


def survival_by_quartile(
    X: pd.DataFrame | np.ndarray, y: np.ndarray, *, n_bins: int = 4
) -> pd.DataFrame:
    """Survival % per equal-count bin of each predictor (Fig. 3), one row per predictor × bin.

    Columns: predictor, quartile (1 = lowest values), value_min, value_max, n_features,
    survived_pct.
    """
    X_arr, y_arr, names = _check_xy(X, y)
    rows = []
    for j, name in enumerate(names):
        bins = equal_count_bins(X_arr[:, j], n_bins)
        for k in range(n_bins):
            sel = bins == k
            rows.append({
                "predictor": name, "quartile": k + 1, "value_min": float(X_arr[sel, j].min()),
                "value_max": float(X_arr[sel, j].max()), "n_features": int(sel.sum()),
                "survived_pct": 100 * float(y_arr[sel].mean()),
            })  # fmt: skip
    return pd.DataFrame(rows)


def marginal_aucs(X: pd.DataFrame | np.ndarray, y: np.ndarray) -> pd.Series:
    """ROC AUC of each predictor alone, on all features (0.5 = no signal, < 0.5 = inverse)."""
    X_arr, y_arr, names = _check_xy(X, y)
    if y_arr.min() == y_arr.max():
        raise CgcLensError("marginal_aucs needs both outcomes in y; got one class only.")
    aucs = [float(roc_auc_score(y_arr, X_arr[:, j])) for j in range(X_arr.shape[1])]
    return pd.Series(aucs, index=names, name="auc")
