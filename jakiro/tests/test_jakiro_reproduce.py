"""``jakiro reproduce``: plans, usage errors before any work, and the tiny end-to-end run (claims with intervals)."""

import json

import pytest
from effrepro.errors import UsageError
from effrepro.report import read_claims
from jakiro.claims import CLAIMS, FACTS, measure
from jakiro.cli import run
from jakiro.prereqs import train_config
from jakiro.reproduce import REPRODUCTION


def _plan(argv):
    return REPRODUCTION.plan_from_args(REPRODUCTION.parser().parse_args(argv))


def test_plans_and_bad_settings_are_usage_errors():
    assert set(REPRODUCTION.plans) == {"smoke", "tiny", "full"}
    assert _plan([]).methods == ("eagle2", "jakiro")
    assert _plan(["--tiny"]).methods == ("eagle2", "jakiro", "jakiro_nocepd", "jakiro_star")
    full = _plan(["--scale", "full", "--target", "/m", "--sharegpt-json", "/s.json"])
    assert (full.target, full.sharegpt_json, full.lr, full.total_tokens) == ("/m", "/s.json", 9e-5, 60)
    assert _plan(["--set", "max_questions=20"]).max_questions == 20
    for argv, message in ((["--set", "nonsense=1"], "key=value"), (["--set", "greedy_variants=[medusa]"], "variant"),
                          (["--set", "methods=[eagle2]"], "methods"), (["--set", "dtype=int8"], "dtype"),
                          (["--set", "greedy_variants=[jakiro]"], "eagle2")):
        with pytest.raises(UsageError, match=message):
            _plan(argv)


def test_smoke_budget_is_the_shared_one():
    """The smoke heads train with the budget of the cached EAGLE-2 baseline gumiho uses (same cache key)."""
    from dataclasses import asdict

    from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, SMOKE_HEAD_TRAIN

    smoke = REPRODUCTION.plans["smoke"]
    assert asdict(train_config(smoke)) == asdict(SMOKE_HEAD_TRAIN)
    assert (smoke.prompts, smoke.distill_prompts, smoke.data_new_tokens, smoke.data_max_len) == (
        SMOKE_DRAFT_DATA.self_generated, SMOKE_DRAFT_DATA.prompts, SMOKE_DRAFT_DATA.self_max_new_tokens,
        SMOKE_DRAFT_DATA.max_len)
    assert REPRODUCTION.plans["full"].draft_vocab == 0  # the paper-faithful full vocabulary


def test_extra_heldout_turns_are_not_in_the_draft_data(tmp_path):
    from effrepro.specdec.draft_data import distillation_prompts
    from effrepro.specdec.harness import load_questions
    from jakiro.prereqs import EXTRA_BLOCK, greedy_blocks

    smoke = REPRODUCTION.plans["smoke"]
    blocks = greedy_blocks(smoke, tmp_path)
    assert [b[0] for b in blocks] == ["eval_greedy"] + [f"eval_greedy_{i}" for i in range(1, len(blocks))]
    # block 0 keeps the cache key of a run with EXTRA_BLOCK extra turns; later blocks are keyed by their offset
    assert blocks[0][3] == {"extra_heldout": EXTRA_BLOCK}
    assert blocks[1][3] == {"extra_heldout": EXTRA_BLOCK, "extra_offset": EXTRA_BLOCK}
    questions = [q for _, source, count, _ in blocks for q in load_questions(source)]
    assert all(count == 0 for _, _, count, _ in blocks)
    assert [q["question_id"] for q in questions[:8]] == [q["question_id"] for q in load_questions("mtbench-heldout")]
    extra = [q["turns"][0] for q in questions[8:]]
    assert len(extra) == smoke.extra_heldout == len(set(extra)) == len({q["question_id"] for q in questions[8:]})
    trained_on = distillation_prompts([], smoke.distill_prompts)[: smoke.prompts]
    assert not set(extra) & set(trained_on)
    assert greedy_blocks(REPRODUCTION.plans["full"], tmp_path) == [("eval_greedy", "mtbench", 0, {})]
    with pytest.raises(UsageError, match="corpus holds only"):
        _plan(["--set", "extra_heldout=100000"])


def _turn(qid, wall, tokens=10, cycles=5, draft=0.1):
    return {"question_id": qid, "turn": 0, "new_tokens": tokens, "cycles": cycles, "cycle_tokens": tokens,
            "idxs": cycles - 1, "accept_lengths": [1] * cycles, "tree_depths": [2] * cycles, "wall_time": wall,
            "draft_time": draft, "verify_time": 0.2, "draft_forwards": 2 * cycles, "tokens": [1] * tokens}


def test_pooled_blocks_equal_one_run_over_all_turns():
    from effrepro.specdec import TreeConfig
    from effrepro.specdec.harness import summarize
    from jakiro.eval import pool_blocks

    tree = TreeConfig(top_k=2, depth=3, total_tokens=8)
    blocks = [{"records": {"plain": [_turn(i, 1.0, cycles=10)], "eagle2": [_turn(i, 0.5 + i, cycles=4)],
                           "jakiro": [_turn(i, 0.4, cycles=3)]},
               "costs": {"step": 0.1 * (i + 1), "verify_8": 0.2}, "summary": {}} for i in range(3)]
    pooled = pool_blocks(blocks, tree)
    assert [r["question_id"] for r in pooled["records"]["jakiro"]] == [0, 1, 2]
    assert pooled["costs"] == {"step": 0.2, "verify_8": 0.2}  # the median of the runs' costs
    expected = summarize(pooled["records"], pooled["costs"], {"eagle2": 8, "jakiro": 8})
    assert pooled["summary"] == expected and pooled["blocks"] == 3
    assert pooled["summary"]["eagle2"]["tokens_per_s_pooled"] == 30 / 4.5
    assert pool_blocks(blocks[:1], tree) is blocks[0]


def test_full_scale_without_paths_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="--target"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path)])
    with pytest.raises(UsageError, match="--sharegpt-json"):
        run(["reproduce", "--scale", "full", "--target", "/m", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def _turns(tau_cycles, wall, ids=(1, 2, 3)):
    return [{"question_id": i, "turn": 0, "cycle_tokens": 12, "new_tokens": 12, "cycles": c, "wall_time": w,
             "draft_time": 0.1 * c, "tokens": list(ids)} for i, (c, w) in enumerate(zip(tau_cycles, wall))]


def test_measure_pairs_turns_and_can_fail():
    plan = REPRODUCTION.plans["tiny"]  # every greedy variant
    eagle = _turns([10, 11, 10, 12], [2.0, 2.2, 2.0, 2.4])
    slower = _turns([10, 11, 10, 12], [2.4, 2.6, 2.5, 2.9])  # same tau, every turn slower than EAGLE-2
    greedy = {"plain": _turns([12] * 4, [1.0] * 4), "eagle2": eagle, "jakiro": slower,
              **{v: eagle for v in ("jakiro_parent", "jakiro_nocepd", "jakiro_star")}}
    greedy["jakiro_star"] = _turns([10] * 4, [2.0] * 4, ids=(1, 2, 4))  # one variant differs from plain
    summary = {v: {"tau": 1.1, "draft_forwards_per_cycle": 6.0 - (v == "jakiro"), "tokens_per_s": 5.0,
                   "cost_model_speedup": 0.5} for v in plan.greedy_variants}
    summary["plain"] = {"tokens_per_s": 7.0}
    bench = {"trainable_params": {"jakiro": 5, "eagle2": 4}, "ratio_to_eagle2": {"jakiro": 0.8},
             "ms_per_tree": {"jakiro": 1.0}}
    training = {m: {"steps": 3, "final": {"eval_top1": 0.5, "eval_acc0": 0.4}, "budget": {"steps": 3}}
                for m in ("jakiro", "eagle2")}
    estimates, facts = measure(plan, {"greedy": {"records": greedy, "summary": summary, "costs": {}}}, bench,
                               training)
    claims = {spec.id: spec.claim(estimates[spec.id]) for spec in CLAIMS if spec.id in estimates}
    assert claims["tau_ratio_jakiro_eagle2_greedy"].verdict == "holds"  # 1.0 on every turn
    assert claims["speedup_ratio_jakiro_eagle2_greedy"].verdict == "fails"
    lossless = claims["lossless_greedy"]
    assert lossless.verdict == "fails" and lossless.n == 20 and lossless.details["mismatched_turns"] == 4
    assert facts["draft_forwards_saved_per_cycle"][0] == 1.0
    assert facts["break_even_tau_jakiro"][0] == pytest.approx(2.2)  # tau / cost-model speedup
    assert claims["tau_ratio_jakiro_eagle2_greedy"].details["head_budgets"]["jakiro"] == {"steps": 3}
    assert set(facts) <= {f.id for f in FACTS}
    # on par within 1 % on every turn: the interval straddles 1 but excludes half the paper's gain -> fails
    greedy["jakiro"] = _turns([10, 11, 10, 12], [2.0 * 0.99, 2.2 * 1.01, 2.0 * 1.005, 2.4 * 0.995])
    estimates, _ = measure(plan, {"greedy": {"records": greedy, "summary": summary, "costs": {}}}, bench, training)
    speed = next(s for s in CLAIMS if s.id == "speedup_ratio_jakiro_eagle2_greedy").claim(
        estimates["speedup_ratio_jakiro_eagle2_greedy"])
    assert speed.ci[0] < 1 < speed.ci[1] < 1.0175 and speed.verdict == "fails"
    assert "1.0175" in speed.expect and "half the paper's gain" in speed.description


def test_method_table_shows_speed_tree_and_break_even():
    from jakiro.reporting import method_table

    summary = {"plain": {"turns": 2, "tokens_per_s": 6.5},
               "eagle2": {"turns": 2, "tau": 1.5, "tau_script": 1.6, "acceptance_by_depth": [0.4],
                          "draft_forwards_per_cycle": 6.0, "draft_ms_per_cycle": 90.0, "verify_ms_per_cycle": 300.0,
                          "cost_model_speedup": 0.375, "tokens_per_s": 3.9, "speedup": 0.6, "greedy_mismatches": 0}}
    rows = method_table(summary, "top_k 4 / depth 5 / 24 tokens", {"step": 0.1}).splitlines()
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    plain, eagle = ([c.strip() for c in r.strip("|").split("|")] for r in rows[2:])
    assert len(plain) == len(eagle) == len(header)
    assert eagle[header.index("break-even tau")] == "4.00"  # tau / cost-model speedup
    assert eagle[header.index("tokens/s")] == "3.90" and plain[header.index("tokens/s")] == "6.50"
    assert eagle[header.index("tree")] == "top_k 4 / depth 5 / 24 tokens"
    assert "100.0 ms/step" in plain[header.index("tree")]


@pytest.mark.slow
def test_tiny_reproduce_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr("jakiro.prereqs.EXTRA_BLOCK", 1)  # the extra turn runs as a block of its own
    assert run(["reproduce", "--tiny", "--threads", "1", "--out", str(tmp_path)]) == 0
    document = read_claims(tmp_path / "claims.json")
    claims = {c["id"]: c for c in document["claims"]}
    assert set(claims) == {spec.id for spec in CLAIMS}
    assert {f["id"] for f in document["facts"]} == {spec.id for spec in FACTS}
    headline = {i for i, c in claims.items() if c["headline"]}
    assert headline == {"tau_ratio_jakiro_eagle2_greedy", "speedup_ratio_jakiro_eagle2_greedy"}
    assert claims["tau_ratio_jakiro_eagle2_greedy"]["n"] == 3  # turns: 2 MT-bench + 1 extra held-out
    assert "paired over turns" in claims["speedup_ratio_jakiro_eagle2_greedy"]["details"]["interval"]
    lossless = claims["lossless_greedy"]
    assert lossless["measured"] == 0 and lossless["verdict"] == "holds" and lossless["n"] == 15
    facts = {f["id"]: f for f in document["facts"]}
    assert facts["draft_forwards_saved_per_cycle"]["value"] == 1
    env = json.loads((tmp_path / "env.json").read_text())
    assert {"data", "training", "evaluation_greedy", "evaluation_t1", "bench"} <= set(env["stage_seconds"])
    report = (tmp_path / "report.md").read_text()
    assert "README figure" in report and "Headline claims" in report and "Greedy (T = 0)" in report
    assert "break-even tau" in report and "| tokens/s |" in report
    assert "plus 1 corpus instructions the draft data did not answer" in report
    assert facts["tokens_per_s_plain_greedy"]["value"] > 0
    assert set(facts["tokens_per_s_plain_greedy"]["details"]["by_method"]) >= {"plain", "eagle2", "jakiro"}
    assert (tmp_path / "training.png").is_file() and (tmp_path / "tau_and_acceptance.png").is_file()
    assert facts["heldout_top1_jakiro"]["details"]["steps"] == 2  # the tiny budget, stated with the fact
    assert "1 interleaved run(s)" in report and env["reused_cache_seconds"] == {}
    # one more extra turn: the first block and the T = 1 run are reused, only the new block runs
    assert run(["reproduce", "--tiny", "--threads", "1", "--out", str(tmp_path), "--set", "extra_heldout=2"]) == 0
    env = json.loads((tmp_path / "env.json").read_text())
    assert set(env["reused_cache_seconds"]) == {"eval_greedy", "eval_t1"}
    assert (tmp_path / "runs" / "eval_greedy_1.json").is_file()
    assert "2 interleaved run(s)" in (tmp_path / "report.md").read_text()
    claims = {c["id"]: c for c in read_claims(tmp_path / "claims.json")["claims"]}
    assert claims["tau_ratio_jakiro_eagle2_greedy"]["n"] == 4 and claims["lossless_greedy"]["n"] == 20
