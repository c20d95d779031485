"""``cgc-lens survival --conditions int4 int4-g32 gptq4-g32 awq4-g32 nf4 fp8 2:4`` on cgc-tiny,
offline, with small token budgets: every row is written with its format and effective bits
per weight, and a group size that does not divide a weight is refused before anything runs."""

from __future__ import annotations

import json

import pytest

from cgc_lens.cli import main

SPECS = ["int4", "int4-g32", "gptq4-g32", "awq4-g32", "nf4", "fp8", "2:4"]
SMALL = ["--tokens", "2048", "--eval-tokens", "1024", "--calibration-tokens", "1024",
         "--match-pruning", "none", "--no-progress"]


@pytest.mark.slow
def test_formats_on_cgc_tiny_write_every_row_with_bits_per_weight(tmp_path):
    out = tmp_path / "formats"
    assert main(["survival", "--conditions", *SPECS, *SMALL, "--out", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["conditions"]}
    assert list(rows) == ["reference", *SPECS]
    expected = {  # cgc-tiny: W_Q/K/V/O 128 x 128, W_in 512 x 128, W_out 128 x 512 per layer
        "int4": 4 + 16 * (4 * 128 + 512 + 128) / (4 * 128 * 128 + 2 * 128 * 512),
        "int4-g32": 4.5, "gptq4-g32": 4.5, "awq4-g32": 4.5, "nf4": 4.5, "2:4": 9.0,
        "fp8": 8 + 32 * (4 * 128 + 512 + 128) / (4 * 128 * 128 + 2 * 128 * 512),
    }
    for spec in SPECS:
        assert rows[spec]["spec"] == spec
        assert rows[spec]["bits_per_weight"] == pytest.approx(expected[spec], rel=1e-12)
        assert rows[spec]["format"] == {"int": "rtn", "gpt": "gptq", "awq": "awq", "nf4": "nf4",
                                        "fp8": "fp8", "2:4": "semi_structured"}[spec[:3]]
        assert 0 < rows[spec]["survived_pct"] <= 100
    assert rows["gptq4-g32"]["group_size"] == 32 and rows["2:4"]["sparsity"] == 0.5
    assert (out / "report.html").read_text().count("bits per weight") >= 1


def test_group_size_not_dividing_cgc_tiny_is_refused_up_front(tmp_path, capsys):
    status = main(["survival", "--conditions", "int4-g96", *SMALL, "--out", str(tmp_path / "x")])
    assert status == 2
    err = capsys.readouterr().err
    assert "group size 96" in err and "blocks.0.attn.W_Q" in err
    assert "1, 2, 4, 8, 16, 32, 64, 128" in err
    assert not (tmp_path / "x" / "results.json").exists()
