"""The AdaptiveCompress study: train the compressor (and a TopK SAE baseline) on ``hook_resid_post``
of chosen layers, evaluate both, probe their latents, and report every collapse.

``cgc-lens adaptive [--model M] [--layers …] [--steps N] --out DIR`` runs :func:`run_adaptive`
with cgc-tiny by default and writes ``DIR/results.json`` (metrics per layer for both methods,
probing accuracies against the majority baseline, collapse diagnostics, config), tables,
figures and the trained weights (``DIR/compressor``, ``DIR/baseline``). The config is
:mod:`.config`, the probing pass :mod:`.passes`, the result type :mod:`.result`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import pandas as pd

from cgc_lens.adaptive.compressor import AdaptiveCompressor
from cgc_lens.adaptive.data import StudyData, study_data
from cgc_lens.adaptive.diagnostics import Diagnostic, collapse_diagnostics
from cgc_lens.adaptive.evaluate import evaluate_methods
from cgc_lens.adaptive.train import train_compressors
from cgc_lens.checks import check_device, check_finite_weights
from cgc_lens.errors import CgcLensError
from cgc_lens.progress import Stages
from cgc_lens.saes.per_head import BatchedSAEConfig, BatchedTopKSAE
from cgc_lens.saes.quality import SAEQuality
from cgc_lens.sites import Site
from cgc_lens.studies.adaptive.config import AdaptiveStudyConfig
from cgc_lens.studies.adaptive.passes import probe_pass
from cgc_lens.studies.adaptive.result import AdaptiveResult

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["run_adaptive"]

log = logging.getLogger(__name__)

_STAGES = ("load model", "read tokens", "train compressors", "evaluate quality", "probing")
"""The steps of :func:`run_adaptive` its stage bar names while each runs."""


def _sites(cfg: AdaptiveStudyConfig, model: HookedTransformer) -> list[Site]:
    n_layers = model.cfg.n_layers
    layers = cfg.layers if cfg.layers is not None else tuple(range(n_layers))
    bad = [layer for layer in layers if layer >= n_layers]
    if bad:
        raise CgcLensError(f"Layers {bad} do not exist on {model.cfg.model_name}: valid are "
                           f"0..{n_layers - 1}.")
    return [Site.resid_post(layer) for layer in layers]


def _diagnostics(cfg: AdaptiveStudyConfig, metrics: pd.DataFrame,
                 history: pd.DataFrame) -> list[Diagnostic]:
    """Every collapse check of both methods at every site."""
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
    return diagnostics


def run_adaptive(
    cfg: AdaptiveStudyConfig | None = None,
    *,
    model: HookedTransformer | None = None,
    data: StudyData | None = None,
) -> AdaptiveResult:
    """Train, evaluate, probe and check for collapse (see the module docstring).

    ``model`` and ``data`` replace loading ``cfg.model`` and reading ``cfg.corpus``; ``cfg``
    defaults to ``AdaptiveStudyConfig()`` (cgc-tiny).
    """
    cfg = AdaptiveStudyConfig() if cfg is None else cfg
    stages = Stages(_STAGES, desc="adaptive", enabled=cfg.progress)
    if model is None:
        from cgc_lens.models import load_model

        check_device(cfg.device)
        model = load_model(cfg.model, device=cfg.device)
    check_finite_weights(model, what=f"the model {model.cfg.model_name!r}")
    device = next(model.parameters()).device
    sites = _sites(cfg, model)
    stages.next()
    data = data or study_data(
        model, corpus=cfg.corpus, block_len=cfg.block_len, eval_blocks=cfg.eval_blocks,
        probe_blocks=cfg.probe_blocks, probe_datasets=cfg.probe_datasets,
        probe_documents=cfg.probe_documents, seed=cfg.train.seed)
    stages.next()
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
    stages.next()
    history = hist.to_frame()
    bs, progress = cfg.model_batch_size, cfg.progress
    metrics = pd.DataFrame(evaluate_methods(model, data.eval, compressor, baseline,
                                            batch_size=bs, progress=progress))
    diagnostics = _diagnostics(cfg, metrics, history)
    stages.next()
    tables, skipped = [], []
    for name, (train, test) in data.probes.items():
        stages.bar.set_description(f"adaptive: probing {name}")
        table, why = probe_pass(model, train, test, compressor=compressor, baseline=baseline,
                                cfg=cfg, dataset=name)
        tables.append(table)
        skipped += why
    probing = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    stages.next()
    return AdaptiveResult(
        config=cfg, metrics=metrics, probing=probing, diagnostics=diagnostics, history=history,
        training={"steps": hist.steps, "tokens": hist.tokens, "seconds": hist.seconds,
                  "first_nonfinite": hist.first_nonfinite},
        skipped_probes=skipped, compressor=compressor, baseline=baseline)
