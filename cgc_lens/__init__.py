"""cgc-lens: what compression does to a language model's inside."""

from cgc_lens.analysis.allocation import Allocation, cgc_f, cgc_l, inverted, uniform
from cgc_lens.analysis import capability_density
from cgc_lens.compress import (
    RTN,
    HeadPrune,
    LowRank,
    MagnitudePrune,
    Plan,
    Targets,
    WandaPrune,
    collect_input_norms,
    compress_permanently_,
    compressed,
    match_level,
)
from cgc_lens.data.corpus import Corpus, TokenBlocks, load_corpus, sliding_windows, token_blocks
from cgc_lens.errors import CgcLensError
from cgc_lens.studies import head_density
from cgc_lens.forward.metrics import kl_divergence, perplexity, perplexity_result, token_nll
from cgc_lens.models import embedded_asset_dir, load_model, load_model_shape, load_tokenizer
from cgc_lens.forward.probes import run_probes
from cgc_lens.sites import MLP, Head, Site, hook_name

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "RTN",
    "Allocation",
    "CgcLensError",
    "Corpus",
    "Head",
    "HeadPrune",
    "LowRank",
    "MagnitudePrune",
    "Plan",
    "Site",
    "Targets",
    "TokenBlocks",
    "WandaPrune",
    "__version__",
    "capability_density",
    "cgc_f",
    "cgc_l",
    "collect_input_norms",
    "compress_permanently_",
    "compressed",
    "embedded_asset_dir",
    "head_density",
    "hook_name",
    "inverted",
    "kl_divergence",
    "load_corpus",
    "load_model",
    "load_model_shape",
    "load_tokenizer",
    "match_level",
    "perplexity",
    "perplexity_result",
    "run_probes",
    "sliding_windows",
    "token_blocks",
    "token_nll",
    "uniform",
]
