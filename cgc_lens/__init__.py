"""cgc-lens: what compression does to a language model's inside.

The public API: load a model, an SAE and a corpus; compress a model in place with an operator
inside ``compressed(...)``; run one of the three studies from its config. Everything else lives
in the subpackages (``data``, ``forward``, ``saes``, ``compress``, ``analysis``, ``studies``,
``plots``, ``io``); docs/architecture.md draws them.

The names are exported lazily (a module ``__getattr__``, PEP 562): ``import cgc_lens`` loads no
subpackage, and ``cgc_lens.run_survival`` imports the studies (torch, TransformerLens, SAELens)
on first use. So ``cgc-lens --help`` and a bad argument answer without importing torch. This is
the one ``__init__`` that holds more than imports and ``__all__``, for that reason.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names are, for type checkers and readers
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
    from cgc_lens.progress import progress_bar, set_progress
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

_EXPORTS: dict[str, str] = {
    "Allocation": "cgc_lens.analysis",
    "capability_density": "cgc_lens.analysis",
    "cgc_f": "cgc_lens.analysis",
    "cgc_l": "cgc_lens.analysis",
    "inverted": "cgc_lens.analysis",
    "uniform": "cgc_lens.analysis",
    "RTN": "cgc_lens.compress",
    "HeadPrune": "cgc_lens.compress",
    "LowRank": "cgc_lens.compress",
    "MagnitudePrune": "cgc_lens.compress",
    "Plan": "cgc_lens.compress",
    "Targets": "cgc_lens.compress",
    "WandaPrune": "cgc_lens.compress",
    "collect_input_norms": "cgc_lens.compress",
    "compress_permanently_": "cgc_lens.compress",
    "compressed": "cgc_lens.compress",
    "match_level": "cgc_lens.compress",
    "Corpus": "cgc_lens.data",
    "TokenBlocks": "cgc_lens.data",
    "load_corpus": "cgc_lens.data",
    "sliding_windows": "cgc_lens.data",
    "token_blocks": "cgc_lens.data",
    "CgcLensError": "cgc_lens.errors",
    "kl_divergence": "cgc_lens.forward.metrics",
    "perplexity": "cgc_lens.forward.metrics",
    "perplexity_result": "cgc_lens.forward.metrics",
    "token_nll": "cgc_lens.forward.metrics",
    "run_probes": "cgc_lens.forward.probes",
    "save_model": "cgc_lens.io.hf_export",
    "embedded_asset_dir": "cgc_lens.models",
    "load_model": "cgc_lens.models",
    "load_model_shape": "cgc_lens.models",
    "load_tokenizer": "cgc_lens.models",
    "load_sae": "cgc_lens.saes",
    "MLP": "cgc_lens.sites",
    "Head": "cgc_lens.sites",
    "Site": "cgc_lens.sites",
    "hook_name": "cgc_lens.sites",
    "AdaptiveResult": "cgc_lens.studies",
    "AdaptiveStudyConfig": "cgc_lens.studies",
    "CapabilityConfig": "cgc_lens.studies",
    "CapabilityResult": "cgc_lens.studies",
    "SurvivalConfig": "cgc_lens.studies",
    "SurvivalResult": "cgc_lens.studies",
    "head_density": "cgc_lens.studies",
    "run_adaptive": "cgc_lens.studies",
    "run_capability": "cgc_lens.studies",
    "run_survival": "cgc_lens.studies",
    "progress_bar": "cgc_lens.progress",
    "set_progress": "cgc_lens.progress",
}
"""Where each public name lives: imported from there on first use."""

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
    "progress_bar",
    "run_adaptive",
    "run_capability",
    "run_probes",
    "run_survival",
    "save_model",
    "set_progress",
    "sliding_windows",
    "token_blocks",
    "token_nll",
    "uniform",
]


def __getattr__(name: str) -> Any:
    """A public name (or a subpackage, ``cgc_lens.saes``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
