"""What a training run of AdaptiveCompress records: training curves per logged window and the
first non-finite loss of each method and site."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

__all__ = ["TrainHistory", "Window", "batch_stats", "check_finite"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainHistory:
    """What a training run did: training curves per method and site, averaged per window."""

    steps: int
    """Steps taken."""
    tokens: int
    """Tokens every compressor saw."""
    seconds: float
    """Wall time of the loop."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """One row per logged window, method and site: step, method, site, layer, loss,
    reconstruction, l1, contrastive, l0, explained_variance (of the batches); the compressor's
    rows also retention and kept (latents the mask keeps)."""
    first_nonfinite: dict[str, int] = field(default_factory=dict)
    """``"method/site"`` → first step whose loss was NaN or infinite."""
    config: dict[str, Any] = field(default_factory=dict)
    """The AdaptiveTrainConfig, as a dict."""

    def to_frame(self) -> pd.DataFrame:
        """The training curves as a long DataFrame."""
        return pd.DataFrame(self.records)


class Window:
    """Running sums of per-site figures between two log points."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, int], dict[str, float]] = {}
        self.count = 0

    def add(self, method: str, values: Mapping[str, Tensor]) -> None:
        """Add one step's figures of ``method``: name → one value per site."""
        for name, per_site in values.items():
            for i, v in enumerate(per_site.detach().double().cpu().tolist()):
                row = self.sums.setdefault((method, i), {})
                row[name] = row.get(name, 0.0) + v

    def flush(
        self, step: int, sites: list[Any], extra: Mapping[str, Mapping[str, float]]
    ) -> list[dict]:
        """The window's means as records (one per method and site, with ``extra[method]``),
        and start a new window."""
        rows = []
        for (method, i), sums in self.sums.items():
            rows.append({"step": step, "method": method, "site": sites[i].key,
                         "layer": sites[i].layer, **{k: v / self.count for k, v in sums.items()},
                         **extra.get(method, {})})
        self.sums, self.count = {}, 0
        return rows


def batch_stats(x: Tensor, x_hat: Tensor, feats: Tensor) -> dict[str, Tensor]:
    """Per-site L0 and explained variance of one batch ``[n, t, d]``."""
    with torch.no_grad():
        total = (x - x.mean(1, keepdim=True)).pow(2).sum((1, 2))
        ev = 1 - (x - x_hat).pow(2).sum((1, 2)) / total.clamp_min(1e-30)
        return {"l0": (feats != 0).sum(-1).double().mean(-1), "explained_variance": ev}


def check_finite(hist: TrainHistory, method: str, sites: list[Any], loss: Tensor, i: int) -> None:
    """Record (and log) step ``i`` for each site whose loss is first non-finite there."""
    for j, value in enumerate(loss.detach().cpu().tolist()):
        key = f"{method}/{sites[j].key}"
        if not math.isfinite(value) and key not in hist.first_nonfinite:
            hist.first_nonfinite[key] = i
            log.warning("%s: non-finite training loss %s at step %d", key, value, i)
