"""The hooked forward passes: streaming reads of hook points, losses and perplexity, per-head
ablation sweeps, capability probes, the dense pass kept for a study and the forward ledger."""

from cgc_lens.forward.ablation import AblationResult, head_ablation, head_ablation_naive, head_means
from cgc_lens.forward.dense import DensePass
from cgc_lens.forward.ledger import ForwardLedger, LedgerReport, forward_ledger
from cgc_lens.forward.logits import NLL_CHUNK_ELEMENTS, final_residual, unembed_nll
from cgc_lens.forward.metrics import (
    PerplexityResult,
    kl_divergence,
    log_probs,
    nll_kl_sums,
    perplexity,
    perplexity_result,
    token_nll,
    unigram_perplexity,
)
from cgc_lens.forward.probes import (
    InductionProbe,
    Probe,
    TaskProbe,
    get_probe,
    probe_names,
    register_probe,
    run_probes,
)
from cgc_lens.forward.prune_sweep import (
    PASS_LOGITS_ELEMENTS,
    PruneSweepResult,
    head_prune_sweep,
    head_prune_sweep_naive,
)
from cgc_lens.forward.streaming import Accumulator, collect_activations, iter_batches, run_sites

__all__ = [
    "NLL_CHUNK_ELEMENTS", "PASS_LOGITS_ELEMENTS", "AblationResult", "Accumulator", "DensePass",
    "ForwardLedger", "InductionProbe", "LedgerReport", "PerplexityResult", "Probe",
    "PruneSweepResult", "TaskProbe", "collect_activations", "final_residual", "forward_ledger",
    "get_probe", "head_ablation", "head_ablation_naive", "head_means", "head_prune_sweep",
    "head_prune_sweep_naive", "iter_batches", "kl_divergence", "log_probs", "nll_kl_sums",
    "perplexity", "perplexity_result", "probe_names", "register_probe", "run_probes", "run_sites",
    "token_nll", "unembed_nll", "unigram_perplexity",
]
