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
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm as _auto_tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = [
    "Stages",
    "progress_bar",
    "progress_enabled",
    "progress_scope",
    "quiet",
    "set_progress",
]


class tqdm(_auto_tqdm):
    """``tqdm.auto``'s bar with a lock of this process only.

    tqdm's default lock holds a multiprocessing semaphore that forked children share: a child
    killed while it makes or closes a bar (SIGKILL during a save) leaves it taken, and every
    later bar of the parent, even a disabled one, waits for it forever.
    """


tqdm.set_lock(threading.RLock())

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


@contextmanager
def progress_scope(enabled: bool = True) -> Iterator[None]:
    """A block (a command's run) with bars on or off.

    On: records of the root logger's console handlers print above the bars (``tqdm.write``)
    rather than through the bar being drawn. Off: :func:`quiet`.

    Example:
        >>> with progress_scope(False):
        ...     progress_enabled()
        False
    """
    if not enabled:
        with quiet():
            yield
        return
    with logging_redirect_tqdm(tqdm_class=tqdm):
        yield


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


class Stages:
    """A bar over a study's named stages whose description names the stage running.

    The bar opens on the first stage; :meth:`next` ends the running stage and names the next
    one; the bar closes after the last (or on :meth:`close`). Steps with a loop of their own
    show their own bar beneath it; a step without one (reading a corpus, a closed form) is
    still named while it runs.

    Example:
        >>> stages = Stages(("load", "train", "evaluate"), desc="study", enabled=False)
        >>> stages.running
        'load'
        >>> stages.next(); stages.running
        'train'
        >>> stages.next(); stages.next(); stages.running is None
        True
    """

    def __init__(self, names: Sequence[str], *, desc: str, enabled: bool = True) -> None:
        """Open the bar on ``names[0]``; ``desc`` prefixes every description (``"desc: name"``)."""
        self.names, self.desc, self.done = tuple(names), desc, 0
        self.bar = progress_bar(
            total=len(self.names), desc=self._label(), enabled=enabled, unit="stage"
        )

    @property
    def running(self) -> str | None:
        """The stage running now (None once all are done)."""
        return self.names[self.done] if self.done < len(self.names) else None

    def _label(self) -> str:
        return f"{self.desc}: {self.running}" if self.running else self.desc

    def next(self) -> None:
        """End the running stage and name the next (close the bar after the last)."""
        self.done += 1
        self.bar.update(1)
        if self.running is None:
            self.bar.close()
        else:
            self.bar.set_description(self._label())

    def close(self) -> None:
        """Close the bar (also when a stage failed)."""
        self.bar.close()
