"""SAE quality: reconstruction, sparsity and spliced-loss metrics, streamed over token batches.

Formulas (sums are over every evaluated token t and input dimension, in float64):

- ``mse`` = Σ‖x − x̂‖² / (T · d_in); ``sse_per_token`` = Σ‖x − x̂‖² / T (SAELens's eval "mse")
- ``explained_variance`` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the mean over all T tokens (the
  corrected SAELens ``ExplainedVarianceCalculator``; not the per-batch or per-dimension forms)
- ``l0`` = mean number of features > 0 per token; ``l1`` = mean Σ|f| per token
- ``dead_fraction``: features that never fired; ``dense_fraction``: features firing on more
  than ``dense_threshold`` of tokens
- spliced (every given SAE replaces its input by its reconstruction at once): ``kl`` = mean
  KL(clean ‖ spliced) over positions; ``ce_loss_recovered`` = (CE_zero − CE_spliced) /
  (CE_zero − CE_clean), CE_zero with the SAEs' inputs zero-ablated (SAELens's convention)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from einops import rearrange
from jaxtyping import Shaped
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import kl_divergence, token_nll
from cgc_lens.forward.streaming import iter_batches, stop_layer
from cgc_lens.progress import progress_bar
from cgc_lens.saes.attach import SAETarget, attached, targets_for

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["ReconstructionStats", "SAEEvaluation", "SAEQuality", "SplicedLoss", "evaluate_saes"]


@dataclass(frozen=True, kw_only=True)
class SAEQuality:
    """Reconstruction and sparsity figures of one SAE."""

    n_tokens: int
    """Tokens evaluated."""
    mse: float
    """Mean squared error per element."""
    sse_per_token: float
    """Squared error summed over d_in, averaged over tokens (SAELens's eval "mse")."""
    explained_variance: float
    """1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²."""
    l0: float
    """Mean active features per token."""
    l1: float
    """Mean Σ|f| per token."""
    dead_fraction: float
    """Fraction of features that never fired."""
    dense_fraction: float
    """Fraction of features firing on more than the dense threshold of tokens."""


@dataclass(frozen=True, kw_only=True)
class SplicedLoss:
    """Next-token loss with the SAEs spliced in, against the clean and zero-ablated model."""

    kl: float
    """Mean KL(clean ‖ spliced) per position, nats."""
    kl_zero_ablated: float
    """Mean KL(clean ‖ zero-ablated) per position, nats."""
    ce_clean: float
    """Mean next-token cross-entropy of the clean model."""
    ce_spliced: float
    """… with the SAEs spliced in."""
    ce_zero_ablated: float
    """… with the SAEs' inputs zero-ablated."""
    ce_loss_recovered: float
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean)."""


@dataclass(frozen=True, kw_only=True)
class SAEEvaluation:
    """Per-SAE quality (keyed by site key) and, when spliced, the joint loss figures."""

    per_sae: dict[str, SAEQuality]
    """Site key (``"blocks.2.hook_resid_post"``, ``"blocks.1.attn.hook_z[3]"``) → figures."""
    spliced: SplicedLoss | None
    """Loss figures with all evaluated SAEs spliced in together; ``None`` if not run."""
    spliced_each: dict[str, SplicedLoss] = field(default_factory=dict)
    """``splice="each"``: name → loss figures with that SAE spliced in alone."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "per_sae": {k: asdict(v) for k, v in self.per_sae.items()},
            "spliced": None if self.spliced is None else asdict(self.spliced),
            "spliced_each": {k: asdict(v) for k, v in self.spliced_each.items()},
        }


class ReconstructionStats:
    """Float64 running sums for ``m`` SAEs fed ``[tokens, m, d_in]`` inputs at a time."""

    def __init__(self, m: int, d_in: int, d_sae: int) -> None:
        f64 = torch.float64
        self.n = 0
        self.sum_x = torch.zeros(m, d_in, dtype=f64)
        self.sum_sq = torch.zeros(m, dtype=f64)
        self.sse = torch.zeros(m, dtype=f64)
        self.l0 = torch.zeros(m, dtype=f64)
        self.l1 = torch.zeros(m, dtype=f64)
        self.fired = torch.zeros(m, d_sae, dtype=torch.long)

    def update(self, x: Tensor, x_hat: Tensor, feats: Tensor) -> None:
        """Add a batch: ``x``, ``x_hat`` ``[tokens, m, d_in]``; ``feats`` ``[tokens, m, d_sae]``."""
        x, x_hat, feats = (t.detach().double().cpu() for t in (x, x_hat, feats))
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_sq += x.pow(2).sum((0, 2))
        self.sse += (x - x_hat).pow(2).sum((0, 2))
        self.l0 += (feats != 0).sum((0, 2))
        self.l1 += feats.abs().sum((0, 2))
        self.fired += (feats != 0).sum(0)

    def result(self, dense_threshold: float = 0.1) -> list[SAEQuality]:
        """One :class:`SAEQuality` per SAE."""
        n, d_in = max(self.n, 1), self.sum_x.shape[1]
        total_var = self.sum_sq - self.sum_x.pow(2).sum(-1) / n
        ev = 1 - self.sse / total_var.clamp_min(1e-30)
        rate = self.fired.double() / n
        return [
            SAEQuality(
                n_tokens=self.n, mse=float(self.sse[i] / (n * d_in)),
                sse_per_token=float(self.sse[i] / n), explained_variance=float(ev[i]),
                l0=float(self.l0[i] / n), l1=float(self.l1[i] / n),
                dead_fraction=float((self.fired[i] == 0).double().mean()),
                dense_fraction=float((rate[i] > dense_threshold).double().mean()),
            )
            for i in range(self.sum_x.shape[0])
        ]


def _site_keys(target: SAETarget) -> list[str]:
    if target.batched:
        idx = target.subset
        idx = range(idx.start, idx.stop) if isinstance(idx, slice) else idx
        return [target.sae.sites[i].key for i in idx]
    return [target.key]


def _as_tokens_m_d(t: Tensor) -> Tensor:
    return rearrange(t, "b p m d -> (b p) m d") if t.ndim == 4 else rearrange(
        t, "b p d -> (b p) 1 d"
    )


@torch.no_grad()
def evaluate_saes(
    model: HookedTransformer,
    tokens: Shaped[Tensor, "n_seq pos"] | Iterable[Tensor],
    saes: Sequence[Any] | Mapping[str, Any],
    *,
    batch_size: int = 8,
    splice: bool | Literal["each"] = True,
    dense_threshold: float = 0.1,
    progress: bool = True,
    read_only: Mapping[str, Any] | None = None,
) -> SAEEvaluation:
    """Quality of SAELens SAEs and batched SAEs on ``tokens`` (see the module docstring).

    Reconstruction figures come from one clean pass per batch (stopped after the deepest SAE
    when ``splice`` is off); ``splice`` adds a spliced and a zero-ablated full pass.

    ``splice="each"``: ``saes`` maps a name to one SAE at one site (several may read the same
    site); each is spliced in alone (``spliced_each``), from one clean pass per batch for all
    of them, and one zero-ablated pass per site ablated; ``read_only`` (name → SAE) are read in
    that clean pass for their reconstruction figures and never spliced. ``per_sae`` is keyed by
    name. The figures equal those of one call per SAE.
    """
    if splice == "each":
        return _evaluate_each(model, tokens, saes, read_only or {}, batch_size=batch_size,
                              dense_threshold=dense_threshold, progress=progress)
    if not isinstance(saes, Sequence) or read_only:
        raise CgcLensError("A mapping of named SAEs and read_only go with splice='each'; "
                           f"got splice={splice!r}.")
    targets = targets_for(model, saes)
    stats = [ReconstructionStats(len(_site_keys(t)), *_dims(t)) for t in targets]
    sums = dict.fromkeys(("kl", "kl0", "ce", "ce_s", "ce_0", "n_kl", "n_ce"), 0.0)
    stop = None if splice else stop_layer(model, [t.hook for t in targets])
    batches, n_batches = iter_batches(tokens, batch_size)
    for cpu_batch in progress_bar(batches, total=n_batches, enabled=progress,
                                  desc="SAE quality"):
        batch = cpu_batch.to(model.cfg.device)
        with attached(model, targets, keep_inputs=True) as reading:
            clean = model(batch, stop_at_layer=stop, return_type="logits" if splice else None)
        for target, stat in zip(targets, stats, strict=True):
            feats = reading.features[target.key]
            x_hat = target.decode(feats)
            stat.update(*(_as_tokens_m_d(t) for t in (reading.inputs[target.key], x_hat, feats)))
        if not splice:
            continue
        with attached(model, targets, mode="splice"):
            spliced = model(batch)
        with attached(model, targets, mode="zero"):
            zeroed = model(batch)
        _add_losses(sums, batch, clean, spliced, zeroed)
    per_sae: dict[str, SAEQuality] = {}
    for target, stat in zip(targets, stats, strict=True):
        per_sae.update(zip(_site_keys(target), stat.result(dense_threshold), strict=True))
    spliced_loss = _spliced_loss(sums) if splice and sums["n_ce"] else None
    return SAEEvaluation(per_sae=per_sae, spliced=spliced_loss)


def _dims(target: SAETarget) -> tuple[int, int]:
    return target.sae.cfg.d_in, target.sae.cfg.d_sae


def _named_targets(model: HookedTransformer, named: Mapping[str, Any]) -> list[SAETarget]:
    """One target per name, keyed by the name; each must read one site."""
    out = []
    for name, sae in named.items():
        targets = targets_for(model, [sae])
        if len(targets) != 1 or len(_site_keys(targets[0])) != 1:
            raise CgcLensError(f"splice='each' needs one SAE at one site per name; {name!r} "
                               f"reads {sum(len(_site_keys(t)) for t in targets)} sites.")
        out.append(replace(targets[0], key=name))
    return out


def _spliced_loss(sums: dict[str, float]) -> SplicedLoss:
    ce, ce_s, ce_0 = (sums[k] / sums["n_ce"] for k in ("ce", "ce_s", "ce_0"))
    return SplicedLoss(
        kl=sums["kl"] / sums["n_kl"], kl_zero_ablated=sums["kl0"] / sums["n_kl"],
        ce_clean=ce, ce_spliced=ce_s, ce_zero_ablated=ce_0,
        ce_loss_recovered=(ce_0 - ce_s) / (ce_0 - ce) if ce_0 != ce else float("nan"))


@torch.no_grad()
def _evaluate_each(
    model: HookedTransformer, tokens: Any, named: Mapping[str, Any], read_only: Mapping[str, Any],
    *, batch_size: int, dense_threshold: float, progress: bool,
) -> SAEEvaluation:
    """``evaluate_saes(..., splice="each")``: per batch one clean pass reading every SAE, one
    spliced pass per SAE of ``named``, one zero-ablated pass per site (and heads) ablated."""
    spliced = _named_targets(model, named)
    targets = spliced + _named_targets(model, read_only)
    if len({t.key for t in targets}) != len(targets):
        raise CgcLensError(f"Names must differ between saes and read_only; got "
                           f"{sorted(named)} and {sorted(read_only)}.")
    stats = [ReconstructionStats(1, *_dims(t)) for t in targets]
    site = {t.key: (t.hook, None if t.heads is None else tuple(t.heads)) for t in spliced}
    sums = {t.key: dict.fromkeys(("kl", "kl0", "ce", "ce_s", "ce_0", "n_kl", "n_ce"), 0.0)
            for t in spliced}
    batches, n_batches = iter_batches(tokens, batch_size)
    for cpu_batch in progress_bar(batches, total=n_batches, enabled=progress,
                                  desc="SAE quality"):
        batch = cpu_batch.to(model.cfg.device)
        with attached(model, targets, keep_inputs=True) as reading:
            clean = model(batch, return_type="logits")
        for target, stat in zip(targets, stats, strict=True):
            feats = reading.features[target.key]
            stat.update(*(_as_tokens_m_d(t) for t in (reading.inputs[target.key],
                                                      target.decode(feats), feats)))
        zeroed: dict[Any, Tensor] = {}
        for target in spliced:
            if site[target.key] not in zeroed:
                with attached(model, [target], mode="zero"):
                    zeroed[site[target.key]] = model(batch)
            with attached(model, [target], mode="splice"):
                out = model(batch)
            _add_losses(sums[target.key], batch, clean, out, zeroed[site[target.key]])
    per_sae = {t.key: stat.result(dense_threshold)[0] for t, stat in zip(targets, stats,
                                                                         strict=True)}
    each = {k: _spliced_loss(v) for k, v in sums.items() if v["n_ce"]}
    return SAEEvaluation(per_sae=per_sae, spliced=None, spliced_each=each)


def _add_losses(sums: dict[str, float], batch: Tensor, clean: Tensor, spliced: Tensor,
                zeroed: Tensor) -> None:
    """Add one batch's KL and CE sums, in :func:`evaluate_saes`'s order."""
    sums["kl"] += float(kl_divergence(clean, spliced).double().sum())
    sums["kl0"] += float(kl_divergence(clean, zeroed).double().sum())
    sums["n_kl"] += clean.shape[0] * clean.shape[1]
    for name, logits in (("ce", clean), ("ce_s", spliced), ("ce_0", zeroed)):
        sums[name] += float(token_nll(logits, batch).double().sum())
    sums["n_ce"] += batch.shape[0] * (batch.shape[1] - 1)
