"""In-place weight-edit operators, plans, and the restore-exactly context manager."""

from cgc_lens.compress.calibration import InputNorms, collect_input_norms
from cgc_lens.compress.context import (
    CompressionRecord,
    TensorRecord,
    compress_permanently_,
    compressed,
)
from cgc_lens.compress.layout import OUT_AXES, as_matrix, from_matrix
from cgc_lens.compress.matched import MatchResult, bisect_level, match_level, measure, root_level
from cgc_lens.compress.operators import (
    RTN,
    EditStats,
    HeadPrune,
    LowRank,
    MagnitudePrune,
    Operator,
    QParams,
    WandaPrune,
    head_prune_,
    low_rank_,
    magnitude_prune_,
    operator_class,
    register_operator,
    registered_operators,
    rtn_qparams,
    rtn_quantize,
    rtn_quantize_,
    wanda_prune_,
    wanda_scores,
)
from cgc_lens.compress.plan import Plan, Step
from cgc_lens.compress.targets import Targets, WeightRef

__all__ = [
    "OUT_AXES",
    "RTN",
    "CompressionRecord",
    "EditStats",
    "HeadPrune",
    "InputNorms",
    "LowRank",
    "MagnitudePrune",
    "MatchResult",
    "Operator",
    "Plan",
    "QParams",
    "Step",
    "Targets",
    "TensorRecord",
    "WandaPrune",
    "WeightRef",
    "as_matrix",
    "bisect_level",
    "collect_input_norms",
    "compress_permanently_",
    "compressed",
    "from_matrix",
    "head_prune_",
    "low_rank_",
    "magnitude_prune_",
    "match_level",
    "measure",
    "operator_class",
    "register_operator",
    "registered_operators",
    "root_level",
    "rtn_qparams",
    "rtn_quantize",
    "rtn_quantize_",
    "wanda_prune_",
    "wanda_scores",
]
