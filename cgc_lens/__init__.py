"""cgc-lens: what compression does to a language model's inside.

The public API: load a model, an SAE and a corpus; compress a model in place with an operator
inside ``compressed(...)``; run one of the three studies from its config. Everything else lives
in the subpackages (``data``, ``forward``, ``saes``, ``compress``, ``analysis``, ``studies``,
``plots``, ``io``); docs/architecture.md draws them.
"""

from cgc_lens.analysis import Allocation, capability_density, cgc_f, cgc_l, inverted, uniform
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
from cgc_lens.data import Corpus, TokenBlocks, load_corpus, sliding_windows, token_blocks
from cgc_lens.errors import CgcLensError
from cgc_lens.forward.metrics import kl_divergence, perplexity, perplexity_result, token_nll
from cgc_lens.forward.probes import run_probes
from cgc_lens.io.hf_export import save_model
from cgc_lens.models import embedded_asset_dir, load_model, load_model_shape, load_tokenizer
from cgc_lens.saes import load_sae
from cgc_lens.sites import MLP, Head, Site, hook_name
from cgc_lens.studies import (
    AdaptiveResult,
    AdaptiveStudyConfig,
    CapabilityConfig,
    CapabilityResult,
    SurvivalConfig,
    SurvivalResult,
    head_density,
    run_adaptive,
    run_capability,
    run_survival,
)

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "RTN",
    "AdaptiveResult",
    "AdaptiveStudyConfig",
    "Allocation",
    "CapabilityConfig",
    "CapabilityResult",
    "CgcLensError",
    "Corpus",
    "Head",
    "HeadPrune",
    "LowRank",
    "MagnitudePrune",
    "Plan",
    "Site",
    "SurvivalConfig",
    "SurvivalResult",
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
    "load_sae",
    "load_tokenizer",
    "match_level",
    "perplexity",
    "perplexity_result",
    "run_adaptive",
    "run_capability",
    "run_probes",
    "run_survival",
    "save_model",
    "sliding_windows",
    "token_blocks",
    "token_nll",
    "uniform",
]
