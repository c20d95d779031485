"""AdaptiveCompress: an EMA-importance residual compressor, its training, evaluation and
collapse checks (the study itself is :mod:`cgc_lens.studies.adaptive.run`)."""

from cgc_lens.adaptive.compressor import AdaptiveCompressor, CompressorConfig, n_retained
from cgc_lens.adaptive.data import StudyData, document_tokens, study_data
from cgc_lens.adaptive.diagnostics import (
    DIAGNOSTICS,
    CollapseThresholds,
    Diagnostic,
    collapse_diagnostics,
    collapsed,
)
from cgc_lens.adaptive.evaluate import LabelledTokens, evaluate_methods, pooled_features
from cgc_lens.adaptive.objective import (
    LossTerms,
    compressor_loss,
    contrastive_loss,
    ema_update,
    retention,
)
from cgc_lens.adaptive.train import AdaptiveTrainConfig, TrainHistory, train_compressors

__all__ = [
    "DIAGNOSTICS", "AdaptiveCompressor", "AdaptiveTrainConfig", "CollapseThresholds",
    "CompressorConfig", "Diagnostic", "LabelledTokens", "LossTerms", "StudyData",
    "TrainHistory", "collapse_diagnostics", "collapsed", "compressor_loss", "contrastive_loss",
    "document_tokens", "ema_update", "evaluate_methods", "n_retained", "pooled_features",
    "retention", "study_data", "train_compressors",
]
