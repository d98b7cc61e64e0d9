"""End-to-end: ``partialnet reproduce --tiny`` writes a valid claims file (claims and facts apart), a report, plots
and env.json; the plan's bad inputs are one clear error."""

import dataclasses
import importlib.util
import json

import pytest
import timm
import torch
from effrepro.errors import UsageError
from effrepro.report import read_claims
from effrepro.reproduce import Context
from partialnet.ablation import ABLATION_CLAIMS as ABLATION_CLAIMS_SPECS
from partialnet.ablation import FIRST_LOOK_SEEDS, MAIN_RUNG, run_name, rung_config
from partialnet.cli import main
from partialnet.dpconv_stage import CONFIRM_SEEDS, PILOT, PILOT_SEEDS, search_all
from partialnet.models import ABLATION_LADDER
from partialnet.reproduce import CLAIMS, FACTS, PLANS, REPRODUCTION

from partialnet import reproduce_parts as parts

SMOKE_CLAIMS = ["top1_gain", "cpu_latency_ratio_t2", "cpu_latency_ratio_t1", "cpu_latency_ratio_t0"]
DPCONV_CLAIMS = ["dpconv_learnt_split_gain", "dpconv_learnt_split_gain_pilot"]
ABLATION_CLAIMS = ["ablation_pat_ch_gain", "ablation_pat_sf_gain", "ablation_pat_sp_gain", "ablation_pat_ch_gain_pilot"]
RUNGS = ("pconv", "pat_ch", "pat_ch_sf", "pat_ch_sf_sp")
ABLATION_FACTS = {f"ablation_top1_{r}" for r in RUNGS}
MAIN_FACTS = {"top1_partialnet", "top1_fasternet", "params_ratio_t2", "flops_ratio_t2", "mini_params_ratio",
              "mini_flops_ratio", "official_counts_match", "fused_max_abs_diff"}


@pytest.mark.slow
def test_reproduce_tiny_end_to_end(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--tiny", "--out", str(tmp_path), "--threads", "1"])
    assert exc.value.code == 0
    document = read_claims(tmp_path / "claims.json")  # validates the schema
    claims = {c["id"]: c for c in document["claims"]}
    facts = {f["id"]: f for f in document["facts"]}
    assert list(claims) == SMOKE_CLAIMS + DPCONV_CLAIMS + ABLATION_CLAIMS  # the tiny plan runs every stage
    assert [c["id"] for c in document["claims"] if c["headline"]] == ["top1_gain", "cpu_latency_ratio_t2"]
    gain = claims["top1_gain"]
    assert gain["n"] == 2 and "paired" in gain["details"]["interval"] and gain["details"]["seeds"] == [0, 1]
    assert gain["measured"] == pytest.approx(facts["top1_partialnet"]["value"] - facts["top1_fasternet"]["value"])
    assert claims["cpu_latency_ratio_t2"]["n"] == 3 and "bootstrap" in claims["cpu_latency_ratio_t2"]["details"][
        "interval"]
    main_facts = {f for f in facts if not f.startswith(("det_", "ablation_", "dpconv_"))}
    assert main_facts == MAIN_FACTS
    assert {f for f in facts if f.startswith("ablation_")} == ABLATION_FACTS
    sizes = [facts[f"ablation_top1_{r}"]["details"]["params"] for r in RUNGS]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4  # each rung adds a component
    sp_gain = claims["ablation_pat_sp_gain"]
    assert sp_gain["n"] == 2 and sp_gain["measured"] == pytest.approx(
        facts["ablation_top1_pat_ch_sf_sp"]["value"] - facts["ablation_top1_pat_ch_sf"]["value"])
    # the T2-default rung is the main stage's PartialNet arm, reused: same numbers, no run of its own
    main_rung = facts["ablation_top1_pat_ch_sf"]["details"]
    assert main_rung["per_seed"] == facts["top1_partialnet"]["details"]["per_seed"] and "reused" in main_rung["runs"]
    assert not list((tmp_path / "runs").glob("ablation_pat_ch_sf_seed*"))
    assert (tmp_path / "runs" / "ablation_pat_ch_sf_sp_seed1.json").is_file()
    assert all(facts[f"ablation_top1_{r}"]["details"]["train_seconds_median"] > 0 for r in RUNGS)
    # PAT_ch is decided on the confirmatory seeds alone (two rungs only); its first look is the _pilot
    ch, ch_pilot = claims["ablation_pat_ch_gain"], claims["ablation_pat_ch_gain_pilot"]
    assert ch["details"]["seeds"] == [2, 3] and ch_pilot["details"]["seeds"] == [0, 1] and ch["n"] == 2
    assert ch_pilot["measured"] == pytest.approx(
        facts["ablation_top1_pat_ch"]["value"] - facts["ablation_top1_pconv"]["value"])
    assert (tmp_path / "runs" / "ablation_pat_ch_seed3.json").is_file()
    assert not list((tmp_path / "runs").glob("ablation_pat_ch_sf_sp_seed[23].json"))
    dpconv, pilot = claims["dpconv_learnt_split_gain"], claims["dpconv_learnt_split_gain_pilot"]
    assert dpconv["n"] == 2 and dpconv["details"]["seeds"] == [2, 3] and pilot["details"]["seeds"] == [0, 1]
    assert dpconv["measured"] == pytest.approx(facts["dpconv_top1_learnt"]["value"] - dpconv["details"]["b_mean"])
    assert pilot["details"]["b_mean"] == pytest.approx(facts["top1_partialnet"]["value"])  # the main stage's arm
    rows = facts["dpconv_flops_ratio"]["details"]["per_seed"]
    assert [(r["seed"], r["pilot"]) for r in rows] == [(0, True), (1, True), (2, False), (3, False)]
    assert dpconv["details"]["values"] == pytest.approx([r["top1"] - r["fixed_top1"] for r in rows[2:]])
    assert (tmp_path / "runs" / "partialnet_mini_seed3.json").is_file()  # a claim seed the main stage did not run
    for row in rows:  # the retrained model is built from the file
        splits = json.loads((tmp_path / "runs" / f"dpconv_splits_seed{row['seed']}.json").read_text())
        assert [layer["n_div"] for layer in splits["layers"]] == row["layer_n_div"]
        retrain = json.loads((tmp_path / "runs" / f"dpconv_retrain_seed{row['seed']}.json").read_text())
        assert retrain["key"]["model_kwargs"].get("dynamic_split") is None and retrain["key"]["splits"]
    assert facts["official_counts_match"]["value"] == 12 and facts["fused_max_abs_diff"]["value"] < 1e-9
    assert facts["params_ratio_t2"]["value"] == pytest.approx(0.8189, abs=1e-3)
    assert not facts["top1_partialnet"]["exact"] and facts["params_ratio_t2"]["exact"]
    if importlib.util.find_spec("mmdet") is not None:  # the tiny plan runs the det stage too
        det = {f for f in facts if f.startswith("det_")}
        assert {"det_partialnet_t0_bbox_ap", "det_fasternet_t0_mask_ap", "det_partialnet_t0_bbox_ap_delta",
                "det_partialnet_t0_backbone_latency_ratio", "det_partialnet_t0_backbone_flops_ratio"} <= det
        assert facts["det_partialnet_t0_backbone_params_ratio"]["value"] < 1
        assert "Mask R-CNN" in (tmp_path / "report.md").read_text()
    report = (tmp_path / "report.md").read_text()
    assert "PATNet" in report and "Facts" in report
    assert (tmp_path / "mnist100_top1.png").is_file() and (tmp_path / "speed_size.png").is_file()
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"counts", "train", "latency", "dpconv", "ablation"} <= set(env["stage_seconds"]) and env["plan"] == "tiny"
    assert (tmp_path / "runs" / "partialnet_mini_seed1.json").is_file()  # the resumable per-run cache


def test_tables_declare_every_id_once_and_headlines():
    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids))
    assert {c.id for c in CLAIMS if c.headline} == {"top1_gain", "cpu_latency_ratio_t2"}
    assert not any(c.id.endswith("_ap") or c.id.startswith("top1_partialnet") for c in CLAIMS)


def test_accuracy_claim_is_non_inferiority_at_half_the_paper_gain():
    gain = next(c for c in CLAIMS if c.id == "top1_gain")
    assert gain.expect == "> -0.65" and gain.paper == 1.3 and "half the paper" in gain.description
    n = len(PLANS["smoke"].seeds)  # the pre-registered last look: the description names the plan's seed count
    assert PLANS["smoke"].seeds == tuple(range(n)) and f"{n} seeds, the third and last look" in gain.description
    assert PLANS["smoke"].workers == 1 and PLANS["smoke"].ablation_seeds < n


def test_ablation_ladder_is_opt_in_at_smoke_scale():
    assert PLANS["smoke"].stages == ("main", "dpconv") and "ablation" in PLANS["tiny"].stages
    assert [c.id for c in CLAIMS if c.id.startswith("ablation_")] == ABLATION_CLAIMS
    assert not any(c.headline for c in CLAIMS if c.id.startswith("ablation_"))
    first_look = [c for c in ABLATION_CLAIMS_SPECS if c.id != "ablation_pat_ch_gain"]
    assert PLANS["smoke"].ablation_seeds == FIRST_LOOK_SEEDS and all(
        f"{FIRST_LOOK_SEEDS} seeds" in c.description and c.expect == "> 0" for c in first_look)
    # PAT_ch's pre-registered confirmatory replication: 59 new seeds, disjoint from the first look's
    confirm = PLANS["smoke"].ablation_confirm_seeds
    pat_ch = next(c for c in ABLATION_CLAIMS_SPECS if c.id == "ablation_pat_ch_gain")
    assert confirm == tuple(range(22, 81)) and not set(confirm) & set(PLANS["smoke"].seeds[:FIRST_LOOK_SEEDS])
    assert "seeds 22-80" in pat_ch.description and "n = 59" in pat_ch.description and pat_ch.expect == "> 0"


def test_ablation_confirmatory_seeds_must_be_new(tmp_path):
    from effrepro.reproduce import Results
    from partialnet.ablation import ablation_stage

    plan = dataclasses.replace(PLANS["tiny"], ablation_confirm_seeds=(1, 2))
    with pytest.raises(UsageError, match=r"^ablation_confirm_seeds repeats seeds \[1\] of seeds: "):
        ablation_stage(plan, Context("partialnet", plan, tmp_path), Results())


def test_ablation_rungs_differ_from_the_main_arm_only_in_their_switches(tmp_path):
    """Every rung is the main arm's config with its switches; the T2-default rung is the main arm itself (same run
    name and config, so its cache entry is reused) and builds the same model, weight for weight."""
    plan, ctx = PLANS["smoke"], Context("partialnet", PLANS["smoke"], tmp_path)
    main_cfg = parts.mini_train_config("partialnet", 3, plan, ctx.runs / "partialnet_mini_seed3")
    assert MAIN_RUNG == "pat_ch_sf" and run_name(MAIN_RUNG, 3) == "partialnet_mini_seed3"
    assert rung_config(MAIN_RUNG, 3, plan, ctx) == main_cfg
    for rung in RUNGS:
        cfg = rung_config(rung, 3, plan, ctx)
        assert dataclasses.replace(cfg, model_kwargs=main_cfg.model_kwargs, out_dir=main_cfg.out_dir) == main_cfg
        assert {k: v for k, v in cfg.model_kwargs.items() if k not in ABLATION_LADDER[rung]} == main_cfg.model_kwargs
    models = []
    for kwargs in (main_cfg.model_kwargs, {**main_cfg.model_kwargs, **ABLATION_LADDER[MAIN_RUNG]}):
        torch.manual_seed(0)
        models.append(timm.create_model(main_cfg.model, num_classes=100, **kwargs).state_dict())
    assert models[0].keys() == models[1].keys() and all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    torch.manual_seed(0)
    other = timm.create_model(main_cfg.model, num_classes=100, **{**main_cfg.model_kwargs, **ABLATION_LADDER["pat_ch"]})
    assert other.state_dict().keys() != models[0].keys()


@pytest.mark.slow
def test_worker_processes_give_the_serial_runs_and_reusable_cache_entries(tmp_path, monkeypatch):
    plan = dataclasses.replace(PLANS["tiny"], seeds=(0,), train_size=128, test_size=100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same arithmetic, so the same numbers
    try:
        def run(out, workers):
            monkeypatch.chdir(tmp_path)
            ctx = Context("partialnet", plan, out)
            configs = {f"{f}_mini_seed0": parts.mini_train_config(f, 0, plan, ctx.runs / f"{f}_mini_seed0")
                       for f in ("partialnet", "fasternet")}
            finished = []
            runs = parts.train_minis(ctx, configs, workers, lambda name, history, s: finished.append(name))
            assert sorted(finished) == sorted(configs)
            return ctx, runs

        _, parallel = run(tmp_path / "a", 2)
        _, serial = run(tmp_path / "b", 1)
        assert list(parallel) == ["partialnet_mini_seed0", "fasternet_mini_seed0"]
        for name, history in parallel.items():
            assert [row["eval_top1"] for row in history] == [row["eval_top1"] for row in serial[name]]
        ctx, again = run(tmp_path / "a", 1)  # one worker reuses what two workers cached: the keys are the same
        assert again == parallel and set(ctx.reused) == set(parallel)
        assert all(ctx.reused[name] > 0 for name in parallel)  # the workers' compute seconds were stored
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("argv", "message"), [
    (["--scale", "full"], "--data"),
    (["--data", "/imagenet"], "for --scale full"),
    (["--scale", "full", "--data", "/x", "--variant", "t9"], "unknown variant"),
    (["--scale", "full", "--stages", "det"], "pass --coco"),
    (["--stages", "main,seg"], "--stages"),
    (["--set", "seeds=abc"], "seeds"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--set", "workers=0"], "--workers must be at least 1"),
    (["--set", "dpconv_seeds=[4, 5]"], "must be new seeds"),
    (["--set", "dpconv_seeds=[]"], "must be new seeds"),
    (["--scale", "full", "--data", "/x", "--stages", "main,ablation"], "--scale smoke --stages ablation"),
])
def test_bad_plan_input_is_a_usage_error(argv, message, tmp_path):
    with pytest.raises(UsageError, match=message):
        REPRODUCTION.main([*argv, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_dpconv_claim_is_preregistered_on_new_seeds_with_80_percent_power():
    """The claim's seeds are disjoint from the pilot's and their number is the smallest with at least 80 % chance
    that the paired t-interval excludes 0 if the true gain is the pilot's mean at the pilot's sd."""
    from scipy import stats as sps

    plan = PLANS["smoke"]
    assert plan.dpconv_pilot_seeds == PILOT_SEEDS == tuple(range(5)) and plan.dpconv_seeds == CONFIRM_SEEDS
    assert not set(PILOT_SEEDS) & set(CONFIRM_SEEDS) and set(CONFIRM_SEEDS) <= set(plan.seeds)  # fixed arm cached

    def power(n):
        t, ncp = sps.t.ppf(0.975, n - 1), PILOT["mean"] * n ** 0.5 / PILOT["sd"]
        return sps.nct.cdf(-t, n - 1, ncp) + sps.nct.sf(t, n - 1, ncp)

    n = len(CONFIRM_SEEDS)
    assert power(n) >= PILOT["power"] > power(n - 1)
    claim = next(c for c in CLAIMS if c.id == "dpconv_learnt_split_gain")
    assert claim.expect == "> 0" and not claim.headline and f"(n = {n})" in claim.description
    assert "no seeds added whatever the result" in claim.description
    pilot = next(c for c in CLAIMS if c.id == "dpconv_learnt_split_gain_pilot")
    assert pilot.expect == claim.expect and not pilot.headline


@pytest.mark.slow
def test_dpconv_searches_in_workers_give_reusable_splits_files(tmp_path, monkeypatch):
    plan = dataclasses.replace(PLANS["tiny"], train_size=128, test_size=100, workers=2)
    monkeypatch.chdir(tmp_path)
    ctx = Context("partialnet", plan, tmp_path / "a")
    found = search_all((0, 1), plan, ctx)
    for seed, run in found.items():
        splits = json.loads((ctx.runs / f"dpconv_splits_seed{seed}.json").read_text())
        assert run["file"] == str(ctx.runs / f"dpconv_splits_seed{seed}.json") and splits == run["splits"]
    again = Context("partialnet", dataclasses.replace(plan, workers=1), tmp_path / "a")
    assert search_all((0, 1), plan, again) == found and set(again.reused) == {"dpconv_search_seed0",
                                                                                "dpconv_search_seed1"}
