"""The AdaptiveCompress study: train the compressor (and a TopK SAE baseline) on ``hook_resid_post``
of chosen layers, evaluate both, probe their latents, and report every collapse.

``cgc-lens adaptive [--model M] [--layers …] [--steps N] --out DIR`` runs :func:`run_adaptive`
with cgc-tiny by default and writes ``DIR/results.json`` (metrics per layer for both methods,
probing accuracies against the majority baseline, collapse diagnostics, config), tables,
figures and the trained weights (``DIR/compressor``, ``DIR/baseline``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from cgc_lens.adaptive.compressor import AdaptiveCompressor, CompressorConfig
from cgc_lens.adaptive.data import StudyData, study_data
from cgc_lens.adaptive.diagnostics import (
    CollapseThresholds,
    Diagnostic,
    collapse_diagnostics,
    collapsed,
)
from cgc_lens.adaptive.evaluate import LabelledTokens, evaluate_methods, pooled_features
from cgc_lens.adaptive.train import AdaptiveTrainConfig, train_compressors
from cgc_lens.analysis.probing import ProbingConfig, probing_table, sparse_probing
from cgc_lens.io.configs import add_config_arguments, config_from_arguments
from cgc_lens.errors import CgcLensError
from cgc_lens.io.results import read_results, write_results
from cgc_lens.saes.per_head import BatchedSAEConfig, BatchedTopKSAE
from cgc_lens.saes.quality import SAEQuality
from cgc_lens.sites import Site

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["AdaptiveResult", "AdaptiveStudyConfig", "cli_arguments", "cli_main", "run_adaptive"]

log = logging.getLogger(__name__)
_NESTED = {"compressor": CompressorConfig, "train": AdaptiveTrainConfig,
           "probing": ProbingConfig, "thresholds": CollapseThresholds}


@dataclass(frozen=True, kw_only=True)
class AdaptiveStudyConfig:
    """What the AdaptiveCompress study runs on, and its parts' configs."""

    model: str = "cgc-tiny"
    """Model name or path (the paper: gemma-2-2b)."""
    layers: tuple[int, ...] | None = None
    """Layers whose hook_resid_post is compressed; None: every layer (the paper: 5 12 19)."""
    corpus: str = "cgc-tiny"
    """Corpus of the training (split train) and evaluation (split eval) tokens."""
    block_len: int = 128
    """Tokens per sequence (the paper: context length 128)."""
    eval_blocks: int = 64
    """Evaluation sequences for the quality metrics."""
    probe_blocks: int = 512
    """Probing examples per side: corpus blocks with their category, train from the
    calibration split, test from the eval split."""
    probe_datasets: tuple[str, ...] = ()
    """Extra probing datasets by name (ag_news, amazon_reviews, europarl, github_code,
    bias_in_bios: SAEBench's); they need the Hugging Face hub or its cache."""
    probe_documents: int = 1000
    """Documents loaded per extra probing dataset (split 0.7 train, 0.3 test)."""
    model_batch_size: int = 16
    """Sequences per forward pass in evaluation and probing."""
    device: str | None = None
    """Device of the model and the compressors; None: TransformerLens's default."""
    save_weights: bool = True
    """Save the trained compressor and baseline into the results folder."""
    progress: bool = True
    """Show progress bars."""
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    """The compressor's architecture."""
    train: AdaptiveTrainConfig = field(default_factory=AdaptiveTrainConfig)
    """Training of the compressor and its baseline."""
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """Sparse probing."""
    thresholds: CollapseThresholds = field(default_factory=CollapseThresholds)
    """When the collapse diagnostics fire."""

    def __post_init__(self) -> None:
        if self.layers is not None:
            layers = tuple(self.layers)
            if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
                raise CgcLensError(f"layers must be distinct ints >= 0, got {self.layers!r}.")
            object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "probe_datasets", tuple(self.probe_datasets))
        for name in ("block_len", "eval_blocks", "probe_blocks", "probe_documents",
                     "model_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (2 if name == "block_len" else 1):
                raise CgcLensError(f"{name} must be a positive int, got {value!r}.")
        for name, cls in _NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise CgcLensError(f"{name} must be a {cls.__name__}, got "
                                   f"{type(getattr(self, name)).__name__}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveStudyConfig:
        """Inverse of the JSON form saved in ``results.json``."""
        data = dict(data)
        for name, sub in _NESTED.items():
            if isinstance(data.get(name), dict):
                data[name] = sub(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in data[name].items()})
        for name in ("layers", "probe_datasets"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        return cls(**data)


@dataclass(kw_only=True)
class AdaptiveResult:
    """What the study found; :meth:`save` writes it, :meth:`load` reads it back."""

    config: AdaptiveStudyConfig
    """The config that made it."""
    metrics: pd.DataFrame
    """One row per (method, site): SAEQuality and SplicedLoss figures."""
    probing: pd.DataFrame
    """One row per (dataset, method, site, task, k): accuracy and majority baseline."""
    diagnostics: list[Diagnostic]
    """Every collapse check, fired or not."""
    history: pd.DataFrame
    """Training curves (see :class:`cgc_lens.adaptive.TrainHistory`)."""
    training: dict[str, Any] = field(default_factory=dict)
    """Steps, tokens, seconds, first non-finite loss per method/site."""
    skipped_probes: list[str] = field(default_factory=list)
    """Probing tasks skipped for too few examples, with the reason."""
    compressor: AdaptiveCompressor | None = None
    """The trained compressor (not read back by :meth:`load`; load its folder)."""
    baseline: BatchedTopKSAE | None = None
    """The trained TopK baseline."""

    @property
    def collapsed(self) -> dict[str, dict[str, list[str]]]:
        """method → site → names of the collapse checks that fired."""
        return collapsed(self.diagnostics)

    @property
    def any_collapsed(self) -> bool:
        """Whether any check fired for the compressor."""
        return any(self.collapsed.get("adaptive", {}).values())

    def to_frame(self) -> pd.DataFrame:
        """The per-layer metrics of both methods."""
        return self.metrics

    def diagnostics_frame(self) -> pd.DataFrame:
        """The diagnostics as a DataFrame."""
        return pd.DataFrame([dataclasses.asdict(d) for d in self.diagnostics])

    def probing_summary(self) -> pd.DataFrame:
        """Mean accuracy and majority baseline over tasks, per dataset, method, site and k."""
        if self.probing.empty:
            return self.probing
        keys = ["dataset", "method", "site", "k"]
        return self.probing.groupby(keys, sort=False)[["accuracy", "majority_accuracy"]].mean(
        ).reset_index()

    def payload(self) -> dict[str, Any]:
        """The ``results.json`` summary."""
        metrics: dict[str, dict[str, Any]] = {}
        for row in self.metrics.to_dict("records"):
            metrics.setdefault(row["site"], {})[row["method"]] = {
                k: v for k, v in row.items() if k not in ("site", "method")}
        return {
            "metrics": metrics, "probing": self.probing_summary().to_dict("records"),
            "probing_tasks": self.probing.to_dict("records"),
            "skipped_probes": self.skipped_probes,
            "diagnostics": [dataclasses.asdict(d) for d in self.diagnostics],
            "collapsed": self.collapsed, "any_collapsed": self.any_collapsed,
            "training": self.training,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Write the results folder (JSON, tables, figures, report) and the weights."""
        from cgc_lens.plots.adaptive import (
            plot_diagnostics,
            plot_probing,
            plot_quality_comparison,
            plot_training_curves,
        )

        figures = {"quality": plot_quality_comparison(self.metrics),
                   "diagnostics": plot_diagnostics(self.diagnostics_frame())}
        if not self.history.empty:
            figures["training_curves"] = plot_training_curves(self.history)
        if not self.probing.empty:
            figures["probing"] = plot_probing(self.probing)
        tables = {"metrics": self.metrics, "probing": self.probing,
                  "diagnostics": self.diagnostics_frame(), "history": self.history}
        fired = {m: {s: n for s, n in sites.items() if n} for m, sites in self.collapsed.items()}
        intro = ("AdaptiveCompress (EMA-importance residual compressor) beside a TopK SAE of the "
                 f"same width trained on the same tokens. Collapse checks that fired: {fired}.")
        out = write_results(out_dir, study="adaptive", config=self.config,
                            payload=self.payload(), tables=tables, figures=figures,
                            title="cgc-lens adaptive", intro=intro)
        if self.config.save_weights and self.compressor is not None:
            self.compressor.save(out / "compressor", extra={"study": "adaptive"})
        if self.config.save_weights and self.baseline is not None:
            self.baseline.save(out / "baseline")
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> AdaptiveResult:
        """Read a folder written by :meth:`save` (weights stay in their folders)."""
        folder = read_results(out_dir)
        if folder.study != "adaptive":
            raise CgcLensError(f"{out_dir} holds a {folder.study!r} study, not 'adaptive'.")
        tables = folder.tables
        diagnostics = [Diagnostic(**d) for d in folder.payload["diagnostics"]]
        probing = tables.get("probing", pd.DataFrame())
        if "latents" in probing.columns:
            probing["latents"] = probing["latents"].map(
                lambda s: [int(v) for v in str(s).strip("[]").split(",") if v.strip()])
        return cls(config=AdaptiveStudyConfig.from_dict(folder.config),
                   metrics=tables["metrics"], probing=probing, diagnostics=diagnostics,
                   history=tables.get("history", pd.DataFrame()),
                   training=folder.payload.get("training", {}),
                   skipped_probes=folder.payload.get("skipped_probes", []))


def _sites(cfg: AdaptiveStudyConfig, model: HookedTransformer) -> list[Site]:
    n_layers = model.cfg.n_layers
    layers = cfg.layers if cfg.layers is not None else tuple(range(n_layers))
    bad = [layer for layer in layers if layer >= n_layers]
    if bad:
        raise CgcLensError(f"Layers {bad} do not exist on {model.cfg.model_name}: valid are "
                           f"0..{n_layers - 1}.")
    return [Site.resid_post(layer) for layer in layers]


def run_adaptive(
    cfg: AdaptiveStudyConfig = AdaptiveStudyConfig(),
    *,
    model: HookedTransformer | None = None,
    data: StudyData | None = None,
) -> AdaptiveResult:
    """Train, evaluate, probe and check for collapse (see the module docstring).

    ``model`` and ``data`` replace loading ``cfg.model`` and reading ``cfg.corpus``.
    """
    if model is None:
        from cgc_lens.models import load_model

        model = load_model(cfg.model, device=cfg.device)
    device = next(model.parameters()).device
    sites = _sites(cfg, model)
    data = data or study_data(
        model, corpus=cfg.corpus, block_len=cfg.block_len, eval_blocks=cfg.eval_blocks,
        probe_blocks=cfg.probe_blocks, probe_datasets=cfg.probe_datasets,
        probe_documents=cfg.probe_documents, seed=cfg.train.seed)
    d_in = model.cfg.d_model
    compressor = AdaptiveCompressor(sites, d_in, cfg.compressor, model_name=model.cfg.model_name,
                                    seed=cfg.train.seed).to(device)
    baseline = None
    if cfg.train.baseline:
        k = cfg.train.baseline_k or max(1, compressor.d_sae // 8)
        baseline = BatchedTopKSAE(BatchedSAEConfig(
            sites=tuple(sites), d_in=d_in, d_sae=compressor.d_sae, k=min(k, compressor.d_sae),
            model_name=model.cfg.model_name), seed=cfg.train.seed).to(device)
    hist = train_compressors(model, data.train, compressor, cfg.train, baseline=baseline,
                             progress=cfg.progress)
    history = hist.to_frame()
    bs, progress = cfg.model_batch_size, cfg.progress
    metrics = pd.DataFrame(evaluate_methods(model, data.eval, compressor, baseline,
                                            batch_size=bs, progress=progress))
    diagnostics: list[Diagnostic] = []
    for method, part in metrics.groupby("method", sort=False):
        names = [f.name for f in dataclasses.fields(SAEQuality)]
        quality = {r["site"]: SAEQuality(**{n: r[n] for n in names})
                   for r in part.to_dict("records")}
        losses = {s: list(h["loss"]) for s, h in history[history["method"] == method].groupby(
            "site")} if not history.empty else {}
        gain = dict(zip(part["site"], part["latent_contribution"], strict=True))
        diagnostics += collapse_diagnostics(quality, method=str(method), losses=losses,
                                            latent_contribution=gain, thresholds=cfg.thresholds)
    tables, skipped = [], []
    for name, (train, test) in data.probes.items():
        table, why = _probe(model, train, test, compressor=compressor, baseline=baseline,
                            cfg=cfg, dataset=name)
        tables.append(table)
        skipped += why
    probing = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return AdaptiveResult(
        config=cfg, metrics=metrics, probing=probing, diagnostics=diagnostics, history=history,
        training={"steps": hist.steps, "tokens": hist.tokens, "seconds": hist.seconds,
                  "first_nonfinite": hist.first_nonfinite},
        skipped_probes=skipped, compressor=compressor, baseline=baseline)


def _probe(
    model: HookedTransformer, train: LabelledTokens, test: LabelledTokens, *,
    compressor: AdaptiveCompressor, baseline: BatchedTopKSAE | None, cfg: AdaptiveStudyConfig,
    dataset: str,
) -> tuple[pd.DataFrame, list[str]]:
    kw = {"batch_size": cfg.model_batch_size, "progress": cfg.progress}
    f_train = pooled_features(model, train, compressor, baseline, **kw)
    f_test = pooled_features(model, test, compressor, baseline, **kw)
    frames, skipped = [], []
    for method in f_train:
        for i, site in enumerate(compressor.sites):
            scores, why = sparse_probing(f_train[method][:, i], train.labels,
                                         f_test[method][:, i], test.labels, cfg.probing)
            frames.append(probing_table(scores, dataset=dataset, method=method, site=site.key,
                                        layer=site.layer))
            skipped += [f"{dataset} {method} {site.key}: {w}" for w in why]
    return pd.concat(frames, ignore_index=True), skipped


# --------------------------------------------------------------------------- command line


def cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cgc-lens adaptive``: every config field, and ``--out``."""
    add_config_arguments(parser, AdaptiveStudyConfig, skip=tuple(_NESTED))
    for cls in _NESTED.values():
        add_config_arguments(parser, cls)
    parser.add_argument("--out", required=True, type=Path,
                        help="results folder (results.json, tables, figures, report.html)")


def cli_main(args: argparse.Namespace) -> int:
    """Run the study from parsed options, save it to ``--out`` and log the summary."""
    nested = {name: config_from_arguments(cls, args) for name, cls in _NESTED.items()}
    cfg = config_from_arguments(AdaptiveStudyConfig, args, **nested)
    torch.manual_seed(cfg.train.seed)
    result = run_adaptive(cfg)
    out = result.save(args.out)
    columns = ["site", "method", "explained_variance", "latent_contribution", "mse", "l0",
               "dead_fraction", "kl", "ce_loss_recovered"]
    log.info("quality (eval split):\n%s", result.metrics[columns].to_string(index=False))
    if not result.probing.empty:
        log.info("sparse probing (mean over tasks):\n%s",
                 result.probing_summary().to_string(index=False))
    for method, sites in result.collapsed.items():
        for site, names in sites.items():
            log.log(logging.WARNING if names else logging.INFO, "%s %s: %s", method, site,
                    f"COLLAPSED ({', '.join(names)})" if names else "no collapse")
    log.info("results in %s", out)
    return 0
