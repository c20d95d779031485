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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cgc_lens.cli_docs import render_markdown
from cgc_lens.cli_options import add_config_arguments, config_from_command_line

__all__ = [
    "STUDIES", "StudyCommand", "add_study_arguments", "build_parser", "format_table", "main",
    "render_cli_markdown", "run_study", "study_config",
]

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

# --------------------------------------------------------------------------- the studies


@dataclass(frozen=True, kw_only=True)
class StudyCommand:
    """One study command's row of the table the three share: what it parses into, what it runs
    and how it reports. Every field of its config is an option (``--field-name``)."""

    help: str
    """One line on what the study does."""
    config: str
    """``module:Class`` of the study's frozen Config (imported when the parser is built)."""
    run: Callable[[Any], Any]
    """``run(config) -> result``; the result has ``save(out) -> Path``."""
    report: Callable[[Any, Path], None]
    """Prints or logs the main table of a saved result: ``report(result, out)``."""
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


def format_table(result: Any) -> str:
    """Table 1 of a survival result as aligned text (what ``cgc-lens survival`` prints)."""
    from cgc_lens.studies.survival.result import TABLE1_COLUMNS

    table = result.to_frame()[list(TABLE1_COLUMNS)]
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def _report_survival(result: Any, out: Path) -> None:
    lines = [format_table(result), ""]
    if result.stability.null is not None:
        n = result.stability.null
        lines.append(f"null check: {'passed' if n.passed else 'FAILED'} (mean r {n.mean_corr:.6f})")
    if result.fragility is not None:
        f = result.fragility
        lines.append(f"fragility ({f.condition}): {f.cv_auc:.3f} CV AUC over {f.n_features} "
                     "features")
    lines.append(f"results: {out / 'results.json'}, {out / 'tables' / 'features.csv'}, "
                 f"{out / 'report.html'}")
    sys.stdout.write("\n".join(lines) + "\n")


def _report_capability(result: Any, out: Path) -> None:
    logger, config = logging.getLogger("cgc_lens.studies.capability.run"), result.config
    logger.info("Table 1 (%s, retention %g):\n%s", config.model, config.retention,
                result.table().to_string(float_format=lambda v: f"{v:.4g}"))
    logger.info("results written to %s", out)


def _report_adaptive(result: Any, out: Path) -> None:
    logger = logging.getLogger("cgc_lens.studies.adaptive.run")
    columns = ["site", "method", "explained_variance", "latent_contribution", "mse", "l0",
               "dead_fraction", "kl", "ce_loss_recovered"]
    logger.info("quality (eval split):\n%s", result.metrics[columns].to_string(index=False))
    if not result.probing.empty:
        logger.info("sparse probing (mean over tasks):\n%s",
                    result.probing_summary().to_string(index=False))
    for method, sites in result.collapsed.items():
        for site, names in sites.items():
            logger.log(logging.WARNING if names else logging.INFO, "%s %s: %s", method, site,
                       f"COLLAPSED ({', '.join(names)})" if names else "no collapse")
    logger.info("results in %s", out)


STUDIES: dict[str, StudyCommand] = {
    "survival": StudyCommand(
        help="feature-survival audit of a frozen SAE under compression",
        config="cgc_lens.studies.survival.config:SurvivalConfig", run=_run_survival,
        report=_report_survival, skip=("plans",), out_help="results folder",
        config_help="JSON config (path, or a packaged name such as survival_pythia70m); "
                    "options given on the command line override it"),
    "cgc": StudyCommand(
        help="capability-guided compression: density, Wanda, ablation, allocations",
        config="cgc_lens.studies.capability.config:CapabilityConfig", run=_run_capability,
        report=_report_capability, layout=("out", "config", "aliases", "fields"),
        skip=("density", "evo"), out_help="results folder to write",
        config_help="JSON CapabilityConfig: a path or a shipped config's name "
                    "(cgc_gpt2_medium); options given on the command line override it",
        aliases=(("--tokens", "calibration_tokens", int, "alias of --calibration-tokens"),)),
    "adaptive": StudyCommand(
        help="AdaptiveCompress residual compressor beside a TopK SAE",
        config="cgc_lens.studies.adaptive.config:AdaptiveStudyConfig", run=_run_adaptive,
        report=_report_adaptive, nested=("compressor", "train", "probing", "thresholds"),
        out_help="results folder (results.json, tables, figures, report.html)",
        config_help="JSON AdaptiveStudyConfig: a path or a shipped config's name; options "
                    "given on the command line override it"),
}
"""The study commands: one row each, one code path for all (:func:`add_study_arguments`,
:func:`run_study`)."""


def _overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out whole (default: refuse it)")


def add_study_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Options of ``cgc-lens NAME``: one per config field (and per nested config's field),
    ``--config`` and ``--out``, in the study's layout."""
    cmd = STUDIES[name]
    for part in cmd.layout:
        if part == "fields":
            cls = cmd.config_class
            add_config_arguments(parser, cls, skip=cmd.skip + cmd.nested)
            for field_name in cmd.nested:
                add_config_arguments(parser, type(getattr(cls(), field_name)))
        elif part == "config":
            parser.add_argument("--config", default=None, help=cmd.config_help)
        elif part == "out":
            parser.add_argument("--out", type=Path, required=True, help=cmd.out_help)
            _overwrite_argument(parser)
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
    the result there whole, report."""
    from cgc_lens.io import check_out_dir, folder_lock

    cmd, overwrite = STUDIES[name], getattr(args, "overwrite", False)
    check_out_dir(args.out, overwrite=overwrite)
    config = study_config(name, args)
    with folder_lock(args.out):
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
        status = run_study(name, parser.parse_args(argv))
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
    from cgc_lens.cli_guard import guarded

    return guarded(args.command, partial(_COMMANDS[args.command][1], args), argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
