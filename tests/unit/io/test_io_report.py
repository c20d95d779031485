"""The HTML report writer: sections, plotly.js once (inlined, or shared with the figure pages of a
results folder), no network, escaping, config meanings, wide tables, bad input."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from cgc_lens.analysis.density import DensityConfig
from cgc_lens.errors import CgcLensError
from cgc_lens.io.configs import field_docs
from cgc_lens.io.report import SHARED_PLOTLYJS, Report, write_report
from cgc_lens.io.report_html import WIDE_TABLE_COLUMNS
from cgc_lens.io.results import read_results, write_results
from cgc_lens.studies import AdaptiveStudyConfig, CapabilityConfig, SurvivalConfig

PLOTLYJS = re.compile(r'<script id="plotlyjs">.*?</script>', flags=re.S)


def _bar(title: str | None = None) -> go.Figure:
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout={"title": title})


def _toc(page: str) -> list[str]:
    nav = re.search(r'<nav class="toc">.*?</nav>', page, flags=re.S).group(0)
    return re.findall(r'<a href="#[^"]+">(.*?)</a>', nav)


@pytest.fixture
def page() -> str:
    report = Report(title="Audit")
    report.add_text("Intro.", title="Overview")
    report.add_figure(_bar("Survival <b>by</b> condition"), caption="Stacked.")
    report.add_figure(_bar(), title="Dissociation")
    report.add_table(pd.DataFrame({"name": ["int8"], "r": [0.123456]}), title="Summary")
    report.add_config(DensityConfig())
    report.add_versions({"cgc-lens": "0.1.0", "torch": "2.13.0"})
    return report.to_html()


def test_sections_in_order_with_a_table_of_contents(page):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<title>Audit</title>" in page and "<h1>Audit</h1>" in page
    expected = ["Overview", "Survival by condition", "Dissociation", "Summary", "Configuration",
                "Versions"]  # fmt: skip
    assert _toc(page) == expected
    anchors = re.findall(r'<section id="([^"]+)"', page)
    assert anchors == re.findall(r'<a href="#([^"]+)">', page)
    assert [f"<h2>{t}</h2>" in page for t in expected] == [True] * len(expected)
    assert '<figcaption class="caption">Stacked.</figcaption>' in page


def test_plotlyjs_inlined_exactly_once(page):
    assert page.count('<script id="plotlyjs">') == 1
    assert page.count("* plotly.js v") == 1  # the library's banner
    assert page.index('<script id="plotlyjs">') < page.index("</head>")
    assert page.count("Plotly.newPlot(") == 2
    assert 'id="figure-1"' in page and 'id="figure-2"' in page


def test_no_network_references(page):
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "<link" not in page and "@import" not in page
    # plotly.js itself names URLs in its code; nothing else on the page does.
    assert "http" not in PLOTLYJS.sub("", page)


def test_no_plotlyjs_without_figures():
    report = Report(title="Tables only")
    report.add_table(pd.DataFrame({"a": [1]}))
    assert "plotly" not in report.to_html().lower()


def test_text_and_table_cells_are_escaped():
    report = Report(title="<Title & co>")
    report.add_text("<script>alert(1)</script> & `<code>` **x < y**", title="<h>")
    table = pd.DataFrame({"<col>": ["<img src=x onerror=alert(1)>"], "n": [1.0]})
    report.add_table(table, caption="<cap>")
    report.add_figure(_bar("</script><script>alert(2)</script>"), caption="<fig & cap>")
    page = PLOTLYJS.sub("", report.to_html())
    assert "<script>alert" not in page and "<img" not in page and "<col>" not in page
    assert "<title>&lt;Title &amp; co&gt;</title>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; <code>&lt;code&gt;</code>" in page
    assert "<strong>x &lt; y</strong>" in page and "<h2>&lt;h&gt;</h2>" in page
    assert "&lt;col&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;cap&gt;" in page and "&lt;fig &amp; cap&gt;" in page


def test_markdown_subset_and_trusted_html():
    report = Report(title="t")
    report.add_text("# Heading\n\nA **bold** `**not bold**` word.\n\n- one\n- two `x`")
    report.add_text("<em>trusted</em>", html=True)
    page = report.to_html()
    assert "<h3>Heading</h3>" in page
    assert "<p>A <strong>bold</strong> <code>**not bold**</code> word.</p>" in page
    assert "<ul><li>one</li><li>two <code>x</code></li></ul>" in page
    assert "<em>trusted</em>" in page
    assert "<nav" not in page  # untitled sections: no table of contents


def test_table_formatting():
    report = Report(title="t")
    table = pd.DataFrame({"x": [0.123456789, float("nan")]}, index=["dense", "int4"])
    report.add_table(table, float_format=".2%")
    report.add_table(pd.Series([1.23456], name="y"), float_format=lambda v: f"<{v:.1f}>")
    report.add_table(pd.DataFrame({"z": range(50)}), max_rows=6)
    page = report.to_html()
    assert "12.35%" in page and "–" in page  # NaN shown as a dash
    assert "<th>dense</th>" in page  # a named (non-range) index is shown
    assert "&lt;1.2&gt;" in page  # a callable's output is escaped too
    assert "2 rows × 1 columns" in page and "50 rows × 1 columns" in page
    assert "<td>49</td>" in page and "<td>25</td>" not in page


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Outer:
    name: str = "audit"
    """Name of the run."""
    density: DensityConfig = dataclasses.field(default_factory=DensityConfig)
    """The density readings."""
    blob: tuple[int, ...] = tuple(range(500))
    """Something long."""


def test_config_rows_with_field_docs_nested_and_truncated():
    report = Report(title="t")
    report.add_config(_Outer())
    report.add_config({"lr": 1e-3, "plan": {"op": "rtn", "bits": 4}, "empty": {}}, title="Raw")
    page = report.to_html()
    assert "<td>name</td><td>audit</td><td>Name of the run.</td>" in page
    assert "<td>density.tau_min</td><td>0.001</td>" in page
    assert "<td>density.pair_weighting</td><td>tokens</td><td><code>" in page  # ``x`` → code
    assert '<p class="caption">_Outer</p>' in page
    blob = re.search(r"<td>blob</td><td>(.*?)</td>", page).group(1)
    assert blob.startswith("(0, 1, 2") and blob.endswith("…") and len(blob) == 300
    assert "<td>plan.op</td><td>rtn</td>" in page and "<td>plan.bits</td><td>4</td>" in page
    assert "<td>empty</td><td>{}</td>" in page and "<td>lr</td><td>0.001</td>" in page


def test_versions_table():
    report = Report(title="t")
    report.add_versions({"torch": "2.13.0", "python": "3.11.7"})
    page = report.to_html()
    assert "<th>library</th><th>version</th>" in page
    assert "<td>torch</td><td>2.13.0</td>" in page and "<td>python</td><td>3.11.7</td>" in page


def test_duplicate_titles_get_unique_anchors():
    report = Report(title="t")
    for _ in range(3):
        report.add_figure(_bar(), title="Same")
    assert re.findall(r'<section id="([^"]+)"', report.to_html()) == ["same", "same-2", "same-3"]


def test_output_is_deterministic():
    def build() -> str:
        report = Report(title="t")
        report.add_figure(_bar("a"))
        report.add_config(DensityConfig())
        return report.to_html()

    assert build() == build()


def test_write_report(tmp_path):
    out = tmp_path / "runs" / "audit"
    path = write_report(
        out, "Study", figures=[_bar("First"), _bar("Second")],
        tables={"Summary": pd.DataFrame({"a": [1]})}, config=DensityConfig(),
        versions={"cgc-lens": "0.1.0"}, intro="Hello **there**.",
    )  # fmt: skip
    assert path == out / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    assert _toc(page) == ["First", "Second", "Summary", "Configuration", "Versions"]
    assert "<p>Hello <strong>there</strong>.</p>" in page
    # a figure's section: its own title's first line, its name when it has none; a table named
    # like an earlier section is told apart, so no entry of the contents appears twice
    deciles = {"deciles": pd.DataFrame({"a": [1]})}
    titled = {"deciles": _bar("Non-survival <b>by</b> decile<br><sup>sub</sup>"), "x": _bar()}
    assert write_report(out, "Again", figures=titled, tables=deciles) == path
    assert _toc(path.read_text(encoding="utf-8")) == ["Non-survival by decile", "x", "deciles"]
    write_report(out, "Again", figures={"deciles": _bar()}, tables=deciles)
    assert _toc(path.read_text(encoding="utf-8")) == ["deciles", "deciles (table)"]


def test_plotlyjs_shared_with_the_figure_pages(tmp_path):
    js = tmp_path / SHARED_PLOTLYJS
    path = write_report(tmp_path, "Shared", figures=[_bar("a"), _bar("b")],
                        plotlyjs=SHARED_PLOTLYJS)  # fmt: skip
    page = path.read_text(encoding="utf-8")
    assert page.count('<script id="plotlyjs" src="figures/plotly.min.js"></script>') == 1
    assert "* plotly.js v" not in page and len(page) < 100_000  # 4.8 MB less than inlined
    assert page.count("Plotly.newPlot(") == 2 and "copy or share the folder whole" in page
    assert js.read_text(encoding="utf-8") == get_plotlyjs()  # written when missing
    js.write_text("/* plotly's own copy */", encoding="utf-8")
    write_report(tmp_path, "Again", figures=[_bar("a")], plotlyjs=SHARED_PLOTLYJS)
    assert js.read_text(encoding="utf-8") == "/* plotly's own copy */"  # an existing one is kept
    bare = write_report(tmp_path / "tables", "No figures", tables={"t": pd.DataFrame({"a": [1]})},
                        plotlyjs=SHARED_PLOTLYJS)  # fmt: skip
    assert "plotly" not in bare.read_text(encoding="utf-8").lower()
    assert not (bare.parent / "figures").exists()


@pytest.mark.parametrize("bad", ["/abs/plotly.js", "../plotly.min.js", "https://cdn/plotly.js",
                                 "figures/plotly.css", "a\\b.js"])  # fmt: skip
def test_plotlyjs_must_be_inline_or_a_relative_js_path(tmp_path, bad):
    with pytest.raises(CgcLensError, match="plotlyjs must be 'inline' or the path"):
        Report(title="t").write(tmp_path / "r.html", plotlyjs=bad)


def test_results_folder_stores_plotlyjs_once_and_seals_it(tmp_path):
    out = write_results(tmp_path / "run", study="demo", config=DensityConfig(), payload={},
                        figures={"a": _bar("A"), "b": _bar("B")},
                        tables={"a": pd.DataFrame({"x": [1]})})  # fmt: skip
    banner = [p.relative_to(out).as_posix() for p in out.rglob("*")
              if p.is_file() and "* plotly.js v" in p.read_text(encoding="utf-8")]  # fmt: skip
    assert banner == [SHARED_PLOTLYJS]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f'src="{SHARED_PLOTLYJS}"' in page
    for name in ("a", "b"):  # plotly's "directory" pages read the same file
        figure_page = (out / "figures" / f"{name}.html").read_text(encoding="utf-8")
        assert re.search(r'<script [^>]*src="plotly.min.js"', figure_page)
    manifest = json.loads((out / "MANIFEST.json").read_text(encoding="utf-8"))
    assert json.dumps(manifest).count("plotly.min.js") == 1
    assert read_results(out).config["tau_min"] == DensityConfig().tau_min  # checked, loads


def test_config_meanings_of_every_study_config():
    for config in (SurvivalConfig(), CapabilityConfig(), AdaptiveStudyConfig()):
        report = Report(title="t")
        report.add_config(config)
        rows = re.findall(r"<tr><td>([^<]*)</td><td>.*?</td><td>(.*?)</td></tr>", report.to_html())
        assert len(rows) >= 20
        assert not [key for key, meaning in rows if not meaning.strip()], type(config).__name__
        docs = field_docs(type(config))
        assert dict(rows)["seed" if "seed" in docs else "model"] == html.escape(
            docs["seed" if "seed" in docs else "model"]).replace("``", "`")


def test_wide_tables_say_that_they_scroll():
    report = Report(title="t")
    report.add_table(pd.DataFrame(np.zeros((2, WIDE_TABLE_COLUMNS + 1))), title="wide")
    report.add_table(pd.DataFrame(np.zeros((2, WIDE_TABLE_COLUMNS))), title="narrow")
    page = report.to_html()
    assert page.count("scroll sideways") == 1
    assert f"2 rows × {WIDE_TABLE_COLUMNS + 1} columns; scroll sideways" in page
    assert "table.data tr > :first-child { position: sticky; left: 0;" in page


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Report(title="  "), "title must be a non-empty string"),
        (lambda: Report(title="t").add_figure(_bar(), title=""), "section title"),
        (lambda: Report(title="t").add_table(pd.DataFrame({"a": [1.0]}), float_format=".3q"),
         "float_format must be a format spec"),
        (lambda: Report(title="t").add_table(pd.DataFrame({"a": [1]}), max_rows=0),
         "max_rows must be at least 1"),
        (lambda: Report(title="t").add_config(DensityConfig), "the class"),
        (lambda: Report(title="t").add_config(42), "dataclass instance or a mapping, got int"),
        (lambda: Report(title="t").add_versions({}), "non-empty mapping"),
    ],
)  # fmt: skip
def test_bad_input_raises(build, match):
    with pytest.raises(CgcLensError, match=match):
        build()


def test_write_to_a_folder_raises(tmp_path):
    with pytest.raises(CgcLensError, match="takes a file path"):
        Report(title="t").write(tmp_path)
