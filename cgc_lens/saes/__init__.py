"""SAEs at hook points: SAELens loading, batched per-head TopK SAEs, attachment, quality."""

from cgc_lens.saes.attach import (
    FeatureReading,
    SAETarget,
    attached,
    hook_shape,
    run_features,
    targets_for,
    validate_sae,
)
from cgc_lens.saes.loading import EMBEDDED_SAE_DIRS, embedded_sae_ids, load_batched_sae, load_sae
from cgc_lens.saes.per_head import BatchedSAEConfig, BatchedTopKSAE
from cgc_lens.saes.quality import (
    ReconstructionStats,
    SAEEvaluation,
    SAEQuality,
    SplicedLoss,
    evaluate_saes,
)
from cgc_lens.saes.sparse_encoder import SparseCodes, SparseEncoder, topk_rows
from cgc_lens.saes.train import TrainConfig, TrainResult, fit_sae, site_activations, train_batched

__all__ = [
    "EMBEDDED_SAE_DIRS", "BatchedSAEConfig", "BatchedTopKSAE", "FeatureReading",
    "ReconstructionStats", "SAEEvaluation", "SAEQuality", "SAETarget", "SparseCodes",
    "SparseEncoder", "SplicedLoss", "TrainConfig", "TrainResult", "attached", "embedded_sae_ids",
    "evaluate_saes", "fit_sae", "hook_shape", "load_batched_sae", "load_sae", "run_features",
    "site_activations", "targets_for", "topk_rows", "train_batched", "validate_sae",
]
