"""Configuration of the capability-density study (Gupta 2026, §3-§5): :class:`CapabilityConfig`.

The one definition the Python API (:func:`~cgc_lens.studies.capability.run.run_capability`), the
shipped JSON configs (``cgc_lens/configs/cgc_*.json``) and ``cgc-lens cgc`` share: every field's
docstring is its ``--help``. The steps of the study are in :mod:`.steps` and :mod:`.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cgc_lens.analysis.density import DensityConfig
from cgc_lens.analysis.evolution import EvoConfig
from cgc_lens.checks import check_device_name
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.forward.probes import probe_names
from cgc_lens.io.configs import config_from_dict, config_to_dict, read_config

__all__ = ["CapabilityConfig"]


def _tiny_evo() -> EvoConfig:
    return EvoConfig(generations=20, offspring=8, survivors_per_stage=(2, 1),
                     tokens_per_stage=(1024, 4096))


@dataclass(frozen=True, kw_only=True)
class CapabilityConfig:
    """Everything the capability study needs; saved with every result."""

    model: str = "cgc-tiny"
    """Model name or path (``load_model``; unprocessed weights, as Wanda needs)."""
    device: str | None = None
    """Device of the model and SAEs; None: TransformerLens's default (CUDA when present)."""
    corpus: str | None = None
    """Corpus name or path; None: the embedded corpus for cgc-tiny, else wikitext-103-raw-v1."""
    calibration_split: str = "calibration"
    """Split the calibration tokens come from (the paper: WikiText-103's train split)."""
    eval_split: str = "eval"
    """Split of the held-out tokens (PPL, ablation, probes' reference KL)."""
    max_documents: int | None = None
    """Read at most this many documents per split (keeps large corpora quick to tokenise)."""
    categories: tuple[str, ...] | None = None
    """Calibration categories to keep (None: all the corpus has)."""
    consistency_categories: Literal["auto", "corpus", "block"] = "auto"
    """Categories of Def 3's pairs: the corpus's (``cross-category``, Def 3), every block its own
    (``cross-sequence``: a corpus without categories, such as WikiText; warns), or ``auto`` (the
    corpus's when it has >= 2, else blocks)."""
    category_field: str | None = None
    """Record field (column) of a local .jsonl/.parquet corpus, or dotted field of a hub
    dataset, holding each document's category, for Def 3's cross-category pairs; None: the
    corpus's own (a local ``category`` field, else one per file; a registered dataset's)."""
    block_len: int | None = None
    """Tokens per block; None: min(512, n_ctx)."""
    calibration_tokens: int = 16384
    """Calibration tokens (rounded down to whole blocks); the paper: 128 × 512."""
    eval_tokens: int = 8192
    """Held-out tokens (whole blocks); the paper: 32 × 512."""
    batch_size: int = 8
    """Blocks per forward pass."""
    saes: str = "auto"
    """Per-head SAEs: ``auto`` (cgc-tiny's embedded set for cgc-tiny, else ``train``), ``train``
    (fresh TopK SAEs on the calibration tokens), or a batched-SAE folder or embedded release."""
    d_sae: int | None = None
    """Dictionary size of trained SAEs; None: 8 × d_head (the paper: 512 for d_head 64)."""
    k: int = 25
    """Active features per token of trained SAEs (the paper: 25)."""
    sae_epochs: int = 5
    """Training epochs over the calibration tokens (the paper: 5)."""
    sae_lr: float = 2e-4
    """Adam learning rate (the paper: 2e-4)."""
    sae_batch_size: int = 128
    """Tokens per SAE optimizer step (not in the paper)."""
    sae_max_steps: int | None = None
    """Stop SAE training after this many steps (tests); None: every epoch."""
    density: DensityConfig = field(default_factory=DensityConfig)
    """Readings of Defs 1-4 (τ_min, α, γ, pairs); its seed is offset by ``seed``."""
    sample_per_category: int | None = None
    """Tokens kept per category for Ψ's pairs; None: 256, or 4096 / n_blocks (min 16) when
    every block is its own category."""
    ablation_mode: Literal["zero", "mean"] = "zero"
    """Per-head ablation: zero (the paper) or the head's calibration mean."""
    heads_per_pass: int | None = None
    """Ablations stacked into one forward; None: all heads of a layer on CUDA, 1 on CPU."""
    retention: float = 0.5
    """Global retention ρ of the W_O slices (the paper: 0.5)."""
    rho_min: float = 0.0
    """Def 5: retention ceiling of a density-0 head."""
    rho_max: float = 1.0
    """Def 5: retention ceiling of a density-1 head."""
    ceiling_gamma: float = 2.0
    """Def 5: concave transfer δ^(1/γ) of the ceilings."""
    floor: float = 0.0
    """Lowest retention any head may get."""
    cgc_f: bool = True
    """Run the CGC-F search (otherwise the cgc_f row is left out)."""
    evo: EvoConfig = field(default_factory=_tiny_evo)
    """CGC-F search settings; its seed is offset by ``seed``."""
    probes: tuple[str, ...] = ("induction", "arithmetic", "recall", "brackets", "copy_text")
    """Capability probes run on every allocation (cgc_lens.forward.probes registry; extensible)."""
    survival_retentions: tuple[float, ...] = (0.9, 0.75, 0.5, 0.25, 0.1)
    """Theorem 1: W_O retention levels each head is pruned to, one head at a time."""
    survival_tokens: int | None = 8192
    """Calibration tokens the Theorem 1 feature test reads (None: all)."""
    survival_pruning: Literal["magnitude", "random"] = "magnitude"
    """Theorem 1 pruning: magnitude (as the allocations) or uniformly at random (as the theorem)."""
    survival_dppl: bool = True
    """Also measure ΔPPL of each head at each level on held-out tokens (for its PTP)."""
    survived: float = 0.9
    """A feature survives when r >= this."""
    active_rate: float = 1e-3
    """A feature is active when its firing rate on the survival tokens is above this."""
    ptp_method: Literal["kneedle", "curvature"] = "kneedle"
    """Phase-transition estimator."""
    bootstrap_resamples: int = 9999
    """Bootstrap resamples of heads (and permutations) behind each correlation's interval and
    permutation p-value; seeded by ``seed``."""
    confidence: float = 0.95
    """Confidence level of the bootstrap intervals."""
    seed: int = 0
    """Seeds the block draws and SAE training, and offsets the density and CGC-F seeds."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> CgcLensError:
            return CgcLensError(f"CapabilityConfig.{name}: expected {expected}, got "
                                f"{getattr(self, name)!r}.")

        for name in ("calibration_tokens", "eval_tokens", "batch_size", "k", "sae_epochs",
                     "sae_batch_size", "bootstrap_resamples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, "a positive int")
        for name in ("block_len", "d_sae", "sae_max_steps", "sample_per_category",
                     "heads_per_pass", "survival_tokens", "max_documents"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "None or a positive int")
        if not 0 < self.retention <= 1:
            raise bad("retention", "a global retention in (0, 1]")
        if not self.sae_lr > 0:
            raise bad("sae_lr", "a positive learning rate")
        if not 0 < self.confidence < 1:
            raise bad("confidence", "a confidence level in (0, 1), e.g. 0.95")
        if self.category_field is not None and (not isinstance(self.category_field, str)
                                                or not self.category_field):
            raise bad("category_field", "None or a non-empty field name")
        levels = self.survival_retentions
        if len(levels) < 2 or len(set(levels)) != len(levels) or not all(
                0 <= r < 1 for r in levels):
            raise bad("survival_retentions", ">= 2 distinct levels in [0, 1)")
        self._check_allocation(bad)
        choices = {"consistency_categories": ("auto", "corpus", "block"),
                   "ablation_mode": ("zero", "mean"), "survival_pruning": ("magnitude", "random"),
                   "ptp_method": ("kneedle", "curvature")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise bad(name, f"one of {valid}")
        for name, cls in (("density", DensityConfig), ("evo", EvoConfig)):
            if not isinstance(getattr(self, name), cls):  # JSON: from_dict builds them
                raise bad(name, f"a {cls.__name__} (from_dict builds one from a JSON object)")
        self._check_kinds(bad)
        object.__setattr__(self, "probes", tuple(self.probes))
        object.__setattr__(self, "survival_retentions", tuple(float(r) for r in levels))
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))

    def _check_allocation(self, bad: Callable[[str, str], CgcLensError]) -> None:
        """Def 5's ceilings and the floor, each named in its own error."""
        for name in ("floor", "rho_min", "rho_max"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "a retention in [0, 1]")
        if self.rho_min > self.rho_max:
            raise CgcLensError(f"CapabilityConfig.rho_min={self.rho_min!r} is above "
                               f"rho_max={self.rho_max!r}: the ceiling of a density-0 head must "
                               "not exceed that of a density-1 head; swap them or lower rho_min.")
        if not self.ceiling_gamma > 0:
            raise bad("ceiling_gamma", "a positive γ of the transfer δ^(1/γ) (1: linear, 2: "
                      "square root)")

    def _check_kinds(self, bad: Callable[[str, str], CgcLensError]) -> None:
        """Names, flags, the seed, the device and the probes, before anything is loaded."""
        for name in ("model", "calibration_split", "eval_split", "saes"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        for name in ("cgc_f", "survival_dppl", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise bad("seed", "an int")
        if not 0 < self.survived <= 1:
            raise bad("survived", "a correlation threshold in (0, 1]")
        if not 0 <= self.active_rate < 1:
            raise bad("active_rate", "a firing rate in [0, 1)")
        check_device_name(self.device)
        if isinstance(self.probes, str) or not all(isinstance(p, str) for p in self.probes):
            raise bad("probes", "a list of probe names")
        for name in self.probes:
            if name not in probe_names():
                raise unknown_name("probe", name, probe_names(),
                                   where=" in CapabilityConfig.probes (register_probe adds one)")
        if len(set(self.probes)) != len(self.probes):
            raise bad("probes", "distinct probe names")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested configs as dicts)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapabilityConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise (with the closest valid ones)."""
        return config_from_dict(cls, data)

    @classmethod
    def from_json(cls, path: str | Path) -> CapabilityConfig:
        """Load a config file, or a shipped one by name (``"cgc_gpt2_medium"``, ``"gpt2_medium"``).

        Example:
            >>> CapabilityConfig.from_json("cgc_gpt2_medium").model
            'gpt2-medium'
        """
        return cls.from_dict(read_config(path, prefix="cgc_"))
