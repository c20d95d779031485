"""Round-to-nearest (RTN) weight quantization, dequantized back to floating point: the
:class:`RTN` operator and its kernels.

Arithmetic follows ``torch.fake_quantize_per_channel_affine`` exactly, so the result can be
checked bit for bit against it: ``q = clamp(round(w * (1 / scale)) + z, qmin, qmax)``,
``w' = (q - z) * scale``, rounding half to even, in float32 (float64 weights stay float64).

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
groups with their own scale; a short last group is padded with zeros, which changes no scale
because every convention's range already contains 0. A channel whose range is 0 gets a scale
floored at the smallest normal float, as ``torch.ao`` floors it at eps; it quantizes to 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
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
    if convention == "asymmetric":
        lo = w.amin(dim=dims, keepdim=True).clamp_max_(0)
        hi = w.amax(dim=dims, keepdim=True).clamp_min_(0)
        scale = hi.sub_(lo).div_(qmax - qmin).clamp_min_(torch.finfo(w.dtype).tiny)
        zero = torch.round(lo.neg_() / scale)  # GPTQ: zero = round(-min / scale)
        return scale, scale.reciprocal(), qmin - zero, qmax - zero
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
    scale, _, lo, _ = _params(x, bits, in_axes(x.ndim, out_axes), convention)
    qmin, qmax = _grid(bits, convention)
    zero = qmin - lo if isinstance(lo, Tensor) else torch.zeros_like(scale)
    return QParams(scale, zero, qmin, qmax)


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
    if group_size is not None and (
        not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1
    ):
        raise CgcLensError(f"group_size must be a positive int or None, got {group_size!r}.")
    if bits == 16:
        return w.clone()
    dtype = _compute_dtype(w)
    if group_size is None:
        return _quantize_(w.to(dtype, copy=True), bits, out_axes, convention).to(w.dtype)
    mat = as_matrix(w, out_axes).to(dtype)
    n_out, n_in = mat.shape
    n_groups = -(-n_in // group_size)
    padded = mat.new_zeros(n_out, n_groups * group_size)
    padded[:, :n_in] = mat
    grouped = padded.view(n_out, n_groups, group_size)
    _apply_(grouped, *_params(grouped, bits, (2,), convention))
    return from_matrix(padded[:, :n_in], w.shape, out_axes).to(w.dtype)


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
    if group_size is not None or _compute_dtype(w) != w.dtype:
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
    """Per-output-channel round-to-nearest, dequantized (see the module docstring for conventions).

    Example:
        >>> RTN(6)
        RTN(bits=6, convention='symmetric', group_size=None)
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
    """Inputs per scale group inside an output channel (e.g. 128); None for per-channel."""

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.convention not in CONVENTIONS:
            raise unknown_name("RTN convention", self.convention, CONVENTIONS)
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or isinstance(self.group_size, bool)
            or self.group_size < 1
        ):
            raise CgcLensError(
                f"group_size must be a positive int or None, got {self.group_size!r}."
            )

    @property
    def is_identity(self) -> bool:
        return self.bits == 16

    def apply_(self, weight: Tensor, ref: WeightRef) -> EditStats:
        rtn_quantize_(weight, self.bits, out_axes=ref.out_axes, convention=self.convention,
                      group_size=self.group_size)
        return EditStats(bits=self.bits)

    def apply_many_(self, weights: Sequence[Tensor], refs: Sequence[WeightRef]) -> list[EditStats]:
        groups: dict[tuple, list[Tensor]] = {}
        with torch.no_grad():
            for w, ref in zip(weights, refs, strict=True):
                if (self.group_size is None and w.dtype == torch.float32
                        and w.numel() <= _BATCH_MAX_NUMEL):
                    groups.setdefault((w.shape, w.device, ref.out_axes), []).append(w)
                else:
                    self.apply_(w, ref)
            for (_, _, out_axes), ws in groups.items():
                rtn_quantize_stack_(torch.stack(ws), self.bits, out_axes=out_axes,
                                    convention=self.convention, targets=ws)
        stats = EditStats(bits=self.bits)
        return [stats] * len(weights)

    def can_apply_stacked(self, weights: Sequence[Tensor]) -> bool:
        """Per-channel RTN of small float32/float64 weights (per-op cost dominates there)."""
        return self.group_size is None and all(
            w.dtype in (torch.float32, torch.float64) and w.numel() <= _BATCH_MAX_NUMEL
            for w in weights
        )

    def apply_stacked_(
        self, stack: Tensor, refs: Sequence[WeightRef], *, targets: Sequence[Tensor] | None = None
    ) -> list[EditStats]:
        """:func:`rtn_quantize_stack_` of the stack (scales from ``stack``, edits in
        ``targets`` when given)."""
        rtn_quantize_stack_(stack, self.bits, out_axes=refs[0].out_axes,
                            convention=self.convention, targets=targets,
                            names=[r.param for r in refs])
        return [EditStats(bits=self.bits)] * len(refs)
