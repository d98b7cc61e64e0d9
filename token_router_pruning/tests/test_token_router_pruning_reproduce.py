"""End to end: ``reproduce --scale smoke --tiny`` writes a valid claims.json and report; CLI errors are one line."""

from __future__ import annotations

import json

import pytest
from effrepro.report import read_claims
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
    cases = [(["--cfg", "ga.crossover=sbx"], "crossover"), (["--cfg", "budgets=[0.99]"], "cannot be met"),
             (["--cfg", "budgets=[0.33]"], "claims table covers"), (["--set", "nope=1"], "unknown config key 'nope'"),
             (["--config", str(tmp_path / "missing.yaml")], "config file not found")]
    for extra, message in cases:
        code, out = _run(["reproduce", "--tiny", "--out", str(tmp_path / "o"), *extra], capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, (extra, out.err)
    assert not (tmp_path / "o").exists()  # rejected before any work
    bad_plan = tmp_path / "plan.pt"
    bad_plan.write_bytes(b"not a checkpoint")
    code, out = _run(["eval", "--plan", str(bad_plan), "--out", str(tmp_path)], capsys)
    assert code == 2 and "corrupt" in out.err


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path, capsys, monkeypatch):
    from token_router_pruning import pipeline

    monkeypatch.setattr(pipeline, "shared_dir", lambda: tmp_path / "shared")
    code, out = _run(["reproduce", "--scale", "smoke", "--tiny", "--threads", "1", "--out", str(tmp_path)], capsys)
    assert code == 0, out.err
    shared = list((tmp_path / "shared").glob("eval_dense_*.json"))  # the dense evaluation, for later runs
    assert len(shared) == 1 and shared[0].read_text() == (tmp_path / "runs" / "eval_dense.json").read_text()
    document = read_claims(tmp_path / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    facts = {f["id"]: f for f in document["facts"]}
    assert set(claims) == {"redundancy_overall", "redundancy_depth_gap", "ftp_retention_25",
                           "ftp_retention_no_recall_25", "ftp_vs_shortgpt_25", "ftp_vs_blockpruner_25",
                           "trained_vs_static_25", "static_vs_random_25", "ga_vs_uniform_loss_25",
                           "distill_scored_vs_all_25", "prefill_speedup_25"}
    assert {c for c, v in claims.items() if v["headline"]} == {"ftp_retention_25", "ftp_vs_shortgpt_25",
                                                              "ftp_vs_blockpruner_25", "trained_vs_static_25",
                                                              "prefill_speedup_25"}
    n_items = facts["test_items"]["value"]
    assert n_items == 10  # 2 per family, 5 families: the unit of every accuracy claim
    for cid in ("ftp_retention_25", "ftp_vs_shortgpt_25", "trained_vs_static_25"):
        assert claims[cid]["n"] == n_items and "interval" in claims[cid]["details"]
    for cid in ("ga_vs_uniform_loss_25", "static_vs_random_25", "distill_scored_vs_all_25"):
        assert claims[cid]["n"] == 5  # the secondary arms: the first item of each family, paired
    for cid, smallest in (("ftp_vs_shortgpt_25", 9.5), ("ftp_vs_blockpruner_25", 7.15), ("trained_vs_static_25", 0.45)):
        claim = claims[cid]  # in retention points, failing when half the paper's lead is excluded
        assert claim["unit"] == "retention points" and claim["expect"] == f"> 0, fails below {smallest:g}"
        assert f"half the paper's, {smallest:g} points" in claim["description"]
    assert "per-round ratios" in claims["prefill_speedup_25"]["details"]["interval"]
    assert claims["prefill_speedup_25"]["n"] == 2 and claims["redundancy_overall"]["n"] == 2
    assert {"flops_ratio_25", "schedule_sparsity_25", "ppl_ratio_25", "prefill_speedups_25", "router_parameters",
            "determinism_router_max_abs_diff", "determinism_fitness_abs_diff", "router_heldout_kl",
            "router_all_positions_heldout_kl", "ga_calibration_gain_25"} <= set(facts)
    kl = facts["router_heldout_kl"]["details"]
    assert len([h for h in kl["history"] if "eval_kl" in h]) == 2 and kl["static_router_kl"] >= 0
    assert kl["best_epoch"] in (1, 2) and kl["warm_start_bce"] is not None
    assert facts["router_parameters"]["value"] == 385
    assert facts["determinism_router_max_abs_diff"]["value"] == 0
    assert abs(facts["schedule_sparsity_25"]["value"] - 0.25) < 1e-6
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"setup", "redundancy", "eval", "ga_static", "router", "latency"} <= set(env["stage_seconds"])
    report = (tmp_path / "report.md").read_text()
    assert "Every method" in report and "ftp_dynamic_stage1_25" in report
    for name in ("redundancy.png", "schedules.png", "router_training.png", "latency.png"):
        assert (tmp_path / name).is_file()
    assert (tmp_path / "runs" / "ftp_25.pt").is_file()
    # a second run resumes from the stage caches
    code, out = _run(["reproduce", "--tiny", "--threads", "1", "--out", str(tmp_path)], capsys)
    assert code == 0 and "eval_dense: reusing" in out.out and "ga_static_25: reusing" in out.out


def test_retention_estimate_is_the_papers_metric_with_a_paired_interval():
    from token_router_pruning.eval import retention
    from token_router_pruning.measures import accuracy_gap, retention_estimate, retention_gap

    dense = {"correct": {"a": [1.0] * 20, "b": [1.0] * 10 + [0.0] * 10}}
    method = {"correct": {"a": [1.0] * 18 + [0.0] * 2, "b": [1.0] * 5 + [0.0] * 15}}
    accs = {name: {t: sum(v) / len(v) for t, v in row["correct"].items()} for name, row in
            (("dense", dense), ("method", method))}
    est = retention_estimate(method, dense)
    assert est.value == pytest.approx(retention(accs["method"], accs["dense"]))  # (0.9 + 0.5) / 2 = 70 %
    assert est.n == 40 and est.ci[0] < 70 < est.ci[1] and est.ci[1] < 100
    assert retention_estimate(method, dense, exclude=("b",)).value == pytest.approx(90.0)
    gap = accuracy_gap(method, dense)
    assert gap.value == pytest.approx(-100 * 7 / 40) and gap.ci[1] < 0  # the method loses 7 of 40 items, never wins
    other = {"correct": {"a": [1.0] * 20, "b": [1.0] * 6 + [0.0] * 14}}  # (1.0 + 0.6) / 2 = 80 % retention
    lead = retention_gap(other, method, dense)
    assert lead.value == pytest.approx(10.0) and lead.n == 40 and 0 <= lead.ci[0] < 10 < lead.ci[1]  # never behind
    assert lead.details["accuracy_gap_points"] == pytest.approx(100 * 3 / 40)
    assert retention_gap(method, other, dense).value == pytest.approx(-10.0)


def test_shared_dense_cache_is_reused_by_a_fresh_run_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from effrepro.reproduce import Context
    from token_router_pruning.reproduce import FTPPlan

    from token_router_pruning import pipeline

    monkeypatch.setattr(pipeline, "shared_dir", lambda: tmp_path / "shared")
    calls = []

    def compute():
        calls.append(1)
        return {"acc": 0.5}

    def run(out, key, resume=True):
        ctx = Context("token_router_pruning", FTPPlan(), tmp_path / out, resume=resume)
        return pipeline.shared_cached(ctx, "eval_dense", compute, key), ctx

    assert run("a", {"x": 1})[0] == {"acc": 0.5} and len(calls) == 1
    (entry,) = (tmp_path / "shared").glob("eval_dense_*.json")
    value, ctx = run("b", {"x": 1})  # a fresh output folder reuses the shared entry
    assert value == {"acc": 0.5} and len(calls) == 1 and "eval_dense" in ctx.reused
    run("c", {"x": 2})  # other settings: computed, a second entry
    assert len(calls) == 2 and len(list((tmp_path / "shared").glob("*.json"))) == 2
    entry.write_text("{damaged")
    assert run("d", {"x": 1})[0] == {"acc": 0.5} and len(calls) == 3  # recomputed, and the entry repaired
    assert json.loads(entry.read_text())["value"] == {"acc": 0.5}
    run("e", {"x": 1}, resume=False)  # --no-resume recomputes
    assert len(calls) == 4
