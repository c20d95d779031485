"""Plans: ordered (targets, operator) steps, saved as JSON, composed rank → prune → quantize."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cgc_lens.compress.operators.base import PHASES, Operator, operator_from_dict
from cgc_lens.compress.operators.semi_structured import SemiStructured
from cgc_lens.compress.operators.wanda import WandaPrune
from cgc_lens.compress.targets import Targets, WeightRef
from cgc_lens.errors import CgcLensError

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor, nn
    from transformer_lens import HookedTransformer

__all__ = ["Plan", "Step", "as_plan"]

PlanItem = Any  # Operator | Step | Plan | tuple[Targets | None, Operator]


@dataclass(frozen=True)
class Step:
    """One operator applied to one selection of weights.

    Example:
        >>> from cgc_lens.compress import RTN
        >>> Step(RTN(4), Targets(names=["W_in"])).to_dict()["operator"]
        {'operator': 'rtn', 'bits': 4, 'convention': 'symmetric', 'group_size': None}
    """

    operator: Operator
    """What to do."""
    targets: Targets | None = None
    """Where; None for the operator's default targets (every block weight for most)."""

    def __post_init__(self) -> None:
        if not isinstance(self.operator, Operator):
            raise CgcLensError(f"Step.operator must be an Operator, got {self.operator!r}.")
        if self.targets is not None and not isinstance(self.targets, Targets):
            raise CgcLensError(f"Step.targets must be Targets or None, got {self.targets!r}.")

    def resolve_params(self, model: HookedTransformer) -> list[tuple[WeightRef, nn.Parameter]]:
        """The weights this step edits on ``model`` with their parameters; raises before any
        edit if it cannot."""
        pairs = (self.targets or self.operator.default_targets()).resolve_params(model)
        self.operator.check_refs([ref for ref, _ in pairs])
        return pairs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "targets": None if self.targets is None else self.targets.to_dict(),
            "operator": self.operator.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        """Inverse of :meth:`to_dict`."""
        targets = data.get("targets")
        return cls(operator_from_dict(data["operator"]),
                   None if targets is None else Targets.from_dict(targets))


def _steps(item: PlanItem) -> tuple[Step, ...]:
    if isinstance(item, Plan):
        return item.steps
    if isinstance(item, Step):
        return (item,)
    if isinstance(item, Operator):
        return (Step(item),)
    if isinstance(item, tuple) and len(item) == 2:
        a, b = item
        return (Step(b, a) if isinstance(b, Operator) else Step(a, b),)
    raise CgcLensError(
        f"A plan is built from Operators, Steps, Plans or (targets, operator) pairs, got {item!r}."
    )


@dataclass(frozen=True)
class Plan:
    """An ordered list of steps, applied first to last.

    Example:
        >>> from cgc_lens.compress import RTN, LowRank, MagnitudePrune
        >>> plan = Plan.compose(RTN(4), MagnitudePrune(0.3), LowRank(0.5))
        >>> [s.operator.phase for s in plan]
        ['rank', 'prune', 'quantize']
        >>> Plan.from_json(plan.to_json()) == plan
        True
    """

    steps: Sequence[Step] = ()
    """The steps in execution order (stored as a tuple)."""

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        for step in steps:
            if not isinstance(step, Step):
                raise CgcLensError(f"Plan.steps must hold Step objects, got {step!r}.")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def of(cls, *items: PlanItem) -> Plan:
        """A plan of ``items`` in the order given."""
        return cls(tuple(s for item in items for s in _steps(item)))

    @classmethod
    def compose(cls, *items: PlanItem) -> Plan:
        """A plan of ``items`` in phase-avoidance order rank → prune → quantize (stable)."""
        steps = [s for item in items for s in _steps(item)]
        return cls(tuple(sorted(steps, key=lambda s: PHASES.index(s.operator.phase))))

    def then(self, operator: Operator, targets: Targets | None = None) -> Plan:
        """This plan with one more step at the end."""
        return Plan((*self.steps, Step(operator, targets)))

    def in_phase_order(self) -> bool:
        """Whether the steps already run rank → prune → quantize."""
        order = [PHASES.index(s.operator.phase) for s in self.steps]
        return order == sorted(order)

    def calibrate(
        self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"], *, batch_size: int = 8
    ) -> Plan:
        """Calibrate every uncalibrated :class:`WandaPrune` (and Wanda-scored
        :class:`SemiStructured`) step on ``tokens`` (model as is), and bind every operator
        whose ``needs_calibration`` holds (GPTQ, AWQ) to ``model`` and ``tokens``."""
        steps = []
        for step in self.steps:
            op = step.operator
            wanda = isinstance(op, WandaPrune) or (
                isinstance(op, SemiStructured) and op.score == "wanda"
            )
            if (wanda and op.input_norms is None) or getattr(op, "needs_calibration", False):
                targets = step.targets or op.default_targets()
                op = op.calibrate(model, tokens, targets, batch_size=batch_size)
            steps.append(replace(step, operator=op))
        return Plan(tuple(steps))

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (Wanda input norms are not saved: calibrate after loading)."""
        return {"steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`."""
        if set(data) != {"steps"}:
            raise CgcLensError(f"A plan dict has exactly one key 'steps', got {sorted(data)}.")
        return cls(tuple(Step.from_dict(s) for s in data["steps"]))

    def to_json(self, **kwargs: Any) -> str:
        """The plan as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CgcLensError(f"Plan JSON does not parse: {err}.") from err
        return cls.from_dict(data)


def as_plan(plan_or_operator: Plan | Operator | Step, targets: Targets | None = None) -> Plan:
    """A :class:`Plan` from a plan, a step or one operator (with optional targets)."""
    if isinstance(plan_or_operator, Operator):
        return Plan((Step(plan_or_operator, targets),))
    if targets is not None:
        raise CgcLensError(
            "targets= goes with a single operator; a Plan or Step carries its own targets."
        )
    if isinstance(plan_or_operator, Step):
        return Plan((plan_or_operator,))
    if isinstance(plan_or_operator, Plan):
        return plan_or_operator
    raise CgcLensError(f"Expected a Plan, Step or Operator, got {plan_or_operator!r}.")
