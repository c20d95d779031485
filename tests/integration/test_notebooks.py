"""Every notebook in notebooks/ runs top to bottom, offline, in a fresh kernel.

Notebooks are executed with nbclient in this interpreter's ``python3`` kernel, with the working
directory and the Hugging Face home in a temporary folder and the hub switched off
(``HF_HUB_OFFLINE=1``), so a run reaches no network and writes nothing into the repository.
``04_pretrained_saes`` loads Gemma Scope, Pythia-70M-deduped (model and res-sm SAE) and GPT-2
small's hook_z SAEs by name: its cache is written here first, in the hub's layout, from the
stand-ins of ``tests/unit/fake_releases.py``. The executed copies are kept under
``test-artifacts/notebooks/`` (git-ignored) for inspection.
"""

from __future__ import annotations

import ast
import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

# tests/unit holds the shared builders; tests/ is on sys.path (tests/conftest.py), so they are
# imported as the namespace package ``unit``.
from unit.fake_assets import bpe_tokenizer
from unit.fake_releases import (
    GEMMA_PATH,
    GEMMA_REPO,
    GPT2_REPO,
    KK_REPO,
    PYTHIA_MODEL_REPO,
    PYTHIA_REPO,
    gemma_scope_npz,
    gpt2_config_files,
    kk_files,
    pythia_70m_deduped_files,
    pythia_res_sm_files,
)
from unit.hub_cache import write_hub_snapshot

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = ROOT / "test-artifacts" / "notebooks"
CELL_TIMEOUT_S = 240
"""nbclient's limit per cell; the whole notebook is limited by pytest-timeout below."""
NEEDS_HUB_CACHE = {"04_pretrained_saes"}

# What each notebook must print: the facts it exists to show a user. The error messages are
# the library's (cgc_lens.saes.attach); a notebook that stopped showing them would mislead.
EXPECTED_OUTPUT = {
    "01_quickstart": ["17 embedded SAEs", "blocks.2.hook_resid_post"],
    "02_feature_survival": ["null check passed: True"],
    "03_capability_guided_compression": ["weights restored exactly: True"],
    "04_pretrained_saes": [
        "offline: True",
        "the SAE attaches at blocks.12.hook_resid_post",
        "CgcLensError: Unknown hook 'blocks.4.hook_resid_post' on cgc-tiny. Closest:",
        "CgcLensError: SAE d_in=512 does not fit blocks.3.hook_resid_post on cgc-tiny",
    ],
}


FIRST_FIGURE = {
    "01_quickstart": "Capability density δ",
    "02_feature_survival": "Feature fidelity and perplexity against bit-width",
    "03_capability_guided_compression": "Capability density δ",
    "04_pretrained_saes": None,
}
"""The title each notebook's first figure starts with (None: the notebook draws no figure).
Every notebook's figures must show outside Jupyter (an nbconvert HTML export): each figure is
also stored as text/html, with plotly.js inlined once in the outputs (never fetched from a
CDN)."""


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(nb: nbformat.NotebookNode) -> str:
    """Every stream and plain-text output of an executed notebook, in order."""
    parts = []
    for cell in _code_cells(nb):
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _repo_files() -> set[Path]:
    skip = {".git", ".venv", "test-artifacts", "__pycache__", ".pytest_cache", ".ruff_cache"}
    out = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in skip]
        out.update(Path(dirpath) / f for f in filenames)
    return out


@pytest.fixture(scope="module")
def hub_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF home whose hub cache holds every release 04_pretrained_saes loads by name."""
    home = tmp_path_factory.mktemp("hf")
    hub = home / "hub"
    write_hub_snapshot(hub, GEMMA_REPO, {f"{GEMMA_PATH}/params.npz": gemma_scope_npz()})
    write_hub_snapshot(hub, PYTHIA_REPO, pythia_res_sm_files())
    write_hub_snapshot(hub, KK_REPO, kk_files())
    model_dir = tmp_path_factory.mktemp("pythia-70m-deduped")
    write_hub_snapshot(hub, PYTHIA_MODEL_REPO,
                       pythia_70m_deduped_files(model_dir, bpe_tokenizer(300)))
    write_hub_snapshot(hub, GPT2_REPO, gpt2_config_files())  # config only: a shape-only skeleton
    return home


def _kernel_env(hf_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        # One torch thread unless told otherwise: CI has 2 cores, and oversubscribed threads
        # made the same run up to 8x slower (docs/survival.md).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"),
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Figures as plotly JSON only, not plotly.js (4.8 MB) inlined into every artifact.
        "PLOTLY_RENDERER": "plotly_mimetype",
    }


def test_there_are_notebooks_to_run():
    assert {p.stem for p in NOTEBOOKS} == set(EXPECTED_OUTPUT) == set(FIRST_FIGURE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_clean_and_defines_no_logic(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = _code_cells(nb)
    assert code, f"{path.name} has no code cells"
    for cell in code:
        # Stored without outputs so that diffs stay small; executed copies are test artifacts.
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{path.name}: clear the outputs before saving (cell {cell.get('id')})")
        # STYLE rule 14: notebooks call the library; a missing helper belongs in cgc_lens.
        tree = ast.parse(cell.source)
        defined = [n for n in ast.walk(tree)
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                     ast.Lambda))]
        assert not defined, f"{path.name} defines logic of its own: {cell.source[:200]!r}"
    assert any("import cgc_lens" in c.source or "from cgc_lens" in c.source for c in code)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline(path: Path, tmp_path: Path, request: pytest.FixtureRequest):
    if path.stem in NEEDS_HUB_CACHE:
        hf_home = request.getfixturevalue("hub_cache_home")
    else:  # nothing to load by name, but keep the run hermetic all the same
        hf_home = tmp_path / "hf"
        (hf_home / "hub").mkdir(parents=True)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(tmp_path)}})
    before = _repo_files()
    start = time.perf_counter()
    try:
        client.execute(env=_kernel_env(hf_home))  # raises CellExecutionError on any error
    finally:
        nb.metadata["cgc_lens_test"] = {"seconds": round(time.perf_counter() - start, 1)}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / path.name)
    errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = _text(nb)
    for expected in EXPECTED_OUTPUT[path.stem]:
        assert expected in text, f"{path.name} no longer prints {expected!r}"
    new = sorted(str(p.relative_to(ROOT)) for p in _repo_files() - before)
    assert not new, f"running {path.name} wrote into the repository: {new}"
    _assert_figures_as_html(nb, path.name, FIRST_FIGURE[path.stem])


def _assert_figures_as_html(nb: nbformat.NotebookNode, name: str, first_title: str | None) -> None:
    """Every plotly figure of ``nb`` also has a text/html drawing, and plotly.js is inlined."""
    data = [o.data for c in _code_cells(nb) for o in c.outputs if "data" in o]
    figures = [d for d in data if "application/vnd.plotly.v1+json" in d]
    if first_title is None:
        assert not figures, f"{name} draws figures now: name its first one in FIRST_FIGURE"
        return
    assert figures, f"{name} shows no figure"
    title = figures[0]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"]
    assert title.startswith(first_title), f"{name}: the first figure is {title!r}"
    html = [d["text/html"] for d in data if "text/html" in d]
    drawn = [h for h in html if "plotly-graph-div" in h and "Plotly.newPlot" in h]
    assert len(drawn) == len(figures), (
        f"{name}: {len(figures)} figures but {len(drawn)} as HTML; an exported notebook would "
        "show blanks (set plotly.io.renderers.default to 'notebook+plotly_mimetype')")
    assert sum("* plotly.js v" in h for h in html) == 1, f"{name}: plotly.js not inlined once"
    # plotly's notebook HTML links MathJax from a CDN (for LaTeX only; figures draw without it)
    remote = [h for h in html if re.search(r"""src=["']https?://[^"']*plotly""", h)]
    assert not remote, f"{name}: plotly.js would be fetched from the network"
