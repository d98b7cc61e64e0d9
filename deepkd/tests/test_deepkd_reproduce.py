"""End-to-end: ``deepkd reproduce --tiny`` writes a valid claims file (claims and facts), report and plots, and
resumes from its per-run caches."""

import json

import pytest
from deepkd.cli import run
from deepkd.reproduce import CLAIMS, FACTS
from effrepro.errors import UsageError
from effrepro.report import read_claims

SMOKE_CLAIMS = {"gain_dkd_deepkd_over_dkd", "gain_kd_deepkd_over_kd", "gain_kd_deepkd_over_kd_dot",
                "gain_dtm_over_dkd_deepkd", "gain_dkd_over_kd", "gain_kd_over_ce", "step_time_deepkd_over_dkd",
                "gsnr_ncg_over_tcg", "gsnr_tog_over_tcg", "gsnr_total_deepkd_over_dkd",
                "gsnr_total_deepkd_over_dkd_end", "flat_dkd_deepkd_vs_dkd", "flat_kd_deepkd_vs_kd",
                "flat_kd_deepkd_vs_kd_dot"}


@pytest.mark.slow
def test_tiny_reproduction_writes_claims_facts_and_resumes(tmp_path, capsys):
    assert run(["reproduce", "--tiny", "--out", str(tmp_path), "--threads", "1"]) == 0
    document = read_claims(tmp_path / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    assert set(claims) == SMOKE_CLAIMS
    assert "gain_deepkd_over_dot" not in claims  # DOT diverged on DKD: no longer compared there
    assert {c["id"] for c in document["claims"] if c["headline"]} == {
        "gain_dkd_deepkd_over_dkd", "gain_kd_deepkd_over_kd", "step_time_deepkd_over_dkd"}
    gain = claims["gain_dkd_deepkd_over_dkd"]
    assert gain["n"] == 3 and "paired" in gain["details"]["interval"] and len(gain["details"]["values"]) == 3
    assert claims["step_time_deepkd_over_dkd"]["n"] == 5 and claims["step_time_deepkd_over_dkd"]["ci"][0] > 0
    flat = claims["flat_dkd_deepkd_vs_dkd"]
    assert flat["n"] == 3 and flat["details"]["radius"] == "0.25" and set(flat["details"]["diff_by_radius"]) == {
        "rise_0.1", "rise_0.25", "rise_0.5"}
    assert {f["id"] for f in document["facts"]} == {"teacher_top1", "teacher_params", "step_time_dkd"}
    report = (tmp_path / "report.md").read_text()
    assert "Headline claims" in report and "DKD + DeepKD" in report
    assert (tmp_path / "accuracy_curves.png").is_file() and (tmp_path / "gsnr.png").is_file()
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"teacher", "students", "step_time"} <= set(env["stage_seconds"])
    capsys.readouterr()
    assert run(["reproduce", "--tiny", "--out", str(tmp_path), "--threads", "1"]) == 0
    assert capsys.readouterr().out.count("reusing") == 1 + 7 * 3 + 1  # teacher, every student run, step time
    assert read_claims(tmp_path / "claims.json")["claims"][0]["measured"] == document["claims"][0]["measured"]


def test_claim_tables_are_declared_once():
    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids)) and SMOKE_CLAIMS <= set(ids)


def test_full_scale_only_options_are_rejected_on_the_miniature(tmp_path):
    with pytest.raises(UsageError, match="only for --scale full"):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--data", str(tmp_path)])
    with pytest.raises(UsageError, match="--seeds must be"):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--seeds", "0"])
