"""Many independent TopK SAEs held as batched tensors: one per attention head (or per site).

The capability-density paper (§3.3, §5.2) trains one TopK SAE per attention head on that
head's slice of ``hook_z``. Here the ``n`` SAEs are one module whose weights carry a leading
``n`` dimension (``W_enc [n, d_in, d_sae]``), so encoding, decoding and training run all of
them in one batched matmul instead of a loop over heads. SAE ``i`` reads ``sites[i]``.

The maths is SAELens's ``TopKSAE`` (``apply_b_dec_to_input=True``)::

    pre   = (x - b_dec) @ W_enc + b_enc
    acts  = relu(topk(pre, k))              # the other d_sae - k entries are 0
    x_hat = acts @ W_dec + b_dec

so :meth:`BatchedTopKSAE.to_saelens` exports any one SAE exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn

from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.io.serialization import load_folder, save_folder
from cgc_lens.sites import Head, Site

if TYPE_CHECKING:
    from sae_lens import TopKSAE
    from transformer_lens import HookedTransformer

__all__ = ["BatchedSAEConfig", "BatchedTopKSAE"]

FORMAT = "cgc-lens.batched-topk-sae"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.safetensors"
_PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


@dataclass(frozen=True, kw_only=True)
class BatchedSAEConfig:
    """Shape of a set of ``n = len(sites)`` independent TopK SAEs."""

    sites: tuple[Site, ...]
    """The site each SAE reads, in order (``Site.z(l, head=h)`` for per-head SAEs)."""
    d_in: int
    """Input width of every SAE (``d_head`` for per-head SAEs)."""
    d_sae: int
    """Dictionary size of every SAE (the paper: 8 × d_head)."""
    k: int = 25
    """Active features per token (the paper: 25)."""
    model_name: str | None = None
    """The model the SAEs were trained on, if known (saved as SAELens metadata on export)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance saved with the weights (training config, seed, figures)."""

    def __post_init__(self) -> None:
        sites = tuple(self.sites)
        if not sites or not all(isinstance(s, Site) for s in sites):
            raise CgcLensError(f"sites must be a non-empty sequence of Site, got {self.sites!r}.")
        if len(set(sites)) != len(sites):
            keys = [s.key for s in sites]
            raise CgcLensError(f"sites must be distinct; got duplicates in {keys}.")
        object.__setattr__(self, "sites", sites)
        for name in ("d_in", "d_sae", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CgcLensError(f"{name} must be a positive int, got {value!r}.")
        if self.k > self.d_sae:
            raise CgcLensError(f"k must be at most d_sae; got k={self.k}, d_sae={self.d_sae}.")

    @property
    def n(self) -> int:
        """Number of SAEs."""
        return len(self.sites)

    @classmethod
    def for_heads(
        cls, model: HookedTransformer, *, layers: list[int] | None = None,
        expansion: int = 8, k: int = 25,
    ) -> BatchedSAEConfig:
        """One SAE per head of ``layers`` (all layers by default), d_sae = expansion × d_head.

        Example:
            >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
            >>> m = HookedTransformer(HookedTransformerConfig(
            ...     n_layers=2, d_model=8, n_heads=2, d_head=4, n_ctx=4, d_vocab=5, act_fn="relu"))
            >>> cfg = BatchedSAEConfig.for_heads(m, k=3)
            >>> cfg.n, cfg.d_in, cfg.d_sae, cfg.sites[3].key
            (4, 4, 32, 'blocks.1.attn.hook_z[1]')
        """
        layers = list(range(model.cfg.n_layers)) if layers is None else layers
        heads = [Head(layer, h).check(model) for layer in layers for h in range(model.cfg.n_heads)]
        return cls(
            sites=tuple(head.site for head in heads), d_in=model.cfg.d_head,
            d_sae=expansion * model.cfg.d_head, k=k, model_name=model.cfg.model_name,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (sites as ``[kind, layer, head]``)."""
        out = asdict(self)
        out["sites"] = [[s.kind, s.layer, s.head] for s in self.sites]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchedSAEConfig:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        data["sites"] = tuple(Site(kind, layer, head) for kind, layer, head in data["sites"])
        return cls(**data)


def tied_unit_init(
    n: int, d_in: int, d_sae: int, gen: torch.Generator | None = None
) -> tuple[Float[Tensor, "n d_in d_sae"], Float[Tensor, "n d_sae d_in"]]:
    """Gao et al. (2024) init of ``n`` SAEs: unit-norm random decoder rows, encoder = decoder
    transposed. Returns ``(W_enc, W_dec)``.

    Example:
        >>> w_enc, w_dec = tied_unit_init(2, 3, 5)
        >>> bool(torch.allclose(w_dec.norm(dim=-1), torch.ones(2, 5)))
        True
        >>> bool((w_enc == w_dec.mT).all())
        True
    """
    w_dec = torch.randn(n, d_sae, d_in, generator=gen)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    return w_dec.transpose(1, 2).clone().contiguous(), w_dec


def _as_slice(idx: Sequence[int]) -> slice | None:
    """``idx`` as a slice when it is a contiguous increasing run (a view, not a copy)."""
    idx = list(idx)
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return None


class BatchedTopKSAE(nn.Module):
    """``n`` independent TopK SAEs with weights stacked along a leading ``n`` dimension.

    Example:
        >>> cfg = BatchedSAEConfig(sites=(Site.z(0, head=0), Site.z(0, head=1)), d_in=4,
        ...                        d_sae=16, k=2)
        >>> sae = BatchedTopKSAE(cfg, seed=0)
        >>> x = torch.randn(3, 5, 2, 4)              # [batch, pos, n, d_in]
        >>> tuple(sae.encode(x).shape), int((sae.encode(x) > 0).sum(-1).max())
        ((3, 5, 2, 16), 2)
        >>> tuple(sae(x).shape)
        (3, 5, 2, 4)
    """

    def __init__(self, cfg: BatchedSAEConfig, *, seed: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        n, d_in, d_sae = cfg.n, cfg.d_in, cfg.d_sae
        w_enc, w_dec = tied_unit_init(n, d_in, d_sae, gen)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(n, d_sae))
        self.b_dec = nn.Parameter(torch.zeros(n, d_in))

    @property
    def n(self) -> int:
        """Number of SAEs."""
        return self.cfg.n

    @property
    def sites(self) -> tuple[Site, ...]:
        """The site each SAE reads."""
        return self.cfg.sites

    def index(self, site: Site | Head | str) -> int:
        """Position of the SAE for ``site`` (a Site, a Head, or a Site key)."""
        key = site.site.key if isinstance(site, Head) else getattr(site, "key", site)
        for i, s in enumerate(self.sites):
            if s.key == key:
                return i
        raise unknown_name("SAE site", key, [s.key for s in self.sites])

    # --- core maths on [n, tokens, d] -------------------------------------------------------
    def _params(self, subset: slice | Sequence[int] | None) -> tuple[Tensor, ...]:
        params = (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        if subset is None:
            return params
        if not isinstance(subset, slice):
            subset = _as_slice(subset) or torch.as_tensor(list(subset), device=self.W_enc.device)
        return tuple(p[subset] for p in params)

    def _pre(self, x: Tensor, params: tuple[Tensor, ...] | None = None) -> Tensor:
        w_enc, b_enc, _, b_dec = params or self._params(None)
        return torch.baddbmm(b_enc[:, None, :], x - b_dec[:, None, :], w_enc)

    def _pre_train(self, x: Tensor) -> Tensor:
        """``_pre`` as ``x W_enc + (b_enc − b_dec W_enc)``: equal up to rounding, but autograd no
        longer needs the ``[n, tokens, d_in]`` input gradient (one batched matmul fewer per
        step). ``x`` must not require grad."""
        bias = self.b_enc - torch.bmm(self.b_dec[:, None, :], self.W_enc)[:, 0]
        return torch.baddbmm(bias[:, None, :], x, self.W_enc)

    def _topk(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return values.relu(), indices

    def _decode_dense(self, acts: Tensor, params: tuple[Tensor, ...] | None = None) -> Tensor:
        _, _, w_dec, b_dec = params or self._params(None)
        return torch.baddbmm(b_dec[:, None, :], acts, w_dec)

    def _flat(self, x: Tensor, n: int) -> tuple[Tensor, tuple[int, ...]]:
        if x.shape[-2:] != (n, self.cfg.d_in):
            raise CgcLensError(
                f"Expected activations [..., n={n}, d_in={self.cfg.d_in}], got {tuple(x.shape)}."
            )
        lead = tuple(x.shape[:-2])
        return rearrange(x.to(self.W_enc.dtype), "... n d -> n (...) d"), lead

    # --- public API on [..., n, d] ----------------------------------------------------------
    def encode_topk(
        self, x: Float[Tensor, "*batch n d_in"], subset: slice | Sequence[int] | None = None
    ) -> tuple[Float[Tensor, "*batch n k"], Int[Tensor, "*batch n k"]]:
        """The k largest activations of each SAE and their feature ids (values ≥ 0).

        A feature fires when its value is > 0; a top-k entry can be 0 when fewer than k
        pre-activations are positive. ``subset`` (SAE positions) runs only those SAEs; ``x``
        then has ``len(subset)`` in place of ``n``.
        """
        params = self._params(subset)
        flat, lead = self._flat(x, params[0].shape[0])
        values, indices = self._topk(self._pre(flat, params))
        m, k = params[0].shape[0], self.cfg.k
        return (
            rearrange(values, "n t k -> t n k").reshape(*lead, m, k),
            rearrange(indices, "n t k -> t n k").reshape(*lead, m, k),
        )

    def encode(
        self, x: Float[Tensor, "*batch n d_in"], subset: slice | Sequence[int] | None = None
    ) -> Float[Tensor, "*batch n d_sae"]:
        """Dense feature activations (mostly zeros): ``[..., n, d_sae]``."""
        values, indices = self.encode_topk(x, subset)
        dense = torch.zeros(*values.shape[:-1], self.cfg.d_sae, dtype=values.dtype,
                            device=values.device)
        return dense.scatter_(-1, indices, values)

    def decode(
        self, acts: Float[Tensor, "*batch n d_sae"], subset: slice | Sequence[int] | None = None
    ) -> Float[Tensor, "*batch n d_in"]:
        """Reconstruction from dense feature activations."""
        params = self._params(subset)
        lead, m = tuple(acts.shape[:-2]), params[0].shape[0]
        flat = rearrange(acts, "... n s -> n (...) s")
        return rearrange(self._decode_dense(flat, params), "n t d -> t n d").reshape(
            *lead, m, self.cfg.d_in
        )

    def forward(self, x: Float[Tensor, "*batch n d_in"]) -> Float[Tensor, "*batch n d_in"]:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def select(self, subset: Sequence[int | Site | Head | str]) -> BatchedTopKSAE:
        """A new batched SAE holding copies of the chosen SAEs only (in the order given)."""
        idx = [i if isinstance(i, int) else self.index(i) for i in subset]
        cfg = replace(self.cfg, sites=tuple(self.sites[i] for i in idx))
        out = BatchedTopKSAE(cfg).to(self.W_enc.device)
        with torch.no_grad():
            for name, param in zip(_PARAMS, self._params(idx), strict=True):
                getattr(out, name).copy_(param)
        return out

    @staticmethod
    def firing_counts(
        values: Float[Tensor, "*batch n k"], indices: Int[Tensor, "*batch n k"], d_sae: int
    ) -> Int[Tensor, "n d_sae"]:
        """How many tokens each feature of each SAE fired on (value > 0), from ``encode_topk``.

        Example:
            >>> v = torch.tensor([[[1.0, 0.0]], [[2.0, 3.0]]])   # 2 tokens, n=1, k=2
            >>> i = torch.tensor([[[0, 1]], [[0, 2]]])
            >>> BatchedTopKSAE.firing_counts(v, i, d_sae=3)
            tensor([[2, 0, 1]])
        """
        n = values.shape[-2]
        fired = (values > 0).reshape(-1, n, values.shape[-1]).long()
        counts = torch.zeros(n, d_sae, dtype=torch.long, device=values.device)
        idx = rearrange(indices.reshape(-1, n, indices.shape[-1]), "t n k -> n (t k)")
        return counts.scatter_add_(1, idx, rearrange(fired, "t n k -> n (t k)"))

    # --- persistence and export ---------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` into the folder ``path``."""
        return save_folder(path, self.state_dict(), self.cfg.to_json(), fmt=FORMAT)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> BatchedTopKSAE:
        """Inverse of :meth:`save`."""
        tensors, meta = load_folder(path, fmt=FORMAT, what="a batched SAE")
        sae = cls(BatchedSAEConfig.from_json(meta))
        sae.load_state_dict(tensors)
        return sae.to(device)

    def to_saelens(self, site: int | Site | Head | str) -> TopKSAE:
        """One SAE as a SAELens ``TopKSAE`` (inference) with hook name and head index set.

        A per-head SAE exports with ``hook_head_index`` = its head: SAELens's own evals
        (``get_recons_loss``) then splice it into that head only. ``HookedSAETransformer``
        ignores the head index, so attach it with :func:`cgc_lens.saes.attached` instead.
        """
        from sae_lens import TopKSAE, TopKSAEConfig
        from sae_lens.saes.sae import SAEMetadata

        i = site if isinstance(site, int) else self.index(site)
        if not 0 <= i < self.n:
            raise CgcLensError(f"SAE index must be in 0..{self.n - 1}, got {i}.")
        s = self.sites[i]
        metadata = SAEMetadata(
            hook_name=s.hook, hook_head_index=s.head, model_name=self.cfg.model_name
        )
        cfg = TopKSAEConfig(
            d_in=self.cfg.d_in, d_sae=self.cfg.d_sae, k=self.cfg.k, apply_b_dec_to_input=True,
            device=str(self.W_enc.device), dtype=str(self.W_enc.dtype).removeprefix("torch."),
            metadata=metadata,
        )
        sae = TopKSAE(cfg)
        with torch.no_grad():
            for name in _PARAMS:
                getattr(sae, name).copy_(getattr(self, name)[i])
        return sae
