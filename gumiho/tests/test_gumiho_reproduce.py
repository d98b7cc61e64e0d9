import json

import pytest
from effrepro.errors import UsageError
from effrepro.report import read_claims
from gumiho.cli import run
from gumiho.reproduce import CLAIMS, FACTS, REPRODUCTION, load_run_config, measure


def _plan(argv):
    return REPRODUCTION.plan_from_args(REPRODUCTION.parser().parse_args(argv))


def _turns(cycles, wall, ids=(1, 2, 3), accept=None):
    return [{"question_id": i, "turn": 0, "cycle_tokens": 12, "new_tokens": 12, "cycles": c, "wall_time": w,
             "tokens": list(ids), "accept_lengths": accept or [0] * c, "tree_depths": [7] * c}
            for i, (c, w) in enumerate(zip(cycles, wall))]


def test_measure_pairs_turns_and_can_fail():
    config = load_run_config(REPRODUCTION.plans["smoke"])
    eagle = _turns([10, 11, 10, 12], [2.0, 2.2, 2.0, 2.4])
    records = {name: eagle for name in ("plain", "eagle2", "gumiho-1s", "gumiho-3s", "medusa", "gumiho+fta")}
    records["gumiho"] = _turns([12, 12, 12, 12], [1.5, 1.6, 1.4, 1.8])  # lower tau, faster than EAGLE-2
    records["gumiho-chain"] = _turns([2] * 4, [1.0] * 4, accept=[1, 0])  # a1 = 1/2, a2 = 0/1
    records["eagle2-chain"] = _turns([2] * 4, [1.0] * 4, ids=(9,), accept=[0, 0])
    summary = {n: {"tau": 1.0, "draft_forwards_per_cycle": 2.0 if n == "gumiho" else 7.0, "tokens_per_s": 4.0,
                   "cost_model_speedup": 0.5} for n in records}
    trained = {n: {"steps": 3, "params": 10, "final": {"eval_top1": 0.3, "eval_top1_T": 0.4}, "budget": {"steps": 3}}
               for n in ("eagle2", "gumiho", "gumiho-1s", "gumiho-3s", "medusa")}
    estimates, facts = measure(config, records, summary, trained)
    claims = {spec.id: spec.claim(estimates[spec.id]) for spec in CLAIMS if spec.id in estimates}
    assert claims["tau_ratio_vs_eagle2"].verdict == "fails"
    assert claims["speedup_ratio_vs_eagle2"].verdict == "holds"
    assert claims["early_position_acceptance"].measured == pytest.approx(0.5)
    assert claims["a1_vs_eagle2"].measured == pytest.approx(0.5)
    lossless = claims["lossless_fta_off"]  # eagle2-chain's tokens differ from plain's on every turn
    assert lossless.verdict == "fails" and lossless.details["mismatched_turns"] == 4
    assert claims["fta_outputs_identical"].verdict == "holds"
    assert facts["serial_passes_ratio_vs_eagle2"] == pytest.approx(2 / 7)
    assert facts["break_even_tau_gumiho"][0] == pytest.approx(2.0)  # tau / cost-model speedup
    assert claims["tau_ratio_vs_eagle2"].details["head_budgets"]["eagle2"] == {"steps": 3}
    assert "tau_ratio_vs_medusa" in estimates
    del records["medusa"]  # a plan without the Medusa draft: its claim is left out, not faked
    assert "tau_ratio_vs_medusa" not in measure(config, records, summary, trained)[0]
    assert set(facts) <= {f.id for f in FACTS} and "compat_fix_tau" not in estimates
    # headline-only turns (EAGLE-2 and Gumiho alone) enter the two headline ratios, and no other claim
    headline = {"eagle2": _turns([10] * 3, [2.0] * 3), "gumiho": _turns([12, 12, 8], [1.5] * 3, ids=(1, 2))}
    pooled, _ = measure(config, records, summary, trained, headline)
    assert pooled["tau_ratio_vs_eagle2"].n == pooled["speedup_ratio_vs_eagle2"].n == 7
    assert pooled["tau_ratio_vs_eagle2"].value == pytest.approx((84 / 80) / (84 / 73))
    assert pooled["tau_ratio_vs_eagle2"].details["turns"] == {"main_evaluation": 4, "headline_only": 3,
                                                               "headline_only_outputs_differ": 3}
    assert pooled["a1_vs_eagle2"].n == pooled["fta_tau_gain"].n == 4


def test_headline_turns_are_unseen_and_disjoint():
    from effrepro.specdec.draft_data import distillation_prompts
    from effrepro.specdec.headcache import unseen_corpus_prompts
    from gumiho.headline import headline_blocks

    config = load_run_config(REPRODUCTION.plans["smoke"])
    blocks = headline_blocks(config.data, 16, 40, 16)
    assert [(b.name, b.offset, len(b.prompts)) for b in blocks] == [
        ("eval_headline_0", 0, 16), ("eval_headline_1", 16, 16), ("eval_headline_2", 32, 8)]
    prompts = [p for b in blocks for p in b.prompts]
    seen = set(distillation_prompts([], config.data.prompts)[: config.data.self_generated])
    extra = set(unseen_corpus_prompts(config.data, 16))  # the main evaluation's extra held-out turns
    assert len(set(prompts)) == 40 and not (set(prompts) & (seen | extra))
    # a block's key names its own prompts: more turns later leave the earlier blocks' cache entries valid
    assert headline_blocks(config.data, 16, 64, 16)[1].key() == blocks[1].key() != blocks[0].key()
    assert headline_blocks(config.data, 16, 0, 16) == []
    with pytest.raises(UsageError, match="headline_extra"):
        headline_blocks(config.data, 16, 10_000, 16)


@pytest.mark.slow
def test_reproduce_tiny_writes_valid_claims(tmp_path):
    assert run(["reproduce", "--tiny", "--threads", "1", "--out", str(tmp_path)]) == 0
    document = read_claims(tmp_path / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    # --tiny runs the optional decoders too; early_position_acceptance is left out (NaN) when no chain of the
    # barely trained draft reached position 2
    assert set(claims) - {"early_position_acceptance"} == {spec.id for spec in CLAIMS} - {"early_position_acceptance"}
    assert {f["id"] for f in document["facts"]} == {spec.id for spec in FACTS}
    assert {i for i, c in claims.items() if c["headline"]} == {"tau_ratio_vs_eagle2", "speedup_ratio_vs_eagle2"}
    # 2 MT-bench + 1 extra held-out turn, plus 3 headline-only turns (2 cached blocks) for the headline ratios
    tau = claims["tau_ratio_vs_eagle2"]
    assert tau["n"] == claims["speedup_ratio_vs_eagle2"]["n"] == 6 and "paired over turns" in tau["details"]["interval"]
    assert tau["details"]["turns"] == {"main_evaluation": 3, "headline_only": 3, "headline_only_outputs_differ": 0}
    assert tau["expect"] == "> 1.0, fails below 1.022" and claims["a1_vs_eagle2"]["n"] == 3
    assert {p.name for p in (tmp_path / "runs").glob("eval_headline_*.json")} == {"eval_headline_0.json",
                                                                                 "eval_headline_1.json"}
    lossless = claims["lossless_fta_off"]
    # 8 FTA-off decoders x (2 MT-bench + 1 extra held-out turn)
    assert lossless["measured"] == 0 and lossless["verdict"] == "holds" and lossless["n"] == 3 * 8
    facts = {f["id"]: f for f in document["facts"]}
    assert facts["serial_passes_gumiho"]["value"] == 2
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {"gumiho-official", "medusa-chain", "eagle2-chain", "gumiho-chain"} <= set(summary["summary"])
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"data", "training", "evaluation", "evaluation_extra", "evaluation_headline"} <= set(env["stage_seconds"])
    assert (tmp_path / "report.md").is_file() and (tmp_path / "acceptance_and_tau.png").is_file()
    assert (tmp_path / "training.png").is_file()


def test_cli_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="key=value"):
        run(["train", "--out", str(tmp_path), "epochs"])
    with pytest.raises(UsageError, match="unknown variant"):
        run(["train", "--out", str(tmp_path), "--variant", "hydra"])
    with pytest.raises(UsageError, match="--target"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "r")])
    with pytest.raises(UsageError, match="key=value"):
        run(["reproduce", "--out", str(tmp_path / "r"), "epochs"])
    with pytest.raises(UsageError, match="not found"):
        run(["reproduce", "--config", "nope.yaml", "--out", str(tmp_path / "r")])
    with pytest.raises(UsageError, match="not found"):
        run(["eval", "--head", str(tmp_path / "missing.pt")])
    assert not (tmp_path / "r").exists()


def test_plans_map_the_yaml_configs():
    assert set(REPRODUCTION.plans) == {"smoke", "tiny", "full"}
    smoke = load_run_config(_plan([]))
    assert smoke.extra_decoders == []  # the smoke budget leaves them out
    assert (smoke.eval.questions, smoke.eval.max_questions, smoke.eval.max_turns) == ("mtbench-heldout", 8, 0)
    assert load_run_config(_plan(["eval.max_questions=5"])).eval.max_questions == 5
    full = _plan(["--scale", "full", "--target", "/m"])
    assert full.device == "cuda" and load_run_config(full).target == "/m"
    assert load_run_config(full).tree.total_tokens == 64
    with pytest.raises(UsageError, match="extra_decoders"):
        _plan(["extra_decoders=[hydra-chain]"])


def test_smoke_budget_is_the_shared_one():
    """smoke.yaml's data and trainer settings are the shared miniature setting, so the EAGLE-2 baseline is the
    cached head jakiro uses (same key) and every Gumiho head gets its budget."""
    from dataclasses import asdict

    from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, SMOKE_HEAD_TRAIN

    smoke = load_run_config(_plan([]))
    train = {k: v for k, v in asdict(smoke.train).items() if k != "loss_weights"}
    assert json.loads(json.dumps(train)) == json.loads(json.dumps(
        {k: v for k, v in asdict(SMOKE_HEAD_TRAIN).items() if k != "loss_weights"}))
    assert asdict(smoke.data) == asdict(SMOKE_DRAFT_DATA) and smoke.data_source == "engine"
    assert _plan([]).variants == ("gumiho",)


def test_device_and_dtype_options():
    from gumiho.cli import _device, build_parser
    from gumiho.train import load_target_on

    parse = build_parser().parse_args
    assert _device(parse(["train", "--out", "x", "--device", "cuda:1"])) == "cuda:1"
    assert _device(parse(["train", "--out", "x"])) in ("cpu", "cuda")
    assert parse(["eval", "--head", "h.pt", "--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(UsageError, match="dtype"):
        load_target_on("smollm2-135m", "cpu", "int8")
