"""The forward passes of the AdaptiveCompress study beyond training and evaluation
(:mod:`cgc_lens.adaptive`): sparse probing of the residual stream, the compressor's and the
baseline's latents, pooled over each labelled sequence."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from cgc_lens.adaptive.compressor import AdaptiveCompressor
from cgc_lens.adaptive.evaluate import LabelledTokens, pooled_features
from cgc_lens.analysis.probing import probing_table, sparse_probing
from cgc_lens.saes.per_head import BatchedTopKSAE
from cgc_lens.studies.adaptive.config import AdaptiveStudyConfig

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["probe_pass"]


def probe_pass(
    model: HookedTransformer, train: LabelledTokens, test: LabelledTokens, *,
    compressor: AdaptiveCompressor, baseline: BatchedTopKSAE | None, cfg: AdaptiveStudyConfig,
    dataset: str,
) -> tuple[pd.DataFrame, list[str]]:
    """Probing accuracies of every method and site on one dataset, and the tasks skipped (with
    the reason) for too few examples."""
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
