"""Results folders: what write_results writes, read_results reads back the same."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cgc_lens.compress import RTN, LowRank, MagnitudePrune, Plan, Step, Targets
from cgc_lens.io.results import read_results, to_jsonable, write_results


@dataclass(frozen=True, kw_only=True)
class _StudyConfig:
    seed: int = 0
    plan: Plan = field(default_factory=Plan)


def test_a_plan_in_the_config_round_trips_through_results_json(tmp_path):
    plan = Plan.compose(RTN(4, group_size=8), Step(MagnitudePrune(0.3), Targets(names=["W_in"])),
                        LowRank(0.5))
    write_results(tmp_path, study="demo", config=_StudyConfig(seed=3, plan=plan),
                  payload={"ppl": 12.5, "plans": [plan]})
    back = read_results(tmp_path)
    assert back.config["seed"] == 3
    assert Plan.from_dict(back.config["plan"]) == plan
    assert Plan.from_dict(back.payload["plans"][0]) == plan


def test_to_jsonable_prefers_to_dict_over_dataclass_fields():
    plan = Plan.compose(RTN(8))
    assert to_jsonable(plan) == to_jsonable(plan.to_dict()) == plan.to_dict()
    assert to_jsonable({"cls": Plan}) == {"cls": str(Plan)}  # a class is not called


def test_tables_and_float64_arrays_round_trip(tmp_path):
    table = pd.DataFrame({"head": [0, 1], "delta": [0.25, np.nan]})
    write_results(tmp_path, study="demo", config={"seed": 0}, payload={"nan": float("nan")},
                  tables={"heads": table}, arrays={"r": np.arange(3.0)})
    back = read_results(tmp_path)
    assert back.study == "demo" and back.payload == {"nan": None}
    pd.testing.assert_frame_equal(back.tables["heads"], table)
    assert back.arrays["r"].dtype == np.float64
    np.testing.assert_array_equal(back.arrays["r"], np.arange(3.0))
