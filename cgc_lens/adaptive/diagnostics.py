"""Collapse diagnostics: the failures the AdaptiveCompress paper reports, named and never hidden.

The paper's own results show complete signal blocking (L0 = 0), negative explained variance
(−0.785) and a high reconstruction error. Each evaluated (method, site) gets these named checks;
every check is kept in the result whether it fired or not, and every one that fired is logged
as a warning.

- ``dead_latents``: the fraction of latents that never fired on the evaluation tokens is at
  least ``max_dead_fraction``;
- ``zero_l0``: fewer than ``min_l0`` active latents per token (signal blocking);
- ``negative_explained_variance``: explained variance below ``min_explained_variance``;
- ``exploding_loss``: a training loss was NaN or infinite, or the last logged loss exceeds
  ``max_loss_growth`` × the lowest;
- ``latents_unused``: the latents add less than ``min_latent_contribution`` explained variance
  to what the reconstruction explains without them (the compressor's 0.1 h skip term and b_dec
  alone explain 1 − 0.9² = 0.19): the signal is blocked even where L0 > 0.

Non-finite figures fire their check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cgc_lens.errors import CgcLensError
from cgc_lens.saes.quality import SAEQuality

__all__ = ["DIAGNOSTICS", "CollapseThresholds", "Diagnostic", "collapse_diagnostics", "collapsed"]

log = logging.getLogger(__name__)

DIAGNOSTICS: tuple[str, ...] = (
    "dead_latents", "zero_l0", "negative_explained_variance", "exploding_loss", "latents_unused",
)
"""The names of the collapse checks, in the order they are reported."""


@dataclass(frozen=True, kw_only=True)
class CollapseThresholds:
    """When a collapse diagnostic fires."""

    max_dead_fraction: float = 0.5
    """dead_latents fires when at least this fraction of latents never fired."""
    min_l0: float = 0.1
    """zero_l0 fires when the mean number of active latents per token is below this (one
    latent on one token in ten: the signal is blocked)."""
    min_explained_variance: float = 0.0
    """negative_explained_variance fires below this explained variance."""
    max_loss_growth: float = 10.0
    """exploding_loss fires when the last logged training loss exceeds this × the lowest one."""
    min_latent_contribution: float = 0.05
    """latents_unused fires when the latents add less explained variance than this to the
    reconstruction without them (skip term and biases)."""

    def __post_init__(self) -> None:
        if not 0 < self.max_dead_fraction <= 1:
            raise CgcLensError(
                f"max_dead_fraction must be in (0, 1], got {self.max_dead_fraction!r}."
            )
        if not self.min_l0 >= 0:
            raise CgcLensError(f"min_l0 must be >= 0, got {self.min_l0!r}.")
        if not math.isfinite(self.min_explained_variance):
            raise CgcLensError(
                f"min_explained_variance must be finite, got {self.min_explained_variance!r}."
            )
        if not self.max_loss_growth > 1:
            raise CgcLensError(f"max_loss_growth must be > 1, got {self.max_loss_growth!r}.")
        if not math.isfinite(self.min_latent_contribution):
            raise CgcLensError(f"min_latent_contribution must be finite, got "
                               f"{self.min_latent_contribution!r}.")


@dataclass(frozen=True, kw_only=True)
class Diagnostic:
    """One check of one (method, site)."""

    name: str
    """One of :data:`DIAGNOSTICS`."""
    method: str
    """``"adaptive"`` or ``"topk"``."""
    site: str
    """Site key."""
    value: float
    """The figure checked (NaN when it could not be measured)."""
    threshold: float
    """The threshold it was checked against."""
    fired: bool
    """Whether it signals collapse."""
    message: str
    """What was found, in words."""


def _bad(value: float) -> bool:
    return not math.isfinite(value)


def _loss_growth(losses: Sequence[float]) -> tuple[float, bool]:
    """(last / lowest logged loss, any non-finite)."""
    nonfinite = any(_bad(v) for v in losses)
    finite = [v for v in losses if not _bad(v)]
    if not finite:
        return math.nan, True
    low = min(finite)
    growth = finite[-1] / low if low > 0 else (1.0 if finite[-1] <= 0 else math.inf)
    return growth, nonfinite


def collapse_diagnostics(
    quality: Mapping[str, SAEQuality],
    *,
    method: str,
    losses: Mapping[str, Sequence[float]] | None = None,
    latent_contribution: Mapping[str, float] | None = None,
    thresholds: CollapseThresholds = CollapseThresholds(),
) -> list[Diagnostic]:
    """The checks for every site of one method; fired ones are logged as warnings.

    Args:
        quality: site key → evaluation figures (from :func:`cgc_lens.saes.evaluate_saes`).
        method: the method's name, for the report.
        losses: site key → the logged training losses, in order (skips ``exploding_loss`` for
            sites without any).
        latent_contribution: site key → explained variance with the latents minus without
            them (skips ``latents_unused`` for sites without one).
        thresholds: when each check fires.

    Example:
        >>> q = SAEQuality(n_tokens=10, mse=3.0, sse_per_token=9.0, explained_variance=-0.8,
        ...                l0=0.0, l1=0.0, dead_fraction=1.0, dense_fraction=0.0)
        >>> [d.name for d in collapse_diagnostics({"s": q}, method="adaptive") if d.fired]
        ['dead_latents', 'zero_l0', 'negative_explained_variance']
    """
    t, out = thresholds, []
    for site, q in quality.items():
        checks: list[tuple[str, float, float, bool, str]] = [
            ("dead_latents", q.dead_fraction, t.max_dead_fraction,
             _bad(q.dead_fraction) or q.dead_fraction >= t.max_dead_fraction,
             f"{q.dead_fraction:.1%} of latents never fired"),
            ("zero_l0", q.l0, t.min_l0, _bad(q.l0) or q.l0 < t.min_l0,
             f"{q.l0:.4g} active latents per token"),
            ("negative_explained_variance", q.explained_variance, t.min_explained_variance,
             _bad(q.explained_variance) or q.explained_variance < t.min_explained_variance,
             f"explained variance {q.explained_variance:.4g}"),
        ]
        site_losses = list((losses or {}).get(site, ()))
        if site_losses:
            growth, nonfinite = _loss_growth(site_losses)
            fired = nonfinite or _bad(growth) or growth > t.max_loss_growth
            what = "non-finite training loss; " if nonfinite else ""
            checks.append(("exploding_loss", growth, t.max_loss_growth, fired,
                           f"{what}last logged loss {growth:.4g} × the lowest"))
        if latent_contribution is not None and site in latent_contribution:
            gain = float(latent_contribution[site])
            checks.append(("latents_unused", gain, t.min_latent_contribution,
                           _bad(gain) or gain < t.min_latent_contribution,
                           f"the latents add {gain:.4g} explained variance"))
        for name, value, threshold, fired, message in checks:
            diag = Diagnostic(name=name, method=method, site=site, value=float(value),
                              threshold=float(threshold), fired=bool(fired), message=message)
            if fired:
                log.warning("collapse: %s at %s: %s: %s", method, site, name, message)
            out.append(diag)
    return out


def collapsed(diagnostics: Sequence[Diagnostic]) -> dict[str, dict[str, list[str]]]:
    """method → site → names of the checks that fired (empty list: healthy)."""
    out: dict[str, dict[str, list[str]]] = {}
    for d in diagnostics:
        names = out.setdefault(d.method, {}).setdefault(d.site, [])
        if d.fired:
            names.append(d.name)
    return out

