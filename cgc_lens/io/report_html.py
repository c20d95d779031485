"""The HTML pieces of :mod:`cgc_lens.io.report`: its CSS, the Markdown subset of ``add_text``,
key-value tables (configuration, versions) and captions. Everything here escapes its text.

Wide tables scroll sideways inside their own box (the page never does), with a scrollbar that
stays visible and the first column pinned, so a row keeps its name while its 28 columns
scroll past.
"""

from __future__ import annotations

import html
import re

__all__ = ["PAGE_CSS", "WIDE_TABLE_COLUMNS", "caption_html", "inline_markup", "key_value_table",
           "markup"]

WIDE_TABLE_COLUMNS = 10
"""Tables with more columns than this get a caption saying that they scroll sideways."""

PAGE_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa; --accent: #0969da;
  --row-alt: #fbfcfd; --thumb: #afb8c1; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.8em; margin: 0.4em 0 0.2em; }
h2 { font-size: 1.35em; margin: 1.6em 0 0.5em; padding-bottom: 0.2em;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1em; margin: 1.2em 0 0.4em; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--bg-alt); padding: 0.1em 0.3em; border-radius: 4px; }
nav.toc { background: var(--bg-alt); border: 1px solid var(--line); border-radius: 6px;
  padding: 8px 20px; margin: 16px 0; }
nav.toc h2 { border: 0; margin: 0.4em 0; font-size: 1.05em; }
nav.toc ol { margin: 0.2em 0 0.6em; padding-left: 1.4em; }
figure { margin: 0; }
figcaption, .caption { color: var(--muted); font-size: 0.92em; margin: 0.4em 0 0.8em; }
.table-wrap { overflow: auto; max-height: 640px; max-width: 100%;
  scrollbar-width: auto; scrollbar-color: var(--thumb) var(--bg-alt); }
.table-wrap::-webkit-scrollbar { width: 12px; height: 12px; background: var(--bg-alt); }
.table-wrap::-webkit-scrollbar-thumb { background: var(--thumb); border-radius: 6px; }
table { border-collapse: separate; border-spacing: 0; font-size: 0.9em;
  font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); border-width: 0 1px 1px 0; padding: 4px 10px;
  text-align: right; vertical-align: top; background: #fff; white-space: nowrap; }
tr > :first-child { border-left-width: 1px; }
thead tr:first-child > * { border-top-width: 1px; }
th { background: var(--bg-alt); position: sticky; top: 0; z-index: 1; }
tbody tr:nth-child(even) > td { background: var(--row-alt); }
table.data tr > :first-child { position: sticky; left: 0; z-index: 2;
  box-shadow: 2px 0 0 var(--line); }
table.data thead tr > :first-child { z-index: 3; }
table.key-value td, table.key-value th { white-space: normal; }
table.key-value td:first-child, table.key-value th { text-align: left; }
table.key-value td:nth-child(2) { text-align: left; font-family: ui-monospace, Menlo, monospace; }
table.key-value td:nth-child(3) { text-align: left; color: var(--muted); }
footer { color: var(--muted); font-size: 0.85em; margin-top: 48px; }
"""
"""The report's inline style sheet."""


def caption_html(text: str | None, tag: str) -> str:
    """``text`` escaped in a ``<tag class="caption">``; nothing for no text.

    Example:
        >>> caption_html("a < b", "p")
        '<p class="caption">a &lt; b</p>'
    """
    return f'<{tag} class="caption">{html.escape(text)}</{tag}>' if text else ""


def key_value_table(rows: list[tuple[str, str, str]], header: tuple[str, ...]) -> str:
    """A table of (key, value, meaning) rows with the first ``len(header)`` columns shown; the
    meaning is a field docstring (reST: ````x```` is shown as code, everything else escaped).

    Example:
        >>> key_value_table([("seed", "0", "The ``seed``.")], ("field", "value", "meaning"))
        ... # doctest: +ELLIPSIS
        '<div class="table-wrap">...<td>seed</td><td>0</td><td>The <code>seed</code>.</td>...'
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = [(html.escape(k), html.escape(v), inline_markup(d.replace("``", "`")))
             for k, v, d in rows]  # fmt: skip
    body = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row[: len(header)]) + "</tr>" for row in cells
    )
    return f'<div class="table-wrap"><table class="key-value"><thead><tr>{head}</tr></thead>' \
        f"<tbody>{body}</tbody></table></div>"  # fmt: skip


def inline_markup(text: str) -> str:
    """``text`` escaped, with ```code``` spans and ``**bold**``.

    Example:
        >>> inline_markup("**a** `<b>` **c")
        '<strong>a</strong> <code>&lt;b&gt;</code> **c'
    """
    # Split on backticks first so that code spans are escaped but never turned bold.
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick is kept as a literal one
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    out = []
    for i, part in enumerate(parts):
        escaped = html.escape(part)
        if i % 2:
            out.append(f"<code>{escaped}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def markup(text: str) -> str:
    """The Markdown subset of ``Report.add_text``: blank-line paragraphs, ``-`` bullet lists,
    ``#`` headings (one level under the section's), inline code and bold.

    Example:
        >>> markup("# Notes\\n\\n- one\\n- `two`")
        '<h3>Notes</h3>\\n<ul><li>one</li><li><code>two</code></li></ul>'
    """
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]
    out = []
    for block in blocks:
        lines = [line.strip() for line in block.splitlines()]
        heading = re.match(r"(#{1,3})\s+(.*)", lines[0]) if len(lines) == 1 else None
        if heading:
            level = len(heading.group(1)) + 2  # # → h3: the section heading is the h2
            out.append(f"<h{level}>{inline_markup(heading.group(2))}</h{level}>")
        elif all(re.match(r"[-*]\s", line) for line in lines):
            items = "".join(f"<li>{inline_markup(line[2:].strip())}</li>" for line in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{inline_markup(' '.join(lines))}</p>")
    return "\n".join(out)
