"""The tables ``cgc-lens`` prints on stdout: aligned text that fits a 100-column terminal, and
each study command's report (its main table; logs go to stderr).

A column with no value in any row is left out and a column with some missing values shows
``-`` there; either way a note under the table says what the column is and why values are
missing, so no ``NaN`` is ever printed unexplained.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "TABLE_WIDTH",
    "format_table",
    "print_table",
    "report_adaptive",
    "report_capability",
    "report_survival",
]

TABLE_WIDTH = 100
"""Terminal columns a printed table fits in (wider tables continue below, ``\\`` marked)."""


def _cell(value: float) -> str:
    return f"{value:.4g}"


def print_table(
    frame: Any,
    *,
    index: bool = True,
    notes: Mapping[str, str] | None = None,
    echo: bool = True,
    width: int = TABLE_WIDTH,
) -> str:
    """Print a DataFrame as text at most ``width`` columns wide; the text printed.

    Args:
        frame: the table (a pandas DataFrame).
        index: print the row labels.
        notes: what a column means, printed when the column has missing values.
        echo: print the text to stdout (else only return it).
        width: the widest line.

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"ppl": [10.0, 12.5], "kl": [float("nan"), 0.25]},
        ...                   index=["dense", "int4"])
        >>> print(print_table(df, notes={"kl": "KL to the dense model"}, echo=False))
               ppl   kl
        dense   10    -
        int4  12.5 0.25
        kl: '-' where not computed (KL to the dense model)
    """
    notes = dict(notes or {})
    numeric = frame.select_dtypes("number")
    empty = [c for c in numeric.columns if numeric[c].isna().all()]
    partial = [c for c in numeric.columns if c not in empty and numeric[c].isna().any()]
    shown = frame.drop(columns=empty)
    text = shown.to_string(index=index, float_format=_cell, na_rep="-", line_width=width)
    lines = [text]
    for column in empty:
        why = f" ({notes[column]})" if column in notes else ""
        lines.append(f"{column}: left out, not computed in this run{why}")
    for column in partial:
        why = f" ({notes[column]})" if column in notes else ""
        lines.append(f"{column}: '-' where not computed{why}")
    out = "\n".join(
        [
            lines[0],
            *(
                textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False)
                for line in lines[1:]
            ),
        ]
    )
    if echo:
        sys.stdout.write(out + "\n")
    return out


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def format_table(result: Any) -> str:
    """Table 1 of a survival result as aligned text, wrapped to 100 columns (what ``cgc-lens
    survival`` prints)."""
    from cgc_lens.studies.survival.result import TABLE1_COLUMNS

    frame = result.to_frame()
    return print_table(
        frame[[c for c in TABLE1_COLUMNS if c in frame.columns]], index=False, echo=False
    )


def report_survival(result: Any, out: Path) -> None:
    """What ``cgc-lens survival`` prints: Table 1, the null check, fragility, where results are."""
    lines = [
        f"Table 1: feature survival under compression ({result.config.model})",
        format_table(result),
        "",
    ]
    if result.stability.null is not None:
        n = result.stability.null
        lines.append(f"null check: {'passed' if n.passed else 'FAILED'} (mean r {n.mean_corr:.6f})")
    if result.fragility is not None:
        f = result.fragility
        lines.append(
            f"fragility ({f.condition}): {f.cv_auc:.3f} CV AUC over {f.n_features} features"
        )
    lines.append(
        f"results: {out / 'results.json'}, {out / 'tables' / 'features.csv'}, {out / 'report.html'}"
    )
    sys.stdout.write("\n".join(lines) + "\n")


def report_capability(result: Any, out: Path) -> None:
    """What ``cgc-lens cgc`` prints: Table 1 (one row per method, probes included)."""
    config = result.config
    _say(f"Table 1: methods at retention {config.retention:g} ({config.model})")
    print_table(
        result.table(),
        notes={
            "kl_calibration": "KL to the dense model on the calibration tokens of the CGC-F "
            "search's last stage; only the methods that search scored have one"
        },
    )
    _say(f"\nresults: {out / 'results.json'}, {out / 'report.html'}")


def report_adaptive(result: Any, out: Path) -> None:
    """What ``cgc-lens adaptive`` prints: quality per site and method, probing, collapse."""
    columns = [
        "site",
        "method",
        "explained_variance",
        "latent_contribution",
        "mse",
        "l0",
        "dead_fraction",
        "kl",
        "ce_loss_recovered",
    ]
    _say("Quality (eval split)")
    print_table(result.metrics[[c for c in columns if c in result.metrics.columns]], index=False)
    if not result.probing.empty:
        _say("\nSparse probing (mean over tasks)")
        print_table(result.probing_summary(), index=False)
    _say()
    for method, sites in result.collapsed.items():
        for site, names in sites.items():
            _say(
                f"{method} {site}: "
                + (f"COLLAPSED ({', '.join(names)})" if names else "no collapse")
            )
    _say(f"results: {out}")
