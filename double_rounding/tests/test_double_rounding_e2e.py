import json

import pytest
from double_rounding.cli import run
from effrepro.report import validate_claims


@pytest.mark.slow
def test_reproduce_tiny_writes_valid_claims(tmp_path):
    out = tmp_path / "smoke"
    assert run(["reproduce", "--scale", "smoke", "--tiny", "--out", str(out)]) == 0
    claims = json.loads((out / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    for expected in ("mnist_ratio_vs_separate_w2", "mnist_alrs_gain_w2", "mnist_ours_minus_posthoc_w2",
                     "mnist_traintime_joint_over_separate", "mnist_mixed_auc_hasb_over_uniform",
                     "mnist100_alrs_gain_w2", "resnet18_storage_int8_over_fp32"):
        assert expected in ids
    report = (out / "report.md").read_text()
    assert "Environment" in report and "accuracy_per_bit.png" in report
    assert (out / "accuracy_per_bit.png").is_file() and (out / "metrics.jsonl").is_file()
    assert list((out / "runs").rglob("model.int8.pt"))
