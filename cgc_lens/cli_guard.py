"""The top of every ``cgc-lens`` command: no exception reaches the shell as a bare traceback.

- :class:`~cgc_lens.errors.CgcLensError` (bad input): ``cgc-lens COMMAND: error: MESSAGE`` on
  one line, exit status 2.
- ``KeyboardInterrupt`` (Ctrl-C): ``cgc-lens COMMAND: interrupted``, exit status 130.
- Anything else (a bug, or an error of a library below): one line naming the command, the
  exception and a log file holding the full traceback, exit status 1. The log is written to
  the system's temporary folder (``tempfile.gettempdir()``, e.g. ``/tmp/cgc-lens-survival-
  XXXX.log``).
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence

from cgc_lens.errors import CgcLensError

__all__ = ["EXIT_BAD_INPUT", "EXIT_BUG", "EXIT_INTERRUPTED", "guarded", "one_line"]

EXIT_BUG, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130


def one_line(text: object, limit: int = 2000) -> str:
    """``text`` with its line breaks and runs of spaces folded to single spaces, cut at
    ``limit`` characters.

    Example:
        >>> one_line("bad value\\n  expected 1-3")
        'bad value expected 1-3'
    """
    folded = " ".join(str(text).split())
    return folded if len(folded) <= limit else folded[:limit - 3] + "..."


def _write_log(command: str, argv: Sequence[str] | None, exc: BaseException) -> str | None:
    """Write the traceback to a new log file; its path, or None when it cannot be written."""
    try:
        with tempfile.NamedTemporaryFile(
                "w", prefix=f"cgc-lens-{command}-", suffix=".log", delete=False,
                encoding="utf-8") as fh:
            fh.write(f"cgc-lens {command}: unexpected error\n")
            fh.write(f"argv: {list(sys.argv if argv is None else argv)!r}\n\n")
            fh.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return fh.name
    except OSError:
        return None


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def guarded(command: str, run: Callable[[], int], *, argv: Sequence[str] | None = None) -> int:
    """Run one command and turn every exception into one line on stderr and an exit status
    (see the module docstring).

    Args:
        command: the subcommand's name, for the messages.
        run: the command; returns its exit status.
        argv: the command line, for the log (``sys.argv`` without it).

    Example:
        >>> def fails() -> int:
        ...     raise CgcLensError("--bits must be 2-8, got 9")
        >>> import contextlib, io
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     status = guarded("survival", fails)
        >>> status, err.getvalue()
        (2, 'cgc-lens survival: error: --bits must be 2-8, got 9\\n')
    """
    try:
        return run()
    except CgcLensError as exc:
        _say(f"cgc-lens {command}: error: {one_line(exc)}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say(f"cgc-lens {command}: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # the top of the command: reported, never re-raised
        log = _write_log(command, argv, exc)
        where = (f"traceback in {log}" if log else
                 f"the traceback could not be written to {tempfile.gettempdir()}")
        what = one_line(f"{type(exc).__name__}: {exc}", limit=300)
        _say(f"cgc-lens {command}: unexpected error ({what}); {where}. Please report it with "
             f"that file.")
        return EXIT_BUG
