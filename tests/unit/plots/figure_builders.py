"""Small synthetic results and every figure of the three studies drawn from them.

Shared by the plot unit tests (their fixtures) and the headless-Chromium figure test
(``tests/integration/test_figures_browser.py``, which imports this module as
``unit.plots.figure_builders``). The figure dicts mirror ``CapabilityResult.figures()``,
``SurvivalResult.figures()`` and the figures ``AdaptiveResult.save`` writes, name for name,
built by the real plot functions on results small enough to draw in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cgc_lens.adaptive import DIAGNOSTICS
from cgc_lens.analysis.allocation import cgc_l, inverted, uniform
from cgc_lens.analysis.density import DensityResult
from cgc_lens.analysis.evolution import EvoConfig, cgc_f
from cgc_lens.analysis.fragility import FragilityPredictor, survival_by_quartile
from cgc_lens.analysis.importance import rank_correlation
from cgc_lens.analysis.survival import decile_table, summarize_condition, summary_table
from cgc_lens.plots.adaptive import (
    plot_diagnostics,
    plot_probing,
    plot_quality_comparison,
    plot_training_curves,
)
from cgc_lens.plots.capability import (
    allocation_bars,
    density_heatmap,
    density_vs_ablation,
    density_wanda_ranks,
    reallocation_map,
    search_history,
)
from cgc_lens.plots.survival import (
    plot_dissociation,
    plot_feature_scatter,
    plot_nonsurvival_deciles,
    plot_quartile_survival,
    plot_roc_curves,
    plot_taxonomy,
)

PROBE_COLUMNS = ("induction.copy_ratio", "arithmetic.accuracy", "recall.accuracy",
                 "brackets.accuracy", "copy_text.accuracy")
"""The metric columns of the capability study's default probes (Table 1's bars)."""


def density_result(n_layers: int = 2, n_heads: int = 4, *, seed: int = 0) -> DensityResult:
    """A density map with random sub-measures in [0, 1) (δ = (β̃ H̃ Ψ)^(1/6))."""
    rng = np.random.default_rng(seed)
    b, e, c = rng.random((3, n_layers, n_heads))
    return DensityResult(
        breadth=b, entropy=e, consistency=c, density=(b * e * c) ** (1 / 6),
        breadth_count=(b * 8).astype(int), entropy_nats=e * np.log(8),
        n_tokens=np.full(n_layers, 100), pairs=np.zeros((n_layers, 5, 2), int), d_sae=8,
    )  # fmt: skip


def survival_summary(*, seed: int = 0, reference: str = "FP16", ref_bits: int = 16,
                     bits: tuple[int, ...] = (8, 6, 4)) -> pd.DataFrame:
    """Table 1 of a survival audit: a reference row, one RTN row per bit-width and a pruning
    row (no bits), 50 active features each."""
    rng = np.random.default_rng(seed)
    active = np.ones(50, bool)
    rows = [summarize_condition(reference, np.ones(50), active, tokens=10, bits=ref_bits,
                                ppl=10.0, ppl_reference=10.0)]  # fmt: skip
    spreads = dict(zip((8, 6, 4), (0.02, 0.2, 0.5), strict=True))
    for b in bits:
        r = np.clip(1 - rng.uniform(0, spreads.get(b, 0.3), 50), -1, 1)
        rows.append(summarize_condition(f"INT{b}", r, active, tokens=10, bits=b,
                                        ppl=10 + 16 - 2 * b, ppl_reference=10.0))  # fmt: skip
    rows.append(summarize_condition("prune", np.full(50, 0.8), active, tokens=10, sparsity=0.2))
    return summary_table(rows)


def capability_table(methods: tuple[str, ...] = ("dense", "uniform", "cgc_l", "inverted",
                                                 "cgc_f"), *, seed: int = 0) -> pd.DataFrame:
    """Table 1 of the capability study as ``allocation_bars`` gets it: ppl, kl and the probes."""
    rng = np.random.default_rng(seed)
    n = len(methods)
    data = {"ppl": 26.7 + np.r_[0.0, rng.uniform(0.5, 2.0, n - 1)],
            "kl": np.r_[0.0, rng.uniform(0.01, 0.1, n - 1)]}
    for column in PROBE_COLUMNS:
        data[column] = rng.uniform(0.3, 1.0, n)
    return pd.DataFrame(data, index=list(methods)).rename_axis("method")


def capability_figures(n_layers: int = 4, n_heads: int = 4) -> dict[str, go.Figure]:
    """Every figure ``CapabilityResult.figures()`` draws, on a random ``n_layers × n_heads``
    model."""
    density = density_result(n_layers, n_heads)
    rng = np.random.default_rng(1)
    wanda = rng.random((n_layers, n_heads))
    delta_ppl = rng.normal(0.5, 0.4, (n_layers, n_heads))
    alloc = cgc_l(density, rho=0.5)
    search = cgc_f(alloc, lambda ret, n: sum(abs(v - 0.4) for v in ret.values()),
                   EvoConfig(generations=3, offspring=2, level_step=0.1, progress=False))
    destruction = density_vs_ablation(density, rng.random((n_layers, n_heads)))
    destruction.update_layout(title="Theorem 1: features destroyed at retention 0.5 vs density",
                              yaxis_title="fraction of active features with r < 0.9")
    return {
        "density_heatmap": density_heatmap(density),
        "density_wanda_ranks": density_wanda_ranks(density, wanda,
                                                   rank_correlation(density.density, wanda)),
        "density_vs_ablation": density_vs_ablation(density, delta_ppl),
        "reallocation_cgc_l": reallocation_map(alloc),
        "reallocation_cgc_f": reallocation_map(search.allocation),
        "reallocation_inverted": reallocation_map(inverted(density, rho=0.5),
                                                  uniform(density.density.shape, 0.5)),
        "allocation_bars": allocation_bars(capability_table()),
        "search_history": search_history(search),
        "destruction_vs_density": destruction,
    }


def survival_figures() -> dict[str, go.Figure]:
    """Every figure ``SurvivalResult.figures()`` draws, on a 300-feature synthetic audit whose
    reference row is the study's (``reference`` at 32 bits)."""
    rng = np.random.default_rng(0)
    summary = survival_summary(reference="reference", ref_bits=32)
    r_a = rng.uniform(0.85, 1.0, 300)
    r_b = np.clip(r_a - rng.uniform(0, 0.1, 300), -1, 1)
    rate = np.linspace(0.01, 0.5, 300)
    deciles = decile_table(rate, {"RTN INT8": r_a, "RTN INT4": r_b}, np.ones(300, bool))
    X = rng.normal(size=(120, 2))
    y = (X[:, 0] + rng.normal(0, 0.5, 120) > 0).astype(int)
    return {
        "taxonomy": plot_taxonomy(summary),
        "dissociation": plot_dissociation(summary),
        "feature_scatter": plot_feature_scatter(r_a, r_b, names=("RTN INT8", "RTN INT4")),
        "deciles": plot_nonsurvival_deciles(deciles),
        "roc": plot_roc_curves(FragilityPredictor(n_splits=3).fit(X, y).roc_curves_),
        "quartiles": plot_quartile_survival(survival_by_quartile(X, y)),
    }


def adaptive_figures(layers: tuple[int, ...] = (0, 1, 2, 3), *, ks: tuple[int, ...] = (1, 2, 5),
                     seed: int = 0) -> dict[str, go.Figure]:
    """The four figures ``AdaptiveResult.save`` writes, on synthetic tables shaped like a
    default cgc-tiny run's: one ``hook_resid_post`` site per layer, both methods (and the
    residual stream for probing), every collapse check, probing at each ``k``."""
    rng = np.random.default_rng(seed)
    sites = [f"blocks.{ell}.hook_resid_post" for ell in layers]
    methods = ("adaptive", "topk")
    history = pd.DataFrame([
        {"step": step, "method": m, "site": s, "layer": ell, "loss": 2.0 / step + rng.random(),
         "explained_variance": 1 - 1 / step, "l0": 32 + 100 / step,
         "retention": 1 - 0.5 * step / 200 if m == "adaptive" else np.nan}
        for m in methods for s, ell in zip(sites, layers, strict=True)
        for step in range(10, 201, 10)])  # fmt: skip
    metrics = pd.DataFrame([
        {"method": m, "site": s, "layer": ell, "explained_variance": rng.uniform(0.5, 1),
         "latent_contribution": rng.uniform(0, 0.9), "mse": rng.uniform(0.01, 2),
         "l0": rng.uniform(8, 64), "kl": rng.uniform(0.01, 1),
         "ce_loss_recovered": rng.uniform(-0.2, 1)}
        for m in methods for s, ell in zip(sites, layers, strict=True)])  # fmt: skip
    tasks = ("prose vs rest", "code vs rest", "synthetic vs rest", "multiclass")
    probing = pd.DataFrame([
        {"dataset": "cgc-tiny", "method": m, "site": s, "task": t, "k": k,
         "accuracy": rng.uniform(0.5, 1), "majority_accuracy": 1 / 3 if t == "multiclass" else 0.5}
        for m in ("resid", *methods) for s in sites for t in tasks for k in ks])  # fmt: skip
    diagnostics = pd.DataFrame([
        {"method": m, "site": s, "name": n, "value": rng.random(),
         "fired": bool(rng.random() < 0.2), "message": f"{n} of {m} at {s}"}
        for m in methods for s in sites for n in DIAGNOSTICS])  # fmt: skip
    return {
        "quality": plot_quality_comparison(metrics),
        "diagnostics": plot_diagnostics(diagnostics),
        "training_curves": plot_training_curves(history),
        "probing": plot_probing(probing),
    }
