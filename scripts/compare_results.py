"""Compare two study results folders field by field (the redesign's "behaviour identical" check).

Usage::

    python scripts/compare_results.py BEFORE_DIR AFTER_DIR [--rtol 0] [--atol 0]

Both folders are ``--out`` folders of one study (or parents holding ``survival/``, ``cgc/``,
``adaptive/``). Every ``results.json`` field must be equal — numbers exactly unless a tolerance is
given — except run-dependent ones: timings (``seconds``, ``*_seconds``, ``timings``), library
``versions``, and the paths a run was given. Every CSV table and safetensors array is compared the
same way. Prints one line per difference and exits 1 when there is any.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

SKIP_KEYS = {"seconds", "timings", "versions", "time", "elapsed", "out", "created"}


def _skipped(key: str) -> bool:
    return key in SKIP_KEYS or key.endswith(("_seconds", "_time"))


def compare_json(a: object, b: object, where: str, rtol: float, atol: float) -> list[str]:
    """Differences between two JSON values, as ``path: before != after`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if _skipped(key):
                continue
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'after' if key not in a else 'before'}")
                continue
            out += compare_json(a[key], b[key], f"{where}/{key}", rtol, atol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in compare_json(x, y, f"{where}[{i}]", rtol, atol)]
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        if (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rtol, abs_tol=atol):
            return []
        return [f"{where}: {a!r} != {b!r}"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def compare_folder(before: Path, after: Path, rtol: float, atol: float) -> tuple[list[str], int]:
    """Differences between two study folders, and the number of files compared."""
    diffs = compare_json(json.loads((before / "results.json").read_text()),
                         json.loads((after / "results.json").read_text()), "results.json",
                         rtol, atol)
    count = 1
    for table in sorted((before / "tables").glob("*.csv")):
        other = after / "tables" / table.name
        if not other.exists():
            diffs.append(f"tables/{table.name}: missing after")
            continue
        x, y = pd.read_csv(table), pd.read_csv(other)
        count += 1
        if list(x.columns) != list(y.columns) or x.shape != y.shape:
            diffs.append(f"tables/{table.name}: columns or shape differ")
            continue
        for col in x.columns:
            if _skipped(col):
                continue
            if pd.api.types.is_numeric_dtype(x[col]) and pd.api.types.is_numeric_dtype(y[col]):
                if not np.allclose(x[col], y[col], rtol=rtol, atol=atol, equal_nan=True):
                    diffs.append(f"tables/{table.name}[{col}]: values differ")
            elif not x[col].astype(str).equals(y[col].astype(str)):
                diffs.append(f"tables/{table.name}[{col}]: values differ")
    arrays = before / "arrays.safetensors"
    if arrays.exists():
        count += 1
        xa, ya = load_file(arrays), load_file(after / "arrays.safetensors")
        if set(xa) != set(ya):
            diffs.append(f"arrays: keys differ {sorted(set(xa) ^ set(ya))}")
        for key in sorted(set(xa) & set(ya)):
            if xa[key].shape != ya[key].shape or not np.allclose(
                    xa[key], ya[key], rtol=rtol, atol=atol, equal_nan=True):
                diffs.append(f"arrays/{key}: values differ")
    return diffs, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0)
    parser.add_argument("--atol", type=float, default=0.0)
    args = parser.parse_args(argv)
    pairs = [(args.before, args.after)] if (args.before / "results.json").exists() else [
        (sub, args.after / sub.name) for sub in sorted(args.before.iterdir())
        if (sub / "results.json").exists()]
    failed = False
    for before, after in pairs:
        diffs, count = compare_folder(before, after, args.rtol, args.atol)
        print(f"{before.name}: {count} files compared, {len(diffs)} differences")
        for line in diffs:
            print(f"  {line}")
        failed |= bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
