"""Weight-edit operators: the protocol and registry (``base``), then one operator per module.

Importing this package registers every operator below.
"""

from cgc_lens.compress.operators.base import (
    PHASES,
    EditStats,
    Operator,
    Phase,
    operator_class,
    operator_from_dict,
    register_operator,
    registered_operators,
)
from cgc_lens.compress.operators.head_prune import HeadPrune, head_prune_
from cgc_lens.compress.operators.low_rank import LowRank, low_rank_
from cgc_lens.compress.operators.magnitude import (
    MagnitudePrune,
    magnitude_prune_,
    magnitude_prune_global_,
)
from cgc_lens.compress.operators.rtn import (
    RTN,
    QParams,
    rtn_qparams,
    rtn_quantize,
    rtn_quantize_,
    rtn_quantize_stack_,
)
from cgc_lens.compress.operators.sparsity import check_fraction, measured_sparsity, n_pruned
from cgc_lens.compress.operators.wanda import WandaPrune, wanda_prune_, wanda_scores

__all__ = [
    "PHASES",
    "RTN",
    "EditStats",
    "HeadPrune",
    "LowRank",
    "MagnitudePrune",
    "Operator",
    "Phase",
    "QParams",
    "WandaPrune",
    "check_fraction",
    "head_prune_",
    "low_rank_",
    "magnitude_prune_",
    "magnitude_prune_global_",
    "measured_sparsity",
    "n_pruned",
    "operator_class",
    "operator_from_dict",
    "register_operator",
    "registered_operators",
    "rtn_qparams",
    "rtn_quantize",
    "rtn_quantize_",
    "rtn_quantize_stack_",
    "wanda_prune_",
    "wanda_scores",
]
