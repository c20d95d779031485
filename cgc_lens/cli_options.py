"""Command-line options from frozen config dataclasses: each field's docstring becomes its help.

STYLE rule 14: the CLI parses into the same config dataclasses the library uses, so a study run
from the shell and one run from Python are configured by one definition.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import field_docs, unwrap_optional

__all__ = ["add_config_arguments", "config_from_arguments", "config_from_command_line"]

C = TypeVar("C")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--field-name`` option per dataclass field (bool → flag pair, tuple → nargs)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = unwrap_optional(hints[f.name])
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
            inner = unwrap_optional(get_args(tp)[0]) if get_args(tp) else str
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
        if get_origin(unwrap_optional(hints[key])) is tuple and isinstance(value, list):
            values[key] = tuple(value)
    values.update(overrides)
    try:
        return cls(**values)
    except TypeError as exc:  # a missing required field
        raise CgcLensError(f"Cannot build {cls.__name__} from the command line: {exc}") from exc


def _kept(config: Any, given: set[str], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``config`` not given on the command line (nor in ``exclude``)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.name not in given and f.name not in exclude}


def config_from_command_line(
    cls: type[C], namespace: argparse.Namespace, *, nested: tuple[str, ...] = ()
) -> C:
    """A study's config from its command line: the JSON config of ``--config`` (a path or a
    shipped name, through ``cls.from_json``; the defaults without it), then every option given
    on the command line over it. ``nested``: config fields whose own fields are options too."""
    path = getattr(namespace, "config", None)
    base = cls.from_json(path) if path else cls()  # type: ignore[attr-defined]
    given = set(vars(namespace))
    parts = {n: config_from_arguments(type(getattr(base, n)), namespace,
                                      **_kept(getattr(base, n), given)) for n in nested}
    return config_from_arguments(cls, namespace, **_kept(base, given, nested), **parts)
