"""Command-line arguments from frozen config dataclasses: each field's docstring becomes its help.

STYLE rule 14: the CLI parses into the same config dataclasses the library uses, so a study run
from the shell and one run from Python are configured by one definition.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from cgc_lens.errors import CgcLensError

__all__ = [
    "CONFIG_DIR", "add_config_arguments", "config_from_arguments", "field_docs", "read_config",
    "resolve_config_path",
]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
"""The shipped study configs (reproduction runs of the papers)."""

C = TypeVar("C")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, by field name.

    Example:
        >>> from cgc_lens.forward.probes import InductionProbe
        >>> field_docs(InductionProbe)["seed"]
        'Seed of the random tokens.'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--field-name`` option per dataclass field (bool → flag pair, tuple → nargs)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _strip_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        # argparse %-formats help strings (for %(default)s): a literal '%' in a docstring
        # ("1% of tokens") or a default would make --help raise, so it is doubled.
        help_text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif get_origin(tp) is Literal:
            parser.add_argument(flag, choices=list(get_args(tp)), **kw)
        elif get_origin(tp) in (tuple, list):
            inner = _strip_optional(get_args(tp)[0]) if get_args(tp) else str
            parser.add_argument(flag, nargs="*", type=inner if inner in (int, float) else str, **kw)
        elif tp in (int, float, str):
            parser.add_argument(flag, type=tp, **kw)
        else:
            parser.add_argument(flag, type=str, **kw)


def config_from_arguments(cls: type[C], namespace: argparse.Namespace, **overrides: Any) -> C:
    """Build ``cls`` from the options that were given on the command line (others keep defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(namespace).items() if k in names}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if get_origin(_strip_optional(hints[key])) is tuple and isinstance(value, list):
            values[key] = tuple(value)
    values.update(overrides)
    try:
        return cls(**values)
    except TypeError as exc:  # a missing required field
        raise CgcLensError(f"Cannot build {cls.__name__} from the command line: {exc}") from exc


def resolve_config_path(path: str | Path, prefix: str = "") -> Path:
    """A config file: the path itself, or a shipped config by name (with or without ``prefix``
    and ``.json``).

    Example:
        >>> resolve_config_path("pythia70m", prefix="survival_").name
        'survival_pythia70m.json'
    """
    file = Path(path).expanduser()
    if file.is_file():
        return file
    if len(file.parts) > 1:  # a path, not a name: never swap in a shipped file of that name
        raise CgcLensError(f"No config file {str(path)!r} (no such file).")
    packaged = {p.stem: p for p in CONFIG_DIR.glob("*.json")}
    stem = Path(str(path)).stem
    for key in (stem, f"{prefix}{stem}"):
        if key in packaged:
            return packaged[key]
    close = difflib.get_close_matches(stem, list(packaged), n=3)
    raise CgcLensError(f"No config file {str(path)!r}; packaged configs in {CONFIG_DIR}: "
                       f"{sorted(packaged)}{f' (closest: {close})' if close else ''}.")


def read_config(path: str | Path, prefix: str = "") -> dict[str, Any]:
    """The JSON object of a config file or shipped config (:func:`resolve_config_path`), without
    its ``_comment`` key.

    Example:
        >>> read_config("survival_pythia70m")["model"]
        'pythia-70m-deduped'
    """
    file = resolve_config_path(path, prefix)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CgcLensError(f"Config {file} is not valid JSON: {err}.") from err
    if not isinstance(data, dict):
        raise CgcLensError(f"Config {file} must hold a JSON object, got {type(data).__name__}.")
    data.pop("_comment", None)
    return data
