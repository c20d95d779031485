"""Per-head importance scores (Wanda, weight magnitude) and their rank agreement with density.

Wanda (Sun et al. 2024) scores a weight W_ij by |W_ij| · ‖X_j‖₂, X_j being input feature j over
the calibration tokens. For the output projection of attention, TransformerLens stores
``W_O[layer, head, d_head, d_model]`` and computes ``z @ W_O``, so the inputs of head h's slice
are the ``d_head`` coordinates of ``hook_z``. A head's score is the sum over its slice (Gupta 2026,
§5.3): ``Σ_j ‖z_j‖₂ Σ_o |W_O[h, j, o]|``.

Use unprocessed weights (``HookedTransformer.from_pretrained_no_processing`` or
``center_writing_weights=False``): centring the writing weights changes W_O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from cgc_lens.analysis.uncertainty import CorrelationInterval, correlation_interval
from cgc_lens.errors import CgcLensError

__all__ = [
    "RankCorrelation",
    "finite_rank_correlation",
    "magnitude_head_importance",
    "rank_correlation",
    "wanda_head_importance",
    "with_intervals",
]

_Array = Tensor | np.ndarray


def _as_f64(x: _Array, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, np.float64)
    if not np.isfinite(arr).all():
        raise CgcLensError(f"{name} must be finite; it holds NaN or inf.")
    return arr


def wanda_head_importance(
    W_O: Float[Tensor, "*layers n_heads d_head d_model"]
    | Float[np.ndarray, "*layers n_heads d_head d_model"],
    z_norms: Float[Tensor, "*layers n_heads d_head"] | Float[np.ndarray, "*layers n_heads d_head"],
) -> Float[np.ndarray, "*layers n_heads"]:
    """Wanda importance per head: Σ over the head's W_O slice of |W| · ‖z_j‖₂.

    Args:
        W_O: output projections, ``[n_layers, n_heads, d_head, d_model]`` (``model.W_O``) or one
            layer ``[n_heads, d_head, d_model]``; unprocessed weights.
        z_norms: ‖z_j‖₂ = sqrt(Σ_t z_tj²) of ``hook_z`` over the calibration tokens, shaped like
            ``W_O`` without ``d_model``.

    Returns:
        float64 scores ``[n_layers, n_heads]`` (or ``[n_heads]``). A head with zero W_O scores 0.

    Example:
        >>> W_O = np.ones((2, 3, 4))  # 2 heads, d_head 3, d_model 4
        >>> wanda_head_importance(W_O, np.array([[1.0, 0, 0], [1, 1, 1]])).tolist()
        [4.0, 12.0]
    """
    w, z = _as_f64(W_O, "W_O"), _as_f64(z_norms, "z_norms")
    if w.ndim not in (3, 4) or z.shape != w.shape[:-1]:
        raise CgcLensError(
            "Expected W_O [n_layers, n_heads, d_head, d_model] (or one layer without n_layers) and "
            f"z_norms of shape W_O.shape[:-1]; got W_O {w.shape} and z_norms {z.shape}."
        )
    if (z < 0).any():
        raise CgcLensError("z_norms are L2 norms and must be >= 0; got a negative value.")
    return np.einsum("...jo,...j->...", np.abs(w), z)


def magnitude_head_importance(
    W_O: Float[Tensor, "*layers n_heads d_head d_model"]
    | Float[np.ndarray, "*layers n_heads d_head d_model"],
    norm: Literal["l1", "l2"] = "l1",
) -> Float[np.ndarray, "*layers n_heads"]:
    """Weight magnitude per head: Σ|W| (``l1``) or the Frobenius norm (``l2``) of its W_O slice.

    Example:
        >>> magnitude_head_importance(np.full((2, 2, 2), -1.0), norm="l2").tolist()
        [2.0, 2.0]
    """
    w = _as_f64(W_O, "W_O")
    if w.ndim not in (3, 4):
        raise CgcLensError(f"Expected W_O [(n_layers,) n_heads, d_head, d_model], got {w.shape}.")
    if norm == "l1":
        return np.abs(w).sum((-2, -1))
    if norm == "l2":
        return np.sqrt((w**2).sum((-2, -1)))
    raise CgcLensError(f"norm must be 'l1' or 'l2', got {norm!r}.")


@dataclass(frozen=True, kw_only=True, eq=False)
class RankCorrelation:
    """Spearman ρ between two per-head signals, over all heads and within each layer."""

    rho: float
    """Spearman ρ over all heads."""
    p_value: float
    """Two-sided p-value of ``rho``."""
    n: int
    """Number of heads."""
    pearson_r: float
    """Pearson r over all heads (the paper reports both for density vs ΔPPL)."""
    pearson_p: float
    """Two-sided p-value of ``pearson_r``."""
    layer_rho: Float[np.ndarray, " n_layers"]
    """Spearman ρ within each layer (NaN when a layer is constant in either signal)."""
    layer_p: Float[np.ndarray, " n_layers"]
    """p-values of ``layer_rho``."""
    intervals: dict[str, CorrelationInterval] = field(default_factory=dict)
    """Bootstrap interval and permutation p-value over heads of ``rho`` and ``pearson``
    (:func:`with_intervals`); empty until computed."""

    @property
    def mean_layer_rho(self) -> float:
        """Mean of the within-layer ρ, ignoring NaN layers."""
        finite = self.layer_rho[np.isfinite(self.layer_rho)]
        return float(finite.mean()) if finite.size else float("nan")

    def to_frame(self) -> pd.DataFrame:
        """Rows ``scope='all'`` (layer -1) then one ``scope='layer'`` row per layer."""
        n_heads = self.n // max(len(self.layer_rho), 1)
        rows = [
            {"scope": "all", "layer": -1, "rho": self.rho, "p_value": self.p_value, "n": self.n}
        ]
        rows += [
            {"scope": "layer", "layer": i, "rho": float(r), "p_value": float(p), "n": n_heads}
            for i, (r, p) in enumerate(zip(self.layer_rho, self.layer_p, strict=True))
        ]
        return pd.DataFrame(rows)


def _corr(fn: Callable, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on n < 3; NaN/1.0 p-values say enough
        res = fn(x, y)
    return float(res[0]), float(res[1])


def rank_correlation(
    density: Float[np.ndarray, "n_layers n_heads"],
    importance: Float[np.ndarray, "n_layers n_heads"],
    *,
    within_layers: bool = True,
) -> RankCorrelation:
    """Spearman ρ(density, importance) over all heads, and within each layer.

    Wanda scores of different layers are not comparable (activation scales differ), so the
    within-layer ρ is the fairer test; both are reported.

    Example:
        >>> d = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
        >>> r = rank_correlation(d, d * 10)
        >>> r.rho, r.layer_rho.tolist()
        (1.0, [1.0, 1.0])
    """
    d, w = _as_f64(density, "density"), _as_f64(importance, "importance")
    if d.ndim != 2 or d.shape != w.shape:
        raise CgcLensError(
            f"density and importance must both be [n_layers, n_heads]; got {d.shape} and {w.shape}."
        )
    if d.size < 3:
        raise CgcLensError(f"A rank correlation needs at least 3 heads, got {d.size}.")
    rho, p = _corr(stats.spearmanr, d.ravel(), w.ravel())
    r, rp = _corr(stats.pearsonr, d.ravel(), w.ravel())
    n_layers = d.shape[0]
    layer = np.full((2, n_layers), np.nan)
    if within_layers:
        for i in range(n_layers):
            layer[:, i] = _corr(stats.spearmanr, d[i], w[i])
    return RankCorrelation(
        rho=rho,
        p_value=p,
        n=int(d.size),
        pearson_r=r,
        pearson_p=rp,
        layer_rho=layer[0],
        layer_p=layer[1],
    )


def finite_rank_correlation(x: _Array, y: _Array) -> RankCorrelation:
    """:func:`rank_correlation` of two signals of any shape over the pairs where both are finite.

    The signals are flattened (one "layer", so no within-layer ρ). With fewer than 3 finite
    pairs every statistic is NaN; ``n`` counts the pairs used.

    Example:
        >>> r = finite_rank_correlation(np.array([0.1, np.nan, 0.3, 0.4]), np.arange(4.0))
        >>> r.rho, r.n
        (1.0, 3)
    """
    xa, ya = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    n = int(ok.sum())
    if n < 3:
        nan = np.full(1, np.nan)
        return RankCorrelation(rho=math.nan, p_value=math.nan, n=n, pearson_r=math.nan,
                               pearson_p=math.nan, layer_rho=nan, layer_p=nan.copy())
    return rank_correlation(xa[ok][None], ya[ok][None], within_layers=False)


def with_intervals(
    corr: RankCorrelation,
    x: _Array,
    y: _Array,
    *,
    seed: int = 0,
    n_resamples: int = 9999,
    confidence: float = 0.95,
) -> RankCorrelation:
    """``corr`` (of ``x`` and ``y`` over all heads) with the bootstrap intervals and permutation
    p-values of its Spearman ρ and Pearson r
    (:func:`~cgc_lens.analysis.uncertainty.correlation_interval`, over the finite pairs).

    Example:
        >>> d = np.arange(12.0).reshape(3, 4)
        >>> c = with_intervals(rank_correlation(d, d**2), d, d**2, n_resamples=99)
        >>> c.intervals["rho"].ci_low, c.intervals["rho"].statistic
        (1.0, 1.0)
    """
    kw = {"seed": seed, "n_resamples": n_resamples, "confidence": confidence}
    return replace(corr, intervals={
        "rho": correlation_interval(x, y, kind="spearman", **kw),
        "pearson": correlation_interval(x, y, kind="pearson", **kw),
    })  # fmt: skip
