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
                "gsnr_total_kd_deepkd_over_kd", "gsnr_total_kd_deepkd_over_kd_dot",
                "gsnr_total_deepkd_over_dkd_pilot", "gsnr_total_deepkd_over_dkd_end", "flat_dkd_deepkd_vs_dkd",
                "gsnr_ncg_over_tcg_pilot", "gsnr_total_deepkd_over_dkd_end_pilot",
                "flat_kd_deepkd_vs_kd", "flat_kd_deepkd_vs_kd_dot"}


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
    # the confirmatory GSNR claim: the new seeds (3, 4) alone, window-averaged; the pilot claim: seeds 0-2
    confirm, pilot = claims["gsnr_total_deepkd_over_dkd"], claims["gsnr_total_deepkd_over_dkd_pilot"]
    assert confirm["n"] == 2 and confirm["details"]["seeds"] == [3, 4] and confirm["details"]["epochs"] == [2, 3]
    assert confirm["expect"] == "> 1, fails below 1.1" and pilot["expect"] == "> 1" and pilot["n"] == 3
    deep, base = confirm["details"]["dkd_deepkd"], confirm["details"]["dkd"]
    assert confirm["measured"] == pytest.approx(sum(deep) / sum(base))
    assert deep != base and pilot["measured"] != confirm["measured"]
    # the two pilot GSNR claims decided on the confirmatory seeds' runs; their first looks on seeds 0-2
    for cid in ("gsnr_ncg_over_tcg", "gsnr_total_deepkd_over_dkd_end"):
        assert claims[cid]["n"] == 2 and claims[cid]["details"]["seeds"] == [3, 4]
        assert claims[f"{cid}_pilot"]["n"] == 3 and claims[cid]["expect"] == "> 1, fails below 1.1"
    assert claims["gsnr_total_deepkd_over_dkd_end"]["details"]["epoch"] == 3  # the last epoch of the tiny plan
    for base in ("kd", "kd_dot"):  # the KD-base study: the same seeds and window, its own pair of runs
        kd = claims[f"gsnr_total_kd_deepkd_over_{base}"]
        assert kd["n"] == 2 and kd["details"]["seeds"] == [3, 4] and kd["details"]["epochs"] == [2, 3]
        assert kd["measured"] == pytest.approx(sum(kd["details"]["kd_deepkd"]) / sum(kd["details"][base]))
    assert claims["gsnr_total_kd_deepkd_over_kd"]["details"]["kd_deepkd"] == claims[
        "gsnr_total_kd_deepkd_over_kd_dot"]["details"]["kd_deepkd"]
    assert all(c["n"] == 3 for c in document["claims"] if c["id"].startswith(("gain_", "flat_")))
    assert {f["id"] for f in document["facts"]} == {"teacher_top1", "teacher_params", "step_time_dkd"}
    report = (tmp_path / "report.md").read_text()
    assert "Headline claims" in report and "DKD + DeepKD" in report
    assert (tmp_path / "accuracy_curves.png").is_file() and (tmp_path / "gsnr.png").is_file()
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"teacher", "students", "step_time"} <= set(env["stage_seconds"])
    capsys.readouterr()
    assert run(["reproduce", "--tiny", "--out", str(tmp_path), "--threads", "1"]) == 0
    # teacher, every student run (7 arms x 3 pilot seeds, 5 arms x 2 confirmatory seeds), step time
    assert capsys.readouterr().out.count("reusing") == 1 + 7 * 3 + 5 * 2 + 1
    assert read_claims(tmp_path / "claims.json")["claims"][0]["measured"] == document["claims"][0]["measured"]


def test_claim_tables_are_declared_once():
    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids)) and SMOKE_CLAIMS <= set(ids)


def test_full_scale_only_options_are_rejected_on_the_miniature(tmp_path):
    with pytest.raises(UsageError, match="only for --scale full"):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--data", str(tmp_path)])
    with pytest.raises(UsageError, match="--seeds must be"):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--seeds", "0"])


def test_confirmatory_seeds_must_be_new(tmp_path, monkeypatch):
    import deepkd.miniature as mini

    monkeypatch.setattr(mini, "prepare_data", lambda plan, runs: {"data": "", "teacher": ""})
    with pytest.raises(UsageError, match=r"^confirm_seeds repeats seeds \[2\] of seeds: "):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--set", "confirm_seeds=[2,3]"])


def test_gsnr_window_is_centred_on_mid_training():
    from deepkd.miniature import gsnr_epochs, gsnr_window
    from deepkd.reproduce import SMOKE, TINY

    assert gsnr_epochs(SMOKE) == [3, 12, 24] and gsnr_window(SMOKE) == [10, 11, 12, 13, 14]
    assert gsnr_window(TINY) == [2, 3]  # clipped at the last epoch
