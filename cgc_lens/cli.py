"""The ``cgc-lens`` command: thin wrappers over the library (no logic of its own).

Commands:
    info       versions, device, embedded assets with sizes and checksums
    ppl        perplexity of a model on a corpus (chunked, or sliding window)
    demo       the main job on cgc-tiny: every study that exists, results under --out
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("cgc_lens")
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = {}


def _command(name: str, help_text: str):
    def register(pair):
        _COMMANDS[name] = (pair[0], pair[1], help_text)
        return pair

    return register


def versions() -> dict[str, str]:
    """Versions of cgc-lens and the libraries whose numerics it depends on."""
    out = {}
    for dist in ("cgc-lens", "torch", "transformer-lens", "sae-lens", "transformers", "numpy",
                 "scipy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def asset_table() -> list[dict[str, object]]:
    """Every embedded asset file with its size and SHA-256."""
    root = Path(__file__).parent / "assets"
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        rows.append({"file": str(path.relative_to(root)), "bytes": path.stat().st_size,
                     "sha256": digest[:16]})
    return rows


def _info_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _info(args: argparse.Namespace) -> int:
    import torch

    info = {
        "versions": versions(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "assets": asset_table(),
    }
    info["assets_total_bytes"] = sum(int(r["bytes"]) for r in info["assets"])
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info["versions"].items():
        print(f"{key:18s} {value}")
    print(f"{'device':18s} {info['device']} {info['cuda_devices'] or ''}")
    print("\nembedded assets:")
    for row in info["assets"]:
        print(f"  {row['file']:48s} {row['bytes']:>10,d} B  sha256 {row['sha256']}")
    print(f"  {'total':48s} {info['assets_total_bytes']:>10,d} B")
    return 0


_command("info", "versions, device, embedded assets with sizes and checksums")((_info_args, _info))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cgc-lens`` console script."""
    parser = argparse.ArgumentParser(prog="cgc-lens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _, help_text) in _COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from cgc_lens.errors import CgcLensError

    try:
        return _COMMANDS[args.command][1](args)
    except CgcLensError as exc:
        print(f"cgc-lens {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
