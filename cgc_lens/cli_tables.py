"""The tables ``cgc-lens`` prints on stdout: aligned text that fits a 100-column terminal, and
each study command's report (its main table; logs go to stderr).

A column with no value in any row is left out and a column with some missing values shows
``-`` there; either way a note under the table says what the column is and why values are
missing, so no ``NaN`` is ever printed unexplained.
"""

from __future__ import annotations

import math
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


def _with_pm(frame: Any, stat: str, pm: Any) -> Any:
    """``stat``'s cells as ``value ± half-width`` text (the value alone where a row has no
    interval), under the header ``<stat> ± 95%``."""
    cells = [
        f"{_cell(v)} ± {h:.2g}" if math.isfinite(h) else _cell(v)
        for v, h in zip(frame[stat], pm, strict=True)
    ]
    out = frame.copy()
    out[stat] = cells
    return out.rename(columns={stat: f"{stat} ± 95%"})


def format_table(result: Any) -> str:
    """Table 1 of a survival result as aligned text, wrapped to 100 columns (what ``cgc-lens
    survival`` prints): each statistic with a 95% interval shows ``value ± half-width``, and a
    note under the table says what the ± is."""
    from cgc_lens.analysis.survival_intervals import SURVIVAL_STATS
    from cgc_lens.studies.survival.intervals_text import half_width
    from cgc_lens.studies.survival.result import TABLE1_COLUMNS

    frame = result.to_frame()
    shown = frame[[c for c in TABLE1_COLUMNS if c in frame.columns]]
    with_pm = False
    for stat in SURVIVAL_STATS:
        pm = half_width(frame, stat) if stat in shown.columns else None
        if pm is not None:
            shown, with_pm = _with_pm(shown, stat, pm), True
    # pandas' line_width can overshoot by a few columns on text cells: narrow until it fits
    for width in range(TABLE_WIDTH, TABLE_WIDTH // 2, -2):
        text = print_table(shown, index=False, echo=False, width=width)
        if max(len(line) for line in text.splitlines()) <= TABLE_WIDTH:
            break
    if with_pm:
        groups = sorted({int(g) for g in frame["n_groups"].dropna()})
        note = (
            "± 95%: half-width of the 95% interval, a blocked jackknife over "
            f"{' or '.join(map(str, groups))} groups of token blocks (ends in results.json and "
            "tables/conditions.csv, clipped to [-1, 1] and [0, 100])"
        )
        text += "\n" + textwrap.fill(note, TABLE_WIDTH, subsequent_indent="  ")
    return text


def _protocol_line(info: Mapping[str, Any]) -> str | None:
    p = info.get("protocol")
    if not p:
        return None
    source = {"sae": "the SAE's prepend_bos", "config": "the config's prepend_bos"}.get(
        p.get("source"), "the default: the SAE names none"
    )
    bos = f"{'a bos token' if p['prepend_bos'] else 'no bos token'} before each block ({source})"
    if p.get("baseline_ppl") is None:
        return f"protocol: {bos}; baseline check skipped (no evaluation tokens)"
    return (
        f"protocol: {bos}; reference ppl {p['baseline_ppl']:.4g} vs unigram ppl "
        f"{p['unigram_ppl']:.4g}: baseline check {p['baseline_check']}"
    )


def report_survival(result: Any, out: Path) -> None:
    """What ``cgc-lens survival`` prints: Table 1, the protocol check, the null check,
    fragility, where results are."""
    lines = [
        f"Table 1: feature survival under compression ({result.config.model})",
        format_table(result),
        "",
    ]
    protocol = _protocol_line(result.info)
    if protocol is not None:
        lines.append(textwrap.fill(protocol, TABLE_WIDTH, subsequent_indent="  "))
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
