"""The ``cgc-lens`` parser: every subcommand's ``--help`` works, and docs/cli.md is current."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cgc_lens.cli import build_parser, main, render_cli_markdown

DOCS_CLI = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
COMMANDS = sorted(build_parser()[1])


def test_every_command_is_listed() -> None:
    assert set(COMMANDS) >= {"info", "ppl", "survival", "cgc", "adaptive", "demo"}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cgc-lens {command}")
    assert "--help" in out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["survivl"])
    assert exc.value.code == 2
    assert "invalid choice: 'survivl'" in capsys.readouterr().err


def test_docs_cli_md_is_generated_from_the_parser() -> None:
    expected = render_cli_markdown()
    actual = DOCS_CLI.read_text(encoding="utf-8") if DOCS_CLI.is_file() else ""
    assert actual == expected, (
        "docs/cli.md differs from the CLI's parser (an option or a config field docstring "
        "changed). Regenerate it with:  python scripts/gen_cli_docs.py"
    )


def test_cli_markdown_lists_every_option() -> None:
    text = render_cli_markdown()
    for command, sub in build_parser()[1].items():
        assert f"## cgc-lens {command}" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in text, (command, flag)


ROOT = Path(__file__).resolve().parents[2]
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def documented_command_lines() -> list[tuple[str, str]]:
    """Every ``cgc-lens ...`` line of the fenced blocks in docs/*.md and README.md."""
    found = []
    for doc in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        for lang, block in FENCED.findall(doc.read_text(encoding="utf-8")):
            if lang not in ("", "bash", "sh", "console"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if line.lstrip().startswith("cgc-lens "):
                    found.append((doc.name, line.strip()))
    return found


@pytest.mark.parametrize(("doc", "line"), documented_command_lines())
def test_documented_command_lines_parse(doc: str, line: str) -> None:
    argv = shlex.split(line, comments=True)[1:]
    if "--help" in argv or "-h" in argv:
        return
    parser, _ = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{line}` does not parse (exit {exc.code})")
