"""The one exception class of cgc-lens and helpers that build its messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["CgcLensError", "unknown_name"]


class CgcLensError(ValueError):
    """Bad input to cgc-lens: the message says what was expected, what came and what is valid."""


def unknown_name(kind: str, name: object, valid: Iterable[str], *, where: str = "") -> CgcLensError:
    """Build the error for a name that is not in a registry.

    Args:
        kind: what the name names ("hook", "operator", "corpus" ...).
        name: the name that came.
        valid: every valid name.
        where: optional context, e.g. " on cgc-tiny".

    Example:
        >>> print(unknown_name("hook", "blocks.3.hook_z", ["blocks.3.attn.hook_z"], where=" on m"))
        Unknown hook 'blocks.3.hook_z' on m. Closest: ['blocks.3.attn.hook_z'].
    """
    valid = sorted(set(valid))
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
    more = " ..." if len(valid) > 20 else ""
    hint = f"Closest: {close}." if close else f"Valid: {valid[:20]}{more}."
    return CgcLensError(f"Unknown {kind} {name!r}{where}. {hint}")
