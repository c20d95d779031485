"""Which weights a compression step edits: module families, layers, heads and weight names.

Compression edits transformer-block linear weights only (App. L of the survival paper):
``attn`` = ``W_Q, W_K, W_V, W_O``; ``mlp`` = ``W_in, W_gate`` (gated models), ``W_out``.
Embeddings, unembedding, norms and biases are never targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from torch import nn

from cgc_lens.compress.layout import ATTN_WEIGHTS, MLP_WEIGHTS, OUT_AXES
from cgc_lens.errors import CgcLensError, unknown_name
from cgc_lens.sites import Head

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["FAMILIES", "Family", "Targets", "WeightRef"]

Family = Literal["attn", "mlp"]
FAMILIES: tuple[str, ...] = get_args(Family)


@dataclass(frozen=True)
class WeightRef:
    """One weight tensor, or some heads of one, that a step edits.

    Example:
        >>> str(WeightRef(1, "W_O", "blocks.1.attn.W_O", heads=(0, 2), n_heads=4))
        'blocks.1.attn.W_O[heads 0,2]'
    """

    layer: int
    """Block index."""
    name: str
    """TransformerLens weight name (``"W_Q"`` ... ``"W_out"``)."""
    param: str
    """Parameter path on the model (``"blocks.1.attn.W_O"``; ``_W_K`` for grouped-query K/V)."""
    heads: tuple[int, ...] | None = None
    """Indices along the head axis that are edited; None for the whole tensor."""
    n_heads: int | None = None
    """Size of the head axis (attention weights); None for MLP weights."""

    @property
    def out_axes(self) -> tuple[int, ...]:
        """Output-channel axes of the weight (see :data:`cgc_lens.compress.OUT_AXES`)."""
        return OUT_AXES[self.name]

    @property
    def head_ids(self) -> tuple[int, ...]:
        """The heads that the edited slice holds, in order (empty for MLP weights)."""
        if self.heads is not None:
            return self.heads
        return tuple(range(self.n_heads or 0))

    def __str__(self) -> str:
        suffix = "" if self.heads is None else f"[heads {','.join(map(str, self.heads))}]"
        return self.param + suffix


def _as_tuple(value: Any, field: str) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, str | int | Head):
        value = (value,)
    if not isinstance(value, Iterable):
        raise CgcLensError(f"Targets.{field} must be a sequence or None, got {value!r}.")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class Targets:
    """A selection of block weights. Every unset field selects everything it could.

    Sequences are stored as tuples; a single value stands for a one-element tuple.

    Example:
        >>> Targets(names=["W_O"], layers=[0, 1])
        Targets(families=None, names=('W_O',), layers=(0, 1), heads=None)
    """

    families: Family | Sequence[Family] | None = None
    """``"attn"`` and/or ``"mlp"``; None for both (for ``"attn"`` only when ``heads`` is set)."""
    names: str | Sequence[str] | None = None
    """Weight names to keep (``"W_Q"``, ``"W_O"``, ``"W_in"`` ...); None for all in the families."""
    layers: int | Sequence[int] | None = None
    """Block indices; None for every block."""
    heads: Head | Sequence[Head] | None = None
    """Edit only these heads' slices of the attention weights (and only their layers). An
    operator sees the selected slices as the whole tensor: per-channel statistics of ``W_O``
    (scales, Wanda rows, sparsity counts) then run over the selected heads only."""

    def __post_init__(self) -> None:
        for field in ("families", "names", "layers", "heads"):
            object.__setattr__(self, field, _as_tuple(getattr(self, field), field))
        for family in self.families or ():
            if family not in FAMILIES:
                raise unknown_name("module family", family, FAMILIES)
        for name in self.names or ():
            if name not in OUT_AXES:
                raise unknown_name("weight", name, OUT_AXES)
        for layer in self.layers or ():
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise CgcLensError(f"Targets.layers must hold non-negative ints, got {layer!r}.")
        for head in self.heads or ():
            if not isinstance(head, Head):
                raise CgcLensError(f"Targets.heads must hold Head(layer, head), got {head!r}.")
        if self.heads is not None and "mlp" in (self.families or ()):
            raise CgcLensError(
                "Targets.heads selects attention-head slices; MLP weights have no heads. "
                "Put MLP targets in a separate step."
            )

    def resolve(self, model: HookedTransformer) -> tuple[WeightRef, ...]:
        """The weights this selection names on ``model``, layer by layer, or raise."""
        return tuple(ref for ref, _ in self.resolve_params(model))

    def resolve_params(self, model: HookedTransformer) -> list[tuple[WeightRef, nn.Parameter]]:
        """:meth:`resolve` with each weight's parameter alongside its reference."""
        cfg = model.cfg
        where = f" on {getattr(cfg, 'model_name', 'the model')}"
        for layer in self.layers or ():
            if layer >= cfg.n_layers:
                raise CgcLensError(
                    f"Layer {layer} is outside the model{where}: it has {cfg.n_layers} layers "
                    f"(valid 0..{cfg.n_layers - 1})."
                )
        heads_by_layer: dict[int, list[int]] = {}
        for head in sorted(set(self.heads or ())):
            heads_by_layer.setdefault(head.check(model).layer, []).append(head.head)
        layers = range(cfg.n_layers) if self.layers is None else sorted(set(self.layers))
        if self.heads is not None:
            layers = [layer for layer in layers if layer in heads_by_layer]
        families = self.families or (("attn",) if self.heads is not None else FAMILIES)

        pairs: list[tuple[WeightRef, nn.Parameter]] = []
        for layer in layers:
            available = _available(model, layer, families)
            for name in self.names or ():
                if name not in available:
                    raise unknown_name(
                        "weight", name, available, where=f" in {families} of block {layer}{where}"
                    )
            for name, (path, param) in available.items():
                if self.names is not None and name not in self.names:
                    continue
                ref = _ref(model, layer, name, path=path, param=param,
                           heads=heads_by_layer.get(layer))
                pairs.append((ref, param))
        return pairs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        heads = None if self.heads is None else [[h.layer, h.head] for h in self.heads]
        return {
            "families": None if self.families is None else list(self.families),
            "names": None if self.names is None else list(self.names),
            "layers": None if self.layers is None else list(self.layers),
            "heads": heads,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Targets:
        """Inverse of :meth:`to_dict`."""
        unknown = set(data) - {"families", "names", "layers", "heads"}
        if unknown:
            raise unknown_name("Targets field", sorted(unknown)[0], cls.__dataclass_fields__)
        heads = data.get("heads")
        return cls(
            families=data.get("families"), names=data.get("names"), layers=data.get("layers"),
            heads=None if heads is None else tuple(Head(int(layer), int(h)) for layer, h in heads),
        )


def _available(
    model: HookedTransformer, layer: int, families: tuple[str, ...]
) -> dict[str, tuple[str, nn.Parameter]]:
    """``{weight name: (parameter path, parameter)}`` of the block's weights in ``families``."""
    block = model.blocks[layer]
    found: dict[str, tuple[str, nn.Parameter]] = {}
    for family, names in (("attn", ATTN_WEIGHTS), ("mlp", MLP_WEIGHTS)):
        module: nn.Module | None = getattr(block, family, None)
        if family not in families or module is None:
            continue
        params = module._parameters  # direct: get_parameter costs ~10 us per call
        for name in names:
            for attr in (name, f"_{name}"):  # grouped-query attention stores _W_K, _W_V
                if params.get(attr) is not None:
                    found[name] = (f"blocks.{layer}.{family}.{attr}", params[attr])
                    break
    return found


def _ref(
    model: HookedTransformer, layer: int, name: str, *, path: str, param: nn.Parameter,
    heads: list[int] | None,
) -> WeightRef:
    if not param.is_floating_point():
        raise CgcLensError(
            f"{path} is stored as {param.dtype} (a packed quantized format?); compression "
            "operators edit floating-point weights only."
        )
    if name not in ATTN_WEIGHTS:
        return WeightRef(layer, name, path)
    n = param.shape[0]
    if heads is not None and n != model.cfg.n_heads:  # grouped K/V: a head reads kv-head h // g
        heads = sorted({h // (model.cfg.n_heads // n) for h in heads})
    return WeightRef(layer, name, path, None if heads is None else tuple(heads), n)
