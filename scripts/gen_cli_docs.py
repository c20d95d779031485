"""Write docs/cli.md from the ``cgc-lens`` argparse parser (``tests/unit/test_cli.py`` checks it).

Usage: ``python scripts/gen_cli_docs.py`` (from the repository root, or anywhere).
"""

from __future__ import annotations

from pathlib import Path

from cgc_lens.cli import render_cli_markdown

DOCS_CLI = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def main() -> None:
    DOCS_CLI.write_text(render_cli_markdown(), encoding="utf-8")
    print(f"wrote {DOCS_CLI}")


if __name__ == "__main__":
    main()
