"""Round-to-nearest (RTN) weight quantization, dequantized back to floating point: the
:class:`RTN` operator and its kernels.

Per-channel symmetric arithmetic follows ``torch.fake_quantize_per_channel_affine`` bit for
bit: ``w' = clamp(round(w * (1 / scale)), qmin, qmax) * scale``, rounding half to even, in
float32 (float64 weights stay float64).

Conventions (libraries disagree on what "symmetric" means):

- ``"symmetric"`` (default; Eq. 2 of the survival paper, App. C/L):
  ``scale = max|w| / (2^(b-1) - 1)`` per output channel, integers in
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, no zero point.
- ``"symmetric_full"``: ``scale = max|w| / ((2^b - 1) / 2)``, integers in
  ``[-2^(b-1), 2^(b-1) - 1]`` (compressed-tensors; ``torch.ao`` ``PerChannelMinMaxObserver``
  with ``qscheme=torch.per_channel_symmetric``).
- ``"asymmetric"``: min-max with a zero point, as GPTQ's RTN baseline: the range is widened to
  contain 0, ``scale = (max - min) / (2^b - 1)``, ``z = round(-min / scale)``, integers in
  ``[0, 2^b - 1]``.

``group_size`` splits each output channel's inputs (in HuggingFace ``in_features`` order) into
groups with their own scale; it must divide the input dimension of every weight it edits (the
error names the weight and the valid sizes). A channel whose range is 0 gets a scale floored at
the smallest normal float, as ``torch.ao`` floors it at eps; it quantizes to 0.

Group-wise ``"symmetric"`` and all ``"asymmetric"`` edits run the shared grid of
:mod:`cgc_lens.compress.operators.grid` (the one GPTQ and AWQ round onto), equal bit for bit
to compressed-tensors' ``fake_quantize`` (it divides by the scale).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar, Literal, NamedTuple, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from cgc_lens.compress.layout import as_matrix, from_matrix, in_axes
from cgc_lens.compress.operators.base import (
    EditStats,
    Operator,
    Phase,
    check_finite,
    register_operator,
)
from cgc_lens.compress.operators.bits import rtn_bits_per_weight
from cgc_lens.compress.operators.grid import check_group_size, group_qparams, quantize_groups
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

__all__ = ["CONVENTIONS", "RTN", "Convention", "QParams", "check_bits", "rtn_qparams",
           "rtn_quantize", "rtn_quantize_", "rtn_quantize_stack_"]

Convention = Literal["symmetric", "symmetric_full", "asymmetric"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)

_CHUNK = 1 << 18  # elements per piece (1 MiB of float32); measured best of 2^14..2^30 on CPU
_BATCH_MAX_NUMEL = 1 << 18  # tensors up to this size are quantized stacked, per-op cost dominates


class QParams(NamedTuple):
    """Per-output-channel quantization parameters, shaped to broadcast against the weight."""

    scale: Tensor
    """Step size, float32 (float64 for float64 weights)."""
    zero_point: Tensor
    """Integer offset (stored as float); zeros for the symmetric conventions."""
    qmin: int
    """Smallest integer on the grid."""
    qmax: int
    """Largest integer on the grid."""


def check_bits(bits: object) -> int:
    """Return ``bits`` if it is an int in 2..16 (16 = the unquantized reference), else raise."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise CgcLensError(
            f"bits must be an int in 2..16 (16 = unquantized reference), got {bits!r}."
        )
    return bits


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise unknown_name("RTN convention", convention, CONVENTIONS)


def _grid(bits: int, convention: str) -> tuple[int, int]:
    if convention == "symmetric":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if convention == "symmetric_full":
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _params(
    w: Tensor, bits: int, dims: tuple[int, ...], convention: str
) -> tuple[Tensor, Tensor, object, object]:
    """(scale, 1/scale, low, high): bounds on ``round(w / scale)``, None where not needed."""
    qmin, qmax = _grid(bits, convention)
    if w.numel() <= _CHUNK:  # cache-resident: fewer ops win (vector_norm(inf) is 20x slower)
        amax = w.abs().amax(dim=dims, keepdim=True)
    else:  # max|w| as max(max, -min): two reads and no |w| temporary the size of w
        amax = torch.maximum(w.amax(dim=dims, keepdim=True), w.amin(dim=dims, keepdim=True).neg_())
    denom = qmax if convention == "symmetric" else (qmax - qmin) / 2
    scale = amax.div_(denom).clamp_min_(torch.finfo(w.dtype).tiny)
    # "symmetric": |w| * (1 / scale) <= qmax (1 + 2 eps) rounds to at most qmax, so no clamp.
    bounds = (None, None) if convention == "symmetric" else (qmin, qmax)
    return scale, scale.reciprocal(), *bounds


def _apply_(x: Tensor, scale: Tensor, inv: Tensor, lo: object, hi: object) -> Tensor:
    x.mul_(inv).round_()
    if lo is not None:
        x.clamp_(lo, hi)
    return x.mul_(scale)


def _quantize_(x: Tensor, bits: int, out_axes: Sequence[int], convention: str) -> Tensor:
    """Per-channel RTN of ``x`` in place, in cache-sized pieces along axis 0.

    When axis 0 is an output axis (``W_Q/K/V``) each piece holds whole channels and is reduced
    and quantized from cache: one trip to memory per element. Otherwise the scales come from
    one read of the whole tensor and the three elementwise passes run piece by piece.
    """
    dims = in_axes(x.ndim, out_axes)
    step = max(1, _CHUNK // max(1, x[0].numel())) if x.ndim else 1
    if x.ndim == 0 or step >= x.shape[0]:
        return _apply_(x, *_params(x, bits, dims, convention))
    whole_channels = 0 in [a % x.ndim for a in out_axes]
    params = None if whole_channels else _params(x, bits, dims, convention)
    for start in range(0, x.shape[0], step):
        piece = x[start : start + step]
        _apply_(piece, *(params or _params(piece, bits, dims, convention)))
    return x


def _compute_dtype(w: Tensor) -> torch.dtype:
    if not w.is_floating_point():
        raise CgcLensError(f"RTN needs a floating-point weight, got dtype {w.dtype}.")
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def rtn_qparams(
    w: Float[Tensor, "*shape"], bits: int, *, out_axes: Sequence[int],
    convention: Convention = "symmetric",
) -> QParams:
    """The per-output-channel scale and zero point RTN uses for ``w``.

    Example:
        >>> w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])  # [in, out]: channels are columns
        >>> rtn_qparams(w, 4, out_axes=(1,)).scale
        tensor([[0.1429, 0.4286]])
    """
    check_bits(bits)
    _check_convention(convention)
    x = w.to(_compute_dtype(w))
    qmin, qmax = _grid(bits, convention)
    if convention == "asymmetric":  # the shared grid's zero point (compressed-tensors' rounding)
        shape = [1 if a in in_axes(x.ndim, out_axes) else n for a, n in enumerate(x.shape)]
        p = group_qparams(as_matrix(x, out_axes), bits, None, False)
        return QParams(*(from_matrix(t, shape, out_axes) for t in p), qmin, qmax)
    scale = _params(x, bits, in_axes(x.ndim, out_axes), convention)[0]
    return QParams(scale, torch.zeros_like(scale), qmin, qmax)


def rtn_quantize(
    w: Float[Tensor, "*shape"], bits: int, *, out_axes: Sequence[int],
    convention: Convention = "symmetric", group_size: int | None = None,
) -> Float[Tensor, "*shape"]:
    """Per-output-channel RTN of ``w``, dequantized; a new tensor of ``w``'s dtype and shape.

    Args:
        w: a weight in any layout.
        bits: 2..16; 16 returns an unchanged copy (the unquantized reference).
        out_axes: the output-channel axes (see :data:`cgc_lens.compress.OUT_AXES`).
        convention: ``"symmetric"``, ``"symmetric_full"`` or ``"asymmetric"`` (module docstring).
        group_size: inputs per scale group inside each output channel; None for one group.

    Example:
        >>> w = torch.tensor([[0.9, -3.0, 1.2]])  # one output channel (axis 0)
        >>> rtn_quantize(w, 3, out_axes=(0,))  # scale 1.0, integers in [-3, 3]
        tensor([[ 1., -3.,  1.]])
    """
    check_bits(bits)
    _check_convention(convention)
    mat = as_matrix(w, out_axes)
    check_group_size(group_size, mat.shape[1])
    if bits == 16:
        return w.clone()
    dtype = _compute_dtype(w)
    if convention == "asymmetric" or (convention == "symmetric" and group_size is not None):
        q = quantize_groups(mat, bits, group_size, convention == "symmetric")
        return from_matrix(q, w.shape, out_axes).contiguous()
    if group_size is None:
        return _quantize_(w.to(dtype, copy=True), bits, out_axes, convention).to(w.dtype)
    grouped = mat.to(dtype).clone(memory_format=torch.contiguous_format)
    grouped = grouped.view(mat.shape[0], -1, group_size)
    _apply_(grouped, *_params(grouped, bits, (2,), convention))
    return from_matrix(grouped.view(mat.shape), w.shape, out_axes).to(w.dtype).contiguous()


def rtn_quantize_(
    w: Float[Tensor, "*shape"], bits: int, *, out_axes: Sequence[int],
    convention: Convention = "symmetric", group_size: int | None = None,
) -> Float[Tensor, "*shape"]:
    """In-place :func:`rtn_quantize`; returns ``w``.

    Example:
        >>> w = torch.tensor([[0.9, -3.0, 1.2]])
        >>> _ = rtn_quantize_(w, 3, out_axes=(0,))
        >>> w
        tensor([[ 1., -3.,  1.]])
    """
    check_bits(bits)
    _check_convention(convention)
    if bits == 16:
        return w
    if group_size is not None or convention == "asymmetric" or _compute_dtype(w) != w.dtype:
        return w.copy_(rtn_quantize(w, bits, out_axes=out_axes, convention=convention,
                                    group_size=group_size))
    with torch.no_grad():
        return _quantize_(w, bits, out_axes, convention)


def _amax_keepdim(x: Tensor, dims: tuple[int, ...], fn: str = "amax") -> Tensor:
    """``x.amax(dims, keepdim=True)`` (or ``fn``, e.g. ``"amin"``), over one merged axis when
    ``dims`` are adjacent.

    A single-axis reduction of a contiguous view is several times faster on CPU than the same
    reduction over two axes (``W_O`` reduces over ``(n_heads, d_head)``).
    """
    if len(dims) > 1 and x.is_contiguous() and dims == tuple(range(dims[0], dims[-1] + 1)):
        shape = x.shape
        merged = x.view(*shape[: dims[0]], -1, *shape[dims[-1] + 1 :])
        keep = [*shape[: dims[0]], *([1] * len(dims)), *shape[dims[-1] + 1 :]]
        return getattr(merged, fn)(dim=dims[0], keepdim=True).view(keep)
    return getattr(x, fn)(dim=dims, keepdim=True)


def rtn_quantize_stack_(
    stack: Tensor, bits: int, *, out_axes: Sequence[int], convention: Convention = "symmetric",
    targets: Sequence[Tensor] | None = None, names: Sequence[str] | None = None,
) -> None:
    """RTN of a stack of same-shaped float32/float64 weights (axis 0 stacks them), in place.

    ``out_axes`` are the output axes of one weight (without the stack axis). With ``targets``
    (the stacked weights themselves, in stack order, holding the same values) the scales come
    from ``stack`` and the result is written into ``targets`` instead; ``stack`` is left as it
    was. Arithmetic is :func:`rtn_quantize_`'s (bit-exact with
    ``fake_quantize_per_channel_affine``).

    One stack at a time, so that a small model's weights are reduced and rewritten while they
    are still in cache, with a dozen dispatches per stack rather than a dozen per weight.

    With ``names`` (the stacked weights' names), a stack holding inf/NaN is refused before it
    is edited (:func:`~cgc_lens.compress.operators.base.check_finite`): an inf or NaN makes its
    channel's scale non-finite, so the per-channel scales are checked instead of the stack.
    """
    if bits == 16:
        return
    if convention == "asymmetric":  # the shared grid, one weight at a time
        if names is not None:
            check_finite(stack, names)
        outs = targets if targets is not None else list(stack.unbind(0))
        for w, out in zip(list(stack.unbind(0)), outs, strict=True):
            out.copy_(rtn_quantize(w, bits, out_axes=out_axes, convention=convention))
        return
    dims = tuple(a + 1 for a in in_axes(stack.ndim - 1, out_axes))
    if convention == "symmetric":
        # max|w| = max(max w, -min w): two reads, no |w| temporary (fresh pages cost more)
        amax = _amax_keepdim(stack, dims)
        torch.maximum(amax, _amax_keepdim(stack, dims, "amin").neg_(), out=amax)
        scale = amax.div_(2 ** (bits - 1) - 1).clamp_min_(torch.finfo(stack.dtype).tiny)
        inv, lo, hi = scale.reciprocal(), None, None
    else:
        scale, inv, lo, hi = _params(stack, bits, dims, convention)
    if names is not None and not math.isfinite(scale.sum().item()):
        check_finite(stack, names)  # raises, unless the sum of finite scales overflowed
    if targets is None:
        _apply_(stack, scale, inv, lo, hi)
        return
    targets = list(targets)
    if lo is None:
        torch._foreach_mul_(targets, list(inv.unbind(0)))
        torch._foreach_round_(targets)
        torch._foreach_mul_(targets, list(scale.unbind(0)))
        return
    for i, t in enumerate(targets):
        _apply_(t, scale[i], inv[i], *(b[i] if isinstance(b, Tensor) else b for b in (lo, hi)))


@register_operator
@dataclass(frozen=True)
class RTN(Operator):
    """Round-to-nearest, per output channel or group-wise along its inputs, dequantized (see
    the module docstring for the conventions).

    ``RTN(4, group_size=128, symmetric=False)`` is the int4 g128 asymmetric scheme of GPTQ /
    llm-compressor without GPTQ's error feedback; ``symmetric=False`` is shorthand for
    ``convention="asymmetric"`` (the two fields always agree).

    Example:
        >>> RTN(6)
        RTN(bits=6, convention='symmetric', group_size=None, symmetric=True)
        >>> RTN(4, group_size=128, symmetric=False).convention
        'asymmetric'
    """

    name: ClassVar[str] = "rtn"
    phase: ClassVar[Phase] = "quantize"
    level_field: ClassVar[str | None] = "bits"
    higher_is_harsher: ClassVar[bool] = False
    checks_finite_stacked: ClassVar[bool] = True

    bits: int
    """Bit width, 2..16; 16 is the unquantized reference and touches nothing."""
    _: KW_ONLY
    convention: Convention = "symmetric"
    """``"symmetric"`` (paper Eq. 2), ``"symmetric_full"`` or ``"asymmetric"``."""
    group_size: int | None = None
    """Inputs per scale group inside an output channel (e.g. 128); None for per-channel. It
    must divide the input dimension of every edited weight."""
    symmetric: bool = field(default=True, metadata={"serialise": False})
    """False for the asymmetric grid with a zero point (sets ``convention="asymmetric"``)."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.convention not in CONVENTIONS:
            raise unknown_name("RTN convention", self.convention, CONVENTIONS)
        if not isinstance(self.symmetric, bool):
            raise CgcLensError(f"symmetric must be True or False, got {self.symmetric!r}.")
        check_group_size(self.group_size, self.group_size or 1)
        if not self.symmetric and self.convention == "symmetric_full":
            raise CgcLensError("RTN(symmetric=False) contradicts convention='symmetric_full'.")
        if not self.symmetric:
            object.__setattr__(self, "convention", "asymmetric")
        object.__setattr__(self, "symmetric", self.convention != "asymmetric")

    @property
    def is_identity(self) -> bool:
        return self.bits == 16

    def bits_per_weight(self, shape: Sequence[int], out_axes: Sequence[int] | None = None) -> float:
        """Storage bits per weight of ``shape`` (TransformerLens layout with ``out_axes``, or
        ``[out, in]``), scales and zero points included (:func:`.bits.rtn_bits_per_weight`).

        Example:
            >>> RTN(4, group_size=128, symmetric=False).bits_per_weight((4096, 4096))
            4.15625
        """
        return rtn_bits_per_weight(
            self.bits, shape, out_axes, group_size=self.group_size, symmetric=self.symmetric
        )

    def _check_groups(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> None:
        for w, ref in zip(weights, refs, strict=True):
            check_group_size(self.group_size, as_matrix(w, ref.out_axes).shape[1], str(ref))

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        self._check_groups([weight], [ref])  # names the weight
        rtn_quantize_(weight, self.bits, out_axes=ref.out_axes, convention=self.convention,
                      group_size=self.group_size)
        return EditStats(bits=self.bits)

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        self._check_groups(weights, refs)  # before any weight is edited
        groups: dict[tuple, list[Tensor]] = {}
        with torch.no_grad():
            for w, ref in zip(weights, refs, strict=True):
                if self._fusable(w) and w.dtype == torch.float32:
                    groups.setdefault((w.shape, w.device, ref.out_axes), []).append(w)
                else:
                    self.apply_(w, ref)
            for (_, _, out_axes), ws in groups.items():
                rtn_quantize_stack_(torch.stack(ws), self.bits, out_axes=out_axes,
                                    convention=self.convention, targets=ws)
        stats = EditStats(bits=self.bits)
        return [stats] * len(weights)

    def _fusable(self, w: Tensor) -> bool:
        return self.group_size is None and self.convention != "asymmetric" and w.numel() <= (
            _BATCH_MAX_NUMEL)

    def can_apply_stacked(self, weights: Sequence[Tensor]) -> bool:
        """Per-channel symmetric RTN of small float32/float64 weights (per-op cost dominates)."""
        return all(self._fusable(w) and w.dtype in (torch.float32, torch.float64) for w in weights)

    def apply_stacked_(
        self, stack: Tensor, refs: Sequence[WeightRef], *, targets: Sequence[Tensor] | None = None
    ) -> list[EditStats]:
        """:func:`rtn_quantize_stack_` of the stack (scales from ``stack``, edits in
        ``targets`` when given)."""
        rtn_quantize_stack_(stack, self.bits, out_axes=refs[0].out_axes,
                            convention=self.convention, targets=targets,
                            names=[r.param for r in refs])
        return [EditStats(bits=self.bits)] * len(refs)
