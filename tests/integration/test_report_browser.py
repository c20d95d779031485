"""The HTML report renders in a real headless Chromium with no network.

Drives Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) through the
``playwright`` package of the ``test`` extra. ``playwright install`` is never needed: the system
browser is launched by path. Without the browser the test fails and says how to install it: a
skip would hide a report that no longer renders.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cgc_lens.analysis.density import DensityConfig, DensityResult
from cgc_lens.io.report import Report
from cgc_lens.plots import density_heatmap, plot_dissociation, plot_feature_scatter, plot_taxonomy

CHROMIUM = Path(os.environ.get("CGC_LENS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"  # git-ignored
TIMEOUT_MS = 60_000  # two shared CPU cores: generous, a healthy run takes a few seconds

# The flags of issue 6, plus a dead proxy: any http(s) fetch the page tried would fail loudly.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
]

# Per figure: what plotly drew. An SVG trace is drawn when its group holds a path with a real
# `d` or a heatmap image with data; a WebGL trace when its canvas has non-transparent pixels
# (plotly keeps the drawing buffer, so the canvas can be read back).
RENDER_PROBE = """() => [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
  const isGl = t => t.type.endsWith('gl') || t.type === 'splom';
  const visible = (gd._fullData || []).filter(t => t.visible === true);
  const groups = [...gd.querySelectorAll('.main-svg g.trace, .main-svg g.hm')];
  const drawn = groups.filter(g =>
    [...g.querySelectorAll('path')].some(p => /[0-9]/.test(p.getAttribute('d') || '')
                                             && p.getAttribute('d') !== 'M0,0Z')
    || [...g.querySelectorAll('image')].some(i =>
         (i.getAttribute('href') || i.getAttribute('xlink:href') || '').startsWith('data:image')));
  let glPixels = 0;
  for (const c of gd.querySelectorAll('canvas.gl-canvas-context')) {
    if (!c.width || !c.height) continue;
    const o = document.createElement('canvas');
    o.width = c.width; o.height = c.height;
    const ctx = o.getContext('2d');
    ctx.drawImage(c, 0, 0);
    const px = ctx.getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) glPixels++;
  }
  const box = gd.getBoundingClientRect();
  return {id: gd.id, plotted: gd.classList.contains('js-plotly-plot'),
          mainSvg: gd.querySelectorAll('.main-svg').length,
          svgTraces: visible.filter(t => !isGl(t)).length, glTraces: visible.filter(isGl).length,
          drawnGroups: drawn.length, glPixels, width: box.width, height: box.height};
})"""


def _figures():
    """Figures from the real plot functions on small synthetic results (see their doctests)."""
    summary = pd.DataFrame({
        "name": ["FP16", "INT8", "INT6", "INT4"], "bits": [16, 8, 6, 4],
        "survived_pct": [100.0, 97.5, 61.0, 22.0], "degraded_pct": [0.0, 2.5, 37.0, 48.0],
        "damaged_pct": [0.0, 0.0, 2.0, 30.0], "mean_corr": [1.0, 0.98, 0.89, 0.61],
        "ppl_delta_pct": [0.0, 1.0, 14.7, 80.2],
    })  # fmt: skip
    rng = np.random.default_rng(0)
    z = rng.uniform(0.2, 0.9, size=(4, 4))
    density = DensityResult(
        breadth=z, entropy=z, consistency=z, density=z ** 3, breadth_count=np.ones((4, 4), int),
        entropy_nats=z, n_tokens=np.full(4, 512), pairs=np.zeros((4, 1, 2), int), d_sae=64,
    )  # fmt: skip
    r_a = rng.uniform(0.5, 1.0, 300)
    scatter = plot_feature_scatter(r_a, np.clip(r_a - rng.uniform(0, 0.3, 300), -1, 1))
    figures = {
        "taxonomy": plot_taxonomy(summary),
        "dissociation": plot_dissociation(summary),
        "density": density_heatmap(density),
        "scatter (WebGL)": scatter,
    }
    return figures, summary


def _launch(playwright, profile: Path):
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: the report browser test needs it. Install it with "
            "`apt-get update && apt-get install -y chromium` (Debian; .ci/run does this), or set "
            "CGC_LENS_CHROMIUM to a Chromium binary. Do not run `playwright install`."
        )
    return playwright.chromium.launch_persistent_context(
        str(profile),  # a fresh --user-data-dir
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, offline=True,
        viewport={"width": 1200, "height": 900}, timeout=TIMEOUT_MS,
    )  # fmt: skip


def test_report_renders_in_headless_chromium(tmp_path):
    try:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"The `playwright` package is missing ({err}); `pip install -e '.[test]'`.")

    figures, summary = _figures()
    report = Report(title="Report browser test <synthetic>")
    report.add_text("Synthetic results drawn by the **real** plot functions; `no network`.")
    for name, fig in figures.items():
        report.add_figure(fig, title=name, caption=f"The {name} figure.")
    report.add_table(summary, title="Summary")
    report.add_config(DensityConfig())
    report.add_versions({"cgc-lens": "test", "plotly": "test"})
    path = report.write(tmp_path / "out" / "report.html")

    errors, requests = [], []
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path / "profile")
        try:
            page = context.new_page()
            # Warnings (e.g. SwiftShader's "GPU stall due to ReadPixels") are not errors.
            page.on("console", lambda m: m.type in ("error", "assert")
                    and errors.append(f"console.{m.type}: {m.text}"))  # fmt: skip
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri(), wait_until="load", timeout=TIMEOUT_MS)
            try:
                page.wait_for_function(
                    "() => [...document.querySelectorAll('.plotly-graph-div')]"
                    ".every(gd => gd._fullLayout && gd.querySelector('.main-svg'))",
                    timeout=TIMEOUT_MS,
                )
            except PlaywrightTimeout:
                page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
                pytest.fail(
                    f"Not every figure was plotted within {TIMEOUT_MS / 1000:g} s (screenshot: "
                    f"{tmp_path / 'report.png'}). Page errors: {errors or 'none'}"
                )
            # Two animation frames: plotly finishes async pieces (WebGL, images) on the next one.
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => "
                          "requestAnimationFrame(r)))")  # fmt: skip
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)  # before asserts
            rendered = page.evaluate(RENDER_PROBE)
            toc = page.eval_on_selector_all("nav.toc a", "as => as.map(a => a.textContent)")
            table_cells = page.eval_on_selector_all("table.data td", "tds => tds.length")
        finally:
            context.close()

    assert len(rendered) == len(figures), rendered
    for fig in rendered:
        assert fig["plotted"] and fig["mainSvg"] > 0, f"figure not plotted: {fig}"
        assert fig["width"] > 100 and fig["height"] > 100, f"figure has no size: {fig}"
        assert fig["svgTraces"] + fig["glTraces"] > 0, f"figure has no visible trace: {fig}"
        assert fig["drawnGroups"] >= fig["svgTraces"], f"an SVG trace drew nothing: {fig}"
        if fig["glTraces"]:
            assert fig["glPixels"] > 0, f"a WebGL trace drew nothing: {fig}"
    assert not errors, "the page logged errors:\n" + "\n".join(errors)
    remote = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert not remote, f"the page tried the network: {remote}"
    assert toc == [*figures, "Summary", "Configuration", "Versions"]
    assert table_cells == summary.size
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_results_folder_report_reads_the_shared_plotlyjs_and_wide_tables_scroll(tmp_path):
    """A study's folder: report.html draws its figures with figures/plotly.min.js (the file the
    figure pages read), offline; a 28-column table scrolls inside its box, not the page, with
    its first column still in view at the far right; the config shows its meanings."""
    from playwright.sync_api import sync_playwright

    from cgc_lens.io.results import write_results

    figures, summary = _figures()
    rng = np.random.default_rng(0)
    heads = pd.DataFrame(rng.random((16, 28)), columns=[f"column_{i}" for i in range(28)])
    figures["taxonomy"].update_layout(title=None)  # titled by its name, like the table
    out = write_results(tmp_path / "run", study="demo", config=DensityConfig(), payload={},
                        figures={k.split()[0]: v for k, v in figures.items()},
                        tables={"heads": heads, "taxonomy": summary})  # fmt: skip
    errors, requests = [], []
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path / "profile")
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "report.html").as_uri(), wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plotly-graph-div')]"
                ".every(gd => gd._fullLayout && gd.querySelector('.main-svg'))",
                timeout=TIMEOUT_MS,
            )
            found = page.evaluate("""() => {
              const wrap = document.querySelector('#heads .table-wrap');
              const before = [wrap.scrollWidth, wrap.clientWidth];
              wrap.scrollLeft = wrap.scrollWidth;
              const box = wrap.getBoundingClientRect();
              const cells = [...wrap.querySelectorAll('thead th')];
              const first = cells[0].getBoundingClientRect();
              const last = cells[cells.length - 1].getBoundingClientRect();
              return {before, scrolled: wrap.scrollLeft, page: document.documentElement.scrollWidth,
                      view: window.innerWidth, first: [first.left, first.right],
                      last: [last.left, last.right], box: [box.left, box.right],
                      toc: [...document.querySelectorAll('nav.toc a')].map(a => a.textContent),
                      meanings: [...document.querySelectorAll('#configuration td:nth-child(3)')]
                                .map(td => td.textContent)};
            }""")
        finally:
            context.close()
    assert not errors, errors
    assert sorted(u.split("/run/")[-1] for u in requests) == ["figures/plotly.min.js",
                                                              "report.html"]  # fmt: skip
    width, visible = found["before"]
    assert width > 2 * visible and found["scrolled"] > width / 2  # it scrolls, sideways
    assert found["page"] <= found["view"]  # the page itself never does
    left, right = found["box"]
    assert abs(found["first"][0] - left) <= 2  # the first column pinned at the left edge
    assert found["last"][1] <= right + 1 and found["last"][0] >= found["first"][1]
    assert len(found["toc"]) == len(set(found["toc"])) and "taxonomy (table)" in found["toc"]
    assert found["meanings"] and all(m.strip() for m in found["meanings"])
