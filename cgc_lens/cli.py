"""The ``cgc-lens`` command: thin wrappers over the library (no logic of its own).

Commands:
    info       versions, device, embedded assets with sizes and checksums
    ppl        perplexity of a model on a corpus (chunked, or sliding window)
    survival   feature-survival audit of a frozen SAE under compression
    cgc        capability-guided compression: density, Wanda, ablation, allocations
    adaptive   AdaptiveCompress residual compressor beside a TopK SAE
    demo       the main job on cgc-tiny: the survival audit and the capability study
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "render_cli_markdown"]

log = logging.getLogger("cgc_lens")
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., int], str]] = {}


def _command(name: str, help_text: str):
    def register(pair):
        _COMMANDS[name] = (pair[0], pair[1], help_text)
        return pair

    return register


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

    from cgc_lens.io.results import versions

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


def _ppl_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cgc-tiny", help="model name or path")
    parser.add_argument("--corpus", default="cgc-tiny", help="corpus name or path")
    parser.add_argument("--split", default="eval", help="corpus split (default: eval)")
    parser.add_argument("--block-len", type=int, default=None,
                        help="tokens per block (default: the model's n_ctx, at most 512)")
    parser.add_argument("--n-blocks", type=int, default=None, help="blocks to sample (default all)")
    parser.add_argument("--window", type=int, default=None, help="sliding-window width")
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride")
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the block sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda … (default: best available)")


def _ppl(args: argparse.Namespace) -> int:
    from cgc_lens.data import token_blocks
    from cgc_lens.forward.metrics import perplexity_result
    from cgc_lens.models import load_model

    model = load_model(args.model, device=args.device)
    block_len = args.block_len or min(model.cfg.n_ctx, 512)
    blocks = token_blocks(args.corpus, model, block_len=block_len, n_blocks=args.n_blocks,
                          seed=args.seed, split=args.split)
    result = perplexity_result(model, blocks, batch_size=args.batch_size, window=args.window,
                               stride=args.stride)
    print(json.dumps({"model": args.model, "corpus": args.corpus, "split": args.split,
                      "protocol": result.protocol, "window": args.window, "stride": args.stride,
                      "tokens": result.n_tokens, "mean_nll": result.mean_nll,
                      "perplexity": result.perplexity}, indent=2))
    return 0


_command("ppl", "perplexity of a model on a corpus (chunked or sliding window)")((_ppl_args, _ppl))

_STUDIES = {
    "survival": ("cgc_lens.studies.survival.run",
                 "feature-survival audit of a frozen SAE under compression"),
    "cgc": ("cgc_lens.studies.capability.config",
            "capability-guided compression: density, Wanda, ablation, allocations"),
    "adaptive": ("cgc_lens.studies.adaptive.run",
                 "AdaptiveCompress residual compressor beside a TopK SAE"),
}


def _study(module_name: str) -> tuple[Callable[..., None], Callable[..., int]]:
    def add_args(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(module_name).cli_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module_name).cli_main(args))

    return add_args, run


for _name, (_module, _help) in _STUDIES.items():
    _command(_name, _help)(_study(_module))


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="results folder")


def _demo(args: argparse.Namespace) -> int:
    """The main job on cgc-tiny: both studies with their defaults, one folder each."""
    for name in ("survival", "cgc"):
        add_args, run = _study(_STUDIES[name][0])
        parser = argparse.ArgumentParser(prog=f"cgc-lens {name}")
        add_args(parser)
        print(f"\n=== cgc-lens {name} --out {args.out / name} ===", flush=True)
        status = run(parser.parse_args(["--out", str(args.out / name)]))
        if status:
            return status
    print(f"\nResults: {args.out}/survival/report.html and {args.out}/cgc/report.html")
    return 0


_command("demo", "the main job on cgc-tiny: survival audit and capability study")(
    (_demo_args, _demo)
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``cgc-lens`` parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(prog="cgc-lens", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, (add_args, _, help_text) in _COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        add_args(commands[name])
    return parser, commands


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_row(action: argparse.Action, prog: str) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
    if action.choices is not None and not isinstance(action, argparse.BooleanOptionalAction):
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.nargs == 0:
        value = ""
    else:
        value = action.metavar or action.dest.upper()
        value = f"{value} ..." if action.nargs in ("*", "+") else value
    # argparse expands %(default)s etc. in help strings; do the same, then '%%' becomes '%'.
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    help_text = (action.help or "") % {**params, "prog": prog}
    default = action.default
    unset = default is None or default is False or default is argparse.SUPPRESS
    if not unset and "default" not in help_text:
        help_text = f"{help_text} (default: {default})"
    if action.required:
        help_text = f"**required.** {help_text}"
    return f"| {flags} | {_cell(value)} | {_cell(help_text)} |"


def render_cli_markdown() -> str:
    """``docs/cli.md``: every subcommand's usage and options, from the argparse parser.

    ``python scripts/gen_cli_docs.py`` writes it; a test fails when the file is stale.
    """
    _, commands = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by `python scripts/gen_cli_docs.py` from the argparse parser in",
        "     cgc_lens/cli.py; do not edit by hand. -->",
        "",
        "`cgc-lens [-v] COMMAND ...`; `-v` / `--verbose` logs at DEBUG. The commands are thin",
        "wrappers over the library (`cgc_lens.studies` for the three studies).",
        "Every command takes `-h` / `--help`. The study commands (`survival`, `cgc`, `adaptive`)",
        "have one option per field of their config dataclass; the field's docstring is the help.",
        "A `CgcLensError` (bad input, missing weights offline) prints `cgc-lens COMMAND: error:",
        "...` and exits with status 2.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{n}`](#cgc-lens-{n}) | {_cell(_COMMANDS[n][2])} |" for n in commands]
    for name, sub in commands.items():
        sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        lines += ["", f"## cgc-lens {name}", "", f"{sub.description}.", "", "```",
                  sub.format_usage().strip(), "```", "", "| option | value | meaning |",
                  "|---|---|---|"]
        lines += [_option_row(a, sub.prog) for a in sub._actions if a.option_strings
                  and a.help is not argparse.SUPPRESS]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cgc-lens`` console script."""
    parser, _ = build_parser()
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
