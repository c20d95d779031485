"""The command line answers fast and prints readably (issue 14): building the parser imports no
study and no torch, a bare list option is refused, help states each default once and keeps ids
whole, ``--quiet`` turns progress off, and printed tables fit 100 columns without a bare NaN."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cgc_lens import cli
from cgc_lens.cli import CLI_SPEC, STUDIES, build_parser, main, spec_from_configs
from cgc_lens.cli_tables import TABLE_WIDTH, print_table, report_capability
from cgc_lens.io import write_results

HEAVY = ("torch", "transformer_lens", "sae_lens", "cgc_lens.studies", "pandas")


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; which heavy modules it imported, and its result."""
    script = (f"import sys, json\n{code}\n"
              f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules],"
              f" 'result': globals().get('result')}}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_study_and_no_torch() -> None:
    got = _modules_after("import cgc_lens\nfrom cgc_lens.cli import build_parser\n"
                         "result = sorted(build_parser()[1])")
    assert got["heavy"] == []
    assert set(got["result"]) >= {"info", "ppl", "survival", "cgc", "adaptive", "demo"}


@pytest.mark.parametrize("argv", [["--help"], ["survival", "--help"], ["cgc", "--help"],
                                  ["survival", "--bits", "--out", "x"], ["survival", "--bitz"]])
def test_help_and_bad_arguments_import_nothing_heavy(argv: list[str]) -> None:
    got = _modules_after("from cgc_lens.cli import main\n"
                         f"try:\n    main({argv!r})\nexcept SystemExit as e:\n"
                         "    result = e.code")
    assert got["heavy"] == []
    assert got["result"] == (0 if "--help" in argv else 2)


def test_lazy_public_names_all_resolve() -> None:
    import cgc_lens

    for name in cgc_lens.__all__:
        assert getattr(cgc_lens, name) is not None, name
    assert cgc_lens.run_survival is sys.modules["cgc_lens.studies"].run_survival
    assert cgc_lens.saes.load_batched_sae is not None  # subpackages by attribute, as before
    assert set(cgc_lens.__all__) <= set(dir(cgc_lens))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = cgc_lens.no_such_name


def test_stored_cli_spec_matches_the_configs() -> None:
    stored = json.loads(CLI_SPEC.read_text(encoding="utf-8"))
    assert stored == spec_from_configs(), (
        "cgc_lens/cli_spec.json differs from the study configs (a field or its docstring "
        "changed). Regenerate it with:  python scripts/gen_cli_docs.py")


def test_a_bare_list_option_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["survival", "--bits", "--out", "x"])
    assert exc.value.code == 2
    assert "argument --bits: expected at least one argument" in capsys.readouterr().err
    args = build_parser()[0].parse_args(["survival", "--bits", "8", "4", "--out", "x"])
    assert args.bits == [8, 4]


@pytest.mark.parametrize("command", sorted(STUDIES))
def test_help_states_each_default_once(command: str) -> None:
    sub = build_parser()[1][command]
    for action in sub._actions:
        text = (action.help or "") % {"prog": sub.prog}
        assert len(re.findall(r"\(default\b", text)) <= 1, (action.option_strings, text)
    help_text = sub.format_help()
    assert "--quiet" in help_text


def test_help_keeps_an_sae_id_whole() -> None:
    text = build_parser()[1]["survival"].format_help()
    assert "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical" in text


def test_quiet_turns_off_every_progress_bar(monkeypatch, tmp_path) -> None:
    from cgc_lens.progress import progress_enabled

    seen = []

    def run(config):
        seen.append((config.progress, progress_enabled()))
        return _Saved()

    monkeypatch.setitem(STUDIES, "survival", dataclasses.replace(
        STUDIES["survival"], run=run, report=lambda result, out: None))
    assert main(["survival", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["survival", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(False, False), (True, True)]
    assert progress_enabled()  # the switch is put back after the run


class _Saved:
    def save(self, out, *, overwrite=False):
        return write_results(out, study="fake", config={}, payload={}, overwrite=overwrite)


def test_progress_bars_go_to_stderr_and_obey_the_switch(capsys) -> None:
    from cgc_lens.progress import progress_bar, quiet, set_progress

    assert sum(progress_bar(range(5), desc="stage A", mininterval=0)) == 10
    err = capsys.readouterr()
    assert "stage A" in err.err and err.out == ""
    with quiet():
        list(progress_bar(range(5), desc="stage B"))
    set_progress(False)
    try:
        list(progress_bar(range(5), desc="stage C"))
    finally:
        set_progress(True)
    list(progress_bar(range(5), desc="stage D", enabled=False))
    assert capsys.readouterr().err == ""


def _wide_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(4, 28)) * 1e3, columns=[f"column_{i}" for i in range(28)],
                         index=["dense", "uniform", "cgc_l", "cgc_f"])
    frame["kl_calibration"] = np.nan
    frame.loc["cgc_f", "column_3"] = np.nan
    return frame


def test_printed_tables_fit_100_columns_and_explain_missing_values() -> None:
    frame = _wide_frame()
    text = print_table(frame, notes={"kl_calibration": "why"}, echo=False)
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH
    assert "nan" not in text.lower()
    assert "kl_calibration: left out, not computed in this run (why)" in text
    assert "column_3: '-' where not computed" in text
    # every shown number is the frame's (4 significant digits)
    value = frame.loc["uniform", "column_7"]
    assert f"{value:.4g}" in text


def test_cgc_prints_table_1_on_stdout(tmp_path, capsys) -> None:
    table = pd.DataFrame({"ppl": [20.0, 21.5], "delta_ppl": [0.0, 1.5], "kl": [0.0, 0.02],
                          "kl_calibration": [math.nan, math.nan], "global_retention": [1.0, 0.5],
                          **{f"probe_{i}": [0.9, 0.8] for i in range(8)}},
                         index=pd.Index(["dense", "uniform"], name="method"))
    result = type("R", (), {"config": type("C", (), {"retention": 0.5, "model": "cgc-tiny"})(),
                            "table": lambda self: table})()
    report_capability(result, tmp_path)
    captured = capsys.readouterr()
    assert captured.out.startswith("Table 1: methods at retention 0.5 (cgc-tiny)")
    assert "uniform" in captured.out and "nan" not in captured.out.lower()
    assert "kl_calibration: left out" in captured.out
    table_lines = [line for line in captured.out.splitlines() if str(tmp_path) not in line]
    assert max(len(line) for line in table_lines) <= TABLE_WIDTH
    assert captured.err == ""


def test_every_study_reports_on_stdout() -> None:
    assert {cmd.report.__module__ for cmd in cli.STUDIES.values()} == {"cgc_lens.cli_tables"}
