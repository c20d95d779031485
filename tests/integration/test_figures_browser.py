"""Every figure of the survival, capability and adaptive studies, drawn by plotly.js in headless
Chromium, is readable: head and layer axes carry integer ticks, one per layer and head; no
subplot title, figure title or annotation overlaps another or a tick label; the dissociation
plot's right axis has round ticks.

The figures come from the real plot functions on small synthetic results
(``tests/unit/plots/figure_builders.py``), at a notebook's width and at the report's, one page
with plotly.js inlined once. Positions are read from the DOM (``getBoundingClientRect``). Like
``test_report_browser.py``, this drives Debian's ``chromium`` through the ``playwright`` package
of the ``test`` extra (``make test`` installs the browser) and fails, saying how to install it,
when the browser is missing. A screenshot of the page is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs
from unit.plots.figure_builders import (
    adaptive_figures,
    capability_figures,
    density_result,
    survival_figures,
)

from cgc_lens.plots import density_heatmap

CHROMIUM = Path(os.environ.get("CGC_LENS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored
TIMEOUT_MS = 60_000  # two shared CPU cores; a healthy run takes a few seconds
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]
WIDTHS = (720, 1036)
"""A notebook's output width and the report's content width (1100 px less its padding)."""
HEADS = {
    "density_heatmap": (4, 4),
    "reallocation_cgc_l": (4, 4),
    "reallocation_cgc_f": (4, 4),
    "reallocation_inverted": (4, 4),
    "density_heatmap_12x16": (12, 16),
    "density_heatmap_48x16": (48, 16),
}
"""The layer × head heatmaps and their (n_layers, n_heads)."""
LAYER_AXES = {"adaptive.quality": (0, 1, 2, 3), "adaptive.quality_gpt2": (0, 6, 12, 18, 23)}
"""Figures whose every x axis is a layer axis, and the layers it must label."""

# Per figure: tick label texts per axis, and the boxes (page pixels) of every title, annotation
# and axis title ("labels"), and of every tick label and bar (which no label may cover).
PROBE = """() => [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const box = el => { const r = el.getBoundingClientRect();
                      return [r.left, r.top, r.right, r.bottom]; };
  const axes = {};
  for (const key of Object.keys(gd._fullLayout).filter(k => /^[xy]axis[0-9]*$/.test(k))) {
    const id = gd._fullLayout[key]._id;
    axes[id] = [...gd.querySelectorAll(`g.${id}tick text`)].map(t => t.textContent);
  }
  const titled = '.gtitle, g.annotation, .infolayer g[class^="g-x"][class$="title"], '
                 + '.infolayer g[class^="g-y"][class$="title"]';
  const labels = [...gd.querySelectorAll(titled)]
    .filter(el => el.textContent.trim())
    .map(el => ({text: el.textContent, box: box(el)}));
  const ticks = [...gd.querySelectorAll('.xaxislayer-above text, .yaxislayer-above text')]
    .filter(t => t.textContent.trim())
    .map(t => ({text: t.textContent, box: box(t)}));
  const bars = [...gd.querySelectorAll('.bars .point path')]
    .map(p => ({text: 'a bar', box: box(p)}));
  return {id: gd.id, axes, labels, ticks: [...ticks, ...bars]};
})"""


def _figures() -> dict[str, object]:
    figures = {**capability_figures(4, 4), **survival_figures()}
    figures["density_heatmap_12x16"] = density_heatmap(density_result(12, 16, seed=3))
    figures["density_heatmap_48x16"] = density_heatmap(density_result(48, 16, seed=4))
    figures.update({f"adaptive.{k}": v for k, v in adaptive_figures().items()})
    # a deep model's sites (e.g. GPT-2 medium's) and a wider choice of k in the probing grid
    deep = adaptive_figures((0, 6, 12, 18, 23), ks=(1, 2, 5, 10), seed=1)
    figures["adaptive.quality_gpt2"] = deep["quality"]
    figures["adaptive.probing_gpt2"] = deep["probing"]
    return figures


def _page(figures: dict[str, object]) -> str:
    divs = []
    for width, (name, fig) in itertools.product(WIDTHS, figures.items()):
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{name}@{width}",
                          default_width="100%", config={"responsive": False})  # fmt: skip
        divs.append(f'<h2>{html.escape(name)} at {width} px</h2>'
                    f'<div style="width: {width}px">{div}</div>')  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><script>{get_plotlyjs()}"
            f"</script></head><body>{''.join(divs)}</body></html>")  # fmt: skip


def _overlap(a: list[float], b: list[float], slack: float = 1.0) -> bool:
    """Whether two ``[left, top, right, bottom]`` boxes overlap by more than ``slack`` px."""
    return min(a[2], b[2]) - max(a[0], b[0]) > slack and min(a[3], b[3]) - max(a[1], b[1]) > slack


def _launch(playwright, profile: Path):
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the figure browser test needs it. Install it with "
            "`apt-get update && apt-get install -y chromium` (Debian; `make test` does this), or "
            "set CGC_LENS_CHROMIUM to a Chromium binary. Do not run `playwright install`."
        )
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        offline=True, viewport={"width": 1200, "height": 900}, timeout=TIMEOUT_MS,
    )  # fmt: skip


def _render(tmp_path: Path, figures: dict[str, object]) -> tuple[list[dict], list[str]]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"The `playwright` package is missing ({err}); `pip install -e '.[test]'`.")
    page_path = tmp_path / "figures.html"
    page_path.write_text(_page(figures), encoding="utf-8")
    errors: list[str] = []
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path / "profile")
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.goto(page_path.as_uri(), wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')]"
                ".every(gd => gd._fullLayout && gd.querySelector('.main-svg'))",
                timeout=TIMEOUT_MS,
            )
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                          "requestAnimationFrame(r)))")  # fmt: skip
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "figures.png"), full_page=True)
            rendered = page.evaluate(PROBE)
        finally:
            context.close()
    return rendered, errors


def _is_round_step(step: float) -> bool:
    mantissa = step / 10 ** math.floor(math.log10(step))
    return any(math.isclose(mantissa, m) for m in (1.0, 2.0, 2.5, 5.0, 10.0))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The probe's findings for every figure at every width (one browser run)."""
    figures = _figures()
    found, errors = _render(tmp_path_factory.mktemp("figures"), figures)
    assert not errors, "the page logged errors:\n" + "\n".join(errors)
    assert sorted(f["id"] for f in found) == sorted(f"{n}@{w}" for w in WIDTHS for n in figures)
    return found


def test_head_ticks_are_integers_and_no_title_overlaps(rendered):
    problems = []
    for fig in rendered:
        name = fig["id"].split("@")[0]
        if name in HEADS:  # every layer and head labelled, with an integer
            n_layers, n_heads = HEADS[name]
            for axis, n, what in (("x", n_heads, "head"), ("y", n_layers, "layer")):
                texts = fig["axes"][axis]
                if not all(t.isdigit() for t in texts) or sorted(map(int, texts)) != [*range(n)]:
                    problems.append(f"{fig['id']}: {what} ticks {texts}, want 0 .. {n - 1}")
        if name in LAYER_AXES:  # every panel's x axis: each layer, as an integer
            want = [str(ell) for ell in LAYER_AXES[name]]
            x_axes = {a: t for a, t in fig["axes"].items() if a.startswith("x")}
            assert len(x_axes) == 6, sorted(fig["axes"])
            problems += [f"{fig['id']}: layer ticks of {a} are {t}, want {want}"
                         for a, t in x_axes.items() if t != want]  # fmt: skip
        labels = fig["labels"]
        for a, b in itertools.combinations(labels, 2):
            if _overlap(a["box"], b["box"]):
                problems.append(f"{fig['id']}: {a['text']!r} overlaps {b['text']!r}")
        for a in labels:
            for t in fig["ticks"]:
                if _overlap(a["box"], t["box"]):
                    problems.append(f"{fig['id']}: {a['text']!r} overlaps {t['text']!r}")
    assert not problems, "\n".join(problems)


def test_dissociation_has_the_reference_apart_and_round_right_ticks(rendered):
    for fig in (f for f in rendered if f["id"].startswith("dissociation@")):
        right = [float(t.replace("−", "-")) for t in fig["axes"]["y2"]]
        assert len(right) >= 3, right
        steps = {round(b - a, 9) for a, b in itertools.pairwise(right)}
        assert len(steps) == 1 and _is_round_step(steps.pop()), right
        assert fig["axes"]["x"] == ["reference (32 bits)", "8", "6", "4"], fig["axes"]["x"]
