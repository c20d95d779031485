"""Saves killed outright (SIGKILL at random times) and two writers on one folder: afterwards the
folder loads as one complete save, or loading raises CgcLensError; never a mix."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cgc_lens.errors import CgcLensError
from cgc_lens.io.folder_lock import lock_path
from cgc_lens.io.results import read_results, write_results
from cgc_lens.io.staging import leftovers

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)"),
    # a folder of ours never loads as one without a manifest, not even mid-swap
    pytest.mark.filterwarnings("error::cgc_lens.io.manifest.LegacyFolderWarning"),
]

KILLS = 20
BAD_INPUT_EXIT = 3


def save(out: Path, i: int, *, overwrite: bool = True, pause: float = 0.0) -> Path:
    """A save whose every file carries ``i``; ``pause`` seconds inside it, before sealing."""
    def extra(folder: Path) -> None:
        (folder / "note.txt").write_text(str(i))
        time.sleep(pause)

    return write_results(out, study="demo", config={"seed": i}, payload={"value": i},
                         tables={"t": pd.DataFrame({"a": [i] * 50})},
                         arrays={"r": np.full(1000, float(i))}, overwrite=overwrite,
                         extra=extra)


def consistent_run(out: Path, *, note: bool = True) -> int | None:
    """The save ``out`` holds, checked whole; None when loading refuses it. ``note``: read
    ``note.txt`` too (not while another process may replace the folder in between)."""
    try:
        back = read_results(out)
    except CgcLensError:
        return None
    i = back.config["seed"]
    assert back.payload["value"] == i and (back.tables["t"]["a"] == i).all()
    np.testing.assert_array_equal(back.arrays["r"], np.full(1000, float(i)))
    assert not note or (out / "note.txt").read_text() == str(i)
    return i


def fork(work) -> int:
    """Run ``work()`` in a forked child; exit 0, BAD_INPUT_EXIT on CgcLensError, 1 otherwise."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            work()
            code = 0
        except CgcLensError:
            code = BAD_INPUT_EXIT
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_saves_killed_at_random_times_never_leave_a_mix(tmp_path):
    out, rng = tmp_path / "run", random.Random(13)
    seen: dict[str, int] = {"complete": 0, "refused": 0, "killed_mid_save": 0}
    for attempt in range(KILLS):
        start = 100 * attempt

        def keep_saving(start: int = start) -> None:
            for i in range(start, start + 10_000):
                save(out, i)

        pid = fork(keep_saving)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        assert exit_code(pid) == -signal.SIGKILL
        seen["killed_mid_save"] += lock_path(out).exists()  # the dead writer's stale lock
        got = consistent_run(out)
        seen["refused" if got is None else "complete"] += 1
    # the next save takes over the dead writer's lock and clears its staging folders
    save(out, 999_999)
    assert consistent_run(out) == 999_999
    assert leftovers(out) == {"partial": [], "old": []} and not lock_path(out).exists()
    assert seen["complete"] > 0 and seen["killed_mid_save"] > 0
    print(f"{KILLS} saves killed with SIGKILL: {seen}")


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_threads_writing_one_folder(tmp_path, overwrite):
    out, barrier = tmp_path / "run", threading.Barrier(2)
    errors: dict[int, BaseException] = {}

    def writer(i: int) -> None:
        barrier.wait()
        try:
            save(out, i, overwrite=overwrite, pause=0.3)
        except BaseException as exc:  # collected for the assertions
            errors[i] = exc

    threads = [threading.Thread(target=writer, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1, errors
    (loser, error), = errors.items()
    assert isinstance(error, CgcLensError)
    assert "being written by another run" in str(error) or "not empty" in str(error)
    assert consistent_run(out) == 3 - loser  # the winner's save, whole
    assert not lock_path(out).exists()


def test_two_processes_writing_one_folder(tmp_path):
    out = tmp_path / "run"
    for round_ in range(3):
        pids = [fork(lambda i=i: save(out, i, pause=0.3)) for i in (10 * round_, 10 * round_ + 1)]
        codes = sorted(exit_code(pid) for pid in pids)
        assert codes == [0, BAD_INPUT_EXIT], codes  # one wins, the other is told
        assert consistent_run(out) in (10 * round_, 10 * round_ + 1)
    assert not lock_path(out).exists() and leftovers(out) == {"partial": [], "old": []}


def test_a_reader_during_repeated_overwrites_sees_whole_saves(tmp_path):
    out = tmp_path / "run"
    save(out, 0)
    pid = fork(lambda: [save(out, i) for i in range(1, 10_000)])
    try:
        deadline, reads = time.monotonic() + 1.5, 0
        while time.monotonic() < deadline:
            consistent_run(out, note=False)  # asserts a whole save whenever it loads
            reads += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        exit_code(pid)
    assert reads > 0
