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
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cgc_lens.cli_docs import render_markdown
from cgc_lens.cli_options import (
    OptionSpec,
    add_option_specs,
    config_from_command_line,
    option_specs,
)
from cgc_lens.cli_tables import (
    format_table,
    report_adaptive,
    report_capability,
    report_survival,
)

# Building the parser imports no study, no torch: the options come from CLI_SPEC (see
# cgc_lens.cli_options); a command imports what it runs inside its own function.

__all__ = [
    "CLI_SPEC", "STUDIES", "StudyCommand", "add_study_arguments", "build_parser", "format_table",
    "main", "render_cli_markdown", "run_study", "spec_from_configs", "study_config",
]

CLI_SPEC = Path(__file__).with_name("cli_spec.json")
"""The study commands' options, from their config classes (``scripts/gen_cli_docs.py``)."""

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


def _versions() -> dict[str, str]:
    """Installed versions, read from the package metadata (nothing imported); the same list as
    :func:`cgc_lens.io.results.versions`, which the results folders record."""
    from importlib import metadata

    out = {}
    for dist in ("cgc-lens", "torch", "transformer-lens", "sae-lens", "transformers", "numpy",
                 "scipy", "scikit-learn", "pandas", "plotly"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["python"] = sys.version.split()[0]
    return out


def _info(args: argparse.Namespace) -> int:
    import torch

    info = {
        "versions": _versions(),
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

# --------------------------------------------------------------------------- the studies


@dataclass(frozen=True, kw_only=True)
class StudyCommand:
    """One study command's row of the table the three share: what it parses into, what it runs
    and how it reports. Every field of its config is an option (``--field-name``)."""

    help: str
    """One line on what the study does."""
    config: str
    """``module:Class`` of the study's frozen Config (imported when the command runs; its options
    are read from :data:`CLI_SPEC`)."""
    run: Callable[[Any], Any]
    """``run(config) -> result``; the result has ``save(out) -> Path``."""
    report: Callable[[Any, Path], None]
    """Prints the main table of a saved result to stdout: ``report(result, out)``."""
    out_help: str
    """Help of ``--out``."""
    config_help: str
    """Help of ``--config`` (a JSON config, or a shipped one by name)."""
    layout: tuple[str, ...] = ("fields", "config", "out")
    """Order of the options in ``--help``: ``fields``, ``config``, ``out``, ``aliases``."""
    skip: tuple[str, ...] = ()
    """Config fields without an option (set through ``--config``)."""
    nested: tuple[str, ...] = ()
    """Nested config fields whose own fields are options too."""
    aliases: tuple[tuple[str, str, type, str], ...] = ()
    """Extra flags of a field: ``(flag, field, type, help)``."""

    @property
    def config_class(self) -> type:
        """The Config class ``config`` names."""
        module, _, name = self.config.partition(":")
        return getattr(importlib.import_module(module), name)


def _run_survival(config: Any) -> Any:
    from cgc_lens.studies.survival import run_survival

    return run_survival(config)


def _run_capability(config: Any) -> Any:
    from cgc_lens.studies.capability import run_capability

    return run_capability(config)


def _run_adaptive(config: Any) -> Any:
    import torch

    from cgc_lens.studies.adaptive import run_adaptive

    torch.manual_seed(config.train.seed)
    return run_adaptive(config)


STUDIES: dict[str, StudyCommand] = {
    "survival": StudyCommand(
        help="feature-survival audit of a frozen SAE under compression",
        config="cgc_lens.studies.survival.config:SurvivalConfig", run=_run_survival,
        report=report_survival, skip=("plans",), out_help="results folder",
        config_help="JSON config (path, or a packaged name such as survival_pythia70m); "
                    "options given on the command line override it"),
    "cgc": StudyCommand(
        help="capability-guided compression: density, Wanda, ablation, allocations",
        config="cgc_lens.studies.capability.config:CapabilityConfig", run=_run_capability,
        report=report_capability, layout=("out", "config", "aliases", "fields"),
        skip=("density", "evo"), out_help="results folder to write",
        config_help="JSON CapabilityConfig: a path or a shipped config's name "
                    "(cgc_gpt2_medium); options given on the command line override it",
        aliases=(("--tokens", "calibration_tokens", int, "alias of --calibration-tokens"),)),
    "adaptive": StudyCommand(
        help="AdaptiveCompress residual compressor beside a TopK SAE",
        config="cgc_lens.studies.adaptive.config:AdaptiveStudyConfig", run=_run_adaptive,
        report=report_adaptive, nested=("compressor", "train", "probing", "thresholds"),
        out_help="results folder (results.json, tables, figures, report.html)",
        config_help="JSON AdaptiveStudyConfig: a path or a shipped config's name; options "
                    "given on the command line override it"),
}
"""The study commands: one row each, one code path for all (:func:`add_study_arguments`,
:func:`run_study`)."""


def _overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out whole (default: refuse it)")


def spec_from_configs() -> dict[str, list[dict[str, Any]]]:
    """Every study command's config options (fields, then nested configs' fields), computed from
    the config classes (imports the studies): what :data:`CLI_SPEC` stores."""
    specs = {}
    for name, cmd in STUDIES.items():
        cls = cmd.config_class
        rows = option_specs(cls, skip=cmd.skip + cmd.nested)
        for field_name in cmd.nested:
            rows += option_specs(type(getattr(cls(), field_name)))
        specs[name] = [row.to_dict() for row in rows]
    return specs


def _study_specs(name: str) -> list[OptionSpec]:
    """The options of study ``name``, from :data:`CLI_SPEC` (from the configs without it)."""
    try:
        stored = json.loads(CLI_SPEC.read_text(encoding="utf-8"))[name]
    except (OSError, KeyError, ValueError):  # not generated yet: slower, same options
        stored = spec_from_configs()[name]
    return [OptionSpec.from_dict(row) for row in stored]


def _quiet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", "-q", dest="progress", action="store_false",
                        default=argparse.SUPPRESS,
                        help="no progress bars (logs and the table still print)")


def add_study_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Options of ``cgc-lens NAME``: one per config field (and per nested config's field),
    ``--config``, ``--out`` and ``--quiet``, in the study's layout. Nothing is imported: the
    options are read from :data:`CLI_SPEC`."""
    cmd = STUDIES[name]
    for part in cmd.layout:
        if part == "fields":
            add_option_specs(parser, _study_specs(name))
        elif part == "config":
            parser.add_argument("--config", default=None, help=cmd.config_help)
        elif part == "out":
            parser.add_argument("--out", type=Path, required=True, help=cmd.out_help)
            _overwrite_argument(parser)
            _quiet_argument(parser)
        else:
            for flag, dest, kind, help_text in cmd.aliases:
                parser.add_argument(flag, dest=dest, type=kind, default=argparse.SUPPRESS,
                                    help=help_text)


def study_config(name: str, args: argparse.Namespace) -> Any:
    """The config of a ``cgc-lens NAME`` command line: ``--config`` (or the defaults), then
    every option given on the command line over it."""
    cmd = STUDIES[name]
    return config_from_command_line(cmd.config_class, args, nested=cmd.nested)


def run_study(name: str, args: argparse.Namespace) -> int:
    """``cgc-lens NAME``: check ``--out`` (not a file, empty unless ``--overwrite``, writable,
    no other run writing it), build the config, run the study holding ``--out``'s lock, save
    the result there whole, print its table. ``--quiet`` (``--no-progress``) turns off every
    progress bar of the run."""
    from cgc_lens.distributed.logs import ran_on_other_rank
    from cgc_lens.io import check_out_dir, folder_lock
    from cgc_lens.progress import progress_scope

    cmd, overwrite = STUDIES[name], getattr(args, "overwrite", False)
    if ran_on_other_rank(args.out, lambda: cmd.run(study_config(name, args))):
        return 0  # under torchrun: ranks > 0 ran it logging to a file; rank 0 writes, prints
    check_out_dir(args.out, overwrite=overwrite)
    config = study_config(name, args)
    with folder_lock(args.out), progress_scope(getattr(args, "progress", True) is not False):
        result = cmd.run(config)
        out = result.save(args.out, overwrite=overwrite)
    cmd.report(result, out)
    return 0


for _name, _cmd in STUDIES.items():
    _command(_name, _cmd.help)((partial(add_study_arguments, name=_name),
                                partial(run_study, _name)))


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="parent of the two results folders (OUT/survival, OUT/cgc)")
    _overwrite_argument(parser)
    _quiet_argument(parser)


def _demo(args: argparse.Namespace) -> int:
    """The main job on cgc-tiny: both studies with their defaults, one folder each."""
    from cgc_lens.io import check_out_dir

    for name in ("survival", "cgc"):  # both folders checked before either study runs
        check_out_dir(args.out / name, overwrite=args.overwrite)
    for name in ("survival", "cgc"):
        parser = argparse.ArgumentParser(prog=f"cgc-lens {name}")
        add_study_arguments(parser, name)
        print(f"\n=== cgc-lens {name} --out {args.out / name} ===", flush=True)
        argv = ["--out", str(args.out / name)] + (["--overwrite"] if args.overwrite else [])
        argv += [] if getattr(args, "progress", True) else ["--quiet"]
        status = run_study(name, parser.parse_args(argv))
        if status:
            return status
    print(f"\nResults: {args.out}/survival/report.html and {args.out}/cgc/report.html")
    return 0


_command("demo", "the main job on cgc-tiny: survival audit and capability study")((_demo_args,
                                                                                   _demo))


class _HelpFormatter(argparse.HelpFormatter):
    """Help wrapped at spaces only: an SAE id or a model name ("gemma-scope-2b-pt-res-canonical")
    is never split at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False,
                             break_long_words=False)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``cgc-lens`` parser and its subcommand parsers by name (nothing heavy imported)."""
    parser = argparse.ArgumentParser(prog="cgc-lens", description=__doc__.splitlines()[0],
                                     formatter_class=_HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, (add_args, _, help_text) in _COMMANDS.items():
        commands[name] = sub.add_parser(name, help=help_text, description=help_text,
                                        formatter_class=_HelpFormatter)
        add_args(commands[name])
    return parser, commands


def render_cli_markdown() -> str:
    """``docs/cli.md``: every subcommand's usage and options, from the argparse parser.

    ``python scripts/gen_cli_docs.py`` writes it; a test fails when the file is stale.
    """
    return render_markdown(build_parser()[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cgc-lens`` console script."""
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # TransformerLens imports bitsandbytes when installed; its CPU kernel-hub notice is noise here
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from cgc_lens.cli_guard import guarded

    return guarded(args.command, partial(_COMMANDS[args.command][1], args), argv=argv)

if __name__ == "__main__":
    raise SystemExit(main())
