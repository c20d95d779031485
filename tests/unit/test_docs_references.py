"""Code the docs name exists: backticked module paths, ``module.function`` and ``Class.attr``.

Scans the inline code spans of docs/*.md and README.md (fenced blocks are left out: the ones in
docs/quickstart.md run in tests/integration/test_docs_examples.py). Spans it cannot tie to
cgc-lens (``result.r``, ``model.cfg``, formulas) are skipped rather than guessed at, so every
failure is a real stale name.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import cgc_lens

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cgc_lens"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
DOTTED = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")
CALL = re.compile(r"^([a-z_][a-z0-9]*_[a-z0-9_]*)\(.*\)$")  # snake_case with an underscore
PY_PATH = re.compile(r"^[\w./*-]+\.py$")
FILE_SUFFIXES = {"json", "html", "safetensors", "py", "npz", "md", "xz", "csv", "txt", "png"}
# Libraries the docs cite by dotted name; resolved by import like cgc_lens.
LIBRARIES = {"torch", "numpy", "scipy", "sae_lens", "transformer_lens", "dataclasses", "sklearn"}


@cache
def modules() -> dict[str, Any]:
    found = {"cgc_lens": cgc_lens}
    for info in pkgutil.walk_packages(cgc_lens.__path__, "cgc_lens."):
        found[info.name] = importlib.import_module(info.name)
    return found


@cache
def classes() -> dict[str, list[type]]:
    """Class name → the classes of that name defined in cgc_lens, SAELens or TransformerLens."""
    out: dict[str, list[type]] = {}
    libs = [importlib.import_module(m) for m in ("sae_lens", "transformer_lens")]
    for module in [*modules().values(), *libs]:
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj not in out.get(name, []):
                out.setdefault(name, []).append(obj)
    return out


@cache
def defined_names() -> frozenset[str]:
    """Every name a cgc_lens module defines or imports (``make_pipeline`` from scikit-learn),
    and the members of the classes cgc_lens defines."""
    names: set[str] = set()
    for module in modules().values():
        for name, obj in vars(module).items():
            names.add(name)
            if inspect.isclass(obj) and obj.__module__.startswith("cgc_lens"):
                names.update(vars(obj))
    return frozenset(names)


def resolve_import(dotted: str) -> bool:
    """``pkg.module.attr.attr`` resolves by import plus getattr."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not has_member(obj, part):
                return False
            obj = getattr(obj, part, None)
        return True
    return False


def has_member(obj: Any, name: str) -> bool:
    """An attribute, a dataclass field, or (fitted attributes, instance fields) a name the
    class's own source assigns."""
    if hasattr(obj, name):
        return True
    if not inspect.isclass(obj):
        return False
    if name in getattr(obj, "__dataclass_fields__", {}) or name in getattr(
        obj, "__annotations__", {}
    ):
        return True
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return False
    return re.search(rf"\b(self\.)?{re.escape(name)}\b", source) is not None


def check(span: str) -> str | None:
    """None when ``span`` resolves or is not a code reference; else what is wrong."""
    span = span.strip()
    if PY_PATH.match(span):
        if any(ch in span for ch in "*"):
            hits = list(ROOT.glob(span)) + list(PACKAGE.glob(span))
        elif "/" in span:
            hits = [p for p in (ROOT / span, PACKAGE / span) if p.is_file()]
        else:  # a bare file name, e.g. `capability_run.py`: somewhere in the repository
            hits = [p for d in ("cgc_lens", "scripts", "benchmarks", "tests")
                    for p in (ROOT / d).rglob(span)]
        return None if hits else f"no file {span}"
    match = DOTTED.match(span)
    if match:
        dotted = match.group(1)
        head, *rest = dotted.split(".")
        if rest[-1] in FILE_SUFFIXES:
            return None
        if head == "cgc_lens" or head in LIBRARIES:
            return None if resolve_import(dotted) else f"cannot import {dotted}"
        # `metrics.token_nll` names a module by its last part (cgc_lens.forward.metrics) when
        # that part is unique; `result.r` (three studies have a `result` module) is an instance.
        owners = [m for m in modules() if m == f"cgc_lens.{head}" or m.endswith(f".{head}")]
        if len(owners) == 1:
            full = ".".join([owners[0], *rest])
            if resolve_import(full) or rest[0] in defined_names() or any(
                    has_member(cls, rest[0]) for group in classes().values() for cls in group
                    if cls.__module__.startswith("cgc_lens")):
                return None  # the module's member, or an instance's (`record.n_parameters`)
            return f"cannot import {full}"
        if head[0].isupper() and head in classes():
            ok = any(resolve_class(cls, rest) for cls in classes()[head])
            return None if ok else f"{head} has no {'.'.join(rest)}"
        return None  # an instance (result.r), a config key (density.tau_min): not checkable
    match = CALL.match(span)
    if match and match.group(1) not in defined_names():
        return f"no function {match.group(1)} in cgc_lens"
    return None


def resolve_class(cls: type, rest: list[str]) -> bool:
    obj: Any = cls
    for part in rest:
        if not has_member(obj, part):
            return False
        obj = getattr(obj, part, None)
        if obj is None:  # an instance attribute found in the source: stop there
            return True
    return True


def spans(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return SPAN.findall(text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_code_named_in_docs_exists(doc: Path) -> None:
    problems = sorted({f"`{s}`: {err}" for s in spans(doc) if (err := check(s))})
    assert not problems, f"{doc.relative_to(ROOT)} names code that does not exist:\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    ("span", "ok"),
    [
        ("metrics.token_nll", True),
        ("metrics.no_such_function", False),
        ("cgc_lens/analysis/density.py", True),
        ("analysis/density.py", True),
        ("cgc_lens/adaptive.py", False),
        ("PearsonAccumulator.update", True),
        ("PearsonAccumulator.no_such_method", False),
        ("FragilityPredictor.roc_curves_", True),
        ("feature_breadth(freq, tau_min)", True),
        ("feature_breath(freq, tau_min)", False),
        ("result.r", True),
        ("results.json", True),
        ("exp(Σ ℓ_t / N)", True),
    ],
)
def test_checker(span: str, ok: bool) -> None:
    assert (check(span) is None) is ok, check(span)


def test_architecture_lists_every_module() -> None:
    """docs/architecture.md's module table names exactly the package's modules and packages
    (``forward/metrics`` for cgc_lens/forward/metrics.py; the assets are data, not code)."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([\w/]+)` \|", section, re.M))
    listed = {name.rstrip("/") for name in listed}
    actual = {info.name.removeprefix("cgc_lens.").replace(".", "/")
              for info in pkgutil.walk_packages(cgc_lens.__path__, "cgc_lens.")}
    assert listed == actual, (
        f"docs/architecture.md's module table is stale: missing {sorted(actual - listed)}, "
        f"no such module {sorted(listed - actual)}"
    )


def test_docs_index_links_every_page() -> None:
    """docs/README.md links every docs page, and every relative link in docs/ resolves."""
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    linked = set(re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]*)?\)", index))
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", doc.read_text("utf-8")):
            assert (doc.parent / target).is_file(), f"{doc.name} links missing {target}"


DEEP_IMPORT = re.compile(r"^\s*(?:from|import)\s+(cgc_lens\.\w+\.[\w.]+)", re.M)


def _notebook_code(path: Path) -> str:
    import json

    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize(
    "path", [*DOCS, *sorted((ROOT / "notebooks").glob("*.ipynb"))], ids=lambda p: p.name
)
def test_docs_and_notebooks_use_the_public_api(path: Path) -> None:
    """Users' code imports from ``cgc_lens`` or one of its packages (``cgc_lens.saes``), never
    from a module inside a package, so the package can be re-laid without breaking them."""
    text = _notebook_code(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    deep = sorted(m for m in set(DEEP_IMPORT.findall(text))
                  if not (ROOT / m.replace(".", "/")).is_dir())  # a package is public
    assert not deep, f"{path.name} imports from modules inside packages: {deep}"
