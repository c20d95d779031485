"""Typed names for TransformerLens hook points and for the components that compression edits.

Hook names are TransformerLens's own, built by :func:`hook_name` and never parsed from a
shorthand. Shapes, as TransformerLens documents them:

- ``blocks.{l}.attn.hook_z``: ``[batch, pos, n_heads, d_head]`` (per-head attention output,
  before ``W_O``)
- ``blocks.{l}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post``:
  ``[batch, pos, d_model]``
- ``blocks.{l}.hook_mlp_out`` / ``hook_attn_out``: ``[batch, pos, d_model]``
- ``blocks.{l}.mlp.hook_post``: ``[batch, pos, d_mlp]``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    from torch import Tensor
    from transformer_lens import HookedTransformer

__all__ = [
    "HOOK_KINDS", "MLP", "WEIGHT_NAMES", "Head", "Site", "Weight", "hook_name", "layer_of",
    "validate_hook", "validate_param",
]

HookKind = Literal[
    "z", "q", "k", "v", "pattern", "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
    "mlp_pre", "mlp_post",
]

_TEMPLATES: dict[str, str] = {
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
}
HOOK_KINDS: tuple[str, ...] = tuple(_TEMPLATES)


def hook_name(kind: str, *, layer: int) -> str:
    """The TransformerLens hook name of ``kind`` at ``layer``.

    Example:
        >>> hook_name("z", layer=3)
        'blocks.3.attn.hook_z'
        >>> hook_name("resid_post", layer=0)
        'blocks.0.hook_resid_post'
    """
    if kind not in _TEMPLATES:
        raise unknown_name("hook kind", kind, _TEMPLATES)
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise CgcLensError(f"layer must be a non-negative int, got {layer!r}.")
    return _TEMPLATES[kind].format(layer=layer)


def layer_of(name: str) -> int:
    """The block index of a ``blocks.{l}.…`` hook name.

    Example:
        >>> layer_of("blocks.12.hook_resid_post")
        12
    """
    parts = name.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise CgcLensError(f"Hook {name!r} is not inside a block; expected 'blocks.<layer>.…'.")
    return int(parts[1])


def validate_hook(model: HookedTransformer, name: str) -> str:
    """Return ``name`` if ``model`` has that hook point, else raise with the closest names."""
    if name not in model.hook_dict:
        model_name = getattr(model.cfg, "model_name", "the model")
        raise unknown_name("hook", name, model.hook_dict, where=f" on {model_name}")
    return name


@dataclass(frozen=True, order=True)
class Site:
    """A hook point to read, optionally one head of a per-head hook.

    Example:
        >>> Site.z(2, head=1).hook
        'blocks.2.attn.hook_z'
        >>> Site.resid_post(1)
        Site(kind='resid_post', layer=1, head=None)
    """

    kind: str
    """One of :data:`HOOK_KINDS`."""
    layer: int
    """Block index."""
    head: int | None = None
    """Head index for per-head hooks (``z``, ``q``, ``k``, ``v``); ``None`` for all heads."""

    def __post_init__(self) -> None:
        hook_name(self.kind, layer=self.layer)  # validates kind and layer
        if self.head is not None and self.kind not in ("z", "q", "k", "v", "pattern"):
            raise CgcLensError(f"Site kind {self.kind!r} has no heads; got head={self.head}.")
        if self.head is not None and (not isinstance(self.head, int) or self.head < 0):
            raise CgcLensError(f"head must be a non-negative int or None, got {self.head!r}.")

    @property
    def hook(self) -> str:
        """The TransformerLens hook name."""
        return hook_name(self.kind, layer=self.layer)

    @property
    def key(self) -> str:
        """The name this site's activations go by in a reading: the hook name, plus ``[head]``.

        Example:
            >>> Site.z(2, head=1).key
            'blocks.2.attn.hook_z[1]'
            >>> Site.resid_post(0).key
            'blocks.0.hook_resid_post'
        """
        return self.hook if self.head is None else f"{self.hook}[{self.head}]"

    @classmethod
    def z(cls, layer: int, head: int | None = None) -> Site:
        """``blocks.{layer}.attn.hook_z``, optionally one head."""
        return cls("z", layer, head)

    @classmethod
    def resid_post(cls, layer: int) -> Site:
        """``blocks.{layer}.hook_resid_post``."""
        return cls("resid_post", layer)

    @classmethod
    def resid_pre(cls, layer: int) -> Site:
        """``blocks.{layer}.hook_resid_pre``."""
        return cls("resid_pre", layer)

    @classmethod
    def mlp_out(cls, layer: int) -> Site:
        """``blocks.{layer}.hook_mlp_out``."""
        return cls("mlp_out", layer)

    @classmethod
    def mlp_post(cls, layer: int) -> Site:
        """``blocks.{layer}.mlp.hook_post`` (the MLP's hidden activations)."""
        return cls("mlp_post", layer)


@dataclass(frozen=True, order=True)
class Head:
    """One attention head, the unit that capability-guided compression budgets.

    Example:
        >>> Head(1, 2)
        Head(layer=1, head=2)
    """

    layer: int
    """Block index."""
    head: int
    """Head index inside the block."""

    def __post_init__(self) -> None:
        for field, value in (("layer", self.layer), ("head", self.head)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CgcLensError(f"Head.{field} must be a non-negative int, got {value!r}.")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def check(self, model: HookedTransformer) -> Head:
        """Return self if the model has this head, else raise."""
        if self.layer >= model.cfg.n_layers or self.head >= model.cfg.n_heads:
            raise CgcLensError(
                f"{self} is outside the model: it has {model.cfg.n_layers} layers × "
                f"{model.cfg.n_heads} heads."
            )
        return self

    @property
    def site(self) -> Site:
        """This head's slice of ``hook_z``."""
        return Site.z(self.layer, head=self.head)

    def weights(self) -> tuple[Weight, ...]:
        """This head's slices of ``W_Q``, ``W_K``, ``W_V`` and ``W_O``.

        Example:
            >>> [w.param for w in Head(1, 2).weights()][-1]
            'blocks.1.attn.W_O'
        """
        return tuple(Weight(self.layer, name, self.head) for name in ("W_Q", "W_K", "W_V", "W_O"))


@dataclass(frozen=True, order=True)
class MLP:
    """One MLP sublayer.

    Example:
        >>> str(MLP(3))
        'L3.mlp'
    """

    layer: int
    """Block index."""

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise CgcLensError(f"MLP.layer must be a non-negative int, got {self.layer!r}.")

    def __str__(self) -> str:
        return f"L{self.layer}.mlp"

    def weights(self, *, gated: bool = False) -> tuple[Weight, ...]:
        """``W_in`` and ``W_out`` of this MLP, plus ``W_gate`` when ``gated``.

        Example:
            >>> [w.param for w in MLP(0).weights()]
            ['blocks.0.mlp.W_in', 'blocks.0.mlp.W_out']
        """
        names = ("W_in", "W_gate", "W_out") if gated else ("W_in", "W_out")
        return tuple(Weight(self.layer, name) for name in names)


_WEIGHT_MODULES: dict[str, str] = {
    "W_Q": "attn", "W_K": "attn", "W_V": "attn", "W_O": "attn",
    "W_in": "mlp", "W_gate": "mlp", "W_out": "mlp",
}
WEIGHT_NAMES: tuple[str, ...] = tuple(_WEIGHT_MODULES)
"""The block weight matrices compression edits, by their TransformerLens names."""


@dataclass(frozen=True, order=True)
class Weight:
    """One weight matrix of a block, or one head's slice of an attention matrix.

    TransformerLens shapes: ``W_Q/W_K/W_V`` ``[n_heads, d_model, d_head]``, ``W_O``
    ``[n_heads, d_head, d_model]``, ``W_in/W_gate`` ``[d_model, d_mlp]``, ``W_out``
    ``[d_mlp, d_model]``.

    Example:
        >>> Weight(3, "W_O", head=5).param
        'blocks.3.attn.W_O'
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> m = HookedTransformer(HookedTransformerConfig(
        ...     n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=4, d_vocab=5, act_fn="relu"))
        >>> w = Weight(0, "W_O", head=1).tensor(m)      # a view: edits reach the model
        >>> tuple(w.shape), w.data_ptr() == m.blocks[0].attn.W_O[1].data_ptr()
        ((4, 8), True)
    """

    layer: int
    """Block index."""
    name: str
    """One of :data:`WEIGHT_NAMES`."""
    head: int | None = None
    """Head index for attention matrices; ``None`` for the whole matrix."""

    def __post_init__(self) -> None:
        if self.name not in _WEIGHT_MODULES:
            raise unknown_name("weight", self.name, _WEIGHT_MODULES)
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise CgcLensError(f"Weight.layer must be a non-negative int, got {self.layer!r}.")
        if self.head is not None:
            if _WEIGHT_MODULES[self.name] != "attn":
                raise CgcLensError(f"Weight {self.name!r} has no heads; got head={self.head}.")
            if not isinstance(self.head, int) or isinstance(self.head, bool) or self.head < 0:
                raise CgcLensError(f"Weight.head must be a non-negative int, got {self.head!r}.")

    @property
    def param(self) -> str:
        """The parameter name in a standard (non-GQA) TransformerLens model."""
        return f"blocks.{self.layer}.{_WEIGHT_MODULES[self.name]}.{self.name}"

    def tensor(self, model: HookedTransformer) -> Tensor:
        """A view of this weight in ``model`` (the head's slice when ``head`` is set).

        Grouped-query models keep ``K``/``V`` as ``_W_K``/``_W_V`` with one slice per key-value
        head; a query head reads the slice of its group.
        """
        name, head = self.param, self.head
        n_kv = getattr(model.cfg, "n_key_value_heads", None)
        if self.name in ("W_K", "W_V") and n_kv is not None and n_kv != model.cfg.n_heads:
            name = f"blocks.{self.layer}.attn._{self.name}"
            head = None if head is None else head // (model.cfg.n_heads // n_kv)
        if self.head is not None:
            Head(self.layer, self.head).check(model)
        param = model.get_parameter(validate_param(model, name))
        return param if head is None else param[head]


def validate_param(model: HookedTransformer, name: str) -> str:
    """Return ``name`` if ``model`` has that parameter, else raise with the closest names.

    Example:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
        ...                               act_fn="relu")
        >>> validate_param(HookedTransformer(cfg), "blocks.0.mlp.W_in")
        'blocks.0.mlp.W_in'
    """
    names = [n for n, _ in model.named_parameters()]
    if name not in names:
        model_name = getattr(model.cfg, "model_name", "the model")
        raise unknown_name("parameter", name, names, where=f" on {model_name}")
    return name
