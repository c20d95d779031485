"""Compression conditions by name: one grammar for every place a plan is taken from text.

A spec names a deployed format; :func:`parse_condition` turns it into the operator and what
a results row records about it (format, bits, group size, sparsity):

- ``int8``, ``int4`` ... (``int2`` .. ``int16``): per-output-channel symmetric RTN (Eq. 2, as
  ``--bits``); ``int4-g128``: groups of 128 inputs; ``-asym``: asymmetric with a zero point.
- ``gptq4-g128`` (``-act``: activation order; ``-asym``), ``awq4-g128``: GPTQ and AWQ on the
  same integer grid (calibrated on the study's calibration tokens).
- ``nf4`` (``nf4-dq``: double-quantized absmax), ``fp8`` (e4m3), ``fp8-e5m2``
  (``-tensor``: one scale per tensor instead of per output channel).
- ``2:4``, ``4:8`` (``magnitude-2:4``), ``wanda-2:4``: n:m semi-structured pruning.
- ``magnitude-0.5``, ``wanda-0.5``: unstructured pruning of that fraction.
- ``matched:<spec>``: magnitude pruning whose perplexity matches the condition ``<spec>``.

Effective bits per weight (:func:`plan_bits_per_weight`) count scales and zero points (each
operator's ``bits_per_weight``, :mod:`cgc_lens.compress.operators.bits`), averaged over the
targeted weights by parameter count; unstructured pruning is counted in compressed-tensors'
``sparse-bitmask`` layout (16-bit kept values plus one mask bit per weight).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cgc_lens.compress.layout import HEAD_AXIS
from cgc_lens.compress.operators.base import Operator, operator_class
from cgc_lens.compress.operators.bits import DENSE_BITS, matrix_shape
from cgc_lens.compress.operators.grid import check_group_size
from cgc_lens.compress.plan import Plan
from cgc_lens.compress.targets import WeightRef
from cgc_lens.errors import CgcLensError, unknown_name

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "CONDITION_SPECS",
    "EXAMPLE_SPECS",
    "ConditionSpec",
    "check_plan_shapes",
    "parse_condition",
    "plan_bits_per_weight",
    "sparse_bits_per_weight",
]

EXAMPLE_SPECS: tuple[str, ...] = (
    "int8",
    "int4",
    "int4-g128",
    "int4-g128-asym",
    "gptq4-g128",
    "gptq4-g128-act",
    "awq4-g128",
    "nf4",
    "nf4-dq",
    "fp8",
    "fp8-e5m2",
    "2:4",
    "4:8",
    "wanda-2:4",
    "magnitude-0.5",
    "wanda-0.5",
    "matched:int4",
)
"""One spec of every form, for help texts and the closest-name hint of an unknown spec."""

_FORMS = (
    "intB (per-channel RTN, B in 2..16; -gN groups of N inputs, -asym zero point), "
    "gptqB-gN (-act, -asym), awqB-gN, nf4 (nf4-dq), fp8 (fp8-e5m2, -tensor), "
    "N:M and wanda-N:M (semi-structured), magnitude-F and wanda-F (pruning fraction F), "
    "matched:SPEC (magnitude pruning matched in perplexity to SPEC)"
)
CONDITION_SPECS = f"{_FORMS}; e.g. {' '.join(EXAMPLE_SPECS)}"
"""The grammar in one line, with an example of every form (``--conditions`` help)."""

_INT = re.compile(r"(int|gptq|awq)(\d+)")
_NM = re.compile(r"(\d+):(\d+)")
_FRACTION = re.compile(r"0?\.\d+|0|1(\.0*)?")
_MATCHED = "matched:"


@dataclass(frozen=True, kw_only=True)
class ConditionSpec:
    """What a spec names, as a results row records it.

    Example:
        >>> parse_condition("int4-g128-asym")[1]  # doctest: +NORMALIZE_WHITESPACE
        ConditionSpec(spec='int4-g128-asym', format='rtn', bits=4, group_size=128,
                      sparsity=None, match=None, calibrated=False)
    """

    spec: str
    """The spec as given (the condition's name)."""
    format: str
    """Family: ``rtn``, ``gptq``, ``awq``, ``nf4``, ``fp8``, ``semi_structured``,
    ``magnitude``, ``wanda``, ``matched``."""
    bits: int | None
    """Bits of the quantized values (None for pruning)."""
    group_size: int | None
    """Inputs per scale group (None: per output channel, or no grid)."""
    sparsity: float | None
    """Fraction of weights pruned (None for quantization; found by the search for matched)."""
    match: str | None
    """The spec that ``matched:<spec>`` matches; None otherwise."""
    calibrated: bool
    """Whether the operator needs calibration tokens (GPTQ, AWQ, Wanda)."""


def _bad(spec: str, why: str) -> CgcLensError:
    close = difflib.get_close_matches(spec, EXAMPLE_SPECS, n=3, cutoff=0.5)
    hint = f"Closest: {close}" if close else f"Forms: {_FORMS}"
    return CgcLensError(f"Condition {spec!r}: {why}. {hint}.")


def _int_options(spec: str, family: str, opts: list[str]) -> tuple[int | None, bool, bool]:
    """(group size, symmetric, act_order) from the option tokens after ``intB`` etc."""
    group, symmetric, act = None, True, False
    for opt in opts:
        if re.fullmatch(r"g\d+", opt) and group is None:
            group = int(opt[1:])
        elif opt == "asym" and symmetric:
            symmetric = False
        elif opt == "act" and family == "gptq" and not act:
            act = True
        else:
            raise _bad(spec, f"unexpected or repeated option {opt!r} for {family}")
    if group is not None and group < 1:
        raise _bad(spec, "the group size must be a positive int")
    return group, symmetric, act


def _integer(spec: str, family: str, bits: int, opts: list[str]) -> tuple[Operator, ConditionSpec]:
    group, symmetric, act = _int_options(spec, family, opts)
    kwargs: dict[str, object] = {"group_size": group, "symmetric": symmetric}
    if family == "gptq":
        kwargs["act_order"] = act
    name = {"int": "rtn"}.get(family, family)
    try:
        cls = operator_class(name)
    except CgcLensError as err:
        raise _bad(spec, f"the {family.upper()} operator is not available ({err})") from err
    op = cls(bits, **kwargs)  # type: ignore[call-arg]
    meta = ConditionSpec(
        spec=spec,
        format=name,
        bits=bits,
        group_size=group,
        sparsity=None,
        match=None,
        calibrated=family != "int",
    )
    return op, meta


def _float_formats(spec: str, head: str, opts: list[str]) -> tuple[Operator, ConditionSpec]:
    if head == "nf4":
        if opts not in ([], ["dq"]):
            raise _bad(spec, f"nf4 takes only the option 'dq', got {opts}")
        op = operator_class("nf4")(double_quant=bool(opts))  # type: ignore[call-arg]
        return op, ConditionSpec(
            spec=spec,
            format="nf4",
            bits=4,
            group_size=None,
            sparsity=None,
            match=None,
            calibrated=False,
        )
    fmt = [o for o in opts if o in ("e4m3", "e5m2")]
    scale = [o for o in opts if o == "tensor"]
    if len(fmt) > 1 or len(scale) > 1 or len(fmt) + len(scale) != len(opts):
        raise _bad(spec, f"fp8 takes e4m3 or e5m2 and 'tensor', got {opts}")
    op = operator_class("fp8")(
        fmt[0] if fmt else "e4m3",  # type: ignore[call-arg]
        scale="tensor" if scale else "channel",
    )
    return op, ConditionSpec(
        spec=spec,
        format="fp8",
        bits=8,
        group_size=None,
        sparsity=None,
        match=None,
        calibrated=False,
    )


def _pruning(spec: str, score: str, level: str) -> tuple[Operator, ConditionSpec]:
    nm = _NM.fullmatch(level)
    if nm:
        n, m = int(nm[1]), int(nm[2])
        if not 1 <= n < m:
            raise _bad(spec, f"n:m sparsity keeps n of every m weights, 1 <= n < m; got {level}")
        op = operator_class("semi_structured")(n, m, score=score)  # type: ignore[call-arg]
        return op, ConditionSpec(
            spec=spec,
            format="semi_structured",
            bits=None,
            group_size=m,
            sparsity=1 - n / m,
            match=None,
            calibrated=score == "wanda",
        )
    if not _FRACTION.fullmatch(level):
        raise _bad(spec, f"{score} takes a fraction in [0, 1) or n:m, got {level!r}")
    op = operator_class(score)(float(level))  # type: ignore[call-arg]
    return op, ConditionSpec(
        spec=spec,
        format=score,
        bits=None,
        group_size=None,
        sparsity=float(level),
        match=None,
        calibrated=score == "wanda",
    )


def parse_condition(spec: str) -> tuple[Operator, ConditionSpec]:
    """The operator a condition spec names, and what its results row records.

    ``matched:<spec>`` gives ``MagnitudePrune(0.0)``, the operator whose sparsity the matched
    search sets, and ``match=<spec>`` (the target, itself parsed and checked).

    Raises:
        CgcLensError: an unknown spec (with the closest valid ones) or a bad level.

    Example:
        >>> parse_condition("int4")[0]
        RTN(bits=4, convention='symmetric', group_size=None, symmetric=True)
        >>> op, meta = parse_condition("wanda-2:4")
        >>> type(op).__name__, meta.sparsity, meta.calibrated
        ('SemiStructured', 0.5, True)
        >>> parse_condition("int4-g12B")
        Traceback (most recent call last):
        ...
        cgc_lens.errors.CgcLensError: Condition 'int4-g12B': unexpected or repeated option ...
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CgcLensError(f"A condition is a non-empty spec such as 'int4-g128', got {spec!r}.")
    if spec.startswith(_MATCHED):
        target = spec[len(_MATCHED) :]
        if target.startswith(_MATCHED):
            raise _bad(spec, "a matched condition matches a compression, not another match")
        parse_condition(target)
        op = operator_class("magnitude")(0.0)  # type: ignore[call-arg]
        return op, ConditionSpec(
            spec=spec,
            format="matched",
            bits=None,
            group_size=None,
            sparsity=None,
            match=target,
            calibrated=False,
        )
    head, *opts = spec.split("-")
    try:
        m = _INT.fullmatch(head)
        if m:
            return _integer(spec, m[1], int(m[2]), opts)
        if head in ("nf4", "fp8"):
            return _float_formats(spec, head, opts)
        if _NM.fullmatch(head) and not opts:
            return _pruning(spec, "magnitude", head)
        if head in ("magnitude", "wanda") and len(opts) == 1:
            return _pruning(spec, head, opts[0])
    except CgcLensError as err:
        if str(err).startswith(f"Condition {spec!r}"):
            raise
        raise _bad(spec, str(err).rstrip(".")) from err
    raise unknown_name("condition", spec, EXAMPLE_SPECS)


def _slices(
    plan: Plan,
    model: HookedTransformer,
) -> Iterator[tuple[Operator, WeightRef, tuple[int, ...]]]:
    """(operator, reference, shape of the edited slice) for every weight ``plan`` edits."""
    for step in plan:
        targets = step.targets or step.operator.default_targets()
        for ref, param in targets.resolve_params(model):
            shape = list(param.shape)
            if ref.heads is not None:
                shape[HEAD_AXIS] = len(ref.heads)
            yield step.operator, ref, tuple(shape)


def check_plan_shapes(plan: Plan, model: HookedTransformer, *, name: str = "") -> None:
    """Raise before anything runs if a group size (or an n:m group) does not divide the input
    dimension of a weight ``plan`` edits on ``model``; the error names the weight and the
    valid sizes. Works on a model on the meta device (shapes only).
    """
    where = f" (condition {name!r})" if name else ""
    for op, ref, shape in _slices(plan, model):
        _, n_in = matrix_shape(shape, ref.out_axes)
        size = getattr(op, "group_size", None)
        if size is None and type(op).__name__ == "SemiStructured":
            size = op.m  # type: ignore[attr-defined]
        try:
            check_group_size(size, n_in, f"{ref}{where}")
        except CgcLensError as err:
            raise CgcLensError(
                str(err).replace("group_size", f"{type(op).__name__} group size", 1)
            ) from err


def sparse_bits_per_weight(sparsity: float) -> float:
    """Unstructured pruning in compressed-tensors' ``sparse-bitmask`` layout: the kept values
    in 16 bits and one mask bit per weight.

    Example:
        >>> sparse_bits_per_weight(0.5)
        9.0
    """
    return DENSE_BITS * (1 - sparsity) + 1


def plan_bits_per_weight(
    plan: Plan, model: HookedTransformer, sparsity: float | None = None
) -> float | None:
    """Effective bits per weight of ``plan`` on ``model``'s targeted weights, averaged by
    parameter count: each operator's ``bits_per_weight`` of the weight's shape, scales and zero
    points included; unstructured pruning by :func:`sparse_bits_per_weight` (at ``sparsity``
    when given, e.g. the level a matched search found). None for a plan of several steps
    (their storage does not add up simply) or an operator without a storage size.
    """
    if len(plan) != 1:
        return None
    total = weighted = 0.0
    for op, ref, shape in _slices(plan, model):
        level = getattr(op, "sparsity", None) if sparsity is None else sparsity
        if hasattr(op, "bits_per_weight"):
            bpw = float(op.bits_per_weight(shape, ref.out_axes))  # type: ignore[attr-defined]
        elif op.phase == "prune" and isinstance(level, float | int):
            bpw = sparse_bits_per_weight(float(level))
        else:
            return None
        numel = float(math.prod(shape))
        total += numel
        weighted += bpw * numel
    return weighted / total if total else None
