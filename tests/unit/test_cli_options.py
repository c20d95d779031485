"""CLI options from frozen config dataclasses (cgc_lens.cli_options)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from cgc_lens.cli_options import add_config_arguments, config_from_arguments
from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import field_docs


@dataclass(frozen=True, kw_only=True)
class _Config:
    fraction: float = 0.01
    """Keep the top 1% of tokens (a literal percent sign in the help)."""
    label: str = "50%"
    """A default that holds a percent sign too."""
    bits: tuple[int, ...] = (8, 4)
    """Bit-widths."""
    mode: Literal["a", "b"] = "a"
    """Which mode."""
    null: bool = True
    """Include the null condition."""
    seed: int | None = None
    """Optional seed."""


@dataclass(frozen=True, kw_only=True)
class _Required:
    name: str
    """Required name."""


def _parser(cls: type = _Config) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_config_arguments(parser, cls)
    return parser


def test_field_docs_read_the_docstring_under_each_field() -> None:
    docs = field_docs(_Config)
    assert docs["fraction"] == "Keep the top 1% of tokens (a literal percent sign in the help)."
    assert docs["seed"] == "Optional seed."


def test_help_with_percent_signs_renders() -> None:
    # argparse %-formats help strings: an unescaped '%' in a docstring or default raised
    # "ValueError: unsupported format character" on --help.
    text = " ".join(_parser().format_help().split())
    assert "Keep the top 1% of tokens" in text
    assert "(default: '50%')" in text


def test_help_with_percent_signs_via_parse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["--help"])
    assert exc.value.code == 0
    assert "1% of tokens" in " ".join(capsys.readouterr().out.split())


def test_defaults_are_kept_and_options_parsed() -> None:
    cfg = config_from_arguments(_Config, _parser().parse_args([]))
    assert cfg == _Config()
    cfg = config_from_arguments(
        _Config, _parser().parse_args(["--bits", "6", "--mode", "b", "--no-null", "--seed", "3"])
    )
    assert cfg == _Config(bits=(6,), mode="b", null=False, seed=3)
    assert isinstance(cfg.bits, tuple)


def test_bad_choice_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mode", "c"])
    assert "invalid choice: 'c'" in capsys.readouterr().err


def test_missing_required_field_raises() -> None:
    args = _parser(_Required).parse_args([])
    with pytest.raises(CgcLensError, match="Cannot build _Required from the command line"):
        config_from_arguments(_Required, args)
