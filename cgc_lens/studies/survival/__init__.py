"""The feature-survival audit (QDM paper §3): :class:`SurvivalConfig` in, :class:`SurvivalResult`
out, :func:`run_survival` between."""

from cgc_lens.studies.survival.config import PlanCondition, SurvivalConfig
from cgc_lens.studies.survival.result import SurvivalResult
from cgc_lens.studies.survival.run import run_survival

__all__ = ["PlanCondition", "SurvivalConfig", "SurvivalResult", "run_survival"]
