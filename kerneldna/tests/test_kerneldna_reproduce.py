"""End to end: ``kerneldna reproduce --tiny`` writes a valid claims file (claims and facts apart), a report, plots
and env.json; the plan's bad inputs are one clear error."""

from __future__ import annotations

import importlib.util
import json

import pytest
from effrepro.errors import UsageError
from effrepro.report import read_claims
from kerneldna.reproduce import CLAIMS, FACTS, PLANS, REPRODUCTION

HEADLINES = ["top1_gain", "top1_vs_samedepth", "top1_vs_condconv", "resnet18_throughput_vs_samedepth"]
PILOT = ["top1_gain", "top1_vs_condconv", "top1_vs_samedepth_pilot", "top1_vs_parammatched_pilot",
         "dynamic_gate_gain_pilot"]
CONFIRM = ["top1_vs_samedepth", "top1_vs_parammatched_confirm1", "dynamic_gate_gain"]
CONFIRM2 = ["top1_vs_parammatched"]  # the second replication, on seeds disjoint from both earlier sets


@pytest.mark.slow
def test_tiny_smoke_reproduce_end_to_end(tmp_path):
    from kerneldna.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--tiny", "--out", str(tmp_path), "--threads", "1"])
    assert exc.value.code == 0
    document = read_claims(tmp_path / "claims.json")  # validates the schema
    claims = {c["id"]: c for c in document["claims"]}
    facts = {f["id"]: f for f in document["facts"]}
    assert list(claims) == [c.id for c in CLAIMS]  # every claim is measured at smoke scale, in table order
    assert [c["id"] for c in document["claims"] if c["headline"]] == HEADLINES
    tiny = PLANS["tiny"]
    seed_sets = {**dict.fromkeys(PILOT, tiny.seeds), **dict.fromkeys(CONFIRM, tiny.confirm_seeds),
                 **dict.fromkeys(CONFIRM2, tiny.confirm2_seeds)}
    for claim_id, claim_seeds in seed_sets.items():  # every accuracy claim pairs KernelDNA with another arm
        gain = claims[claim_id]
        assert gain["n"] == 2 and "paired" in gain["details"]["interval"] and gain["details"]["task"] == "clutter16"
        assert gain["details"]["a_mean"] != gain["details"]["b_mean"]
        assert gain["details"]["seeds"] == list(claim_seeds)  # a replication is decided on its new seeds alone
        confirm = claim_id not in PILOT  # ... on the larger test set
        assert gain["details"]["test_images"] == (tiny.confirm_test_size if confirm else tiny.clutter16[1])
        if confirm:  # the pilot's version stays visible under its own id
            pilot = claim_id.removesuffix("_confirm1")
            assert claims[f"{pilot}_pilot"]["details"]["seeds"] == list(tiny.seeds)
    assert claims["top1_vs_parammatched"]["measured"] != claims["top1_vs_parammatched_confirm1"]["measured"]
    for arm, seed in (("samedepth", 2), ("parammatched", 4)):
        confirm_run = json.loads((tmp_path / f"runs/clutter16_{arm}_seed{seed}.json").read_text())
        assert confirm_run["key"]["test_size"] == tiny.confirm_test_size and "curve" not in confirm_run["value"]
    for arm, seed in (("condconv", 2), ("samedepth", 4), ("static_only", 4)):  # only the replications' arms
        assert not (tmp_path / f"runs/clutter16_{arm}_seed{seed}.json").exists()
    assert claims["resnet18_throughput_vs_samedepth"]["n"] == 2
    assert claims["cka_adjacent_within_minus_across"]["n"] == 2
    assert facts["zoo_official_counts_match"]["value"] == 16
    assert facts["resnet18_params_ratio"]["value"] == pytest.approx(9_240_798 / 11_689_512)
    assert facts["mini_params_ratio"]["value"] < 1 and facts["mini_macs_ratio_vs_samedepth"]["value"] < 1.01
    assert 0.9 < facts["mini_params_ratio_vs_parammatched"]["value"] < 1.1
    assert set(facts["curve_last_epoch_change"]["details"]["per_arm"]) == set(PLANS["tiny"].arms)
    if importlib.util.find_spec("mmdet") is not None:  # the tiny plan runs the det stage too
        assert {"det_kerneldna_resnet18_bbox_ap", "det_baseline_resnet18_mask_ap",
                "det_kerneldna_resnet18_bbox_ap_delta", "det_kerneldna_resnet18_backbone_latency_ratio"} <= set(facts)
        assert facts["det_kerneldna_resnet18_backbone_params_ratio"]["value"] == pytest.approx(
            (9_240_798 - 513_000) / (11_689_512 - 513_000))  # the official counts without the fc (512*1000+1000)
        assert (tmp_path / "runs" / "det_kerneldna_resnet18" / "epoch_1.pth").is_file()
        assert "Mask R-CNN" in (tmp_path / "report.md").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "## The paper's table" in report and "## Environment" in report and "Throughput" in report
    for name in ("accuracy.png", "accuracy_curve.png", "cka_baseline.png", "metrics.jsonl", "env.json",
                 "runs/clutter16_kerneldna_seed1.json"):
        assert (tmp_path / name).is_file(), name
    first, second = (json.loads((tmp_path / f"runs/clutter16_condconv_seed{s}.json").read_text())["value"]
                     for s in (0, 1))
    assert len(first["curve"]) == 2 and "curve" not in second  # the first seed is evaluated after every epoch
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"counts", "train", "throughput"} <= set(env["stage_seconds"])


def test_tables_declare_every_id_once_and_no_cka_premise_claim():
    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids))
    assert "cka_within_minus_across_stage" not in ids and "zoo_exact_parity" not in ids
    assert [c.id for c in CLAIMS if c.headline] == HEADLINES


@pytest.mark.parametrize(("argv", "message"), [
    (["--scale", "full"], "pass --data"),
    (["--data", "/imagenet"], "for --scale full"),
    (["--set", "tasks=[cifar]"], "tasks"),
    (["--set", "confirm_seeds=[7,8]"], r"^confirm_seeds repeats seeds \[7\] of seeds: "),
    (["--set", "confirm2_seeds=[3,4]"], r"^confirm2_seeds repeats seeds \[3, 4\] of seeds: "),
    (["--set", "confirm2_seeds=[39,40]"], r"^confirm2_seeds repeats seeds \[39\] of confirm_seeds: "),
    (["--set", "workers=0"], r"^workers: at least 1, not 0$"),
    (["--scale", "full", "--stages", "det", "--data", "/x"], "pass --coco"),
])
def test_bad_plan_input_is_a_usage_error(argv, message, tmp_path, monkeypatch):
    monkeypatch.delenv("KERNELDNA_DATA", raising=False)
    with pytest.raises(UsageError, match=message):
        REPRODUCTION.main([*argv, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
