"""One JSON rule for every study config (cgc_lens.io.configs.config_from_dict / config_to_dict)."""

from __future__ import annotations

import pytest

from cgc_lens.analysis.evolution import EvoConfig
from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import config_from_dict, config_to_dict
from cgc_lens.studies import AdaptiveStudyConfig, CapabilityConfig, SurvivalConfig
from cgc_lens.studies.survival.config import PlanCondition


@pytest.mark.parametrize("cls", [SurvivalConfig, CapabilityConfig, AdaptiveStudyConfig])
def test_every_study_config_round_trips(cls) -> None:
    config = cls()
    data = config_to_dict(config)
    assert data == config.to_dict() and cls.from_dict(data) == config
    assert config_from_dict(cls, {**data, "_comment": "ignored"}) == config


def test_nested_configs_tuples_and_from_dict_fields_are_built() -> None:
    from cgc_lens.compress import RTN, Plan

    plan = PlanCondition(name="int8", plan=Plan.compose(RTN(8)))
    survival = SurvivalConfig.from_dict({"bits": [6], "plans": [plan.to_dict()]})
    assert survival.bits == (6,) and survival.plans == (plan,)
    cap = CapabilityConfig.from_dict({"evo": {"survivors_per_stage": [2, 1],
                                              "tokens_per_stage": [8, 16]}})
    assert cap.evo == EvoConfig(survivors_per_stage=(2, 1), tokens_per_stage=(8, 16))
    adaptive = AdaptiveStudyConfig.from_dict({"layers": [1], "probing": {"ks": [1, 2]}})
    assert adaptive.layers == (1,) and adaptive.probing.ks == (1, 2)


def test_unknown_keys_name_the_closest_fields() -> None:
    with pytest.raises(CgcLensError, match=r"Unknown EvoConfig fields \['generatons'\] "
                                           r"\(closest: \['generations'\]\)"):
        config_from_dict(EvoConfig, {"generatons": 3})
    with pytest.raises(CgcLensError, match=r"Unknown AdaptiveStudyConfig fields \['layer'\]"):
        AdaptiveStudyConfig.from_dict({"layer": [1]})


def test_adaptive_config_from_json(tmp_path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"layers": [0, 2], "train": {"steps": 7}, "_comment": "x"}')
    config = AdaptiveStudyConfig.from_json(path)
    assert config.layers == (0, 2) and config.train.steps == 7
