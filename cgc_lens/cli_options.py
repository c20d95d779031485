"""Command-line options from frozen config dataclasses: each field's docstring becomes its help.

STYLE rule 14: the CLI parses into the same config dataclasses the library uses, so a study run
from the shell and one run from Python are configured by one definition.

Building the ``cgc-lens`` parser must not import the studies (their configs import torch,
TransformerLens and SAELens: seconds before ``--help`` could answer). So a config class is turned
into plain :class:`OptionSpec` rows once (:func:`option_specs`), the rows of every study are
stored in ``cgc_lens/cli_spec.json`` (written with docs/cli.md by ``scripts/gen_cli_docs.py``; a
test fails when it is stale), and the parser is built from the rows (:func:`add_option_specs`).
The config class itself is imported only by the command that runs, to build the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

from cgc_lens.errors import CgcLensError

__all__ = [
    "OptionSpec",
    "add_config_arguments",
    "add_option_specs",
    "config_from_arguments",
    "config_from_command_line",
    "option_specs",
]

C = TypeVar("C")
_TYPES = {"int": int, "float": float, "str": str}
_STATES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptionSpec:
    """One ``--field-name`` option of a config field, in plain values (stored as JSON).

    Example:
        >>> OptionSpec.from_dict(OptionSpec(dest="bits", kind="list", type="int").to_dict())
        OptionSpec(dest='bits', kind='list', type='int', choices=(), doc='', default=None)
    """

    dest: str
    """The config field."""
    kind: Literal["flag", "choice", "list", "value"]
    """``flag``: ``--x/--no-x``; ``choice``: one of ``choices``; ``list``: one value or more;
    ``value``: one value."""
    type: Literal["int", "float", "str"] = "str"
    """Type of each value."""
    choices: tuple[str, ...] = ()
    """The allowed values of a ``choice``."""
    doc: str = ""
    """The field's docstring."""
    default: str | None = None
    """``repr`` of the field's default, shown in the help (``None``: not shown)."""

    @property
    def flag(self) -> str:
        """``--field-name``."""
        return "--" + self.dest.replace("_", "-")

    @property
    def help(self) -> str:
        """The help line: the docstring, then the default unless the docstring states it."""
        text = self.doc
        if self.default is not None and not _STATES_DEFAULT.search(text):
            text = f"{text} (default: {self.default})".strip()
        # argparse %-formats help strings (for %(default)s): a literal '%' in a docstring
        # ("1% of tokens") or a default would make --help raise, so it is doubled.
        return text.replace("%", "%%")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``choices`` as a list)."""
        return {**dataclasses.asdict(self), "choices": list(self.choices)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptionSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "choices": tuple(data.get("choices", ()))})


def option_specs(cls: type, *, skip: tuple[str, ...] = ()) -> list[OptionSpec]:
    """One :class:`OptionSpec` per init field of the dataclass ``cls`` (not in ``skip``): bool →
    flag pair, ``Literal`` → choices, tuple/list → one value or more, else one value."""
    from cgc_lens.io.configs import field_docs, unwrap_optional

    docs, hints, specs = field_docs(cls), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kind, value_type, choices = "value", "str", ()
        if tp is bool:
            kind = "flag"
        elif get_origin(tp) is Literal:
            kind, choices = "choice", tuple(str(c) for c in get_args(tp))
        elif get_origin(tp) in (tuple, list):
            kind = "list"
            inner = unwrap_optional(get_args(tp)[0]) if get_args(tp) else str
            value_type = inner.__name__ if inner in (int, float) else "str"
        elif tp in (int, float, str):
            value_type = tp.__name__
        specs.append(
            OptionSpec(
                dest=f.name,
                kind=kind,
                type=value_type,
                choices=choices,
                doc=docs.get(f.name, ""),
                default=repr(default),
            )
        )
    return specs


def add_option_specs(parser: argparse.ArgumentParser, specs: typing.Iterable[OptionSpec]) -> None:
    """Add one option per spec. A list option needs at least one value: a bare ``--bits`` is
    refused (status 2) rather than read as "no bits"."""
    for spec in specs:
        kw: dict[str, Any] = {"dest": spec.dest, "default": argparse.SUPPRESS, "help": spec.help}
        if spec.kind == "flag":
            parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kw)
        elif spec.kind == "choice":
            parser.add_argument(spec.flag, choices=list(spec.choices), **kw)
        elif spec.kind == "list":
            parser.add_argument(spec.flag, nargs="+", type=_TYPES[spec.type], **kw)
        else:
            parser.add_argument(spec.flag, type=_TYPES[spec.type], **kw)


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--field-name`` option per dataclass field (bool → flag pair, tuple → nargs)."""
    add_option_specs(parser, option_specs(cls, skip=skip))


def config_from_arguments(cls: type[C], namespace: argparse.Namespace, **overrides: Any) -> C:
    """Build ``cls`` from the options that were given on the command line (others keep defaults)."""
    from cgc_lens.io.configs import unwrap_optional

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
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in given and f.name not in exclude
    }


def config_from_command_line(
    cls: type[C], namespace: argparse.Namespace, *, nested: tuple[str, ...] = ()
) -> C:
    """A study's config from its command line: the JSON config of ``--config`` (a path or a
    shipped name, through ``cls.from_json``; the defaults without it), then every option given
    on the command line over it. ``nested``: config fields whose own fields are options too."""
    path = getattr(namespace, "config", None)
    base = cls.from_json(path) if path else cls()  # type: ignore[attr-defined]
    given = set(vars(namespace))
    parts = {
        n: config_from_arguments(
            type(getattr(base, n)), namespace, **_kept(getattr(base, n), given)
        )
        for n in nested
    }
    return config_from_arguments(cls, namespace, **_kept(base, given, nested), **parts)
