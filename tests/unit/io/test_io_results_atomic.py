"""Results folders are written whole or not at all: overwrite rules, the manifest check on load,
folders written before manifests, and a fault at every file operation of a save."""

from __future__ import annotations

import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import cgc_lens.io.results as results_module
from cgc_lens.errors import CgcLensError
from cgc_lens.io import MANIFEST_FILE, LegacyFolderWarning, check_out_dir
from cgc_lens.io.folder_lock import lock_path
from cgc_lens.io.results import read_results, write_results
from cgc_lens.io.staging import leftovers


def save(out: Path, i: int, *, overwrite: bool = False, figures: bool = False,
         tables: tuple[str, ...] = ("t",)) -> Path:
    """A save whose every file carries ``i``, so a mix of two saves shows."""
    def extra(folder: Path) -> None:
        (folder / "weights").mkdir()
        (folder / "weights" / "note.txt").write_text(str(i))

    return write_results(
        out, study="demo", config={"seed": i}, payload={"value": i},
        tables={name: pd.DataFrame({"a": [i, i]}) for name in tables},
        arrays={"r": np.full(4, float(i))},
        figures={"f": go.Figure(go.Scatter(x=[0, 1], y=[i, i]))} if figures else None,
        overwrite=overwrite, extra=extra)


def loaded_run(out: Path) -> int:
    """Which save ``out`` holds, checked whole: every file must carry the same number."""
    back = read_results(out)
    i = back.config["seed"]
    assert back.payload["value"] == i
    assert all((t["a"] == i).all() for t in back.tables.values())
    np.testing.assert_array_equal(back.arrays["r"], np.full(4, float(i)))
    assert (out / "weights" / "note.txt").read_text() == str(i)
    return i


# --------------------------------------------------------------------------- overwrite rules


def test_a_non_empty_folder_is_refused_without_overwrite(tmp_path):
    out = save(tmp_path / "run", 1)
    with pytest.raises(CgcLensError, match=r"run is not empty .*--overwrite"):
        save(out, 2)
    with pytest.raises(CgcLensError, match="--overwrite"):
        check_out_dir(out)
    assert loaded_run(out) == 1
    assert check_out_dir(out, overwrite=True) == out.absolute()


def test_overwrite_replaces_the_folder_whole(tmp_path):
    out = save(tmp_path / "run", 1, tables=("t", "matching"))
    (out / "stray.txt").write_text("by hand")
    save(out, 2, overwrite=True, tables=("t",))
    assert not (out / "tables" / "matching.csv").exists() and not (out / "stray.txt").exists()
    assert set(read_results(out).tables) == {"t"} and loaded_run(out) == 2
    assert leftovers(out) == {"partial": [], "old": []}
    assert not lock_path(out).exists()


def test_an_empty_existing_folder_is_written(tmp_path):
    assert save(tmp_path, 3) == tmp_path and loaded_run(tmp_path) == 3


def test_a_file_as_out_is_refused_up_front(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("x")
    for out in (target, target / "below"):
        with pytest.raises(CgcLensError, match="file"):
            check_out_dir(out)
        with pytest.raises(CgcLensError, match="file"):
            save(out, 1)
    assert target.read_text() == "x"


def test_check_out_dir_makes_the_parent_and_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    assert check_out_dir(out) == out
    assert out.parent.is_dir() and not out.exists()
    assert list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- load checks


def test_a_mixed_folder_is_refused(tmp_path):
    a, b = save(tmp_path / "a", 1), save(tmp_path / "b", 2)
    shutil.copy(b / "arrays.safetensors", a / "arrays.safetensors")  # seed 2's r in seed 1
    with pytest.raises(CgcLensError, match=r"a is not a complete results folder.*"
                                           r"arrays\.safetensors.*--overwrite"):
        read_results(a)


@pytest.mark.parametrize("spoil", ["missing", "extra", "changed", "manifest"])
def test_an_incomplete_folder_is_refused_naming_what_is_wrong(tmp_path, spoil):
    out = save(tmp_path / "run", 1)
    if spoil == "missing":
        (out / "tables" / "t.csv").unlink()
        match = r"missing tables/t\.csv"
    elif spoil == "extra":
        pd.DataFrame({"a": [0]}).to_csv(out / "tables" / "matching.csv")
        match = r"not in its manifest: tables/matching\.csv"
    elif spoil == "changed":
        (out / "results.json").write_text(json.dumps({"study": "demo", "value": 5}))
        match = r"SHA-256 differs .*results\.json"
    else:
        (out / MANIFEST_FILE).write_text("{not json")
        match = "MANIFEST.json cannot be read"
    with pytest.raises(CgcLensError, match=match) as err:
        read_results(out)
    assert str(out) in str(err.value)


def test_a_folder_without_manifest_loads_with_a_warning(tmp_path):
    """Folders written before manifests: read as they are, with a LegacyFolderWarning."""
    out = save(tmp_path / "run", 4)
    (out / MANIFEST_FILE).unlink()
    with pytest.warns(LegacyFolderWarning, match="no MANIFEST.json.*save"):
        assert loaded_run(out) == 4


def test_dot_files_are_not_part_of_the_folder(tmp_path):
    out = save(tmp_path / "run", 1)
    (out / ".DS_Store").write_text("finder")
    (out / ".ipynb_checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loaded_run(out) == 1


def test_missing_folder_names_an_interrupted_save(tmp_path):
    out = tmp_path / "run"
    (tmp_path / ".run.partial-1-ab").mkdir()
    with pytest.raises(CgcLensError, match=r"No results.json .*interrupted.*\.run\.partial-1-ab"):
        read_results(out)
    save(out, 1)  # the next save clears it
    assert leftovers(out) == {"partial": [], "old": []}


def test_a_killed_swap_is_finished_by_the_next_save(tmp_path):
    """Killed between moving the old folder aside and renaming the new one in: the next save
    puts the earlier folder back before it decides (so without overwrite it is refused)."""
    out = save(tmp_path / "run", 1)
    out.rename(tmp_path / ".run.old-99-00")
    with pytest.raises(CgcLensError, match="not empty"):
        save(out, 2)
    assert loaded_run(out) == 1
    save(out, 2, overwrite=True)
    assert loaded_run(out) == 2 and leftovers(out) == {"partial": [], "old": []}


# --------------------------------------------------------------------------- injected faults


class Faults:
    """Wraps the file operations of a save; the ``at``-th call raises ``exc`` before the
    operation, after it, or after writing half of the file (``partial``)."""

    def __init__(self, at: int | None = None, mode: str = "before",
                 exc: type[BaseException] = OSError) -> None:
        self.at, self.mode, self.exc, self.calls = at, mode, exc, 0

    def wrap(self, fn, path_arg: int | None):
        def wrapper(*args, **kwargs):
            self.calls += 1
            k = self.calls
            if k == self.at and self.mode == "before":
                raise self.exc("injected fault")
            out = fn(*args, **kwargs)
            if k == self.at:
                path = args[path_arg] if path_arg is not None and len(args) > path_arg else None
                if self.mode == "partial" and path is not None and Path(path).is_file():
                    data = Path(path).read_bytes()
                    with Path(path).open("wb") as fh:
                        fh.write(data[: len(data) // 2])
                raise self.exc("injected fault")
            return out

        return wrapper

    def install(self, monkeypatch) -> None:
        for owner, name, path_arg in (
            (Path, "write_text", 0), (Path, "mkdir", None), (pd.DataFrame, "to_csv", 1),
            (go.Figure, "write_html", 1), (results_module, "save_file", 1),
            (os, "rename", None), (shutil, "rmtree", None),
        ):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name), path_arg))


def _count_calls(tmp_path, monkeypatch, scenario: str, figures: bool) -> int:
    out = tmp_path / f"count-{scenario}"
    if scenario == "overwrite":  # two more operations: the earlier folder moved aside, deleted
        save(out, 1, figures=figures)
    counter = Faults()
    with monkeypatch.context() as m:
        counter.install(m)
        save(out, 0, figures=figures, overwrite=True)
    return counter.calls


def _fault_cases(tmp_path, monkeypatch, figures: bool) -> list[tuple[str, int, str, type]]:
    if figures:  # plotly.js makes these slow: one kind of fault per operation
        n_calls = _count_calls(tmp_path, monkeypatch, "overwrite", figures)
        return [("overwrite", k, "partial", OSError) for k in range(1, n_calls + 1)]
    return [(scenario, k, mode, exc) for scenario in ("fresh", "overwrite")
            for k in range(1, _count_calls(tmp_path, monkeypatch, scenario, figures) + 1)
            for mode in ("before", "after", "partial") for exc in (OSError, KeyboardInterrupt)]


@pytest.mark.parametrize("figures", [False, True], ids=["no_figures", "figures"])
def test_a_fault_at_every_file_operation_never_leaves_a_mix(tmp_path, monkeypatch, figures):
    cases = _fault_cases(tmp_path, monkeypatch, figures)
    n_calls = len({(scenario, k) for scenario, k, _, _ in cases})
    assert n_calls >= 10
    outcomes = {"earlier": 0, "new": 0, "refused": 0}
    for case, (scenario, k, mode, exc) in enumerate(cases):
        out = tmp_path / f"case{case}"
        if scenario == "overwrite":
            save(out, 1, figures=figures)
        faults = Faults(at=k, mode=mode, exc=exc)
        with monkeypatch.context() as m:
            faults.install(m)
            with pytest.raises((exc, CgcLensError)):
                save(out, 2, overwrite=True, figures=figures)
        assert not lock_path(out).exists(), (scenario, k, mode)
        try:
            got = loaded_run(out)
        except CgcLensError:
            outcomes["refused"] += 1
            assert not out.exists(), (scenario, k, mode)  # absent, never a half folder
        else:
            assert got in ((1, 2) if scenario == "overwrite" else (2,)), (scenario, k, mode)
            outcomes["earlier" if got == 1 else "new"] += 1
        save(out, 3, overwrite=True)  # the next save always succeeds and cleans up
        assert loaded_run(out) == 3 and leftovers(out) == {"partial": [], "old": []}
    # every case ended in one of the three outcomes; faults before the swap keep the earlier
    assert sum(outcomes.values()) == len(cases) and outcomes["earlier"] > 0
    print(f"{len(cases)} injected faults at {n_calls} file operations: {outcomes}")


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
    assert loaded_run(save(tmp_path / "run", 1)) == 1 and not lock.exists()


@pytest.mark.parametrize("owner", ["live_pid", "other_host"])
def test_a_lock_of_a_live_pid_or_another_host_is_refused(tmp_path, owner):
    lock = tmp_path / ".run.lock"
    pid, host = (os.getppid(), socket.gethostname()) if owner == "live_pid" else (1, "elsewhere")
    lock.write_text(json.dumps({"pid": pid, "host": host, "since": "x"}))
    for call in (lambda: check_out_dir(tmp_path / "run"), lambda: save(tmp_path / "run", 1)):
        with pytest.raises(CgcLensError, match=rf"being written by another run \(pid {pid} "
                                               rf"on {host}.*delete .*\.run\.lock"):
            call()
    assert lock.exists() and not (tmp_path / "run").exists()
