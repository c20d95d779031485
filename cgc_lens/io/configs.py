"""Study configs as JSON: one ``from_dict`` / ``to_dict`` rule for every config dataclass, the
shipped configs by name, and the docstring written under each field.

STYLE rule 14: the CLI (:mod:`cgc_lens.cli_options`), the JSON configs and the Python API all
use the same frozen config dataclasses, so a study is configured by one definition.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import json
import textwrap
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from cgc_lens.errors import CgcLensError

__all__ = [
    "CONFIG_DIR", "config_from_dict", "config_to_dict", "field_docs", "read_config",
    "resolve_config_path", "unwrap_optional",
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


def unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``); any other type unchanged.

    Example:
        >>> unwrap_optional(int | None), unwrap_optional(int | str | None) == (int | str | None)
        (<class 'int'>, True)
    """
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _from_json_value(tp: Any, value: Any) -> Any:
    """``value`` (a JSON value) as a field of type ``tp``: a type with a ``from_dict``
    classmethod or a nested config dataclass from its dict, lists as tuples for tuple fields."""
    tp = unwrap_optional(tp)
    if isinstance(value, Mapping) and isinstance(tp, type):
        if callable(getattr(tp, "from_dict", None)):
            return tp.from_dict(value)
        if dataclasses.is_dataclass(tp):
            return config_from_dict(tp, value)
    if isinstance(value, list) and get_origin(tp) is tuple:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return tuple(_from_json_value(args[0] if args else Any, v) for v in value)
    return value


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Build the config dataclass ``cls`` from its JSON form (:func:`config_to_dict`).

    Nested config dataclasses are built from their dicts (a field type with a ``from_dict``
    classmethod through it), JSON lists become tuples for tuple-typed fields, a ``_comment`` key
    is ignored, and unknown keys raise with the closest valid names. Missing keys keep their
    defaults.

    Example:
        >>> from cgc_lens.analysis.evolution import EvoConfig
        >>> config_from_dict(EvoConfig, {"tokens_per_stage": [16, 64]}).tokens_per_stage
        (16, 64)
        >>> try:
        ...     config_from_dict(EvoConfig, {"generatons": 3})
        ... except CgcLensError as err:
        ...     print(str(err).split(";")[0])
        Unknown EvoConfig fields ['generatons'] (closest: ['generations'])
    """
    if not isinstance(data, Mapping):
        raise CgcLensError(f"A {cls.__name__} is a JSON object, got {type(data).__name__}.")
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in names and k != "_comment")
    if unknown:
        close = sorted({m for k in unknown for m in difflib.get_close_matches(k, names, n=3)})
        hint = f" (closest: {close})" if close else ""
        raise CgcLensError(f"Unknown {cls.__name__} fields {unknown}{hint}; valid: "
                           f"{sorted(names)}.")
    hints = typing.get_type_hints(cls)
    values = {k: _from_json_value(hints[k], v) for k, v in data.items() if k in names}
    return cls(**values)


def _to_json_value(value: Any) -> Any:
    if callable(getattr(value, "to_dict", None)) and not isinstance(value, type):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_json_value(v) for k, v in value.items()}
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a config dataclass, every field in order: nested configs as dicts (an
    object with ``to_dict`` through it), tuples as lists. :func:`config_from_dict` inverts it.

    Example:
        >>> from cgc_lens.analysis.evolution import EvoConfig
        >>> config_to_dict(EvoConfig())["survivors_per_stage"]
        [4, 1]
    """
    return {f.name: _to_json_value(getattr(config, f.name)) for f in dataclasses.fields(config)}


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
