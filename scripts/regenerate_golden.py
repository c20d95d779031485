"""Rewrite tests/acceptance/golden_cgc_tiny.json from the current code.

Usage: ``python scripts/regenerate_golden.py`` (about 30 s). Run it only when a change is meant to
move a golden number, and say in the commit which number moved and why.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.acceptance.golden import write_golden

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(f"wrote {write_golden()}")
