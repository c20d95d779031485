"""An on-disk cache of derived data (the embedded corpus, its token streams), an optimisation only.

Every process used to regenerate the synthetic half of the embedded corpus and tokenize its
splits again (seconds per split). :func:`cached` keeps such results in the user's cache folder
(:func:`cache_dir`), one file per entry, keyed by a checksum of everything the result depends
on: the inputs' content, the code that makes it (:func:`source_digest`) and the library
versions. Nothing here is ever trusted blindly:

- a file is written whole to a temporary sibling and renamed into place, so readers see either
  no entry or a whole one, even with several writers at once;
- a file holds its key and the SHA-256 of its payload; a truncated, corrupt or foreign file is
  logged, rebuilt and replaced, never used;
- a folder that cannot be written (read-only home) only costs the rebuild.

The folder is ``$CGC_LENS_CACHE`` if set (``off`` switches the cache off), else
``$XDG_CACHE_HOME/cgc-lens``, else the platform's user cache folder (``~/.cache/cgc-lens`` on
Linux). Delete it at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

__all__ = ["CACHE_ENV", "cache_dir", "cached", "digest", "documents_digest", "source_digest"]

CACHE_ENV = "CGC_LENS_CACHE"
"""The environment variable naming the cache folder (``off``: no cache)."""
_MAGIC = b"cgc-lens cache 1\n"
_HEX = 64  # characters of a SHA-256 hex digest
log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_dir() -> Path | None:
    """The cache folder (not created here), or None when ``$CGC_LENS_CACHE`` is ``off``.

    Example:
        >>> import os
        >>> os.environ.get(CACHE_ENV) == "off" or cache_dir().name != ""
        True
    """
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen).expanduser()
    if os.environ.get("XDG_CACHE_HOME", "").strip():
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "cgc-lens"
    try:
        import platformdirs
    except ImportError:  # not a dependency: the XDG default then
        return Path.home() / ".cache" / "cgc-lens"
    return Path(platformdirs.user_cache_dir("cgc-lens", appauthor=False))


def digest(*parts: str | bytes) -> str:
    """SHA-256 (hex) of ``parts``, each length-prefixed so that no two lists collide.

    Example:
        >>> digest("ab", "c") == digest("a", "bc")
        False
    """
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def source_digest(obj: object) -> str:
    """A checksum of the code of ``obj`` (a function or class): the source of its whole module
    and its qualified name, so that a change anywhere in that module, or another function
    patched in its place, gives another key. Raises OSError without sources."""
    module = inspect.getmodule(obj)
    source = inspect.getsource(module) if module is not None else inspect.getsource(obj)
    return digest(source, getattr(obj, "__module__", ""), getattr(obj, "__qualname__", ""))


def documents_digest(documents: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of ``(category, text)`` pairs, in order: the content of a corpus.

    Example:
        >>> documents_digest([("a", "x y")]) == documents_digest([("a", "x"), ("a", "y")])
        False
    """
    h = hashlib.sha256()
    for category, text in documents:
        for data in (category.encode(), text.encode()):
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def _entry(folder: Path, name: str, key: str) -> Path:
    return folder / f"{name}-{key[:24]}.bin"


def _read(path: Path, key: str) -> bytes | None:
    """The payload of ``path`` if it is a whole entry for ``key``; None (logged) otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("cache entry %s unreadable (%s); rebuilding it", path, err)
        return None
    head = len(_MAGIC) + 2 * (_HEX + 1)
    if len(data) < head:
        log.warning("cache entry %s is truncated; rebuilding it", path)
        return None
    stored_key = data[len(_MAGIC):len(_MAGIC) + _HEX].decode("ascii", "replace")
    payload_sum = data[len(_MAGIC) + _HEX + 1:head - 1].decode("ascii", "replace")
    payload = data[head:]
    if not data.startswith(_MAGIC) or stored_key != key:
        log.warning("cache entry %s is not an entry for this key; rebuilding it", path)
        return None
    if hashlib.sha256(payload).hexdigest() != payload_sum:
        log.warning("cache entry %s is corrupt or truncated (checksum mismatch); rebuilding it",
                    path)
        return None
    return payload


def _write(path: Path, key: str, payload: bytes) -> None:
    """Write the entry whole (a temporary sibling renamed into place); log and go on if the
    folder cannot be written."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join([_MAGIC, key.encode("ascii"), b"\n",
                              hashlib.sha256(payload).hexdigest().encode("ascii"), b"\n"]))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
        tmp = None
    except OSError as err:
        log.info("cache folder %s not writable (%s); the result is not cached", path.parent, err)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()


def cached(
    name: str, key: str, build: Callable[[], T], *, dump: Callable[[T], bytes],
    load: Callable[[bytes], T],
) -> T:
    """``load`` of the cache entry ``name`` for ``key``, or ``build()`` stored there with ``dump``.

    Args:
        name: the entry's readable name (the file name's start), e.g. ``tokens-cgc-tiny-eval``.
        key: a checksum of everything the result depends on (:func:`digest`).
        build: makes the result when the entry is absent or spoilt.
        dump: the result as bytes; ``load`` must give back an equal result.
        load: the result from the bytes ``dump`` gave.

    Example:
        >>> cached("doc-example", digest("1"), lambda: [1, 2], dump=bytes, load=list)
        [1, 2]
    """
    folder = cache_dir()
    if folder is None:
        return build()
    path = _entry(folder, name, key)
    payload = _read(path, key)
    if payload is not None:
        try:
            return load(payload)
        except Exception as err:  # a payload that passed its checksum but not its loader
            log.warning("cache entry %s could not be loaded (%s: %s); rebuilding it", path,
                        type(err).__name__, err)
    result = build()
    _write(path, key, dump(result))
    return result
