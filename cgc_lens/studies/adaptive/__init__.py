"""The AdaptiveCompress study: :class:`AdaptiveStudyConfig` in, :class:`AdaptiveResult` out,
:func:`run_adaptive` between."""

from cgc_lens.studies.adaptive.config import AdaptiveStudyConfig
from cgc_lens.studies.adaptive.result import AdaptiveResult
from cgc_lens.studies.adaptive.run import run_adaptive

__all__ = ["AdaptiveResult", "AdaptiveStudyConfig", "run_adaptive"]
