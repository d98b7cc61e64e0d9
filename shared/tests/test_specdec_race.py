"""``python -m effrepro.specdec race``: the per-method table from known turn records, an end-to-end race on a tiny
target (lossless, files written) and the command line's errors."""

import importlib.util
import json

import pytest
import torch
from effrepro.specdec import TreeConfig, build_eagle_head
from effrepro.specdec import race as race_mod
from effrepro.specdec.eagle import eagle_factory
from effrepro.specdec.harness import EvalConfig
from effrepro.specdec.race import RaceMethod, available_methods, race, race_markdown, summarize_race


def _rows(tokens_and_seconds):
    return [{"question_id": i, "turn": 0, "new_tokens": t, "wall_time": s}
            for i, (t, s) in enumerate(tokens_and_seconds)]


def test_race_table_from_known_records():
    records = {"plain": _rows([(10, 1.0), (30, 3.0)]), "fast": _rows([(10, 0.5), (30, 1.5)])}
    summary = {"fast": {"tau": 2.0, "cost_model_speedup": 0.8, "greedy_mismatches": 0,
                        "draft_ms_per_cycle_median": 5.0}}
    method = RaceMethod(factory=lambda target: None, tree={"top_k": 2, "depth": 3, "total_tokens": 8})
    table = summarize_race(records, summary, {"step": 0.1}, {"fast": method})
    assert table["plain"]["tokens_per_s"]["value"] == pytest.approx(10.0)
    assert table["fast"]["tokens_per_s"]["value"] == pytest.approx(20.0)
    assert table["fast"]["speedup_vs_plain"]["value"] == pytest.approx(2.0)
    assert table["fast"]["break_even_tau"] == pytest.approx(2.5)  # tau / (tau * t_step / (t_draft + t_verify))
    text = race_markdown({"methods": table})
    assert "| fast | 2, 3, 8 | 2.00 | 20.00" in text and "| plain greedy |" in text


def test_race_end_to_end_is_lossless_and_writes_its_files(target, tmp_path, monkeypatch):
    model, tokenizer, _ = target
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).eval()

    def contestant(tree):
        return lambda: (lambda m, t: RaceMethod(eagle_factory(head, tree), {"top_k": tree.top_k, "depth": tree.depth,
                                                                             "total_tokens": tree.total_tokens}))

    monkeypatch.setattr(race_mod, "available_methods",
                        lambda: {"small": contestant(TreeConfig(2, 2, 4)), "large": contestant(TreeConfig(3, 3, 10))})
    questions = tmp_path / "question.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["tell me a story", "and more"]}\n'
                         '{"question_id": 2, "turns": ["what is the answer"]}\n')
    config = EvalConfig(questions=str(questions), max_new_tokens=10, warmup=0, cost_model_repeats=2)
    with torch.no_grad():
        document = race(model, tokenizer, ["small", "large"], config, tmp_path / "race", progress=False)
    methods = document["methods"]
    assert list(methods) == ["plain", "small", "large"]
    for name in ("small", "large"):
        assert methods[name]["greedy_mismatches"] == 0 and methods[name]["speedup_vs_plain"]["n"] == 3
        assert methods[name]["break_even_tau"] > 1.0
    assert methods["large"]["tree"]["total_tokens"] == 10
    assert json.loads((tmp_path / "race" / "race.json").read_text())["methods"]["small"]["tau"] >= 1.0
    written = (tmp_path / "race" / "race.md").read_text()
    assert "| large | 3, 3, 10 |" in written and "thread(s), load average" in written
    assert document["env"]["eval_wall_seconds"] > 0
    with pytest.raises(Exception, match="unknown method"):
        race(model, tokenizer, ["nope"], config)


def test_harness_without_plain_decoding_gives_the_same_turns_numbered_from_first_number(target, tmp_path):
    """``evaluate(baseline=False)`` runs only the methods; the records of each method are those of a run with the
    baseline (greedy), and ``first_number`` shifts the rotating order and seeds but not greedy outputs."""
    from effrepro.specdec.harness import evaluate

    model, tokenizer, _ = target
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).eval()
    methods = {"small": eagle_factory(head, TreeConfig(2, 2, 4)), "large": eagle_factory(head, TreeConfig(3, 3, 10))}
    questions = tmp_path / "question.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["tell me a story"]}\n'
                         '{"question_id": 2, "turns": ["what is the answer"]}\n')
    config = EvalConfig(questions=str(questions), max_new_tokens=10, warmup=0, cost_model_repeats=2)
    with torch.no_grad():
        full = evaluate(target=_adapter(model), tokenizer=tokenizer, methods=methods, config=config, progress=False)
        alone = evaluate(_adapter(model), tokenizer, methods, config, progress=False, baseline=False,
                         first_number=5)
    assert list(full["records"]) == ["plain", "small", "large"] and list(alone["records"]) == ["small", "large"]
    assert alone["costs"] is None and "speedup" not in alone["summary"]["small"]
    for name in methods:
        assert [r["tokens"] for r in alone["records"][name]] == [r["tokens"] for r in full["records"][name]]
        assert [r["question_id"] for r in alone["records"][name]] == [1, 2]


def _adapter(model):
    from effrepro.specdec import TargetAdapter

    return TargetAdapter(model, max_length=256)


def test_installed_projects_register_their_methods():
    names = available_methods()
    assert "eagle2" in names
    for project in ("jakiro", "gumiho"):
        if importlib.util.find_spec(project) is not None:
            assert project in names, f"{project} is installed but does not register a race method"


@pytest.mark.parametrize(("argv", "message"), [
    (["race", "--methods", "eagle2,nope"], "unknown ['nope']"),
    (["race", "--target", "/some/model"], "miniature heads"),
])
def test_race_cli_errors(argv, message, capsys):
    from effrepro.specdec.cli import main

    with pytest.raises(SystemExit) as exit_info:
        from effrepro.errors import run_cli

        run_cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
