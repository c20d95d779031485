"""Progress bars: one switch for every bar of the library, on stderr.

Every step that can take more than a couple of seconds (a pass over the tokens per condition,
the matched-pruning search, the capability probes, SAE training, CGC-F's generations, the
ablation sweep) shows a :func:`progress_bar` (``tqdm.auto``: a widget in Jupyter, a text bar on
stderr elsewhere) whose description says which condition, probe or stage runs. A bar shows only
when both its own switch (a function's ``progress=`` argument, a study config's ``progress``,
``cgc-lens ... --quiet``) and the library's switch are on: ``set_progress(False)`` (or
``with quiet():``, or the environment variable ``CGC_LENS_PROGRESS=0``) turns off every bar
without touching a config.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

__all__ = ["progress_bar", "progress_enabled", "quiet", "set_progress"]

_state = {
    "enabled": os.environ.get("CGC_LENS_PROGRESS", "1").strip().lower()
    not in ("0", "false", "no", "off")
}


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of the library on or off (default on).

    Example:
        >>> set_progress(False); progress_enabled()
        False
        >>> set_progress(True); progress_enabled()
        True
    """
    _state["enabled"] = bool(enabled)


def progress_enabled(local: bool = True) -> bool:
    """Whether a bar whose own switch is ``local`` shows (the library's switch and ``local``)."""
    return bool(local) and _state["enabled"]


@contextmanager
def quiet() -> Iterator[None]:
    """No progress bar inside the block (the switch is put back after it).

    Example:
        >>> with quiet():
        ...     progress_enabled()
        False
    """
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: float | None = None,
    enabled: bool = True,
    leave: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A ``tqdm.auto`` bar on stderr, disabled unless :func:`progress_enabled` (``enabled``).

    Args:
        iterable: what to iterate over (or None, and ``update`` by hand).
        desc: which condition, probe or stage runs (e.g. ``"survival: RTN INT4"``).
        total: the expected number of updates.
        enabled: the caller's own switch (a ``progress=`` argument).
        leave: keep the finished bar on screen.
        **kwargs: further ``tqdm`` options (``unit``, ``mininterval`` ...).

    Example:
        >>> sum(progress_bar(range(4), desc="count", enabled=False))
        6
    """
    kwargs.setdefault("file", sys.stderr)
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=leave,
        disable=not progress_enabled(enabled),
        **kwargs,
    )
