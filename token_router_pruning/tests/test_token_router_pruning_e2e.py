"""End to end: ``reproduce --scale smoke --tiny`` writes a valid claims.json and report; CLI errors are one line."""

from __future__ import annotations

import json

import pytest
from effrepro.report import validate_claims
from token_router_pruning.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr()


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    code, out = _run(["bench", "--sparsity", "1.2"], capsys)
    assert code == 2 and out.err.strip().startswith("error: --sparsity 1.2 is outside [0, 1)")
    code, out = _run(["reproduce", "--scale", "full"], capsys)
    assert code == 2 and "--target" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = _run(["reproduce", "--tiny", "--out", str(tmp_path), "--set", "ga.crossover=sbx"], capsys)
    assert code == 2 and "crossover" in out.err
    code, out = _run(["reproduce", "--tiny", "--out", str(tmp_path), "--set", "budgets=[0.99]"], capsys)
    assert code == 2 and "cannot be met" in out.err
    bad_plan = tmp_path / "plan.pt"
    bad_plan.write_bytes(b"not a checkpoint")
    code, out = _run(["eval", "--plan", str(bad_plan), "--out", str(tmp_path)], capsys)
    assert code == 2 and "corrupt" in out.err


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path, capsys):
    code, _ = _run(["reproduce", "--scale", "smoke", "--tiny", "--out", str(tmp_path)], capsys)
    assert code == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    assert {"redundancy_overall", "ftp_vs_shortgpt_25", "prefill_speedup_25", "determinism_router"} <= ids
    report = (tmp_path / "report.md").read_text()
    assert "The paper's table" in report and "Environment" in report
    assert (tmp_path / "redundancy.png").is_file() and (tmp_path / "runs" / "ftp_25.pt").is_file()
