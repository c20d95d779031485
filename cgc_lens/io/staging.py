"""Results folders written whole or not at all.

A save of ``DIR`` (:func:`staged_folder`)

1. takes the lock ``<parent>/.DIR.lock`` (:mod:`cgc_lens.io.folder_lock`): a folder another run
   is writing is refused;
2. finishes what a killed save left beside ``DIR`` (a staging folder is deleted; if ``DIR`` is
   missing but its moved-aside earlier version is there, that is put back);
3. refuses ``DIR`` when it is a file, or a non-empty folder without ``overwrite``;
4. writes every file into a hidden sibling ``.DIR.partial-<pid>-<hex>``, then ``MANIFEST.json``
   last (:mod:`cgc_lens.io.manifest`);
5. moves an existing ``DIR`` aside (``.DIR.old-<pid>-<hex>``), renames the staging folder to
   ``DIR`` and deletes the old one: no file of an earlier run survives an overwrite.

So ``DIR`` is at any time absent, the earlier complete folder or the new complete folder. A
writer that fails removes its staging folder; one killed outright leaves it (and its lock) for
the next save to clear. :func:`check_out_dir` makes the same checks (and that the parent can be
written) before a study runs, so a bad ``--out`` fails in seconds, not after the run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cgc_lens.errors import CgcLensError
from cgc_lens.io.folder_lock import check_not_locked, folder_lock, results_target
from cgc_lens.io.manifest import remove_sealed, write_manifest

__all__ = ["check_out_dir", "leftovers", "staged_folder"]

_PARTIAL, _OLD = "partial", "old"


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def leftovers(out: str | Path) -> dict[str, list[Path]]:
    """What interrupted saves of ``out`` left beside it: ``partial`` (staging folders) and
    ``old`` (earlier versions moved aside)."""
    target = results_target(out)
    found: dict[str, list[Path]] = {_PARTIAL: [], _OLD: []}
    if not target.parent.is_dir():
        return found
    for kind in found:
        prefix = f".{target.name}.{kind}-"
        found[kind] = sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))
    return found


def _check_target(target: Path, overwrite: bool) -> None:
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CgcLensError(f"--out {target} lies under {parent}, which is a file: "
                                   f"choose a folder path.")
            break
    if target.exists() and not target.is_dir():
        raise CgcLensError(f"--out {target} is a file, not a folder: choose a folder path "
                           f"(it is made if missing).")
    if not overwrite and target.is_dir() and any(target.iterdir()):
        raise CgcLensError(
            f"--out {target} is not empty (results of an earlier run?): pass --overwrite "
            f"(overwrite=True in Python) to replace it whole, or choose another folder.")


def _check_writable(target: Path) -> None:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.probe-")
        os.close(fd)
        Path(probe).unlink()
    except OSError as exc:
        raise CgcLensError(f"Cannot write the results folder {target}: {parent} cannot be "
                           f"created or written ({exc.strerror or exc}).") from exc


def check_out_dir(out: str | Path, *, overwrite: bool = False) -> Path:
    """Check before a study runs that its results can be saved to ``out``: not a file, empty
    or missing (unless ``overwrite``), no other run writing it, its parent creatable (it is
    made) and writable. Returns the absolute folder.

    Raises:
        CgcLensError: what a save of ``out`` would refuse, with the fix.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "taken").write_text("not a folder")
        ...     check_out_dir(Path(d) / "taken")
        Traceback (most recent call last):
        ...
        cgc_lens.errors.CgcLensError: --out ... is a file, not a folder: ...
    """
    target = results_target(out)
    _check_target(target, overwrite)
    _check_writable(target)
    check_not_locked(target)
    return target


def _recover(target: Path) -> None:
    """Under the lock: clear what killed saves of ``target`` left (see the module docstring)."""
    found = leftovers(target)
    for stage in found[_PARTIAL]:
        shutil.rmtree(stage, ignore_errors=True)
    old = found[_OLD]
    if old and not target.exists():
        newest = max(old, key=lambda p: p.stat().st_mtime)
        newest.rename(target)
        old.remove(newest)
    for path in old:
        shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(stage: Path, target: Path) -> None:
    old = _sibling(target, _OLD) if target.exists() else None
    try:
        if old is not None:
            target.rename(old)
        stage.rename(target)
    except BaseException:
        if old is not None and old.exists() and not target.exists():
            old.rename(target)  # the earlier folder goes back
        raise
    if old is not None:
        remove_sealed(old)


@contextmanager
def staged_folder(out: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a results folder whole or not at all (see the module docstring): yields the
    staging folder to write into; on a clean exit the manifest is written and the folder put
    in place of ``out``, on an exception the staging folder is removed and ``out`` is as it was.

    Raises:
        CgcLensError: ``out`` is a file, non-empty without ``overwrite``, or being written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with staged_folder(Path(d) / "run") as stage:
        ...         _ = (stage / "a.txt").write_text("x")
        ...     print(sorted(p.name for p in (Path(d) / "run").iterdir()))
        ['MANIFEST.json', 'a.txt']
    """
    target = results_target(out)
    with folder_lock(target):
        _recover(target)
        _check_target(target, overwrite)
        stage = _sibling(target, _PARTIAL)
        try:
            stage.mkdir()
        except OSError as exc:
            raise CgcLensError(f"Cannot write the results folder {target}: {stage.parent} "
                               f"cannot be written ({exc.strerror or exc}).") from exc
        try:
            yield stage
            write_manifest(stage)
            _swap_into_place(stage, target)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
