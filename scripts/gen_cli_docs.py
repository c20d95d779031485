"""Write cgc_lens/cli_spec.json and docs/cli.md from the ``cgc-lens`` parser and the study configs
(``tests/unit/test_cli.py`` checks both are current).

cli_spec.json holds the study commands' options (one per config field, its docstring the help)
so that building the parser imports no study; docs/cli.md is rendered from that parser.

Usage: ``python scripts/gen_cli_docs.py`` (from the repository root, or anywhere).
"""

from __future__ import annotations

import json
from pathlib import Path

from cgc_lens.cli import CLI_SPEC, render_cli_markdown, spec_from_configs

DOCS_CLI = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def main() -> None:
    CLI_SPEC.write_text(json.dumps(spec_from_configs(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {CLI_SPEC}")
    DOCS_CLI.write_text(render_cli_markdown(), encoding="utf-8")
    print(f"wrote {DOCS_CLI}")


if __name__ == "__main__":
    main()
