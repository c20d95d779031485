"""The hooked forward passes: streaming reads of hook points, losses and perplexity, per-head
ablation sweeps, and capability probes."""
