"""Fragility predictor: predictors, CV AUC against sklearn by hand, quartiles, degenerate cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from cgc_lens import CgcLensError
from cgc_lens.analysis.accumulators import ReferenceStats
from cgc_lens.analysis.fragility import (
    PREDICTORS,
    FragilityFeatureConfig,
    FragilityPredictor,
    fragility_dataset,
    fragility_features,
    marginal_aucs,
    survival_by_quartile,
)

N_FEATURES = 400


def synthetic(seed: int = 0):
    """Reference stats where survival is driven by peak activation (the paper's finding)."""
    rng = np.random.default_rng(seed)
    n_tokens = 10_000
    count = rng.integers(20, 3000, N_FEATURES)
    mean_fire = rng.lognormal(0.0, 0.5, N_FEATURES)
    peak = mean_fire * rng.lognormal(1.0, 0.4, N_FEATURES)
    stats = ReferenceStats(
        n_tokens=n_tokens, fire_count=count, sum_activation=mean_fire * count,
        sum_activation_firing=mean_fire * count, sum_sq_firing=1.5 * mean_fire**2 * count,
        peak_activation=peak,
    )  # fmt: skip
    logit = 2.5 * (np.log(peak) - np.log(peak).mean()) + rng.normal(0, 0.7, N_FEATURES)
    r = np.where(logit > 0, 0.95, 0.7)
    return stats, r


def test_predictor_formulas_for_each_reading(unchecked):
    stats, _ = synthetic()
    active = np.ones(N_FEATURES, bool)
    active[:5] = False
    X = fragility_features(stats, active)
    assert list(X.columns) == list(PREDICTORS) and X.index.tolist() == list(range(5, N_FEATURES))
    p, mu, pk = stats.firing_rate[5:], stats.mean_when_firing[5:], stats.peak_activation[5:]
    eps = 1e-8
    np.testing.assert_allclose(X["rarity"], -np.log(p + eps), rtol=1e-12)
    np.testing.assert_allclose(X["log_mean_activation"], np.log(mu + eps), rtol=1e-12)
    np.testing.assert_allclose(X["log_peak_activation"], np.log(pk + eps), rtol=1e-12)
    np.testing.assert_allclose(X["log_concentration"], np.log(pk / (mu + eps) + eps), rtol=1e-12)
    alt = fragility_features(
        stats, active,
        config=FragilityFeatureConfig(rarity="one_minus_rate", mean="all_tokens",
                                      concentration="second_moment"),
    )  # fmt: skip
    np.testing.assert_allclose(alt["rarity"], 1 - p, rtol=1e-12)
    np.testing.assert_allclose(alt["log_mean_activation"], np.log(mu * p + eps), rtol=1e-12)
    second = 1.5 * mu**2 / (mu**2 + eps)  # E[x²|fires] / E[x|fires]², = 1.5 here by construction
    np.testing.assert_allclose(alt["log_concentration"], np.log(second + eps), rtol=1e-12)
    with pytest.raises(CgcLensError, match="concentration must be one of"):
        FragilityFeatureConfig(concentration="gini")
    with pytest.raises(CgcLensError, match=">= 0"):
        neg = ReferenceStats(
            n_tokens=2, fire_count=np.array([1]), sum_activation=np.array([-1.0]),
            sum_activation_firing=np.array([-1.0]), sum_sq_firing=np.array([1.0]),
            peak_activation=np.array([-1.0]),
        )  # fmt: skip
        fragility_features(neg, np.array([True]))


def test_dataset_drops_inactive_and_undefined():
    stats, r = synthetic()
    r = r.copy()
    r[7] = np.nan
    active = np.ones(N_FEATURES, bool)
    active[3] = False
    X, y = fragility_dataset(stats, r, active)
    assert len(X) == len(y) == N_FEATURES - 2
    assert 3 not in X.index and 7 not in X.index
    assert set(np.unique(y)) == {0, 1}


def test_cv_auc_matches_roc_auc_score_by_hand_on_the_same_folds():
    stats, r = synthetic()
    X, y = fragility_dataset(stats, r, np.ones(N_FEATURES, bool))
    model = FragilityPredictor(C=1.0, n_splits=5, random_state=0)
    assert model.fit(X, y) is model
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X.to_numpy(), y))
    by_hand = []
    for (train, test), (train_m, test_m) in zip(folds, model.folds_, strict=True):
        np.testing.assert_array_equal(train, train_m)
        np.testing.assert_array_equal(test, test_m)
        scaler = StandardScaler().fit(X.to_numpy()[train])
        logreg = LogisticRegression(C=1.0, max_iter=1000).fit(
            scaler.transform(X.to_numpy()[train]), y[train]
        )
        score = logreg.decision_function(scaler.transform(X.to_numpy()[test]))
        by_hand.append(roc_auc_score(y[test], score))
    np.testing.assert_allclose(model.fold_aucs_, by_hand, rtol=0, atol=1e-12)
    assert model.cv_auc_ == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert model.oof_auc_ == pytest.approx(roc_auc_score(y, model.oof_scores_), abs=1e-12)
    assert model.cv_auc_ > 0.85
    assert [c.auc for c in model.roc_curves_] == pytest.approx(by_hand, abs=1e-12)


def test_coefficients_and_estimator_contract():
    stats, r = synthetic(seed=1)
    X, y = fragility_dataset(stats, r, np.ones(N_FEATURES, bool))
    model = FragilityPredictor(random_state=3).fit(X, y)
    coefs = model.coefficients()
    assert list(coefs.columns) == ["predictor", "coef"] and len(coefs) == 4
    assert dict(zip(model.feature_names_in_, model.coef_, strict=True))["log_peak_activation"] > 0
    assert model.n_features_in_ == 4 and model.classes_.tolist() == [0, 1]
    proba = model.predict_proba(X)
    assert proba.shape == (len(y), 2) and np.allclose(proba.sum(1), 1)
    assert set(np.unique(model.predict(X))) <= {0, 1}
    assert clone(model).get_params()["random_state"] == 3
    assert not hasattr(clone(model), "coef_")
    again = FragilityPredictor(random_state=3).fit(X, y)
    np.testing.assert_array_equal(again.fold_aucs_, model.fold_aucs_)


def test_degenerate_inputs_raise():
    stats, r = synthetic()
    X, y = fragility_dataset(stats, r, np.ones(N_FEATURES, bool))
    with pytest.raises(CgcLensError, match="0 not survived"):
        FragilityPredictor().fit(X, np.ones_like(y))
    few = y.copy()
    few[:] = 1
    few[:3] = 0
    with pytest.raises(CgcLensError, match="needs >= 5 features of each outcome"):
        FragilityPredictor().fit(X, few)
    bad = X.copy()
    bad.iloc[0, 0] = np.nan
    with pytest.raises(CgcLensError, match="finite"):
        FragilityPredictor().fit(bad, y)
    with pytest.raises(CgcLensError, match="0/1"):
        FragilityPredictor().fit(X, y * 2)
    with pytest.raises(CgcLensError, match="n_splits >= 2"):
        FragilityPredictor(n_splits=1).fit(X, y)
    with pytest.raises(CgcLensError, match="not fitted"):
        FragilityPredictor().predict(X)
    with pytest.raises(CgcLensError, match="one class"):
        marginal_aucs(X, np.zeros_like(y))


def test_quartiles_and_marginal_aucs():
    stats, r = synthetic()
    X, y = fragility_dataset(stats, r, np.ones(N_FEATURES, bool))
    table = survival_by_quartile(X, y)
    assert len(table) == 16 and set(table["predictor"]) == set(PREDICTORS)
    peak = table[table["predictor"] == "log_peak_activation"]
    assert peak["n_features"].tolist() == [100] * 4
    assert peak["survived_pct"].is_monotonic_increasing
    assert peak["survived_pct"].iloc[-1] > 80 and peak["survived_pct"].iloc[0] < 20
    aucs = marginal_aucs(X, y)
    assert isinstance(aucs, pd.Series) and aucs.idxmax() == "log_peak_activation"
    assert aucs["log_peak_activation"] == pytest.approx(roc_auc_score(y, X["log_peak_activation"]))
