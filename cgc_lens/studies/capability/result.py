"""What the capability study returns: :class:`CapabilityResult` (DataFrames, figures, a results
folder that loads back) and the Theorem 1 measurements, :class:`Theorem1Result`.

``results.json`` holds the summary the issue asks for (``density``, ``breadth``, ``entropy``,
``consistency``, ``wanda``, ``ablation_dppl`` as n_layers × n_heads lists,
``spearman_density_wanda``, ``corr_density_ablation``, ``allocations`` with ``ppl``,
``delta_ppl``, ``probes`` and ``retention`` per method, ``theorem1``, ``config``, ``versions``);
``arrays.safetensors`` holds every array needed to rebuild the result exactly. Every
correlation carries ``*_ci_low``, ``*_ci_high`` and ``*_perm_p`` beside it, the density its
``density_se`` and ``density_ci_low`` / ``_high`` (:mod:`.intervals`), and
``consistency_mode`` says whether Ψ is Def 3's ``cross-category`` consistency or
``cross-sequence`` (a corpus without categories).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cgc_lens.analysis.allocation import Allocation
from cgc_lens.analysis.density import DensityResult
from cgc_lens.analysis.evolution import EvoConfig, SearchResult
from cgc_lens.analysis.importance import RankCorrelation
from cgc_lens.analysis.uncertainty import CorrelationInterval
from cgc_lens.forward.ablation import AblationResult
from cgc_lens.io.configs import config_from_dict
from cgc_lens.io.results import read_results, write_results
from cgc_lens.plots.capability import (
    allocation_bars,
    density_heatmap,
    density_vs_ablation,
    density_wanda_ranks,
    reallocation_map,
    search_history,
)
from cgc_lens.studies.capability.config import CapabilityConfig
from cgc_lens.studies.capability.intervals import (
    add_density_error_bars,
    correlation_rows,
    density_payload,
    how_sure,
    rank_interval_keys,
)

__all__ = ["METHODS", "CapabilityResult", "Theorem1Result"]

METHODS = ("dense", "uniform", "cgc_l", "inverted", "cgc_f")
"""Rows of Table 1, in order."""
_DENSITY = ("breadth", "entropy", "consistency", "density", "breadth_count", "entropy_nats",
            "n_tokens", "pairs")
_DENSITY_OPTIONAL = ("consistency_se", "density_se", "density_replicates")
_MODES = {"corpus": "cross-category", "block": "cross-sequence"}
_T1_ARRAYS = ("retentions", "destruction", "n_active", "delta_ppl", "delta_kl",
              "ptp_destruction", "ptp_dppl")


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


@dataclass(frozen=True, kw_only=True, eq=False)
class Theorem1Result:
    """Per-head feature destruction under single-head W_O pruning (Thm 1, Cor. 1)."""

    retentions: np.ndarray
    """Retention levels, ``[n_levels]``."""
    pruning: str
    """``magnitude`` or ``random``."""
    destruction: np.ndarray
    """``[n_layers, n_heads, n_levels]``: fraction of the head's active features with r < 0.9."""
    n_active: np.ndarray
    """``[n_layers, n_heads]``: active features per head on the survival tokens."""
    delta_ppl: np.ndarray | None
    """``[n_layers, n_heads, n_levels]``: held-out ΔPPL of pruning the head alone."""
    delta_kl: np.ndarray | None
    """Same for mean KL(dense ‖ pruned)."""
    ptp_destruction: np.ndarray
    """``[n_layers, n_heads]``: sparsity (1 − retention) where destruction turns sharply."""
    ptp_dppl: np.ndarray | None
    """Same for ΔPPL."""
    correlations: list[dict[str, Any]]
    """Per level: Spearman of density with destruction and with ΔPPL ({rho, p, n})."""
    ptp_correlations: dict[str, Any]
    """Spearman of density with each PTP (Cor. 1 predicts ρ < 0)."""
    n_tokens: int
    """Calibration tokens the feature test read."""

    def payload(self) -> dict[str, Any]:
        """The JSON part of ``results.json['theorem1']``."""
        return {"retentions": self.retentions, "pruning": self.pruning,
                "destruction": self.destruction, "n_active": self.n_active,
                "delta_ppl": self.delta_ppl, "ptp_destruction": self.ptp_destruction,
                "ptp_dppl": self.ptp_dppl, "spearman_density": self.correlations,
                "spearman_density_ptp": self.ptp_correlations, "n_tokens": self.n_tokens}


@dataclass(frozen=True, kw_only=True, eq=False)
class CapabilityResult:
    """Everything the capability study measured (arrays are ``[n_layers, n_heads]``)."""

    config: CapabilityConfig
    """The config that produced it."""
    model_name: str
    """``model.cfg.model_name``."""
    d_sae: int
    """Per-head SAE dictionary size."""
    calibration_tokens: int
    """Calibration tokens read."""
    eval_tokens: int
    """Held-out tokens."""
    consistency_categories: str
    """``corpus`` or ``block``: what the categories of Def 3's pairs were."""
    density: DensityResult
    """Density and every sub-measure."""
    wanda: np.ndarray
    """Wanda importance per head."""
    magnitude: np.ndarray
    """Σ|W_O| per head."""
    wanda_corr: RankCorrelation
    """ρ(density, Wanda), all heads and within layers."""
    magnitude_corr: RankCorrelation
    """ρ(density, magnitude)."""
    ablation: AblationResult
    """Per-head ablation on held-out tokens."""
    ablation_corr: RankCorrelation
    """Density vs ΔPPL (Pearson and Spearman)."""
    allocations: dict[str, Allocation]
    """``dense``, ``uniform``, ``cgc_l``, ``inverted`` and (if run) ``cgc_f``."""
    scores: dict[str, dict[str, Any]]
    """Per method: ``ppl``, ``kl`` (held out), ``kl_calibration``, ``probes``."""
    search: SearchResult | None
    """The CGC-F search (None when not run)."""
    cgc_f_origin: str | None
    """Where CGC-F's answer came from: ``search``, or a start that stayed better."""
    cgc_f_start: str | None
    """The start of the search (the better of CGC-L and Uniform on calibration KL)."""
    calibration_kl_tokens: int | None
    """Calibration tokens of ``kl_calibration`` (the last search stage)."""
    theorem1: Theorem1Result
    """The Theorem 1 test."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per step."""

    # ------------------------------------------------------------------ views
    def table(self) -> pd.DataFrame:
        """Table 1 with probes: one row per method (ppl, delta_ppl, kl, kl_calibration, probes…)."""
        rows, dense = {}, self.scores["dense"]["ppl"]
        for m in (m for m in METHODS if m in self.scores):
            s = self.scores[m]
            rows[m] = {"ppl": s["ppl"], "delta_ppl": s["ppl"] - dense, "kl": s["kl"],
                       "kl_calibration": _nan(s.get("kl_calibration")),
                       "global_retention": self.allocations[m].global_retention,
                       **{k: float(v) for k, v in s["probes"].items()}}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")

    def to_frame(self) -> pd.DataFrame:
        """One row per head: density and sub-measures, Wanda, ablation, retentions, Theorem 1."""
        df = self.density.to_frame().drop(columns=["breadth_count", "entropy_nats"])
        df = pd.concat([df, self.density.se_frame()], axis=1)
        df["wanda"], df["magnitude"] = self.wanda.ravel(), self.magnitude.ravel()
        df["ablation_dppl"] = self.ablation.delta_ppl.ravel()
        df["ablation_dkl"] = self.ablation.delta_kl.ravel()
        for m, a in self.allocations.items():
            df[f"retention_{m}"] = a.retention.ravel()
        t = self.theorem1
        for j, r in enumerate(t.retentions):
            df[f"destruction_r{r:g}"] = t.destruction[..., j].ravel()
            if t.delta_ppl is not None:
                df[f"dppl_r{r:g}"] = t.delta_ppl[..., j].ravel()
        df["n_active"] = t.n_active.ravel()
        df["ptp_destruction"] = t.ptp_destruction.ravel()
        if t.ptp_dppl is not None:
            df["ptp_dppl"] = t.ptp_dppl.ravel()
        return df

    def figures(self) -> dict[str, go.Figure]:
        """Figs 1-4 of the paper, the CGC-F history and destruction vs density."""
        figs = {
            "density_heatmap": density_heatmap(self.density),
            "density_wanda_ranks": density_wanda_ranks(self.density, self.wanda, self.wanda_corr),
            "density_vs_ablation": add_density_error_bars(density_vs_ablation(
                self.density, self.ablation.delta_ppl, self.ablation_corr), self.density),
            "reallocation_cgc_l": reallocation_map(self.allocations["cgc_l"]),
        }
        if "cgc_f" in self.allocations:
            figs["reallocation_cgc_f"] = reallocation_map(self.allocations["cgc_f"])
        t = self.table()
        keep = ["ppl", "kl"] + [c for c in t.columns if c.endswith(("copy_ratio", ".accuracy"))]
        figs["allocation_bars"] = allocation_bars(t[keep])
        if self.search is not None:
            figs["search_history"] = search_history(self.search)
        th = self.theorem1
        j = int(np.argmin(np.abs(th.retentions - self.config.retention)))
        c = th.correlations[j]["destruction"]
        fig = add_density_error_bars(density_vs_ablation(self.density, th.destruction[..., j]),
                                     self.density)
        fig.update_layout(
            title=f"Theorem 1: features destroyed at retention {th.retentions[j]:g} vs density "
                  f"(Spearman ρ = {_nan(c['rho']):.3f}, p = {_nan(c['p']):.2g}, n = {c['n']})",
            yaxis_title="fraction of active features with r < 0.9")
        figs["destruction_vs_density"] = fig
        return figs

    # ------------------------------------------------------------------ persistence
    def payload(self) -> dict[str, Any]:
        """The summary written to ``results.json`` (besides ``config`` and ``versions``)."""
        d, w, a, t = self.density, self.wanda_corr, self.ablation_corr, self.table()
        allocations = {}
        for m, alloc in self.allocations.items():
            s = self.scores[m]
            allocations[m] = {"ppl": s["ppl"], "delta_ppl": float(t.loc[m, "delta_ppl"]),
                              "kl": s["kl"], "kl_calibration": s.get("kl_calibration"),
                              "probes": s["probes"], "rho": alloc.rho,
                              "global_retention": alloc.global_retention,
                              "retention": alloc.retention, "ceilings": alloc.ceilings}
        lo, hi = np.unravel_index(d.density.argmin(), d.density.shape), \
            np.unravel_index(d.density.argmax(), d.density.shape)
        unc = density_payload(d)
        return {
            "model": self.model_name, "n_layers": int(d.density.shape[0]),
            "n_heads": int(d.density.shape[1]), "d_sae": self.d_sae,
            "calibration_tokens": self.calibration_tokens, "eval_tokens": self.eval_tokens,
            "consistency_categories": self.consistency_categories,
            "consistency_mode": _MODES[self.consistency_categories],
            "consistency_method": unc["consistency_method"],
            "density": d.density, "breadth": d.breadth, "entropy": d.entropy,
            "consistency": d.consistency, "consistency_se": unc["consistency_se"],
            "density_se": unc["density_se"], "density_ci_low": unc["density_ci_low"],
            "density_ci_high": unc["density_ci_high"],
            "density_summary": {"mean": float(d.density.mean()), "min": float(d.density.min()),
                                "max": float(d.density.max()), "argmin": f"L{lo[0]}H{lo[1]}",
                                "argmax": f"L{hi[0]}H{hi[1]}", **unc["summary"]},
            "wanda": self.wanda, "magnitude": self.magnitude,
            "ablation_dppl": self.ablation.delta_ppl, "ablation_dkl": self.ablation.delta_kl,
            "ablation": {"mode": self.ablation.mode, "dense_ppl": self.ablation.dense_ppl,
                         "n_tokens": self.ablation.n_tokens},
            "spearman_density_wanda": _corr(w), "spearman_density_magnitude": _corr(
                self.magnitude_corr),
            "corr_density_ablation": {"pearson": a.pearson_r, "pearson_p": a.pearson_p,
                                      "spearman": a.rho, "spearman_p": a.p_value, "n": a.n,
                                      "layer_spearman": a.layer_rho, "layer_p": a.layer_p,
                                      **rank_interval_keys(a, {"rho": "spearman",
                                                               "pearson": "pearson"})},
            "allocations": allocations,
            "cgc_f": None if self.search is None else {
                "origin": self.cgc_f_origin, "start": self.cgc_f_start,
                "history": self.search.history, "n_evaluations": self.search.n_evaluations,
                "config": self.search.config, "calibration_kl_tokens": self.calibration_kl_tokens},
            "theorem1": self.theorem1.payload(),
            "timings": self.timings,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array :meth:`load` needs."""
        out = {f"density.{k}": np.asarray(getattr(self.density, k)) for k in _DENSITY}
        out |= {f"density.{k}": getattr(self.density, k) for k in _DENSITY_OPTIONAL
                if getattr(self.density, k) is not None}
        out |= {"wanda": self.wanda, "magnitude": self.magnitude,
                "ablation.ppl": self.ablation.ppl, "ablation.delta_kl": self.ablation.delta_kl}
        for m, a in self.allocations.items():
            out[f"alloc.{m}.retention"], out[f"alloc.{m}.sizes"] = a.retention, a.sizes
            if a.ceilings is not None:
                out[f"alloc.{m}.ceilings"] = a.ceilings
        if self.search is not None:
            out["search.history"] = self.search.history
            out["search.start"] = self.search.start.retention
            out["search.allocation"] = self.search.allocation.retention
        for k in _T1_ARRAYS:
            if getattr(self.theorem1, k) is not None:
                out[f"theorem1.{k}"] = np.asarray(getattr(self.theorem1, k))
        return {k: np.array(v, copy=True, order="C") for k, v in out.items()}  # no shared memory

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``results.json``, tables (heads, table1), arrays, figures (HTML), a report and
        the manifest, whole or not at all (:func:`cgc_lens.io.results.write_results`);
        ``overwrite`` replaces a non-empty ``out_dir`` whole."""
        frame = self.table().reset_index()
        return write_results(
            out_dir, study="capability", config=self.config, payload=self.payload(),
            tables={"heads": self.to_frame(), "table1": frame,
                    "correlations": correlation_rows(self)}, arrays=self.arrays(),
            figures=self.figures(), title=f"Capability density study: {self.model_name}",
            intro="Capability density per head (Gupta 2026, Defs 1-4), its agreement with Wanda, "
                  "single-head ablation, Uniform / CGC-L / Inverted / CGC-F allocations at "
                  f"retention {self.config.retention:g} with probes, and a direct test of "
                  "Theorem 1.\n\n" + how_sure(self), overwrite=overwrite)

    @classmethod
    def load(cls, out_dir: str | Path) -> CapabilityResult:
        """Rebuild a result from a folder written by :meth:`save`."""
        folder = read_results(out_dir)
        p, arr = folder.payload, folder.arrays
        config = CapabilityConfig.from_dict(folder.config)
        dens = {k: arr[f"density.{k}"] for k in _DENSITY}
        dens |= {k: arr.get(f"density.{k}") for k in _DENSITY_OPTIONAL}
        density = DensityResult(**dens, d_sae=int(p["d_sae"]), config=config.density,
                                consistency_method=p.get("consistency_method", "sampled"))
        allocs, scores = {}, {}
        for m, v in p["allocations"].items():
            allocs[m] = Allocation(retention=arr[f"alloc.{m}.retention"],
                                   sizes=arr[f"alloc.{m}.sizes"], rho=float(v["rho"]), method=m,
                                   ceilings=arr.get(f"alloc.{m}.ceilings"))
            scores[m] = {"ppl": v["ppl"], "kl": v["kl"], "probes": v["probes"],
                         "kl_calibration": _nan(v.get("kl_calibration"))}
        search = None
        if p.get("cgc_f") is not None and "search.history" in arr:
            f, like = p["cgc_f"], allocs["cgc_f"]
            evo = config_from_dict(EvoConfig, f["config"])
            search = SearchResult(
                allocation=_like(like, arr["search.allocation"], "cgc_f"),
                start=_like(like, arr["search.start"], str(f["start"])),
                history=arr["search.history"], n_evaluations=int(f["n_evaluations"]), config=evo)
        abl = p["ablation"]
        t1 = p["theorem1"]
        theorem1 = Theorem1Result(
            **{k: arr.get(f"theorem1.{k}") for k in _T1_ARRAYS}, pruning=t1["pruning"],
            correlations=_nan_tree(t1["spearman_density"]),
            ptp_correlations=_nan_tree(t1["spearman_density_ptp"]), n_tokens=int(t1["n_tokens"]))
        return cls(
            config=config, model_name=p["model"], d_sae=int(p["d_sae"]),
            calibration_tokens=int(p["calibration_tokens"]), eval_tokens=int(p["eval_tokens"]),
            consistency_categories=p["consistency_categories"], density=density,
            wanda=arr["wanda"], magnitude=arr["magnitude"],
            wanda_corr=_rank(p["spearman_density_wanda"]),
            magnitude_corr=_rank(p["spearman_density_magnitude"]),
            ablation=AblationResult(ppl=arr["ablation.ppl"],
                                    delta_ppl=arr["ablation.ppl"] - float(abl["dense_ppl"]),
                                    delta_kl=arr["ablation.delta_kl"],
                                    dense_ppl=float(abl["dense_ppl"]),
                                    n_tokens=int(abl["n_tokens"]), mode=abl["mode"]),
            ablation_corr=_ablation_corr(p["corr_density_ablation"]),
            allocations=allocs, scores=scores, search=search,
            cgc_f_origin=None if p.get("cgc_f") is None else p["cgc_f"]["origin"],
            cgc_f_start=None if p.get("cgc_f") is None else p["cgc_f"]["start"],
            calibration_kl_tokens=None if p.get("cgc_f") is None
            else p["cgc_f"]["calibration_kl_tokens"],
            theorem1=theorem1, timings=p.get("timings", {}))


def _like(like: Allocation, retention: np.ndarray, method: str) -> Allocation:
    return Allocation(retention=retention, sizes=like.sizes, rho=like.rho, method=method,
                      ceilings=like.ceilings)


def _corr(c: RankCorrelation) -> dict[str, Any]:
    return {"rho": c.rho, "p": c.p_value, "n": c.n, "pearson": c.pearson_r,
            "pearson_p": c.pearson_p, "mean_layer_rho": c.mean_layer_rho,
            "layer_rho": c.layer_rho, "layer_p": c.layer_p,
            **rank_interval_keys(c, {"rho": "rho", "pearson": "pearson"})}


def _intervals(d: dict[str, Any], names: dict[str, str], n: int) -> dict[str, Any]:
    """The :class:`CorrelationInterval` of each stored statistic (``rho`` → its key)."""
    out = {}
    for key, stat in names.items():
        if f"{stat}_ci_low" in d:
            out[key] = CorrelationInterval(
                statistic=_nan(d[stat]), ci_low=_nan(d[f"{stat}_ci_low"]),
                ci_high=_nan(d[f"{stat}_ci_high"]), p=_nan(d[f"{stat}_perm_p"]), n=n,
                kind="spearman" if key == "rho" else "pearson", confidence=0.95, n_resamples=0)
    return out


def _rank(d: dict[str, Any]) -> RankCorrelation:
    return RankCorrelation(rho=_nan(d["rho"]), p_value=_nan(d["p"]), n=int(d["n"]),
                           pearson_r=_nan(d["pearson"]), pearson_p=_nan(d["pearson_p"]),
                           layer_rho=np.array([_nan(x) for x in d["layer_rho"]]),
                           layer_p=np.array([_nan(x) for x in d["layer_p"]]),
                           intervals=_intervals(d, {"rho": "rho", "pearson": "pearson"},
                                                int(d["n"])))


def _ablation_corr(d: dict[str, Any]) -> RankCorrelation:
    return RankCorrelation(rho=_nan(d["spearman"]), p_value=_nan(d["spearman_p"]), n=int(d["n"]),
                           pearson_r=_nan(d["pearson"]), pearson_p=_nan(d["pearson_p"]),
                           layer_rho=np.array([_nan(x) for x in d["layer_spearman"]]),
                           layer_p=np.array([_nan(x) for x in d["layer_p"]]),
                           intervals=_intervals(d, {"rho": "spearman", "pearson": "pearson"},
                                                int(d["n"])))


def _nan_tree(x: Any) -> Any:
    """JSON ``null`` back to NaN inside correlation dicts ({rho, p, n} and their intervals)."""
    if isinstance(x, dict):
        if {"rho", "p", "n"} <= set(x):
            return {k: int(v) if k == "n" else _nan(v) for k, v in x.items()}
        return {k: _nan_tree(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_tree(v) for v in x]
    return x
