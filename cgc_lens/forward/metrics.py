"""Loss-side metrics: per-token NLL, KL between two models' next-token distributions, perplexity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from cgc_lens.data import TokenBlocks, Window, sliding_windows
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.logits import final_residual, log_probs, unembed_nll
from cgc_lens.progress import progress_bar

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "PerplexityResult",
    "bos_token_id",
    "check_token_ids",
    "kl_divergence",
    "log_probs",
    "nll_kl_sums",
    "perplexity",
    "perplexity_result",
    "token_nll",
    "unigram_perplexity",
]


def token_nll(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Negative log-likelihood of each next token.

    Position ``i`` of the result scores ``tokens[:, i + 1]`` given ``tokens[:, : i + 1]``.
    The log-softmax runs in the logits' dtype when that is float32 or float64 (float64 stays
    float64); float16 and bfloat16 logits are upcast to float32 first, as their log-softmax
    loses too much precision.

    Example:
        >>> logits = torch.zeros(1, 3, 4)
        >>> token_nll(logits, torch.tensor([[0, 1, 2]]))
        tensor([[1.3863, 1.3863]])
        >>> token_nll(logits.double(), torch.tensor([[0, 1, 2]])).dtype
        torch.float64
    """
    logp = log_probs(logits[:, :-1])
    return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_divergence(
    ref_logits: Float[Tensor, "batch pos d_vocab"], logits: Float[Tensor, "batch pos d_vocab"]
) -> Float[Tensor, "batch pos"]:
    """KL(ref ‖ other) of the next-token distributions at each position, in nats.

    Computed in float32, or float64 when either input is float64 (half precision is upcast).

    Example:
        >>> x = torch.randn(2, 3, 5)
        >>> float(kl_divergence(x, x).abs().max())
        0.0
    """
    dtype = torch.promote_types(torch.promote_types(ref_logits.dtype, logits.dtype), torch.float32)
    ref_logp = torch.log_softmax(ref_logits.to(dtype), dim=-1)
    logp = torch.log_softmax(logits.to(dtype), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def nll_kl_sums(
    logp: Float[Tensor, "*lead batch pos d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    ref_logp: Float[Tensor, "batch pos d_vocab"],
    ref_p: Float[Tensor, "batch pos d_vocab"],
) -> tuple[Tensor, Tensor]:
    """Summed next-token NLL (:func:`token_nll`) and KL(ref ‖ ·) (:func:`kl_divergence`) over
    every position, per leading index, in float64, from log-probabilities (:func:`log_probs`).

    ``ref_p`` is ``ref_logp.exp()`` (kept by callers that score many models against one
    reference). ``logp`` is consumed: the KL is formed in place in its buffer (``logp − ref``,
    then one dot product with ``p_ref`` per position), which on CPU is about 3× faster than
    materialising ``p_ref (ref − logp)`` and as exact (the difference is taken elementwise,
    never as a difference of two sums). With ``logp is ref_logp`` the KL is zero.

    Example:
        >>> ref = log_probs(torch.zeros(1, 3, 4))
        >>> nll, kl = nll_kl_sums(log_probs(torch.randn(1, 3, 4)), torch.tensor([[0, 1, 2]]),
        ...                       ref, ref.exp())
        >>> nll.dtype, bool(kl >= 0)
        (torch.float64, True)
    """
    lead = logp.shape[:-3]
    target = tokens[:, 1:, None].expand(*lead, -1, -1, 1)
    nll = -logp[..., :-1, :].gather(-1, target).squeeze(-1).double().sum((-2, -1))
    if logp is ref_logp:
        return nll, torch.zeros_like(nll)
    diff = logp.sub_(ref_logp).reshape(-1, *logp.shape[-3:])  # log p − log p_ref, in place
    kl = torch.stack([-torch.einsum("bpv,bpv->bp", ref_p, d).double().sum() for d in diff])
    return nll, kl.reshape(lead)


@dataclass(frozen=True, kw_only=True)
class PerplexityResult:
    """Summed loss of one perplexity evaluation; perplexity is exp of the token-weighted mean."""

    nll_sum: float
    """Total negative log-likelihood of the scored tokens, in nats (accumulated in float64)."""
    n_tokens: int
    """How many tokens were scored."""
    protocol: Literal["chunked", "sliding"]
    """Chunked: every block resets the context. Sliding: windows of ``window`` tokens every
    ``stride`` tokens, each scoring only the positions it introduces."""
    window: int | None = None
    """Sliding-window length in stream tokens (None when chunked)."""
    stride: int | None = None
    """Sliding-window stride (None when chunked)."""

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean NLL in nats."""
        return self.nll_sum / self.n_tokens

    @property
    def perplexity(self) -> float:
        """``exp(mean_nll)``."""
        return math.exp(self.mean_nll)

    def __repr__(self) -> str:
        """The perplexity first, then what it was computed from.

        Example:
            >>> PerplexityResult(nll_sum=2 * math.log(20.0), n_tokens=2, protocol="chunked")
            PerplexityResult(perplexity=20, mean_nll=2.996, n_tokens=2, protocol='chunked')
        """
        window = (f", window={self.window}, stride={self.stride}"
                  if self.protocol == "sliding" else "")
        return (f"PerplexityResult(perplexity={self.perplexity:.6g}, mean_nll="
                f"{self.mean_nll:.4g}, n_tokens={self.n_tokens}, protocol={self.protocol!r}"
                f"{window})")


def _check_tokens(model: HookedTransformer, tokens: Tensor, width: int, *,
                  window: int | None = None) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and width > n_ctx:
        if window is not None:
            bos = width - min(window, tokens.shape[1])
            raise CgcLensError(f"Expected a sliding window of at most n_ctx={n_ctx} tokens (bos "
                               f"included), got window={window}{' + 1 bos' if bos else ''}; "
                               f"pass window <= {n_ctx - bos}.")
        raise CgcLensError(f"Expected inputs of at most n_ctx={n_ctx} tokens (bos included), got "
                           f"{width}; use shorter blocks or a sliding window.")
    check_token_ids(model, tokens)


def check_token_ids(model: HookedTransformer, tokens: Tensor) -> None:
    """Raise unless ``tokens`` is an integer tensor with every id in ``[0, d_vocab)``.

    Float or bool ids are refused rather than truncated (``2.7`` would silently read token 2).
    """
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise CgcLensError(f"Expected integer token ids, got dtype {tokens.dtype}; token ids are "
                           "never fractional: pass a torch.long tensor (tokenizer output).")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= model.cfg.d_vocab):
        raise CgcLensError(f"Expected token ids in [0, d_vocab={model.cfg.d_vocab}), got "
                           f"[{int(tokens.min())}, {int(tokens.max())}].")


def bos_token_id(model: HookedTransformer) -> int:
    """The id of the bos token fed before each block with ``prepend_bos``; raises when the
    model's tokenizer has none."""
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if bos is None:
        raise CgcLensError(f"Expected a model whose tokenizer has a bos token for "
                           f"prepend_bos=True, got {model.cfg.model_name} without one.")
    return int(bos)


def perplexity_result(
    model: HookedTransformer,
    tokens: TokenBlocks | Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
    *,
    batch_size: int = 8,
    window: int | None = None,
    stride: int | None = None,
    prepend_bos: bool = False,
    progress: bool = True,
) -> PerplexityResult:
    """Total NLL and scored-token count under the chunked or the sliding-window protocol.

    Chunked (``window=None``; survival paper §3.5): each row of ``tokens`` is a block that
    resets the context; its positions after the first are scored. Sliding (App. D): each row
    (or the 1-D stream) is read in windows of ``window`` tokens every ``stride`` tokens and
    only the newly introduced positions are scored (:func:`cgc_lens.data.blocks.sliding_windows`).
    With ``prepend_bos`` a bos token is fed before every block or window, so its first token
    is scored too.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=16,
        ...                               d_vocab=11, act_fn="relu", attn_only=True)
        >>> model = HookedTransformer(cfg)
        >>> res = perplexity_result(model, torch.randint(0, 11, (4, 16)), progress=False)
        >>> res.n_tokens, res.protocol
        (60, 'chunked')
    """
    if batch_size < 1:
        raise CgcLensError(f"Expected batch_size >= 1, got {batch_size}.")
    if (window is None) != (stride is None):
        raise CgcLensError(f"Expected window and stride together (sliding) or neither (chunked), "
                           f"got window={window}, stride={stride}.")
    if window is not None and not all(isinstance(v, int) and not isinstance(v, bool)
                                      for v in (window, stride)):
        raise CgcLensError(f"Expected int window and stride, got window={window!r}, "
                           f"stride={stride!r}.")
    if window is not None and not 1 <= stride <= window:  # type: ignore[operator]
        raise CgcLensError(f"Expected 1 <= stride <= window={window}, got stride={stride}; "
                           "stride is how many new tokens each window scores (window // 4 is "
                           "usual).")
    rows = _token_rows(tokens, chunked=window is None)
    bos = bos_token_id(model) if prepend_bos else None
    width = window if window is not None else rows.shape[1]
    _check_tokens(model, rows, min(width, rows.shape[1]) + (bos is not None), window=window)
    # chunked is the sliding protocol with one window per row
    windows = sliding_windows(rows.shape[1], window=width, stride=stride or width,
                              prepend_bos=prepend_bos)
    nll_sum, n_tokens = _scored_nll(model, rows, _window_batches(rows, windows, batch_size),
                                    bos=bos, progress=progress)
    if not torch.isfinite(nll_sum):
        raise _non_finite_loss(model, float(nll_sum))
    return PerplexityResult(nll_sum=float(nll_sum), n_tokens=n_tokens,
                            protocol="chunked" if window is None else "sliding",
                            window=window, stride=stride)


def _non_finite_loss(model: HookedTransformer, nll_sum: float) -> CgcLensError:
    """The error for a perplexity whose summed NLL is NaN or inf, naming non-finite weights."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    cause = (f"non-finite weights in {bad[:5]}{' ...' if len(bad) > 5 else ''}" if bad
             else "all weights are finite, so the activations overflow (try float32)")
    return CgcLensError(f"Perplexity is undefined: the summed NLL is {nll_sum} because the "
                        f"model's logits are NaN or inf ({cause}). Restore or reload the weights "
                        "(cgc_lens.checks.check_finite_weights names them) before evaluating.")


def _token_rows(
    tokens: TokenBlocks | Tensor, *, chunked: bool
) -> Int[Tensor, "batch pos"]:
    """The token rows of a perplexity input: blocks as they are, a 1-D stream as one row."""
    rows = tokens.tokens if isinstance(tokens, TokenBlocks) else torch.as_tensor(tokens)
    if chunked and rows.ndim != 2:
        raise CgcLensError(f"Expected [n_blocks, block_len] tokens for chunked perplexity, got "
                           f"shape {tuple(rows.shape)}; pass window= and stride= for a stream.")
    rows = rows[None] if rows.ndim == 1 else rows
    if rows.ndim != 2 or rows.numel() == 0:
        raise CgcLensError(f"Expected non-empty tokens [batch, pos] or [pos], got shape "
                           f"{tuple(rows.shape)}.")
    return rows


def _window_batches(
    rows: Tensor, windows: list[Window], batch_size: int
) -> list[list[tuple[int, int, int, int]]]:
    """(row, begin, end, score_from) per forward pass, grouped by length to batch them."""
    spans: dict[int, list[tuple[int, int, int, int]]] = {}
    for r in range(rows.shape[0]):
        for w in windows:
            spans.setdefault(w.end - w.begin, []).append((r, w.begin, w.end, w.score_from))
    return [group[i:i + batch_size] for group in spans.values()
            for i in range(0, len(group), batch_size)]


def _scored_nll(
    model: HookedTransformer, rows: Tensor, batches: list[list[tuple[int, int, int, int]]], *,
    bos: int | None, progress: bool,
) -> tuple[Tensor, int]:
    """Summed NLL (float64) and count of the positions each window scores, unembedding only
    the scored positions, a chunk at a time (:func:`unembed_nll`)."""
    device = next(model.parameters()).device
    nll_sum, n_tokens = torch.zeros((), dtype=torch.float64), 0
    with torch.inference_mode():
        w_t = model.unembed.W_U.T.contiguous()  # what every Unembed.forward makes, made once
        for batch in progress_bar(batches, desc="perplexity", enabled=progress, leave=True):
            inputs = torch.stack([rows[r, b:e] for r, b, e, _ in batch])
            if bos is not None:
                inputs = torch.cat([torch.full_like(inputs[:, :1], bos), inputs], dim=1)
            inputs = inputs.to(device=device, dtype=torch.long)
            # position j of inputs[:, :-1] predicts input j + 1, i.e. stream position
            # begin + j + 1 - bos; each window scores the positions from its score_from on
            first = torch.tensor([s - b - 1 + (bos is not None) for _, b, _, s in batch])
            mask = (torch.arange(inputs.shape[1] - 1)[None] >= first[:, None]).to(device)
            resid = final_residual(model, inputs)[:, :-1][mask]
            nll = unembed_nll(model, resid, inputs[:, 1:][mask], w_t=w_t)
            nll_sum += nll.double().sum().cpu()
            n_tokens += int(mask.sum())
    return nll_sum, n_tokens


def perplexity(
    model: HookedTransformer,
    tokens: TokenBlocks | Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
    **kwargs: Any,
) -> float:
    """Perplexity, ``exp`` of the token-weighted mean NLL.

    Takes the arguments of :func:`perplexity_result` (``batch_size``, ``window``, ``stride``,
    ``prepend_bos``, ``progress``), which holds their one definition and their checks.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=16,
        ...                               d_vocab=11, act_fn="relu", attn_only=True)
        >>> model = HookedTransformer(cfg)
        >>> stream = torch.randint(0, 11, (100,))
        >>> ppl = perplexity(model, stream, window=16, stride=4, progress=False)
        >>> 1.0 < ppl < 100.0
        True
    """
    return perplexity_result(model, tokens, **kwargs).perplexity


def unigram_perplexity(
    train_tokens: Int[Tensor, " n_train"], eval_blocks: Int[Tensor, "batch pos"], *, d_vocab: int
) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on ``train_tokens``.

    Scored on the same positions as chunked :func:`perplexity` (every position of each block
    after the first), so the two are directly comparable: the embedded model's card states
    its eval perplexity as a fraction of this baseline.

    Example:
        >>> train = torch.tensor([0, 0, 0, 1])
        >>> round(unigram_perplexity(train, torch.tensor([[1, 0, 0]]), d_vocab=2), 4)
        1.5
    """
    if train_tokens.numel() == 0 or eval_blocks.ndim != 2 or eval_blocks.shape[1] < 2:
        raise CgcLensError(
            f"Expected non-empty train tokens and eval blocks [batch, pos ≥ 2], got "
            f"{tuple(train_tokens.shape)} and {tuple(eval_blocks.shape)}."
        )
    counts = torch.bincount(train_tokens.flatten(), minlength=d_vocab).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-float(logp[eval_blocks[:, 1:].flatten()].mean()))
