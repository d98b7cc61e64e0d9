"""End-to-end: ``double_rounding reproduce --tiny`` (the smoke code path) and ``--scale full`` on a tiny MNIST run
write valid claims files with the declared claims and facts, and the smoke run resumes from its per-arm caches."""

import dataclasses
import json

import pytest
from double_rounding.cli import run
from double_rounding.miniature import SeedRun, arm_key
from double_rounding.reproduce import CLAIMS, FACTS, SMOKE, TINY
from double_rounding.reproduce_mixed import mixed_estimates, mixed_jobs
from effrepro.errors import UsageError
from effrepro.quant import load_int8
from effrepro.report import read_claims

SMOKE_CLAIMS = {"ratio_vs_separate_w8", "ratio_vs_separate_w4", "ratio_vs_separate_w2", "alrs_gain_w2",
                "alrs_gain_w4", "per_precision_minus_accumulate_w2", "ours_minus_floor_w2", "ours_minus_posthoc_w2",
                "mixed_minus_uniform_3bit", "mixed_minus_uniform_3bit_pilot", "searched_minus_random",
                "mixed_auc_minus_uniform",
                "unshared_minus_shared_w2", "unshared_minus_shared_w4"}
SMOKE_FACTS = {"optimizer_steps_joint", "optimizer_steps_separate", "fp32_top1", "storage_int8_over_four_fp32",
               "resnet18_storage_int8_over_fp32", "traintime_joint_over_separate", "storage_unshared_over_shared"}


@pytest.mark.slow
def test_reproduce_tiny_writes_claims_and_facts_and_resumes(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert run(["reproduce", "--tiny", "--out", str(out), "--threads", "1"]) == 0
    document = read_claims(out / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    facts = {f["id"]: f for f in document["facts"]}
    assert set(claims) == SMOKE_CLAIMS and set(facts) == SMOKE_FACTS
    assert {c for c in claims if claims[c]["headline"]} == {
        "ratio_vs_separate_w8", "ratio_vs_separate_w4", "ratio_vs_separate_w2", "alrs_gain_w2",
        "per_precision_minus_accumulate_w2", "mixed_minus_uniform_3bit"}
    # the ALRS ablation runs on every seed, the separate and accumulate arms on sep_seeds, the floor / post-hoc
    # arms on ablation_seeds: each comparison is paired over the seeds both of its arms ran
    assert claims["alrs_gain_w2"]["n"] == 3 and claims["ours_minus_floor_w2"]["n"] == 1
    assert claims["ratio_vs_separate_w2"]["n"] == claims["per_precision_minus_accumulate_w2"]["n"] == 2
    assert claims["ratio_vs_separate_w2"]["details"]["seeds"] == [0, 1]
    # the mixed stage: one {4,3,2} SuperNet per mixed seed, its sub-nets paired by seed; the headline on the
    # confirmatory seeds alone, the pilot claim and the other mixed claims on the pilot seeds
    mixed, pilot = claims["mixed_minus_uniform_3bit"], claims["mixed_minus_uniform_3bit_pilot"]
    assert mixed["n"] == 2 and mixed["details"]["seeds"] == [2, 3] and pilot["details"]["seeds"] == [0, 1]
    assert claims["searched_minus_random"]["details"]["seeds"] == claims["mixed_auc_minus_uniform"]["details"][
        "seeds"] == [0, 1]
    assert mixed["expect"] == pilot["expect"] == "> 0, fails below 0.11" and not pilot["headline"]
    # Ours* with its shared-scale partner on unshared_seeds (seed 3 runs only FP32, ours and Ours*: the ALRS
    # ablation above stays on seeds 0-2)
    unshared = claims["unshared_minus_shared_w2"]
    assert unshared["n"] == 3 and unshared["details"]["seeds"] == [0, 1, 3]
    assert unshared["expect"] == "> 0, fails below 0.83" and claims["unshared_minus_shared_w4"]["n"] == 3
    assert facts["storage_unshared_over_shared"]["value"] > 1.5  # three more int8 code sets
    runs = out / "runs"
    rows = json.loads((runs / "seed1_mixed.json").read_text())["value"]["rows"]
    assert [r["config"] for r in rows if r["kind"] == "uniform"] == [4, 3, 2]
    searched = [r for r in rows if r["kind"] == "searched"]
    assert [r["budget"] for r in searched] == [2.6, 3.0, 3.4]
    for row in rows[3:]:  # searched and random sub-nets average exactly their budget over the five layers
        assert sum(row["config"].values()) == round(row["budget"] * 5) and set(row["config"].values()) <= {2, 3, 4}
    assert sum(r["kind"] == "random" for r in rows) == 3 * 2
    assert not (runs / "seed4_mixed.json").exists() and (runs / "seed1" / "mixed" / "model.int8.pt").is_file()
    assert "SuperNet (HASB, sandwich), 2 confirmatory seeds" in (out / "report.md").read_text()
    assert facts["traintime_joint_over_separate"]["exact"] is False
    assert facts["traintime_joint_over_separate"]["details"]["n"] == 2
    # the separate models get as many optimizer steps as the joint one: the comparison is not confounded
    assert facts["optimizer_steps_joint"]["value"] == facts["optimizer_steps_separate"]["value"] > 0
    assert 0.2 < facts["resnet18_storage_int8_over_fp32"]["value"] < 0.4
    report = (out / "report.md").read_text()
    assert "Headline claims" in report and "separate LSQ, 2 bits" in report
    assert (out / "accuracy_and_training_loss.png").is_file()
    assert {"train", "mixed"} <= set(json.loads((out / "env.json").read_text())["stage_seconds"])
    capsys.readouterr()
    assert run(["reproduce", "--tiny", "--out", str(out), "--threads", "1"]) == 0
    # 3 arms x 3 seeds, FP32 + ours of seed 3, Ours* x 3 seeds, 4 arms x 2 sep_seeds, 2 ablation arms x 1 seed,
    # 2 pilot + 2 confirmatory mixed seeds, the ResNet-18 storage
    assert capsys.readouterr().out.count("reusing") == 3 * 3 + 2 + 3 + 4 * 2 + 2 + 4 + 1
    assert read_claims(out / "claims.json") == document


@pytest.mark.slow
def test_full_scale_on_tiny_mnist_writes_claims(tmp_path):
    out = tmp_path / "full"
    sets = ["fp32.epochs=1", "multi.epochs=1", "data.train_size=256", "data.test_size=200", "data.batch_size=64",
            "model.width=4"]
    argv = ["reproduce", "--scale", "full", "--out", str(out), "--threads", "1", "--config",
            "double_rounding/configs/smoke_mnist.yaml", *[f"--config-set={s}" for s in sets]]
    assert run(argv) == 0
    document = read_claims(out / "claims.json")
    assert {c["id"] for c in document["claims"]} == {f"full_w{b}_minus_fp32" for b in (8, 6, 4, 2)} | {
        "full_unshared_minus_shared_w2", "full_unshared_minus_shared_w4"}
    assert all(c["n"] == 200 for c in document["claims"])
    assert {f["id"] for f in document["facts"]} == {f"full_{k}top1_w{b}" for k in ("", "unshared_") for b in
                                                    (8, 6, 4, 2)} | {"full_fp32_top1", "full_optimizer_steps_joint"}
    assert (out / "runs" / "ours" / "multi" / "model.int8.pt").is_file()
    assert load_int8(out / "runs" / "ours_unshared" / "multi" / "model.int8.pt")["graph"]["weight_scales"] == "unshared"
    with pytest.raises(UsageError, match="ours_unshared, separate, no_alrs, kd"):
        run(argv[:1] + ["--set", "full_arms=[ours_star]"] + argv[1:])
    with pytest.raises(UsageError, match="none of the trained bits"):
        run(argv[:1] + ["--set", "full_arms=[ours,separate]", "--set", "sep_bits=[3]"] + argv[1:])


@pytest.mark.slow
def test_full_scale_separate_alrs_and_kd_arms_write_their_claims(tmp_path):
    out = tmp_path / "full"
    sets = ["fp32.epochs=1", "multi.epochs=1", "data.train_size=256", "data.test_size=200", "data.batch_size=64",
            "model.width=4"]
    argv = ["reproduce", "--set", "full_arms=[kd,ours,no_alrs,separate]", "--scale", "full", "--out", str(out),
            "--threads", "1", "--config", "double_rounding/configs/smoke_mnist.yaml",
            *[f"--config-set={s}" for s in sets]]
    assert run(argv) == 0
    document = read_claims(out / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    assert set(claims) == {f"full_w{b}_minus_fp32" for b in (8, 6, 4, 2)} | {
        f"full_joint_minus_separate_w{b}" for b in (8, 4, 2)} | {"full_alrs_gain_w2", "full_kd_gain_w2"}
    assert all(c["n"] == 200 for c in document["claims"])
    assert claims["full_joint_minus_separate_w2"]["expect"] == ">= -1.25"
    facts = {f["id"]: f for f in document["facts"]}
    assert set(facts) == {f"full_{k}top1_w{b}" for k in ("", "noalrs_", "kd_") for b in (8, 6, 4, 2)} | {
        f"full_separate_top1_w{b}" for b in (8, 4, 2)} | {"full_fp32_top1", "full_optimizer_steps_joint",
                                                         "full_optimizer_steps_separate"}
    # each separate model gets as many optimizer steps as the joint run takes in all (4 precisions x 4 batches)
    assert facts["full_optimizer_steps_joint"]["value"] == facts["full_optimizer_steps_separate"]["value"] == 16
    # the paired estimates are the arms' own top-1 differences
    kd, ours = facts["full_kd_top1_w2"]["value"], facts["full_top1_w2"]["value"]
    assert claims["full_kd_gain_w2"]["measured"] == pytest.approx(kd - ours)
    assert claims["full_alrs_gain_w2"]["measured"] == pytest.approx(ours - facts["full_noalrs_top1_w2"]["value"])
    assert claims["full_joint_minus_separate_w4"]["measured"] == pytest.approx(
        facts["full_top1_w4"]["value"] - facts["full_separate_top1_w4"]["value"])
    for b in (8, 4, 2):
        assert load_int8(out / "runs" / f"sep{b}" / "multi" / "model.int8.pt")["available_bits"] == [b]
    for name in ("no_alrs", "kd"):
        assert (out / "runs" / name / "multi" / "model.int8.pt").is_file()


@pytest.mark.slow
def test_full_scale_mixed_arm_compares_the_3bit_subnets(tmp_path):
    out = tmp_path / "full"
    sets = ["fp32.epochs=1", "multi.epochs=1", "supernet.epochs=1", "data.train_size=256", "data.test_size=200",
            "data.batch_size=64", "model.width=4", "mixed.hessian_images=64", "mixed.hessian_batch=64",
            "mixed.hessian_probes=2"]
    argv = ["reproduce", "--set", "full_arms=[ours,mixed]", "--set", "mixed_random=3", "--scale", "full", "--out",
            str(out), "--threads", "1", "--config", "double_rounding/configs/smoke_mnist.yaml",
            *[f"--config-set={s}" for s in sets]]
    assert run(argv) == 0
    document = read_claims(out / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    assert {"full_mixed_minus_uniform_3bit", "full_searched_minus_random_3bit"} <= set(claims)
    assert claims["full_mixed_minus_uniform_3bit"]["n"] == 200
    facts = {f["id"]: f["value"] for f in document["facts"]}
    assert claims["full_mixed_minus_uniform_3bit"]["measured"] == pytest.approx(
        facts["full_mixed_top1_searched_3bit"] - facts["full_mixed_top1_uniform_w3"])
    assert claims["full_searched_minus_random_3bit"]["measured"] == pytest.approx(
        facts["full_mixed_top1_searched_3bit"] - facts["full_mixed_top1_random_3bit"])
    mixed = out / "runs" / "mixed"
    assert load_int8(mixed / "supernet" / "model.int8.pt")["graph"]["bits"] == [4, 3, 2]
    assert (mixed / "hessian" / "traces.json").is_file()
    with pytest.raises(UsageError, match="must include 3"):
        run(argv[:1] + ["--set", "mixed_bits=[4,2]"] + argv[1:])


def test_full_arm_configs_change_only_their_setting():
    from double_rounding.config import Config
    from double_rounding.full import arm_config

    cfg = Config()
    cfg.multi.epochs = 3
    sep = arm_config(cfg, "sep2")
    assert (sep.multi.epochs, sep.multi.alrs, sep.multi.kd) == (12, "off", "none")
    assert arm_config(cfg, "no_alrs").multi.alrs == "off" and arm_config(cfg, "no_alrs").multi.epochs == 3
    assert arm_config(cfg, "kd").multi.kd == "recursive" and arm_config(cfg, "kd").multi.alrs == "simple"
    assert arm_config(cfg, "ours_unshared").quant.weight_scales == "unshared"
    assert sep.quant.bits == [2] and arm_config(cfg, "mixed", (4, 3, 2)).quant.bits == [4, 3, 2]
    assert (cfg.multi.epochs, cfg.multi.alrs, cfg.multi.kd, cfg.quant.weight_scales) == (3, "simple", "none",
                                                                                        "shared")


def test_reproduce_arguments_are_checked(tmp_path):
    with pytest.raises(UsageError, match="only for --scale full"):
        run(["reproduce", "--tiny", "--out", str(tmp_path), "--config", "x.yaml"])
    with pytest.raises(UsageError, match="needs --config"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path)])
    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids)) and SMOKE_CLAIMS | SMOKE_FACTS <= set(ids)


def test_mixed_arm_does_not_depend_on_the_arms_run_before_it(tmp_path):
    """A resumed run computes the mixed arm in a fresh process or after the FP32 arm: the same result."""
    plan = dataclasses.replace(TINY, fp_epochs=2, mixed_random=1, mixed_budgets=(3.0,))  # FP32 ends at epoch 1
    after_fp32 = SeedRun(plan, 0, tmp_path)
    after_fp32.run("fp32")
    first = after_fp32.run("mixed")
    again = SeedRun(plan, 0, tmp_path).run("mixed")
    assert [r["config"] for r in first["rows"]] == [r["config"] for r in again["rows"]]
    assert [r["top1"] for r in first["rows"]] == [r["top1"] for r in again["rows"]]
    assert first["traces"] == again["traces"]


def _mixed_run(seed: int, uniform3: float, searched3: float) -> dict:
    rows = [{"kind": "uniform", "budget": b, "top1": 90.0 + b} for b in (4.0, 2.0)]
    rows += [{"kind": "uniform", "budget": 3.0, "top1": uniform3}, {"kind": "searched", "budget": 3.0,
             "top1": searched3}, {"kind": "random", "budget": 3.0, "top1": searched3 - 1}]
    return {"seed": seed, "rows": rows}


def test_mixed_headline_is_decided_on_the_confirmatory_seeds_alone():
    plan = dataclasses.replace(TINY, mixed_pilot_seeds=(0, 1, 2), mixed_confirm_seeds=(5, 6, 7))
    runs = [_mixed_run(s, 93.0, 92.0 + 0.1 * s) for s in (0, 1, 2)] + [_mixed_run(s, 93.0, 94.0 + 0.1 * s)
                                                                        for s in (5, 6, 7)]
    est = mixed_estimates(plan, runs)
    assert est["mixed_minus_uniform_3bit"].details["seeds"] == [5, 6, 7]
    assert abs(est["mixed_minus_uniform_3bit"].value - 1.6) < 1e-9
    assert est["mixed_minus_uniform_3bit_pilot"].details["seeds"] == [0, 1, 2]
    assert abs(est["mixed_minus_uniform_3bit_pilot"].value + 0.9) < 1e-9
    assert est["searched_minus_random"].details["seeds"] == [0, 1, 2]
    assert "mixed_minus_uniform_3bit" not in mixed_estimates(plan, runs[:3])  # no confirmatory runs: no headline
    with pytest.raises(UsageError, match=r"^mixed_confirm_seeds repeats seeds \[2\] of mixed_pilot_seeds: "):
        mixed_jobs(dataclasses.replace(plan, mixed_confirm_seeds=(2, 3)))


def test_smoke_plan_confirmatory_seeds_are_new_and_leave_the_cache_keys_alone():
    """The pre-registered design: 150 new seeds after the 60 pilot seeds, and the seed lists are not part of any
    arm's cache key (the pilot's cached runs are reused, not recomputed)."""
    assert SMOKE.mixed_pilot_seeds == tuple(range(60)) and SMOKE.mixed_confirm_seeds == tuple(range(60, 210))
    other = dataclasses.replace(SMOKE, mixed_pilot_seeds=(0,), mixed_confirm_seeds=())
    for arm in ("mixed", "fp32", "ours"):
        assert arm_key(SMOKE, 3, arm) == arm_key(other, 3, arm)
    assert "mixed_confirm_seeds" not in arm_key(SMOKE, 3, "mixed") and "mixed_bits" in arm_key(SMOKE, 3, "mixed")
