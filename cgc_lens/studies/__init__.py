"""End-to-end studies: a frozen config in, a result object out (DataFrames, saved folders).

Each study is a package of the same shape: ``config.py`` (its frozen Config), ``passes.py`` (the
forward passes), ``result.py`` (its Result: ``to_frame`` / ``save`` / ``load``) and ``run.py``
(``run_*``), plus ``conditions.py`` (survival) or ``steps.py`` (capability).
"""

from cgc_lens.studies.adaptive import AdaptiveResult, AdaptiveStudyConfig, run_adaptive
from cgc_lens.studies.capability import CapabilityConfig, CapabilityResult, run_capability
from cgc_lens.studies.capability.passes import head_density
from cgc_lens.studies.survival import SurvivalConfig, SurvivalResult, run_survival

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
