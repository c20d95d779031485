"""Configuration of the AdaptiveCompress study: :class:`AdaptiveStudyConfig` and its parts' configs.

The one definition the Python API (:func:`~cgc_lens.studies.adaptive.run.run_adaptive`), JSON
configs (``--config``) and ``cgc-lens adaptive`` share: every field's docstring is its ``--help``,
and the nested configs' fields are options too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cgc_lens.adaptive.compressor import CompressorConfig
from cgc_lens.adaptive.diagnostics import CollapseThresholds
from cgc_lens.adaptive.train import AdaptiveTrainConfig
from cgc_lens.analysis.probing import ProbingConfig
from cgc_lens.checks import check_device_name
from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import config_from_dict, config_to_dict, read_config

__all__ = ["NESTED", "AdaptiveStudyConfig"]

NESTED = {"compressor": CompressorConfig, "train": AdaptiveTrainConfig,
          "probing": ProbingConfig, "thresholds": CollapseThresholds}
"""The nested config fields of :class:`AdaptiveStudyConfig` and their classes."""


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
        for name in ("model", "corpus"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CgcLensError(f"{name} must be a non-empty string, got "
                                   f"{getattr(self, name)!r}.")
        for name in ("save_weights", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise CgcLensError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        check_device_name(self.device)
        for name, cls in NESTED.items():
            if not isinstance(getattr(self, name), cls):
                raise CgcLensError(f"{name} must be a {cls.__name__}, got "
                                   f"{type(getattr(self, name)).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nested configs as dicts)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveStudyConfig:
        """Inverse of :meth:`to_dict` (the JSON form saved in ``results.json``); unknown keys
        raise (with the closest valid ones)."""
        return config_from_dict(cls, data)

    @classmethod
    def from_json(cls, path: str | Path) -> AdaptiveStudyConfig:
        """Load a config file, or a shipped one by name (with or without ``adaptive_``)."""
        return cls.from_dict(read_config(path, prefix="adaptive_"))
