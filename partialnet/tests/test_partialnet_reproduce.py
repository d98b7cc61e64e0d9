"""End-to-end: ``partialnet reproduce --scale smoke --tiny`` writes a valid claims file, a report and plots."""

import importlib.util
import json

import pytest
from effrepro.report import validate_claims
from partialnet.cli import main

EXPECTED = {"top1_partialnet_t0_mini", "top1_fasternet_t0_mini", "top1_delta_t0_mini", "params_ratio_t2",
            "flops_ratio_t2", "cpu_latency_ratio_t0", "cpu_latency_ratio_t1", "cpu_latency_ratio_t2",
            "fused_max_abs_diff"}


@pytest.mark.slow
def test_reproduce_smoke_tiny(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--scale", "smoke", "--tiny", "--out", str(tmp_path)])
    assert exc.value.code == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    validate_claims(claims)
    by_id = {c["id"]: c for c in claims}
    assert {k for k in by_id if not k.startswith("det_")} == EXPECTED
    if importlib.util.find_spec("mmdet") is not None:  # the det stage is part of the default run
        assert {"det_partialnet_t0_bbox_ap_delta", "det_partialnet_t0_mask_ap", "det_fasternet_t0_bbox_ap",
                "det_partialnet_t0_backbone_params_ratio", "det_partialnet_t0_backbone_latency_ratio"} <= set(by_id)
        assert "Mask R-CNN" in (tmp_path / "report.md").read_text()
    assert by_id["fused_max_abs_diff"]["holds"] and by_id["params_ratio_t2"]["measured"] == pytest.approx(0.8189, 1e-3)
    assert len(by_id["top1_delta_t0_mini"]["details"]["per_seed"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "## Environment" in report and "PATNet" in report
    assert (tmp_path / "mnist100_top1.png").is_file() and (tmp_path / "speed_size.png").is_file()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 10
