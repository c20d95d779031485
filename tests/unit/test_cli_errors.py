"""The CLI's top: every exception becomes one line and an exit status, and ``--out`` is checked
before a study runs (non-empty without ``--overwrite``, a file, a folder being written)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from cgc_lens import cli
from cgc_lens.cli import main
from cgc_lens.errors import CgcLensError
from cgc_lens.io import folder_lock, read_results, write_results


@dataclasses.dataclass
class FakeResult:
    value: int

    def save(self, out, *, overwrite=False):
        return write_results(out, study="fake", config={"seed": self.value},
                             payload={"value": self.value}, overwrite=overwrite)


@pytest.fixture
def runs(monkeypatch, tmp_path):
    """The survival and cgc commands run a fake study; the list records each run."""
    calls: list[str] = []
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for name in ("survival", "cgc"):
        def run(config, name=name):
            calls.append(name)
            return FakeResult(len(calls))

        monkeypatch.setitem(cli.STUDIES, name, dataclasses.replace(
            cli.STUDIES[name], run=run, report=lambda result, out: None))
    return calls


def _failing(monkeypatch, exc: BaseException) -> None:
    def run(config):
        raise exc

    monkeypatch.setitem(cli.STUDIES, "survival", dataclasses.replace(cli.STUDIES["survival"],
                                                                     run=run))


def test_an_unexpected_exception_prints_one_line_and_a_log(runs, monkeypatch, tmp_path, capsys):
    _failing(monkeypatch, RuntimeError("boom\nsecond line"))
    assert main(["survival", "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("cgc-lens survival: unexpected error (RuntimeError: boom second")
    log = Path(lines[0].split("traceback in ")[1].split(".log")[0] + ".log")
    assert log.parent == tmp_path / "tmp" and log.name.startswith("cgc-lens-survival-")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.lock").exists()


def test_a_cgc_lens_error_prints_its_message_on_one_line(runs, monkeypatch, tmp_path, capsys):
    _failing(monkeypatch, CgcLensError("--bits must be 2-8,\n got 9"))
    assert main(["survival", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "cgc-lens survival: error: --bits must be 2-8, got 9\n"


def test_ctrl_c_prints_interrupted_and_exits_130(runs, monkeypatch, tmp_path, capsys):
    _failing(monkeypatch, KeyboardInterrupt())
    assert main(["survival", "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err == "cgc-lens survival: interrupted\n"
    assert not (tmp_path / ".o.lock").exists()


def test_a_non_empty_out_is_refused_before_the_study_runs(runs, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.csv").write_text("from an earlier run")
    assert main(["survival", "--out", str(out)]) == 2
    assert runs == [] and "not empty" in capsys.readouterr().err
    assert main(["survival", "--out", str(out), "--overwrite"]) == 0
    assert runs == ["survival"] and not (out / "stale.csv").exists()
    assert read_results(out).payload == {"value": 1}


def test_a_file_as_out_is_refused_before_the_study_runs(runs, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("x")
    for out in (target, target / "below"):
        assert main(["cgc", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cgc-lens cgc: error: --out ") and "file" in err
    assert runs == []


def test_an_out_another_run_is_writing_is_refused(runs, tmp_path, capsys):
    import threading

    out, held, release = tmp_path / "o", threading.Event(), threading.Event()

    def writer() -> None:
        with folder_lock(out):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(10)
        assert main(["survival", "--out", str(out)]) == 2
        assert "being written by another run" in capsys.readouterr().err and runs == []
    finally:
        release.set()
        thread.join()
    assert main(["survival", "--out", str(out)]) == 0 and runs == ["survival"]


def test_demo_checks_both_folders_first_and_takes_overwrite(runs, tmp_path, capsys):
    (tmp_path / "d" / "cgc").mkdir(parents=True)
    (tmp_path / "d" / "cgc" / "old.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert runs == [] and "cgc is not empty" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--overwrite"]) == 0
    assert runs == ["survival", "cgc"] and not (tmp_path / "d" / "cgc" / "old.json").exists()
    assert read_results(tmp_path / "d" / "survival").payload == {"value": 1}


@pytest.mark.parametrize("command", ["survival", "cgc", "adaptive", "demo"])
def test_every_study_command_takes_overwrite(command):
    actions = cli.build_parser()[1][command]._actions
    assert any("--overwrite" in a.option_strings for a in actions)
