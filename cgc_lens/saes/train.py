"""Training batched TopK SAEs: all SAEs step together on one shuffled token stream.

Each SAE's loss is its own mean squared reconstruction error; the batched loss is their sum,
so every SAE gets exactly the gradient it would get alone, and Adam (elementwise) then makes
exactly the update it would make alone: training together equals training one at a time
(tested), only faster. Dead latents get the AuxK loss of Gao et al. (2024), whose TopK recipe
the capability-density paper follows (§3.3).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.errors import CgcLensError
from cgc_lens.forward.streaming import run_sites
from cgc_lens.progress import progress_bar
from cgc_lens.saes.per_head import BatchedSAEConfig, BatchedTopKSAE
from cgc_lens.saes.sparse_step import SparseTopKLoss, sparse_topk_loss
from cgc_lens.sites import Site

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "TrainConfig", "TrainResult", "fit_sae", "site_activations", "topk_loss", "topk_loss_dense",
    "train_batched",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train batched TopK SAEs. Defaults are the paper's (§5.2) where it gives them."""

    epochs: int = 5
    """Passes over the calibration tokens (the paper: 5)."""
    lr: float = 2e-4
    """Adam learning rate (the paper: 2e-4)."""
    batch_size: int = 128
    """Tokens per optimizer step (the paper does not say)."""
    max_steps: int | None = None
    """Stop after this many steps (for benchmarks); ``None`` runs every epoch."""
    aux_k_coef: float = 1 / 32
    """Weight of the AuxK dead-latent loss (Gao et al. 2024: 1/32); 0 turns it off."""
    aux_k: int | None = None
    """Dead latents the AuxK loss may use per token; ``None`` means ``d_in // 2``."""
    dead_after_tokens: int | None = None
    """A latent is dead after this many training tokens without firing; ``None``: one epoch."""
    init_b_dec: str = "mean"
    """``"mean"``: start each decoder bias at its SAE's input mean; ``"zeros"``: at 0."""
    seed: int = 0
    """Seeds the weight init and the token order."""
    log_every: int = 100
    """Record the loss every this many steps."""
    kernel: Literal["auto", "sparse", "dense"] = "auto"
    """``"sparse"``: loss and gradients from the k active latents per token, heads in chunks
    (:func:`topk_loss`); ``"dense"``: plain autograd on a dense ``[tokens, d_sae]`` code, as
    SAELens trains TopK SAEs by default (:func:`topk_loss_dense`). Same maths, to float32.
    ``"auto"``: sparse on CPU, dense elsewhere (the sparse kernel, which builds CSR matrices
    with unsorted columns for ``sampled_addmm``, is tested on CPU only so far)."""
    head_chunk: int | None = None
    """Heads per chunk of the sparse kernel; ``None``: 16 on CPU, all heads at once on GPU."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CgcLensError(f"TrainConfig.{name} must be a positive int, got {value!r}.")
        if not self.lr > 0:
            raise CgcLensError(f"TrainConfig.lr must be > 0, got {self.lr!r}.")
        if self.aux_k_coef < 0:
            raise CgcLensError(f"TrainConfig.aux_k_coef must be ≥ 0, got {self.aux_k_coef!r}.")
        if self.kernel not in ("auto", "sparse", "dense"):
            raise CgcLensError(
                f"TrainConfig.kernel must be 'auto', 'sparse' or 'dense', got {self.kernel!r}."
            )
        if self.head_chunk is not None and (
            not isinstance(self.head_chunk, int) or isinstance(self.head_chunk, bool)
            or self.head_chunk < 1
        ):
            raise CgcLensError(
                f"TrainConfig.head_chunk must be None or a positive int, got {self.head_chunk!r}."
            )
        if self.init_b_dec not in ("mean", "zeros"):
            raise CgcLensError(
                f"TrainConfig.init_b_dec must be 'mean' or 'zeros', got {self.init_b_dec!r}."
            )


@dataclass(kw_only=True)
class TrainResult:
    """What a training run did."""

    steps: int
    """Optimizer steps taken."""
    tokens: int
    """Training tokens seen per SAE (steps × batch)."""
    seconds: float
    """Wall time of the loop."""
    losses: list[float] = field(default_factory=list)
    """Mean per-SAE reconstruction loss (Σ over d_in, mean over tokens) every ``log_every``."""
    config: dict = field(default_factory=dict)
    """The TrainConfig, as a dict."""


def topk_loss_dense(
    sae: BatchedTopKSAE, x: Tensor, since_fired: Tensor, cfg: TrainConfig, dead_after: int
) -> Tensor:
    """:func:`topk_loss` as plain autograd on a dense ``[n, batch, d_sae]`` code (as SAELens
    trains a TopK SAE by default): the reference the sparse kernel is tested against."""
    pre = sae._pre_train(x)
    values, indices = sae._topk(pre)
    acts = torch.zeros_like(pre).scatter_(-1, indices, values)
    err = sae._decode_dense(acts) - x
    loss = err.pow(2).sum(-1).mean(-1).sum()
    with torch.no_grad():
        fired = torch.zeros_like(since_fired).scatter_add_(
            -1, rearrange(indices, "n b k -> n (b k)"),
            rearrange((values > 0).long(), "n b k -> n (b k)"),
        )
        since_fired.add_(x.shape[1]).masked_fill_(fired > 0, 0)
        dead = since_fired >= dead_after
    if cfg.aux_k_coef > 0 and bool(dead.any()):
        aux_k = _aux_k(sae, cfg)
        aux_pre = pre.masked_fill(~dead[:, None, :], float("-inf"))
        aux_values, aux_indices = aux_pre.topk(aux_k, dim=-1, sorted=False)
        aux_acts = torch.zeros_like(pre).scatter_(-1, aux_indices, aux_values.relu())
        err_hat = torch.bmm(aux_acts, sae.W_dec)
        aux = (err_hat + err.detach()).pow(2).sum(-1).mean(-1).sum()
        loss = loss + cfg.aux_k_coef * aux
    return loss


def resolve_kernel(kernel: str, device: torch.device | str) -> Literal["sparse", "dense"]:
    """The kernel ``"auto"`` stands for on ``device``: sparse on CPU, dense elsewhere."""
    if kernel == "auto":
        return "sparse" if torch.device(device).type == "cpu" else "dense"
    return kernel  # type: ignore[return-value]


def topk_loss(
    sae: BatchedTopKSAE, x: Float[Tensor, "n batch d_in"], since_fired: Int[Tensor, "n d_sae"],
    cfg: TrainConfig, dead_after: int,
) -> Float[Tensor, ""]:
    """The training loss of one batch: Σ over SAEs of the mean squared reconstruction error
    plus ``aux_k_coef`` × the AuxK loss once any latent is dead; updates ``since_fired``
    (tokens since each latent last fired) in place. ``x`` must not require grad.

    ``cfg.kernel="sparse"`` (``"auto"`` on CPU) computes the loss and its gradients from the
    k active latents per token, ``cfg.head_chunk`` heads at a time
    (:func:`~cgc_lens.saes.sparse_step.sparse_topk_loss`);
    ``"dense"`` is :func:`topk_loss_dense`. Both give the same loss and gradients up to
    float32 rounding (``tests/unit/saes/test_saes_per_head.py``).
    """
    if resolve_kernel(cfg.kernel, x.device) == "dense":
        return topk_loss_dense(sae, x, since_fired, cfg, dead_after)
    params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    opts = _sparse_opts(sae, cfg, dead_after, x.device)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return SparseTopKLoss.apply(*params, x, since_fired, opts)
    with torch.no_grad():
        return sparse_topk_loss(params, x, since_fired, grads=None, **opts)


# Heads per chunk on CPU: a chunk's [heads, batch, d_sae] tensors (4 MB at 16 × 128 × 512)
# stay in cache between the encoder, top-k and backward; 1.5× on one thread vs all at once.
_CPU_HEAD_CHUNK = 16


def _aux_k(sae: BatchedTopKSAE, cfg: TrainConfig) -> int:
    return min(cfg.aux_k or max(sae.cfg.d_in // 2, 1), sae.cfg.d_sae)


def _sparse_opts(
    sae: BatchedTopKSAE, cfg: TrainConfig, dead_after: int, device: torch.device
) -> dict[str, Any]:
    chunk = cfg.head_chunk or (_CPU_HEAD_CHUNK if device.type == "cpu" else sae.n)
    return {"k": sae.cfg.k, "aux_k": _aux_k(sae, cfg), "aux_coef": cfg.aux_k_coef,
            "dead_after": dead_after, "chunk": chunk}


def _adam(sae: BatchedTopKSAE, lr: float) -> torch.optim.Adam:
    """Adam, fused where torch has a fused kernel for the device (one pass over the weights:
    on CPU ~20× faster than the default for-loop form on per-head SAEs of GPT-2-medium size)."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(sae.parameters(), lr=lr)


def train_batched(
    sae: BatchedTopKSAE,
    acts: Float[Tensor, "n tokens d_in"],
    cfg: TrainConfig = TrainConfig(),
    *,
    progress: bool = True,
) -> TrainResult:
    """Train all SAEs of ``sae`` together on ``acts`` (``acts[i]`` feeds SAE ``i``).

    Adam on all parameters; decoder rows kept at unit norm (the gradient's component along
    each row is removed before the step, the row renormalised after).
    """
    n, n_tokens, d_in = acts.shape
    if (n, d_in) != (sae.n, sae.cfg.d_in):
        raise CgcLensError(
            f"Expected activations [n={sae.n}, tokens, d_in={sae.cfg.d_in}], "
            f"got {tuple(acts.shape)}."
        )
    device = sae.W_enc.device
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.init_b_dec == "mean":
        with torch.no_grad():
            sae.b_dec.copy_(acts.float().mean(1).to(device))
    step = _Stepper(sae, cfg, n_tokens)
    total = cfg.epochs * ((n_tokens + cfg.batch_size - 1) // cfg.batch_size)
    total = total if cfg.max_steps is None else min(total, cfg.max_steps)
    result = TrainResult(steps=0, tokens=0, seconds=0.0, config=asdict(cfg))
    running, t0 = 0.0, time.perf_counter()
    bar = progress_bar(total=total, desc="train SAEs", enabled=progress)
    while result.steps < total:
        perm = torch.randperm(n_tokens, generator=gen)
        for batch_idx in perm.split(cfg.batch_size):
            if result.steps >= total:
                break
            x = acts[:, batch_idx.to(acts.device)].to(device=device, dtype=sae.W_enc.dtype)
            loss = step(x)
            result.steps += 1
            result.tokens += x.shape[1]
            running += float(loss.detach()) / sae.n
            if result.steps % cfg.log_every == 0:
                result.losses.append(running / cfg.log_every)
                running = 0.0
            bar.update(1)
    bar.close()
    step.opt.zero_grad(set_to_none=True)
    result.seconds = time.perf_counter() - t0
    log.info("trained %d SAEs: %d steps in %.1f s", sae.n, result.steps, result.seconds)
    return result


class _Stepper:
    """One optimizer step of :func:`train_batched` on a batch ``x`` (returns its loss): the
    sparse kernel's loss and gradients in one pass, or autograd on the dense loss; then Adam
    with the decoder rows held at unit norm."""

    def __init__(self, sae: BatchedTopKSAE, cfg: TrainConfig, n_tokens: int) -> None:
        device = sae.W_enc.device
        self.sae, self.cfg = sae, cfg
        self.opt = _adam(sae, cfg.lr)
        self.dead_after = cfg.dead_after_tokens or n_tokens
        self.since_fired = torch.zeros(sae.n, sae.cfg.d_sae, dtype=torch.long, device=device)
        self.params = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
        self.sparse = resolve_kernel(cfg.kernel, device) == "sparse"
        if self.sparse:  # the kernel overwrites these every step: no allocation per step
            self.opts = _sparse_opts(sae, cfg, self.dead_after, device)
            for p in self.params:
                p.grad = torch.zeros_like(p)

    def __call__(self, x: Tensor) -> Tensor:
        sae = self.sae
        if self.sparse:
            with torch.no_grad():
                loss = sparse_topk_loss(self.params, x, self.since_fired,
                                        grads=[p.grad for p in self.params], **self.opts)
        else:
            loss = topk_loss_dense(sae, x, self.since_fired, self.cfg, self.dead_after)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            g.addcmul_(torch.linalg.vecdot(g, w)[..., None], w, value=-1)
            self.opt.step()
            w.div_(w.norm(dim=-1, keepdim=True).clamp_min(1e-8))
        return loss


def site_activations(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_seq pos"],
    sites: Sequence[Site],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> Float[Tensor, "n tokens d_in"]:
    """Each site's activations over all ``tokens``, stacked as ``[n_sites, tokens, d_in]``.

    Per-head sites of one layer share one read of ``hook_z``; the forward pass stops after
    the deepest layer read; each batch is copied straight into the (float32, CPU) result, so
    the peak memory is the result plus one batch. Sites must share their width ``d_in``.
    """
    hooks = list(dict.fromkeys(s.hook for s in sites))
    n_tokens = tokens.shape[0] * tokens.shape[1]
    state: dict[str, Any] = {"out": None, "offset": 0}

    def fill(acts: Mapping[str, Tensor], batch_index: int) -> None:
        parts = []
        for s in sites:
            act = acts[s.hook] if s.head is None else acts[s.hook][:, :, s.head]
            if act.ndim != 3:
                raise CgcLensError(
                    f"Site {s.key!r} reads {tuple(act.shape)}; per-head hooks need a head index."
                )
            parts.append(act)
        widths = {p.shape[-1] for p in parts}
        if len(widths) != 1:
            raise CgcLensError(f"Sites of one batched SAE must share d_in; got widths {widths}.")
        if state["out"] is None:
            state["out"] = torch.empty(len(sites), n_tokens, widths.pop(), dtype=torch.float32)
        start = state["offset"]
        stop = start + parts[0].shape[0] * parts[0].shape[1]
        for i, part in enumerate(parts):
            state["out"][i, start:stop] = rearrange(part, "b p d -> (b p) d").float().cpu()
        state["offset"] = stop

    run_sites(model, tokens, hooks, batch_size=batch_size, callback=fill, progress=progress,
              desc="read sites")
    return state["out"]


def fit_sae(
    model: HookedTransformer,
    tokens: Int[Tensor, "n_seq pos"],
    sae_cfg: BatchedSAEConfig,
    train_cfg: TrainConfig = TrainConfig(),
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[BatchedTopKSAE, TrainResult]:
    """Read ``sae_cfg.sites`` over ``tokens`` and train a fresh batched SAE on them.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> m = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8, d_vocab=7, act_fn="relu"))
        >>> cfg = BatchedSAEConfig.for_heads(m, expansion=2, k=2)
        >>> sae, res = fit_sae(m, torch.randint(0, 7, (4, 8)), cfg,
        ...                    TrainConfig(epochs=1, batch_size=8), progress=False)
        >>> res.steps, sae.n
        (4, 2)
    """
    acts = site_activations(model, tokens, sae_cfg.sites, batch_size=batch_size,
                            progress=progress)
    device = next(model.parameters()).device
    sae = BatchedTopKSAE(sae_cfg, seed=train_cfg.seed).to(device)
    result = train_batched(sae, acts, train_cfg, progress=progress)
    return sae, result
