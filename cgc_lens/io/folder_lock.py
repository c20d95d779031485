"""One writer per results folder: a lock file beside the folder, made with ``O_EXCL``.

The lock of ``runs/s1`` is ``runs/.s1.lock``; it holds the writer's pid, host and start time.
Beside the folder, not in it, because a save replaces the folder by a rename. Where the system
has ``flock`` the writer also holds a ``flock`` on the file for as long as it exists, so a lock
is stale only when nobody holds that ``flock`` *and* its pid is no longer alive on this host (or
is this process, which holds no such lock); a stale lock is removed and taken (a run killed with
SIGKILL leaves one behind). A lock of a live
pid, or of another host, is never taken: the message names the lock file to delete by hand when
no run is writing there.

The lock is re-entrant within one thread (the CLI holds it for the whole run and the save takes
it again); another thread or process gets a :class:`~cgc_lens.errors.CgcLensError`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cgc_lens.errors import CgcLensError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid-only staleness
    fcntl = None  # type: ignore[assignment]

__all__ = ["check_not_locked", "folder_lock", "holds_lock", "lock_owner", "lock_path",
           "results_target"]

log = logging.getLogger(__name__)

_EMPTY_LOCK_GRACE_S = 60.0
"""Without ``flock``: a lock file without content (its writer died between creating and filling
it) is stale after this many seconds."""
_HELD: dict[str, list[int]] = {}
"""Lock path → [thread ident, depth, pid] of the locks this process holds."""
_HELD_GUARD = threading.Lock()


def results_target(out: str | Path) -> Path:
    """The absolute folder a save of ``out`` writes (a symlink to a folder is followed).

    Raises:
        CgcLensError: ``out`` is the file-system root (a results folder needs a parent).
    """
    path = Path(os.path.abspath(Path(out).expanduser()))  # noqa: PTH100 - keeps symlinks
    if path.is_symlink() and path.resolve().is_dir():
        path = path.resolve()
    if not path.name:
        raise CgcLensError(f"--out {out} is the file-system root: choose a folder below it.")
    return path


def lock_path(out: str | Path) -> Path:
    """The lock file of the results folder ``out``: ``<parent>/.<name>.lock``."""
    target = results_target(out)
    return target.parent / f".{target.name}.lock"


def _flock(fd: int, *, blocking: bool) -> bool:
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would end the process there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_owner(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def lock_owner(out: str | Path) -> dict[str, Any] | None:
    """What the lock of ``out`` records (``pid``, ``host``, ``since``), or None without a lock."""
    try:
        fd = os.open(lock_path(out), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read_owner(fd)
    finally:
        os.close(fd)


def _is_stale(owner: dict[str, Any], path: Path) -> bool:
    """Called holding the file's ``flock`` (where there is one)."""
    if not owner:  # killed between creating and filling it, or filling it right now
        if fcntl is not None:  # a writer filling it holds the flock: so its writer died
            return True  # (were it still starting, it finds its file gone and starts again)
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    if owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", -1))
    if pid == os.getpid():  # ours, yet no thread of ours holds it: left by a failed release
        with _HELD_GUARD:
            return str(path) not in _HELD
    return not _pid_alive(pid)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return path.stat().st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _break_if_stale(path: Path) -> tuple[bool, dict[str, Any]]:
    """Remove the lock at ``path`` if it is stale: (whether to try creating it again, owner)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True, {}
    try:
        if not _flock(fd, blocking=False):  # its writer is alive and holds it
            return False, _read_owner(fd)
        owner = _read_owner(fd)
        if not _is_stale(owner, path):
            return False, owner
        if _same_file(fd, path):
            path.unlink()
            log.warning("Removed the stale lock %s of pid %s (no longer running).", path,
                        owner.get("pid", "?"))
        return True, owner
    finally:
        os.close(fd)


def _busy(target: Path, path: Path, owner: dict[str, Any]) -> CgcLensError:
    who = (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
           f"{owner.get('since', '?')}") if owner else "a run that is starting"
    return CgcLensError(
        f"{target} is being written by another run ({who}; lock {path}). Wait for it to finish "
        f"or choose another --out; if no cgc-lens run is writing there, delete {path}.")


def _acquire(target: Path, path: Path) -> int:
    owner: dict[str, Any] = {}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            retry, owner = _break_if_stale(path)
            if retry:
                continue
            raise _busy(target, path, owner) from None
        except OSError as exc:
            raise CgcLensError(f"Cannot create the lock {path} of --out {target}: "
                               f"{exc.strerror or exc}.") from exc
        _flock(fd, blocking=True)  # a breaker may hold it for an instant
        if not _same_file(fd, path):  # removed as stale in between: start again
            os.close(fd)
            continue
        since = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": since}).encode("utf-8"))
        return fd
    raise _busy(target, path, owner)


def _release(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    finally:
        os.close(fd)


@contextmanager
def folder_lock(out: str | Path) -> Iterator[Path]:
    """Hold the lock of the results folder ``out`` (its parent is made if missing); yields the
    lock file's path.

    Raises:
        CgcLensError: another thread or process holds it (or its pid is alive), or the lock
            cannot be created.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, folder_lock(f"{d}/run") as lock:
        ...     with folder_lock(f"{d}/run"):  # re-entrant in one thread
        ...         print(lock.name, lock_owner(f"{d}/run")["pid"] == os.getpid())
        .run.lock True
    """
    target = results_target(out)
    path = target.parent / f".{target.name}.lock"
    key, me, pid = str(path), threading.get_ident(), os.getpid()
    with _HELD_GUARD:
        held = _HELD.get(key)
        mine = held is not None and held[0] == me and held[2] == pid
        if mine:
            held[1] += 1
    if mine:
        try:
            yield path
        finally:
            with _HELD_GUARD:
                held[1] -= 1
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgcLensError(f"Cannot create the folder {target.parent} for --out {target}: "
                           f"{exc.strerror or exc}.") from exc
    fd = _acquire(target, path)
    with _HELD_GUARD:
        _HELD[key] = [me, 1, pid]
    try:
        yield path
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        _release(fd, path)


def holds_lock(out: str | Path) -> bool:
    """Whether this thread holds the lock of ``out``."""
    held = _HELD.get(str(lock_path(out)))
    return held is not None and held[0] == threading.get_ident() and held[2] == os.getpid()


def check_not_locked(out: str | Path) -> None:
    """Refuse ``out`` when another run holds its lock (a stale lock is removed).

    Raises:
        CgcLensError: a live writer holds the lock.
    """
    if holds_lock(out):
        return
    target = results_target(out)
    path = target.parent / f".{target.name}.lock"
    if path.exists():
        retry, owner = _break_if_stale(path)
        if not retry:
            raise _busy(target, path, owner)
