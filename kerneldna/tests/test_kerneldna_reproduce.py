"""End to end: ``kerneldna reproduce --scale smoke --tiny`` writes a valid claims file and a report."""

from __future__ import annotations

import importlib.util
import json

import pytest
from effrepro.report import validate_claims


@pytest.mark.slow
def test_tiny_smoke_reproduce_writes_valid_claims(tmp_path):
    from kerneldna.reproduce import reproduce

    out = reproduce("smoke", str(tmp_path), tiny=True)
    claims = json.loads((out / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    assert {"zoo_exact_parity", "mini_params_ratio", "clutter_top1_kerneldna_vs_baseline",
            "clutter_top1_dynamic_gate_gain", "cka_within_minus_across_stage"} <= ids
    by_id = {c["id"]: c for c in claims}
    if importlib.util.find_spec("mmdet") is not None:  # the det stage is part of the default run
        assert {"det_kerneldna_resnet18_bbox_ap_delta", "det_baseline_resnet18_mask_ap",
                "det_kerneldna_resnet18_backbone_throughput_ratio"} <= ids
    assert by_id["zoo_exact_parity"]["holds"] and by_id["mini_params_ratio"]["holds"]
    report = (out / "report.md").read_text()
    assert "## The paper's table" in report and "## Environment" in report
    for name in ("accuracy.png", "cka_baseline.png", "metrics.jsonl", "bench_mini.json", "bench_resnet18.json"):
        assert (out / name).is_file(), name
