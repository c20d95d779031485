"""How sure the survival audit is, in words and columns: the ± half-widths of Table 1's
intervals, the report's "how sure are we" paragraph and its protocol line.

The intervals themselves are :mod:`cgc_lens.analysis.survival_intervals`' (a blocked jackknife
over groups of token blocks); the protocol record is
:mod:`cgc_lens.studies.survival.protocol`'s (``info["protocol"]``). Nothing here computes a
statistic beyond reading those numbers (a half-width, a count of per-feature intervals that
cross a threshold).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cgc_lens.analysis.survival_intervals import SURVIVAL_STATS
from cgc_lens.studies.survival.config import NULL_NAME

__all__ = ["PM_SUFFIX", "half_width", "how_sure", "protocol_text", "with_half_widths"]

PM_SUFFIX = "_pm"
"""``<stat>_pm``: the ± half-width of ``<stat>``'s 95% interval (a column of
``tables/conditions.csv``)."""

_BOS_SOURCE = {
    "sae": "the SAE's own prepend_bos",
    "config": "set in the config",
    "default": "the default: the SAE names no prepend_bos",
}


def half_width(table: pd.DataFrame, stat: str) -> pd.Series | None:
    """The ± of ``stat`` per row: the larger distance from the estimate to an end of its 95%
    interval, i.e. t·SE unless the interval is clipped at both ends of the statistic's range
    (NaN where a row has no interval; None when the table has none).

    Example:
        >>> t = pd.DataFrame({"survived_pct": [100.0, 30.0], "survived_pct_ci_low": [99.6, 28.0],
        ...                   "survived_pct_ci_high": [100.0, 32.0]})
        >>> half_width(t, "survived_pct").round(6).tolist()
        [0.4, 2.0]
    """
    low, high = f"{stat}_ci_low", f"{stat}_ci_high"
    if low not in table.columns or high not in table.columns:
        return None
    value = pd.to_numeric(table[stat], errors="coerce")
    up = pd.to_numeric(table[high], errors="coerce") - value
    down = value - pd.to_numeric(table[low], errors="coerce")
    if not (up.notna() & down.notna()).any():
        return None
    return np.fmax(up, down).where(up.notna() & down.notna())


def with_half_widths(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 with a ``<stat>_pm`` column (:func:`half_width`) right after each statistic that
    has an interval (the table unchanged when none has).

    Example:
        >>> t = pd.DataFrame({"name": ["int4"], "mean_corr": [0.8], "mean_corr_ci_low": [0.78],
        ...                   "mean_corr_ci_high": [0.81]})
        >>> list(with_half_widths(t).columns)
        ['name', 'mean_corr', 'mean_corr_pm', 'mean_corr_ci_low', 'mean_corr_ci_high']
    """
    out = table.copy()
    for stat in SURVIVAL_STATS:
        pm = half_width(out, stat) if stat in out.columns else None
        if pm is not None:
            out.insert(out.columns.get_loc(stat) + 1, stat + PM_SUFFIX, pm)
    return out


def _bracket(row: Any, stat: str, fmt: str) -> str:
    low, high = getattr(row, f"{stat}_ci_low"), getattr(row, f"{stat}_ci_high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "[no interval: undefined without some group]"
    return f"[{low:{fmt}}, {high:{fmt}}]"


def _condition_line(row: Any) -> str:
    return (f"- {row.name}: mean r {row.mean_corr:.3f} {_bracket(row, 'mean_corr', '.3f')}; "
            f"{row.survived_pct:.1f}% survived {_bracket(row, 'survived_pct', '.1f')}; "
            f"{row.damaged_pct:.1f}% damaged {_bracket(row, 'damaged_pct', '.1f')}")  # fmt: skip


def _uncertain_features(result: Any, name: str) -> str:
    """How wide the focus condition's per-feature r intervals are, and how many of them cross
    a threshold (those features' outcomes are not settled by these tokens)."""
    iv = result.r_intervals.get(name)
    if iv is None or iv.size == 0:
        return ""
    keep = np.asarray(result.active, bool) & np.isfinite(iv).all(0) & np.isfinite(result.r[name])
    constant = getattr(result.reference, "constant", None)
    if constant is not None:
        keep &= ~np.asarray(constant, bool)
    if not keep.any():
        return ""
    r, low, high = result.r[name][keep], iv[1][keep], iv[2][keep]
    half = np.fmax(high - r, r - low)
    cfg = result.config
    crosses = ((low < cfg.survived) & (cfg.survived <= high)) | (
        (low < cfg.damaged) & (cfg.damaged <= high)
    )
    n, k = int(keep.sum()), int(crosses.sum())
    return (f" Each feature's r has its own interval (`r_se`, `r_ci_low`, `r_ci_high` in "
            f"`tables/features.csv`): under {name} the median ± is {np.median(half):.3f}, and "
            f"{k} of {n} classified active features ({100 * k / n:.1f} %) have an interval "
            f"that crosses the survived ({cfg.survived:g}) or damaged ({cfg.damaged:g}) "
            "threshold, so these tokens do not settle their outcome.")  # fmt: skip


def how_sure(result: Any) -> str:
    """The "how sure are we" paragraph of a
    :class:`~cgc_lens.studies.survival.SurvivalResult`, generated from its intervals: one line
    per compressed condition (mean r, survived %, damaged %, each with its 95% interval), and
    the focus condition's per-feature intervals."""
    rows = [c for c in result.conditions if c.name != NULL_NAME]
    with_iv = [c for c in rows if c.n_groups and c.mean_corr_ci_low is not None]
    if not with_iv:
        return (
            "**How sure are we.** No intervals: this run kept no groups of token blocks "
            "(`n_groups` = 0), so Table 1's numbers come without error bars."
        )
    groups = sorted({c.n_groups for c in with_iv})
    g = " or ".join(str(n) for n in groups)
    text = (
        f"**How sure are we.** 95% intervals from a blocked jackknife over {g} groups of token "
        "blocks (each group of consecutive blocks left out in turn, the statistic and the "
        "active filter recomputed; estimate ± t·SE with G − 1 degrees of freedom, clipped to "
        "the statistic's range). They measure the sampling error of these tokens for this "
        "model, SAE and thresholds. The conditions share their tokens, so their errors are "
        "correlated: overlapping intervals do not by themselves make a difference noise."
    )
    text += _uncertain_features(result, result.stability.condition)
    return text + "\n\n" + "\n".join(_condition_line(c) for c in with_iv)


def protocol_text(info: dict[str, Any]) -> str:
    """The report's protocol line from ``info["protocol"]``: the bos policy and where it came
    from, the reference's perplexity against the unigram perplexity of the same evaluation
    tokens, and the check's outcome ("" for a result saved before the check existed).

    Example:
        >>> print(protocol_text({"protocol": {"prepend_bos": True, "source": "sae",
        ...     "sae_prepend_bos": True, "baseline_ppl": 12.5, "unigram_ppl": 480.0,
        ...     "baseline_check": "passed"}}))
        **Protocol.** Blocks read with a bos token before each (the SAE's own prepend_bos); the reference's perplexity on the evaluation tokens is 12.5 against their unigram perplexity of 480: the baseline check passed.
    """  # noqa: E501
    p = info.get("protocol")
    if not p:
        return ""
    source = _BOS_SOURCE.get(p.get("source"), str(p.get("source")))
    sae = p.get("sae_prepend_bos")
    if p.get("source") == "config" and sae is not None and bool(sae) != bool(p["prepend_bos"]):
        source += f", against the SAE's prepend_bos={sae}"
    bos = "with a bos token before each" if p["prepend_bos"] else "without a bos token"
    check = p.get("baseline_check")
    if check == "skipped" or p.get("baseline_ppl") is None:
        outcome = "no evaluation tokens, so the baseline check was skipped"
    else:
        outcome = (f"the reference's perplexity on the evaluation tokens is "
                   f"{p['baseline_ppl']:.4g} against their unigram perplexity of "
                   f"{p['unigram_ppl']:.4g}: ")  # fmt: skip
        if check == "passed":
            outcome += "the baseline check passed"
        else:
            outcome += (f"**the baseline check failed** ({check}): the reference predicts these "
                        "tokens worse than their token frequencies do, so read every perplexity "
                        "change, and any condition that improves on it, with care")  # fmt: skip
    return f"**Protocol.** Blocks read {bos} ({source}); {outcome}."
