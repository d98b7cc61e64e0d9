"""End-to-end: ``deepkd reproduce --scale smoke --tiny`` writes a valid claims file, report and plots."""

import json

import pytest
from deepkd.cli import run
from effrepro.report import validate_claims


@pytest.mark.slow
def test_tiny_smoke_reproduction_writes_valid_claims(tmp_path):
    assert run(["reproduce", "--scale", "smoke", "--tiny", "--out", str(tmp_path)]) == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    assert {"teacher_top1", "top1_ce", "top1_deepkd", "gain_deepkd_over_dkd", "gain_deepkd_over_dot",
            "gain_mask_noisy", "gsnr_ncg_over_tcg", "step_time_deepkd_over_dkd"} <= ids
    report = (tmp_path / "report.md").read_text()
    assert "## The paper's table" in report and "top1_deepkd" in report
    assert (tmp_path / "accuracy_curves.png").is_file() and (tmp_path / "gsnr.png").is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= len(ids) // 2
