"""Weight-edit operators: the protocol and registry (``base``), then one operator per module.

Importing this package registers every operator below.
"""

from cgc_lens.compress.operators.awq import AWQ, awq_quantize, awq_scales, output_error
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
from cgc_lens.compress.operators.bits import (
    fp8_bits_per_weight,
    matrix_shape,
    nf4_bits_per_weight,
    rtn_bits_per_weight,
    semi_structured_bits_per_weight,
)
from cgc_lens.compress.operators.fp8 import FP8, fp8_quantize
from cgc_lens.compress.operators.gptq import GPTQ, gptq_quantize, inverse_hessian_factor
from cgc_lens.compress.operators.grid import (
    GroupQParams,
    check_group_size,
    fake_quantize,
    grid_range,
    group_qparams,
    quantize_groups,
    valid_group_sizes,
)
from cgc_lens.compress.operators.head_prune import HeadPrune, head_prune_
from cgc_lens.compress.operators.hessian import (
    Calibration,
    InputMoments,
    collect_layer_inputs,
    edit_layer_by_layer,
)
from cgc_lens.compress.operators.low_rank import LowRank, low_rank_
from cgc_lens.compress.operators.magnitude import (
    MagnitudePrune,
    magnitude_prune_,
    magnitude_prune_global_,
)
from cgc_lens.compress.operators.nf4 import NF4, NF4_CODE, nf4_quantize, nf4_quantize_blocks
from cgc_lens.compress.operators.rtn import (
    RTN,
    QParams,
    rtn_qparams,
    rtn_quantize,
    rtn_quantize_,
    rtn_quantize_stack_,
)
from cgc_lens.compress.operators.semi_structured import (
    SemiStructured,
    semi_structured_mask,
    semi_structured_prune_,
)
from cgc_lens.compress.operators.sparsity import check_fraction, measured_sparsity, n_pruned
from cgc_lens.compress.operators.wanda import WandaPrune, wanda_prune_, wanda_scores

__all__ = [
    "AWQ",
    "FP8",
    "GPTQ",
    "NF4",
    "NF4_CODE",
    "PHASES",
    "RTN",
    "Calibration",
    "EditStats",
    "GroupQParams",
    "HeadPrune",
    "InputMoments",
    "LowRank",
    "MagnitudePrune",
    "Operator",
    "Phase",
    "QParams",
    "SemiStructured",
    "WandaPrune",
    "awq_quantize",
    "awq_scales",
    "check_fraction",
    "check_group_size",
    "collect_layer_inputs",
    "edit_layer_by_layer",
    "fake_quantize",
    "fp8_bits_per_weight",
    "fp8_quantize",
    "gptq_quantize",
    "grid_range",
    "group_qparams",
    "head_prune_",
    "inverse_hessian_factor",
    "low_rank_",
    "magnitude_prune_",
    "magnitude_prune_global_",
    "matrix_shape",
    "measured_sparsity",
    "n_pruned",
    "nf4_bits_per_weight",
    "nf4_quantize",
    "nf4_quantize_blocks",
    "operator_class",
    "operator_from_dict",
    "output_error",
    "quantize_groups",
    "register_operator",
    "registered_operators",
    "rtn_bits_per_weight",
    "rtn_qparams",
    "rtn_quantize",
    "rtn_quantize_",
    "rtn_quantize_stack_",
    "semi_structured_bits_per_weight",
    "semi_structured_mask",
    "semi_structured_prune_",
    "valid_group_sizes",
    "wanda_prune_",
    "wanda_scores",
]
