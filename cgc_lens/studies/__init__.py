"""End-to-end studies: a frozen config in, a result object out (DataFrames, saved folders)."""

from cgc_lens.studies.adaptive.run import AdaptiveResult, AdaptiveStudyConfig, run_adaptive
from cgc_lens.studies.capability.config import CapabilityConfig, CapabilityResult, run_capability
from cgc_lens.studies.capability.passes import head_density
from cgc_lens.studies.survival.run import SurvivalConfig, SurvivalResult, run_survival

__all__ = [
    "AdaptiveResult",
    "AdaptiveStudyConfig",
    "CapabilityConfig",
    "CapabilityResult",
    "SurvivalConfig",
    "SurvivalResult",
    "head_density",
    "run_adaptive",
    "run_capability",
    "run_survival",
]
