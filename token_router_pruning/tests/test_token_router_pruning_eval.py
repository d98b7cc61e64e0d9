"""Tasks, the batched scorer vs lm-eval, text windows, perplexity, paper-task plumbing, baselines, redundancy."""

from __future__ import annotations

import json

import pytest
import torch
from effrepro.errors import UsageError
from token_router_pruning.baselines import blockpruner_search, layer_plan, matched_shortgpt, shortgpt_layers
from token_router_pruning.eval import (
    LmEval,
    encode_items,
    mc_metrics,
    option_logliks,
    perplexity,
    retention,
    text_windows,
)
from token_router_pruning.flops import ModelDims, model_flops
from token_router_pruning.ftp import SkipPlan, StaticRouter, attach
from token_router_pruning.redundancy import redundancy
from token_router_pruning.tasks import (
    FAMILIES,
    MINI_DIR,
    SPLITS,
    generate_items,
    load_mini_items,
    paper_task_configs,
    train_items,
    write_mini_task_yamls,
)


@pytest.fixture(scope="module")
def tokenizer():
    from effrepro.data import cache_dir

    path = cache_dir() / "models" / "smollm2-135m"
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        pytest.skip("the SmolLM2 tokenizer is not prepared (make setup)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_shipped_items_are_reproducible_and_disjoint():
    for family in FAMILIES:
        for split, n in SPLITS.items():
            shipped = [json.loads(line) for line in (MINI_DIR / f"{family}_{split}.jsonl").read_text().splitlines()]
            assert shipped == generate_items(family, split, n)
            for item in shipped:
                assert len(item["choices"]) == 4 and 0 <= item["gold"] < 4
        test = generate_items(family, "test", SPLITS["test"])
        assert len(test) >= 200
        # calibration (GA fitness) and train (router) prompts never share a context with a test item
        for split in ("calibration", "train"):
            other = {i["context"] for i in generate_items(family, split, 200)}
            assert not other & {i["context"] for i in test}, (family, split)
    assert [i["context"] for i in train_items(2, families=("recall",))] == \
        [i["context"] for i in generate_items("recall", "train", 2)]
    with pytest.raises(UsageError, match="unknown task family"):
        generate_items("riddles", "test", 1)
    with pytest.raises(UsageError, match="requested"):
        load_mini_items("test", per_family=10000)


def test_options_are_single_tokens(tokenizer):
    for split in SPLITS:
        for item in load_mini_items(split):
            for choice in item["choices"]:
                assert len(tokenizer(" " + choice, add_special_tokens=False).input_ids) == 1, choice


def _tiny_with_vocab(tiny_llama, tokenizer, attn="sdpa"):
    return tiny_llama(vocab=len(tokenizer), dtype=torch.float32, attn=attn, layers=3)


def test_batched_scorer_equals_lm_eval(tiny_llama, tokenizer, tmp_path):
    model = _tiny_with_vocab(tiny_llama, tokenizer)
    skipper = attach(model)
    items = load_mini_items("test", per_family=2)
    encoded = encode_items(tokenizer, items)
    names = write_mini_task_yamls(tmp_path)
    harness = LmEval(model, tokenizer, names, include_path=[tmp_path], limit=2)
    plan = SkipPlan(sparsity=(0.0, 0.4, 0.3), router=StaticRouter())
    for active in (None, plan):
        with torch.no_grad(), skipper.use(active):
            ours = option_logliks(model, encoded, batch_size=4)
            gold_only = option_logliks(model, encoded, batch_size=3, gold_only=True)
            theirs = harness.run()
        lm_gold = [v for fam in FAMILIES for v in theirs[f"ftp_mini_{fam}"]["gold_loglik"]]
        ours_gold = [ll[item.gold] for ll, item in zip(ours, encoded)]
        assert ours_gold == pytest.approx(lm_gold, abs=1e-4)
        assert [g[0] for g in gold_only] == pytest.approx(ours_gold, abs=1e-4)
        acc = mc_metrics(encoded, ours)["acc"]
        lm_acc = sum(theirs[f"ftp_mini_{f}"]["acc"] for f in FAMILIES) / len(FAMILIES)
        assert acc == pytest.approx(lm_acc)


def test_multi_token_continuations(tiny_llama, tokenizer):
    model = _tiny_with_vocab(tiny_llama, tokenizer)
    items = [{"context": "The capital of France is", "choices": ["Paris and Lyon", "Rome"], "gold": 0}]
    encoded = encode_items(tokenizer, items)
    assert len(encoded[0].continuations[0]) > 1
    with torch.no_grad():
        scores = option_logliks(model, encoded)[0]
        ids = torch.tensor([encoded[0].context + encoded[0].continuations[0]])
        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
    n_ctx = len(encoded[0].context)
    expected = sum(float(logprobs[n_ctx - 1 + j, t]) for j, t in enumerate(encoded[0].continuations[0]))
    assert scores[0] == pytest.approx(expected, abs=1e-4)


def test_text_windows_splits_and_perplexity(tiny_llama, tokenizer):
    windows = {s: text_windows(tokenizer, 64, s, 3) for s in ("eval", "calib", "train")}
    rows = {s: {tuple(r.tolist()) for r in w} for s, w in windows.items()}
    assert not rows["eval"] & rows["calib"] and not rows["eval"] & rows["train"]
    assert torch.equal(text_windows(tokenizer, 64, "eval", 3), windows["eval"])
    model = _tiny_with_vocab(tiny_llama, tokenizer)
    ppl = perplexity(model, windows["eval"], tail=16)
    assert ppl["tail_ppl"] > 1 and ppl["ppl"] > 1 and ppl["tokens"] == 3 * 63
    with pytest.raises(UsageError, match="unknown text split"):
        text_windows(tokenizer, 64, "dev")


def test_retention():
    assert retention({"a": 0.5, "b": 0.9}, {"a": 0.5, "b": 1.0}) == pytest.approx(95.0)
    with pytest.raises(UsageError):
        retention({"a": 0.5}, {"a": 0.0})


def test_paper_tasks_from_local_jsonl(tiny_llama, tokenizer, tmp_path):
    arc = tmp_path / "arc_easy"
    arc.mkdir()
    rows = [{"id": str(i), "question": f"Which number is {i}?", "answerKey": "B",
             "choices": {"text": ["zero", str(i), "ten"], "label": ["A", "B", "C"]}} for i in range(3)]
    (arc / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = paper_task_configs(tmp_path)
    assert [c["task"] for c in configs] == ["arc_easy"]
    assert configs[0]["dataset_kwargs"]["data_files"] == {"test": str((arc / "test.jsonl").resolve())}
    model = _tiny_with_vocab(tiny_llama, tokenizer)
    out = LmEval(model, tokenizer, configs, metric={"arc_easy": "acc_norm"}).run()
    assert out["arc_easy"]["n"] == 3 and 0.0 <= out["arc_easy"]["acc"] <= 1.0
    with pytest.raises(UsageError, match="none of the paper"):
        paper_task_configs(tmp_path / "arc_easy")
    with pytest.raises(UsageError, match="no such directory"):
        paper_task_configs(tmp_path / "missing")


def test_redundancy_identity_block_and_shortgpt(tiny_llama, tokens):
    model = tiny_llama(layers=4)
    skipper = attach(model)
    windows = tokens(3, 20)
    with skipper.use(layer_plan([2])):
        report = redundancy(model, windows, edge=1)
    assert torch.allclose(report.cosines[2], torch.ones_like(report.cosines[2]))
    assert report.block_influence[2] == pytest.approx(0.0, abs=1e-12)
    assert report.share_per_block[2] == 1.0
    dense = redundancy(model, windows, edge=1)
    assert 0.0 <= dense.overall_share <= 1.0 and len(dense.block_influence) == 4
    assert shortgpt_layers([0.5, 0.1, 0.3, 0.1], 2) == [1, 3]
    dims = ModelDims.from_config(model.config)
    plan, ratio = matched_shortgpt([0.5, 0.1, 0.3, 0.2], dims, 20, 0.5)
    assert sorted({i for i, _ in plan.removed}) == [1, 3] and ratio == pytest.approx(0.5)


def test_blockpruner_greedy(tiny_llama, tokens):
    model = tiny_llama(layers=3, dtype=torch.float32)
    skipper = attach(model)
    dims = ModelDims.from_config(model.config)
    windows = tokens(2, 16)
    result = blockpruner_search(model, skipper, windows, dims, 16, 0.6, lazy_top=None)
    assert len(set(result.order)) == len(result.order)
    assert model_flops(dims, 16, removed=result.order).ratio <= 0.6
    assert model_flops(dims, 16, removed=result.order[:-1]).ratio > 0.6
    # the first choice is the sub-block whose removal hurts the calibration NLL least
    scores = {}
    for layer in range(3):
        for part in ("attn", "mlp"):
            with torch.no_grad(), skipper.use(SkipPlan(removed=frozenset({(layer, part)}))):
                logits = model(windows).logits
            scores[(layer, part)] = float(torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))
    assert result.order[0] == min(scores, key=scores.get)
    assert result.nll[0] == pytest.approx(scores[result.order[0]], abs=1e-5)
    lazy = blockpruner_search(model, skipper, windows, dims, 16, 0.6, lazy_top=2)
    assert lazy.evaluations < result.evaluations and lazy.order[0] == result.order[0]
