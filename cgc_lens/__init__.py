"""cgc-lens: what compression does to a language model's inside."""

from cgc_lens.errors import CgcLensError
from cgc_lens.sites import MLP, Head, Site, hook_name

__version__ = "0.1.0"

__all__ = ["MLP", "CgcLensError", "Head", "Site", "__version__", "hook_name"]
