"""deferred_signals puts every handler back even when a signal arrives while it does so."""

from __future__ import annotations

import os
import signal
import types

import pytest

from cgc_lens.compress import interrupts
from cgc_lens.compress.interrupts import deferred_signals

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask"),
    reason="POSIX only: the test sends SIGTERM to itself and the mechanism it checks blocks "
           "signals with pthread_sigmask, which Windows has neither of")


@pytest.fixture
def handlers():
    """SIGINT raising KeyboardInterrupt, SIGTERM noting its arrivals; the originals after."""
    seen: list[int] = []

    def on_int(sig, frame):
        raise KeyboardInterrupt

    def on_term(sig, frame):
        seen.append(sig)

    old = signal.signal(signal.SIGINT, on_int), signal.signal(signal.SIGTERM, on_term)
    yield on_int, on_term, seen
    signal.signal(signal.SIGINT, old[0])
    signal.signal(signal.SIGTERM, old[1])


def test_a_signal_between_two_handlers_put_back_leaves_none_behind(handlers, monkeypatch):
    """SIGINT arrives just after its own handler is back and before SIGTERM's: it reaches its
    handler once both are back, and a later SIGTERM reaches its own handler (before the fix
    it raised inside the put-back, and SIGTERM kept the finished deferral's note-taker)."""
    on_int, on_term, seen = handlers
    real = interrupts._raw

    def put_back(sig, handler):
        real.signal(sig, handler)
        if sig == signal.SIGINT and handler is on_int:  # its own handler is back
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(interrupts, "_raw",
                        types.SimpleNamespace(getsignal=real.getsignal, signal=put_back))
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        pass
    assert signal.getsignal(signal.SIGINT) is on_int
    assert signal.getsignal(signal.SIGTERM) is on_term
    os.kill(os.getpid(), signal.SIGTERM)
    signal.getsignal(signal.SIGTERM)  # a call: the pending handler runs
    assert seen == [signal.SIGTERM]


def test_signals_noted_in_the_body_are_delivered_once_after(handlers):
    on_int, on_term, seen = handlers
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals() as held:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
    assert held.caught == [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]
    assert seen == [signal.SIGTERM]  # delivered once, before SIGINT's handler raised
    assert signal.getsignal(signal.SIGINT) is on_int
    assert signal.getsignal(signal.SIGTERM) is on_term
