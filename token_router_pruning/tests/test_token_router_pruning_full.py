"""The full-scale path (``reproduce --scale full``) end to end on tiny local files: a 2-layer Llama built from a
config with the SmolLM2 tokenizer, an Alpaca json, a text corpus and the paper's tasks as local JSONL; and its
one-line errors for bad settings, raised before any model work."""

from __future__ import annotations

import json

import pytest
import torch
from effrepro.report import read_claims
from token_router_pruning.cli import main

SMALL = ["data.text_len=32", "data.redundancy_windows=2", "data.ppl_windows=1", "data.train_windows=2",
         "data.router_text_len=48", "data.router_heldout=2", "data.blockpruner_windows=1", "data.blockpruner_len=24",
         "data.calib_limit=4", "data.test_per_family=0", "data.fitness_batch_size=2", "ga.population=3",
         "ga.generations=1", "ga.elitism=1", "finetune.population=2", "finetune.generations=1", "router.steps=2",
         "router.steps_per_epoch=1", "router.warm_start=2", "bench.seq_len=64", "bench.repeats=2", "bench.warmup=0",
         "blockpruner_lazy_top=2", "allocations=[uniform]", "latency_methods=[ftp]", "budgets=[0.25]"]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-layer Llama directory, an Alpaca json, a corpus and ARC-Easy / WinoGrande rows in the HF layout."""
    from effrepro.data.llm import resolve_model_dir
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("full")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    alpaca = [{"instruction": f"Name a colour that rhymes with {w}.", "input": "" if i % 2 else f"Word: {w}",
               "output": f"A colour for {w} is red, because it is short."} for i, w in enumerate(
                   ["bed", "head", "fed", "led", "said", "shed", "wed", "thread"])]
    (root / "alpaca.json").write_text(json.dumps(alpaca))
    sentence = "The quick brown fox jumps over the lazy dog while the river runs past the old stone mill. "
    (root / "corpus.txt").write_text(sentence * 120)
    arc = root / "tasks" / "arc_easy"
    arc.mkdir(parents=True)
    rows = [{"id": f"q{i}", "question": f"Which number is {i} plus one?",
             "choices": {"text": [str(i + 1), str(i + 2), str(i + 3), str(i)], "label": ["A", "B", "C", "D"]},
             "answerKey": "A"} for i in range(6)]
    (arc / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    wino = root / "tasks" / "winogrande"
    wino.mkdir()
    rows = [{"sentence": f"Tom gave Bob {i} apples because _ was hungry.", "option1": "Tom", "option2": "Bob",
             "answer": "2"} for i in range(4)]
    (wino / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # the GA's calibration
    (wino / "validation.jsonl").write_text("".join(json.dumps(dict(r, sentence=r["sentence"].replace("apples",
                                                                                                   "pears")))
                                                   + "\n" for r in rows))
    return root


def _args(files, *extra):
    cfg = [x for item in SMALL for x in ("--cfg", item)]
    return ["reproduce", "--scale", "full", "--target", str(files / "model"), "--data",
            f"alpaca={files / 'alpaca.json'}", "--data", f"corpus={files / 'corpus.txt'}", "--device", "cpu",
            "--threads", "1", *cfg, *extra]


@pytest.mark.slow
def test_full_scale_runs_end_to_end_on_tiny_local_files(files, tmp_path, capsys):
    code, out = _run(_args(files, "--tasks-dir", str(files / "tasks"), "--out", str(tmp_path / "run")), capsys)
    assert code == 0, out.err
    document = read_claims(tmp_path / "run" / "claims.json")
    claims = {c["id"] for c in document["claims"]}
    assert {"ftp_retention_25", "ftp_vs_shortgpt_25", "ftp_vs_blockpruner_25", "trained_vs_static_25",
            "prefill_speedup_25"} <= claims
    facts = {f["id"]: f for f in document["facts"]}
    assert facts["test_items"]["value"] == 6 + 4  # every arc_easy and winogrande row, scored by lm-eval itself
    router = facts["router_heldout_kl"]["details"]
    assert router["heldout_prompts"] == 2 and router["examples"] == 2 + 6  # corpus windows + Alpaca rows
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["plan_fields"]["dtype"] == "float32" and env["plan_fields"]["device"] == "cpu"


def test_full_scale_bad_settings_are_one_line_before_any_work(files, tmp_path, capsys):
    cases = [
        (["--cfg", "data.redundancy_windows=1000", "--tasks-dir", str(files / "tasks")],
         "data.redundancy_windows=1000 needs 1000 calib windows of 32 tokens; the corpus"),
        ([], "is not in the local HF datasets cache"),  # no --tasks-dir: lm-eval's datasets, none cached here
        (["--data", "notes=x.txt"], "give KIND=PATH"),
        (["--data", f"alpaca={files / 'corpus.txt'}", "--tasks-dir", str(files / "tasks")], "not JSON"),
        (["--dtype", "int8"], "--dtype 'int8'"),
        (["--device", "tpu"], "use cpu, cuda or cuda:N"),
        (["--device-map", "auto"], "needs --device cuda"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "no CUDA device"))
    for extra, message in cases:
        code, out = _run(_args(files, "--out", str(tmp_path / "o"), *extra), capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, (extra, out.err)
    assert not (tmp_path / "o" / "claims.json").exists()
