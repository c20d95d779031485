"""One HTML page per study that opens with no network: figures, tables, the config and the
versions.

Every study's ``--out DIR`` also writes ``DIR/report.html`` through :func:`write_report` (or a
:class:`Report` built section by section). The CSS is inline and nothing is fetched from a
network. plotly.js (4.8 MB) is stored once: inlined in ``<head>`` (the default: one
self-contained file), or, in a results folder, read from the ``figures/plotly.min.js`` its
figure pages share (:data:`SHARED_PLOTLYJS`), so that the folder opens offline when copied
whole. The writer only formats what it is given; it computes nothing (DESIGN: plots and reports
show results, analyses make them).

Text is escaped. ``add_text`` understands a small Markdown subset (blank-line paragraphs, ``-``
bullet lists, ``#`` headings, ``**bold**`` and ```code```); trusted HTML goes in with
``html=True``.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import field_docs
from cgc_lens.io.report_html import (
    PAGE_CSS,
    WIDE_TABLE_COLUMNS,
    caption_html,
    key_value_table,
    markup,
)

__all__ = ["REPORT_FILENAME", "SHARED_PLOTLYJS", "Report", "figure_title", "write_report"]

logger = logging.getLogger(__name__)

REPORT_FILENAME = "report.html"
"""The report's file name inside a study's ``--out`` folder."""

SHARED_PLOTLYJS = "figures/plotly.min.js"
"""Where a results folder keeps the one plotly.js that its report and figure pages share
(plotly's ``include_plotlyjs="directory"`` writes it beside the figure pages)."""

_MAX_VALUE_CHARS = 300  # a config value longer than this (an array, say) is cut in the table

@dataclasses.dataclass(frozen=True, kw_only=True)
class _Section:
    anchor: str
    """Element id of the section, the target of its table-of-contents link."""
    title: str | None
    """Heading (plain text); untitled sections are left out of the table of contents."""
    body: str
    """The section's HTML, already escaped where it carries text."""
    kind: str
    """``text``, ``figure``, ``table``, ``config`` or ``versions`` (a CSS class)."""


class Report:
    """An HTML report that opens offline, built section by section and written with
    :meth:`write`.

    Args:
        title: page title and top heading.

    Example:
        >>> import pandas as pd, plotly.graph_objects as go
        >>> report = Report(title="Survival audit")
        >>> report.add_text("Features of **layer 3** under `int4`.")
        >>> report.add_figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4])), caption="Bars.")
        >>> report.add_table(pd.DataFrame({"name": ["<int8>"], "r": [0.98765]}), title="Summary")
        >>> page = report.to_html()
        >>> page.count('<script id="plotlyjs">'), "&lt;int8&gt;" in page, "0.9877" in page
        (1, True, True)
    """

    def __init__(self, *, title: str) -> None:
        if not isinstance(title, str) or not title.strip():
            raise CgcLensError(f"Report title must be a non-empty string, got {title!r}.")
        self.title = title
        self._sections: list[_Section] = []
        self._anchors: set[str] = set()
        self._n_figures = 0

    def add_text(self, text: str, *, title: str | None = None, html: bool = False) -> None:
        """Add prose: the Markdown subset of the module docstring (escaped), or trusted HTML.

        Args:
            text: the text.
            title: optional heading; a titled section appears in the table of contents.
            html: insert ``text`` as HTML, unescaped; only for HTML the caller built.
        """
        if not isinstance(text, str):
            raise CgcLensError(f"add_text takes a string, got {type(text).__name__}.")
        self._add("text", title, text if html else markup(text))

    def add_figure(
        self, fig: go.Figure, *, title: str | None = None, caption: str | None = None
    ) -> None:
        """Add a plotly figure, drawn by the plotly.js inlined once in the page head.

        Args:
            fig: the figure (as made by :mod:`cgc_lens.plots`); copied into the page now.
            title: section heading; defaults to the figure's own title, without its markup.
            caption: plain text under the figure.
        """
        if not isinstance(fig, go.Figure):
            raise CgcLensError(f"add_figure takes a plotly go.Figure, got {type(fig).__name__}.")
        _check_title(title)  # before the figure counts towards the page's ids
        self._n_figures += 1
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=False,  # inlined once in <head> by to_html(), never from a CDN
            div_id=f"figure-{self._n_figures}",  # deterministic ids keep the page reproducible
            default_height="480px",
            config={"displaylogo": False, "responsive": True},
        )
        if title is None:
            title = figure_title(fig)
        self._add("figure", title, f"<figure>{div}{caption_html(caption, 'figcaption')}</figure>")

    def add_table(
        self,
        table: pd.DataFrame | pd.Series,
        *,
        title: str | None = None,
        caption: str | None = None,
        float_format: str | Callable[[float], str] | None = ".4g",
        index: bool | None = None,
        max_rows: int | None = None,
    ) -> None:
        """Add a DataFrame as an HTML table (cells and headers escaped).

        Args:
            table: the table; a Series is shown as one column.
            title: optional section heading.
            caption: plain text under the table.
            float_format: a format spec for floats (``".4g"``, ``".2%"``), a function, or
                None for pandas' default.
            index: show the index; default only when it is not a plain 0..n-1 range.
            max_rows: show at most this many rows (pandas elides the middle); default all.
        """
        if isinstance(table, pd.Series):
            table = table.to_frame()
        if not isinstance(table, pd.DataFrame):
            raise CgcLensError(f"add_table takes a pandas DataFrame, got {type(table).__name__}.")
        if max_rows is not None and max_rows < 1:
            raise CgcLensError(f"max_rows must be at least 1 or None, got {max_rows}.")
        if index is None:
            index = not isinstance(table.index, pd.RangeIndex) or table.index.name is not None
        body = table.to_html(
            escape=True, index=index, border=0, na_rep="–", max_rows=max_rows,
            float_format=_float_formatter(float_format), classes="data",
        )  # fmt: skip
        shape = f"{table.shape[0]} rows × {table.shape[1]} columns"
        if table.shape[1] > WIDE_TABLE_COLUMNS:
            shape += "; scroll sideways for the rest, the first column stays in view"
        note = f"{caption} ({shape})" if caption else shape
        self._add("table", title, f'<div class="table-wrap">{body}</div>{caption_html(note, "p")}')

    def add_config(self, config: Any, *, title: str = "Configuration") -> None:
        """Add a config: a dataclass instance or a mapping, one row per (nested) field.

        A dataclass's field docstrings fill a third column. Nested dataclasses and mappings are
        flattened into dotted keys.
        """
        if isinstance(config, type):
            raise CgcLensError(f"add_config takes a config instance, got the class {config!r}.")
        if not (dataclasses.is_dataclass(config) or isinstance(config, Mapping)):
            raise CgcLensError(
                "add_config takes a dataclass instance or a mapping, got "
                f"{type(config).__name__}: {config!r:.80}."
            )
        rows = _flatten(config)
        name = type(config).__name__ if dataclasses.is_dataclass(config) else None
        caption = caption_html(name, "p")
        self._add("config", title, key_value_table(rows, ("field", "value", "meaning")) + caption)

    def add_versions(self, versions: Mapping[str, str], *, title: str = "Versions") -> None:
        """Add the library versions that made the results (e.g. ``cgc_lens.cli.versions()``)."""
        if not isinstance(versions, Mapping) or not versions:
            raise CgcLensError(f"add_versions takes a non-empty mapping, got {versions!r:.80}.")
        rows = [(str(k), str(v), "") for k, v in versions.items()]
        self._add("versions", title, key_value_table(rows, ("library", "version")))

    @property
    def titles(self) -> list[str]:
        """The titles of the sections so far (the entries of the table of contents)."""
        return [s.title for s in self._sections if s.title]

    def to_html(self, *, plotlyjs: str = "inline") -> str:
        """The whole page as one string.

        Args:
            plotlyjs: ``"inline"``: plotly.js goes into the page (one self-contained file);
                or the path of a plotly.js file relative to the page (e.g.
                :data:`SHARED_PLOTLYJS`), read with ``<script src>``: the page then opens
                offline beside that file.
        """
        _check_plotlyjs(plotlyjs)
        toc = "".join(
            f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>'
            for s in self._sections
            if s.title
        )
        nav = f'<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>' if toc else ""
        sections = "\n".join(
            f'<section id="{s.anchor}" class="{s.kind}">'
            + (f"<h2>{html.escape(s.title)}</h2>" if s.title else "")
            + s.body
            + "</section>"
            for s in self._sections
        )
        # plotly.js goes in only when a figure needs it (4-5 MB); a `</script>` cannot occur in it
        # (plotly's own to_html inlines it the same way).
        if not self._n_figures:
            script, footer = "", "Self-contained: opens with no network."
        elif plotlyjs == "inline":
            script = f'<script id="plotlyjs">{get_plotlyjs()}</script>'
            footer = "Self-contained: opens with no network."
        else:
            src = html.escape(plotlyjs)
            script = f'<script id="plotlyjs" src="{src}"></script>'
            footer = (f"Opens with no network; the figures are drawn by <code>{src}</code> beside "
                      "this page: copy or share the folder whole.")
        title = html.escape(self.title)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{PAGE_CSS}</style>\n{script}\n</head>\n"
            f"<body>\n<main>\n<h1>{title}</h1>\n{nav}\n{sections}\n"
            f"<footer>Written by cgc-lens. {footer}</footer>\n"
            "</main>\n</body>\n</html>\n"
        )

    def write(self, path: str | Path, *, plotlyjs: str = "inline") -> Path:
        """Write the page to ``path`` (parent folders are made) and return the path.

        Args:
            path: the page's file.
            plotlyjs: as in :meth:`to_html`; a relative path is written (plotly.js of the
                installed plotly) when the page has a figure and no file is there yet.
        """
        _check_plotlyjs(plotlyjs)
        path = Path(path)
        if path.is_dir():
            raise CgcLensError(
                f"Report.write takes a file path, got the folder {path}; "
                f"use {path / REPORT_FILENAME} (or write_report(out_dir, ...))."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        page = self.to_html(plotlyjs=plotlyjs)
        if self._n_figures and plotlyjs != "inline":
            js = path.parent / plotlyjs
            if not js.is_file():  # plotly's include_plotlyjs="directory" writes the same text
                js.parent.mkdir(parents=True, exist_ok=True)
                js.write_text(get_plotlyjs(), encoding="utf-8")
        path.write_text(page, encoding="utf-8")
        logger.info("Wrote report %s (%d sections)", path, len(self._sections))
        return path

    def _add(self, kind: str, title: str | None, body: str) -> None:
        _check_title(title)
        stem = re.sub(r"[^a-z0-9]+", "-", (title or kind).lower()).strip("-") or kind
        anchor, k = stem, 1
        while anchor in self._anchors:
            k += 1
            anchor = f"{stem}-{k}"
        self._anchors.add(anchor)
        self._sections.append(_Section(anchor=anchor, title=title, body=body, kind=kind))


def write_report(
    out_dir: str | Path,
    title: str,
    *,
    figures: Mapping[str, go.Figure] | Sequence[go.Figure] = (),
    tables: Mapping[str, pd.DataFrame | pd.Series] | None = None,
    config: Any = None,
    versions: Mapping[str, str] | None = None,
    intro: str | None = None,
    plotlyjs: str = "inline",
) -> Path:
    """Write ``out_dir/report.html``: intro, figures, tables, config, versions, in that order.

    Every entry of the table of contents is distinct: a figure's section is titled by the
    figure's own title (its first line), or by its name when it has none; a table named like an
    earlier section is titled ``"<name> (table)"``.

    Args:
        out_dir: the study's output folder (made if missing).
        title: page title.
        figures: figures by name, or a sequence of figures.
        tables: DataFrames by section title.
        config: the study's config (a dataclass instance, whose field docstrings fill the
            "meaning" column, or a mapping), if any.
        versions: library versions, e.g. ``cgc_lens.cli.versions()``.
        intro: text (the Markdown subset of :meth:`Report.add_text`) shown first.
        plotlyjs: ``"inline"`` or a path relative to ``out_dir`` (see :meth:`Report.to_html`;
            a results folder passes :data:`SHARED_PLOTLYJS`).

    Returns:
        The path of the written page.

    Example:
        >>> import tempfile, pandas as pd
        >>> with tempfile.TemporaryDirectory() as out:
        ...     path = write_report(out, "Demo", tables={"t": pd.DataFrame({"a": [1]})},
        ...                         versions={"cgc-lens": "0.1.0"})
        ...     print(path.name, "cgc-lens" in path.read_text(encoding="utf-8"))
        report.html True
    """
    report = Report(title=title)
    if intro:
        report.add_text(intro)
    items = figures.items() if isinstance(figures, Mapping) else ((None, f) for f in figures)
    for name, fig in items:
        if not isinstance(fig, go.Figure):  # before figure_title reads its layout
            raise CgcLensError(f"figures must be plotly go.Figures, got {type(fig).__name__} "
                               f"for {name!r}.")  # fmt: skip
        report.add_figure(fig, title=figure_title(fig) or name)
    for name, table in (tables or {}).items():
        report.add_table(table, title=f"{name} (table)" if name in report.titles else name)
    if config is not None:
        report.add_config(config)
    if versions is not None:
        report.add_versions(versions)
    return report.write(Path(out_dir) / REPORT_FILENAME, plotlyjs=plotlyjs)


def figure_title(fig: go.Figure) -> str | None:
    """A figure's title as plain text: its first line, without markup; None if it has none.

    Example:
        >>> figure_title(go.Figure(layout={"title": "Sparse <b>probing</b><br><sup>k</sup>"}))
        'Sparse probing'
    """
    text = fig.layout.title.text or ""
    first = re.split(r"<br\s*/?>", text, maxsplit=1, flags=re.I)[0]
    return " ".join(re.sub(r"<[^>]*>", " ", first).split()) or None


def _check_plotlyjs(plotlyjs: str) -> None:
    if plotlyjs == "inline":
        return
    ok = isinstance(plotlyjs, str) and plotlyjs.endswith(".js") and "\\" not in plotlyjs
    parts = PurePosixPath(plotlyjs).parts if ok else ()
    if not ok or ":" in plotlyjs or plotlyjs.startswith("/") or ".." in parts:
        raise CgcLensError(
            f"plotlyjs must be 'inline' or the path of a .js file relative to the page, inside "
            f"its folder (such as {SHARED_PLOTLYJS!r}); got {plotlyjs!r}."
        )


def _check_title(title: str | None) -> None:
    if title is not None and (not isinstance(title, str) or not title.strip()):
        raise CgcLensError(f"A section title must be a non-empty string or None, got {title!r}.")


def _float_formatter(spec: str | Callable[[float], str] | None) -> Callable[[float], str] | None:
    if spec is None or callable(spec):
        return spec
    try:
        format(1.5, spec)
    except (ValueError, TypeError) as err:
        raise CgcLensError(
            f"float_format must be a format spec such as '.4g' or '.2%', got {spec!r} ({err})."
        ) from None
    return lambda x: format(x, spec)


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, value text, field docstring) rows of a dataclass or mapping, nested ones too."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        docs = field_docs(type(obj))
        fields = dataclasses.fields(obj)
        pairs = [(f.name, getattr(obj, f.name), docs.get(f.name, "")) for f in fields]
    else:
        pairs = [(str(k), v, "") for k, v in obj.items()]
    rows: list[tuple[str, str, str]] = []
    for key, value, doc in pairs:
        is_instance = dataclasses.is_dataclass(value) and not isinstance(value, type)
        if is_instance or (isinstance(value, Mapping) and len(value) > 0):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            text = value if isinstance(value, str) else repr(value)
            if len(text) > _MAX_VALUE_CHARS:
                text = text[: _MAX_VALUE_CHARS - 1] + "…"
            rows.append((prefix + key, text, doc))
    return rows
