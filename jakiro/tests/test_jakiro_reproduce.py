"""End-to-end: ``jakiro reproduce --scale smoke --tiny`` writes a valid claims.json, report and metrics."""

import json

import pytest
from effrepro.errors import UsageError
from effrepro.report import validate_claims
from jakiro.cli import dispatch
from jakiro.reproduce import config_for


def test_configs_load_and_bad_keys_are_usage_errors():
    for scale, tiny in (("smoke", False), ("smoke", True), ("full", False)):
        config = config_for(scale, tiny)
        assert config.train.methods == ["eagle2", "jakiro", "jakiro_nocepd", "jakiro_star"]
    with pytest.raises(UsageError, match="unknown"):
        config_for("smoke", False, ["train.nonsense=1"])
    with pytest.raises(UsageError, match="variant"):
        config_for("smoke", False, ["eval.greedy_variants=[medusa]"])
    with pytest.raises(UsageError, match="train.methods"):
        config_for("smoke", False, ["train.methods=[eagle2]"])


def test_full_scale_without_paths_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="--target"):
        dispatch(["reproduce", "--scale", "full", "--out", str(tmp_path)])


@pytest.mark.slow
def test_tiny_reproduce_end_to_end(tmp_path):
    assert dispatch(["reproduce", "--scale", "smoke", "--tiny", "--out", str(tmp_path)]) == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    assert {"tau_ratio_jakiro_eagle2_greedy", "draft_forwards_saved_per_cycle", "lossless_greedy",
            "cost_model_speedup_jakiro_greedy", "tau_ratio_jakiro_eagle2_t1"} <= ids
    by_id = {c["id"]: c for c in claims}
    assert by_id["lossless_greedy"]["holds"] and by_id["lossless_greedy"]["measured"] == 0
    assert by_id["draft_forwards_saved_per_cycle"]["measured"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "README figure" in report and "Measured here" in report
    stages = [json.loads(line)["stage"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == "data" and stages[-1] == "done"
    assert (tmp_path / "runs" / "jakiro" / "head.pt").is_file()
