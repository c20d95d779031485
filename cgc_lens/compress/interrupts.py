"""Hold SIGINT and SIGTERM while weights are being put back, then deliver them.

``with deferred_signals(): ...`` installs, for the time of the body, SIGINT and SIGTERM handlers
that only note the signal. On leaving, the handlers found on entry are put back first and each
noted signal is then delivered to its own previous handler, once: Python's default SIGINT
handler raises :class:`KeyboardInterrupt`, a user handler is called, ``SIG_DFL`` re-raises the
signal (the default action happens then), ``SIG_IGN`` drops it. A Ctrl-C (or a second one)
during a restore therefore waits until every tensor is back, and then interrupts as usual.

Limits: Python runs signal handlers in the main thread only, and only the main thread may
install them; elsewhere the body runs without deferral (a signal then still reaches the main
thread, not the restoring one). A handler installed from C (``signal.getsignal`` is None) cannot
be put back from Python, so that signal is not deferred either. Deferral does not stop other
asynchronous exceptions (``PyThreadState_SetAsyncExc``).
"""

from __future__ import annotations

import inspect
import signal
import threading
from types import FrameType, TracebackType

__all__ = ["DEFERRED_SIGNALS", "deferred_signals"]

DEFERRED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
"""The signals that :class:`deferred_signals` holds back."""

# The C functions behind signal.signal / signal.getsignal, without their enum conversions
# (which cost more than the calls themselves on every restore).
_raw = getattr(signal, "_signal", signal)
_HELD = tuple(int(s) for s in DEFERRED_SIGNALS)
_MASK = hasattr(signal, "pthread_sigmask")  # POSIX; elsewhere handlers go back one by one


class deferred_signals:  # lower case: used like a function, ``with deferred_signals():``
    """Context manager holding back SIGINT and SIGTERM until its body has finished.

    Nests: an inner deferral hands what it caught to the outer one's handler, so the signal is
    delivered once, when the outermost body has finished.

    Example:
        >>> import os
        >>> seen = []
        >>> old = signal.signal(signal.SIGINT, lambda sig, frame: seen.append("delivered"))
        >>> with deferred_signals() as held:
        ...     os.kill(os.getpid(), signal.SIGINT)  # noted, not delivered yet
        ...     seen.append("body done")
        >>> _ = signal.signal(signal.SIGINT, old)
        >>> held.caught, seen
        ([<Signals.SIGINT: 2>], ['body done', 'delivered'])
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self.caught: list[signal.Signals] = []
        """Signals received in the body, in order."""

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.caught.append(signal.Signals(signum))

    def __enter__(self) -> deferred_signals:
        if threading.current_thread() is not threading.main_thread():
            return self
        try:
            for sig in _HELD:
                previous = _raw.getsignal(sig)
                if previous is None:  # installed from C: could not be put back
                    continue
                self._previous[sig] = previous  # noted first: __exit__ can always undo
                _raw.signal(sig, self._note)
        except BaseException:
            self._put_back()
            raise
        return self

    def _put_back(self) -> None:
        """Every previous handler back, with the held signals blocked at the OS meanwhile.

        Without the block a signal arriving between two handlers put back ran the first one
        (``signal.signal`` runs pending handlers before it changes one): when that raised, the
        second signal kept the note-taker of a finished deferral and was dropped from then on.
        Blocked, a signal arriving now waits in the OS and reaches its own handler once all are
        back; one already noted by Python is taken by the note-taker at the first call below.
        """
        block = _MASK and threading.current_thread() is threading.main_thread()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if block else None
        try:
            for sig, previous in self._previous.items():
                _raw.signal(sig, previous)
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._put_back()
        for sig in dict.fromkeys(self.caught):
            _deliver(sig, self._previous.get(int(sig), signal.SIG_DFL))


def _deliver(sig: signal.Signals, handler: object) -> None:
    """Hand ``sig`` to ``handler`` as if it had arrived now."""
    if handler == signal.SIG_IGN:  # == : the raw functions give plain ints for SIG_IGN/SIG_DFL
        return
    if not callable(handler):  # SIG_DFL: the default action, now
        signal.raise_signal(sig)
        return
    handler(sig, inspect.currentframe())
