"""A results folder's completeness marker: ``MANIFEST.json``, the size and SHA-256 of every other
file, written last.

A folder whose files match its manifest is exactly what one save wrote; a missing file, an extra
one or a changed checksum means an interrupted save, two writers or a hand edit, and
:func:`check_manifest` refuses it. Names with a component starting with ``.`` (``.DS_Store``,
``.ipynb_checkpoints``) are not part of a results folder and are ignored.

Folders written before the manifest existed have none: they load with a
:class:`LegacyFolderWarning` (nothing can be checked) and a save of their result adds one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from cgc_lens.errors import CgcLensError

__all__ = ["MANIFEST_FILE", "LegacyFolderWarning", "check_manifest", "folder_files",
           "remove_sealed", "warn_unsealed", "write_manifest"]

MANIFEST_FILE = "MANIFEST.json"
"""The completeness marker's file name inside a results folder."""
MANIFEST_FORMAT = "cgc-lens.results-manifest"
_CHUNK = 1 << 20


class LegacyFolderWarning(UserWarning):
    """A results folder without a manifest was loaded unchecked."""


def folder_files(folder: Path) -> list[str]:
    """Every file below ``folder`` but the manifest, as sorted ``/``-separated relative paths
    (names with a component starting with ``.`` left out)."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts[0] == MANIFEST_FILE or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_sealed(folder: Path) -> None:
    """Delete a results folder, its manifest last: a reader that still holds it open then sees
    missing files against the manifest (refused), never a smaller folder without one."""
    for child in folder.iterdir():
        if child.name == MANIFEST_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def write_manifest(folder: str | Path) -> Path:
    """Write ``folder/MANIFEST.json`` for the files in ``folder`` (call it last).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "a.txt").write_text("x")
        ...     print(write_manifest(d).name)
        MANIFEST.json
    """
    folder = Path(folder)
    files = {rel: {"bytes": (folder / rel).stat().st_size, "sha256": _sha256(folder / rel)}
             for rel in folder_files(folder)}
    doc = {"format": MANIFEST_FORMAT, "version": 1, "files": files}
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def _refuse(folder: Path, problem: str) -> CgcLensError:
    return CgcLensError(
        f"{folder} is not a complete results folder: {problem}. It is not what one save wrote "
        f"(an interrupted save, two runs writing at once, or files changed by hand); run the "
        f"study again with --out {folder} --overwrite (save(..., overwrite=True) in Python).")


def _listed(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _parse(folder: Path, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(folder, f"its {MANIFEST_FILE} cannot be read ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(
            doc.get("files"), dict):
        raise _refuse(folder, f"its {MANIFEST_FILE} is not a cgc-lens manifest")
    return doc


def _read_all(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the manifest's too), read through one open handle of the folder
    where the system allows it: a save that renames another folder into place meanwhile
    cannot mix its files in (this handle keeps the folder it opened)."""
    if not (hasattr(os, "fwalk") and os.open in os.supports_dir_fd):  # pragma: no cover
        names = [*folder_files(folder), MANIFEST_FILE]
        return {rel: (folder / rel).read_bytes() for rel in names if (folder / rel).is_file()}
    out: dict[str, bytes] = {}
    top = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                rel = Path(dirpath, name).as_posix().removeprefix("./")
                if name.startswith("."):
                    continue
                fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
                with os.fdopen(fd, "rb") as fh:
                    out[rel] = fh.read()
    finally:
        os.close(top)
    return out


def warn_unsealed(folder: Path) -> None:
    """Issue the :class:`LegacyFolderWarning` of a folder without a manifest."""
    warnings.warn(
        f"{folder} has no {MANIFEST_FILE} (written before cgc-lens sealed its results folders), "
        f"so it cannot be checked for a complete, unmixed save; it is read as it is. Save the "
        f"loaded result again (result.save(new_folder)) to seal it.",
        LegacyFolderWarning, stacklevel=4)


def check_manifest(folder: str | Path) -> tuple[dict[str, bytes], bool]:
    """Read every file of ``folder`` once and check it against the manifest.

    Returns:
        The contents by relative path (parse these, not the files again, so that a folder
        replaced meanwhile cannot mix in), and whether a manifest sealed them (False: a folder
        written before manifests, read as it is; see :func:`warn_unsealed`).

    Raises:
        CgcLensError: a file is missing, extra, or its size or checksum differs; the manifest
            is unreadable; the folder changed while it was read.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "a.txt").write_text("x")
        ...     _ = write_manifest(d)
        ...     print(check_manifest(d))
        ({'a.txt': b'x'}, True)
    """
    folder = Path(folder)
    try:
        contents = _read_all(folder)
    except OSError as exc:  # replaced or removed while being read
        raise _refuse(folder, f"it cannot be read or changed while being read "
                              f"({exc.strerror or exc})") from exc
    raw = contents.pop(MANIFEST_FILE, None)
    if raw is None:
        return contents, False
    files = _parse(folder, raw)["files"]
    missing = sorted(set(files) - set(contents))
    if missing:
        raise _refuse(folder, f"missing {_listed(missing)}")
    extra = sorted(set(contents) - set(files))
    if extra:
        raise _refuse(folder, f"files not in its manifest: {_listed(extra)}")
    changed = [rel for rel, data in contents.items()
               if len(data) != files[rel].get("bytes")
               or hashlib.sha256(data).hexdigest() != files[rel].get("sha256")]
    if changed:
        raise _refuse(folder, f"size or SHA-256 differs from its manifest: {_listed(changed)}")
    return contents, True
