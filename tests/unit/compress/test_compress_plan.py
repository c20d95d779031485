"""Plans: JSON round trips, phase-avoidance order, calibration, registry errors."""

from __future__ import annotations

import json

import pytest
import torch

from cgc_lens.compress import (
    RTN,
    HeadPrune,
    LowRank,
    MagnitudePrune,
    Plan,
    Step,
    Targets,
    WandaPrune,
    compressed,
    operator_class,
    register_operator,
)
from cgc_lens.errors import CgcLensError
from cgc_lens.sites import Head


def full_plan() -> Plan:
    return Plan.of(
        (Targets(names=["W_O"], layers=[1]), LowRank(0.5)),
        MagnitudePrune(0.25, scope="global"),
        WandaPrune(0.5),
        HeadPrune({Head(0, 1): 0.5, Head(1, 3): 0.0}),
        Step(RTN(4, convention="asymmetric", group_size=8), Targets(families="mlp")),
    )


def test_json_round_trip():
    plan = full_plan()
    text = plan.to_json(indent=1)
    assert json.loads(text)["steps"][0] == {
        "targets": {"families": None, "names": ["W_O"], "layers": [1], "heads": None},
        "operator": {"operator": "low_rank", "rank_ratio": 0.5},
    }
    assert Plan.from_json(text) == plan
    assert Plan.from_dict(json.loads(text)).steps[3].operator.retention == {
        Head(0, 1): 0.5, Head(1, 3): 0.0}


def test_compose_orders_rank_prune_quantize_stably():
    plan = Plan.compose(RTN(4), MagnitudePrune(0.1), LowRank(0.9), HeadPrune({Head(0, 0): 0.5}))
    assert [s.operator.name for s in plan] == ["low_rank", "magnitude", "head_prune", "rtn"]
    assert plan.in_phase_order()
    assert not Plan.of(RTN(4), LowRank(0.5)).in_phase_order()
    assert Plan.compose(Plan.of(RTN(4), LowRank(0.5))).in_phase_order()
    assert len(Plan().then(RTN(8)).then(LowRank(0.5))) == 2


def test_calibrate_fills_wanda_steps_and_the_plan_runs(tiny_model):
    plan = full_plan()
    with pytest.raises(CgcLensError, match="WandaPrune needs input norms"), \
            compressed(tiny_model, plan):
        pass  # pragma: no cover
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 8))
    calibrated = plan.calibrate(tiny_model, tokens)
    assert calibrated == plan  # norms do not take part in equality
    assert calibrated.steps[2].operator.input_norms is not None
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    with compressed(tiny_model, calibrated) as record:
        assert {r.step for r in record.tensors} == {0, 1, 2, 3, 4}
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.named_parameters())


def test_bad_plans_raise():
    with pytest.raises(CgcLensError, match="Plan JSON does not parse"):
        Plan.from_json("{steps")
    with pytest.raises(CgcLensError, match=r"Unknown operator 'rnt'.*Closest: \['rtn'\]"):
        Plan.from_dict({"steps": [{"targets": None, "operator": {"operator": "rnt", "bits": 4}}]})
    with pytest.raises(CgcLensError, match=r"Unknown RTN field 'bit'"):
        Plan.from_dict({"steps": [{"targets": None, "operator": {"operator": "rtn", "bit": 4}}]})
    with pytest.raises(CgcLensError, match="exactly one key 'steps'"):
        Plan.from_dict({"step": []})
    with pytest.raises(CgcLensError, match="built from Operators"):
        Plan.of("rtn")


def test_registry():
    assert operator_class("magnitude") is MagnitudePrune
    with pytest.raises(CgcLensError, match="already registered"):
        register_operator(RTN)
    with pytest.raises((CgcLensError, TypeError), match="Operator"):
        register_operator(dict)
