"""The capability-density study (Gupta 2026, §3-§5): :class:`CapabilityConfig` in,
:class:`CapabilityResult` out, :func:`run_capability` between."""

from cgc_lens.studies.capability.config import CapabilityConfig
from cgc_lens.studies.capability.result import CapabilityResult
from cgc_lens.studies.capability.run import run_capability

__all__ = ["CapabilityConfig", "CapabilityResult", "run_capability"]
