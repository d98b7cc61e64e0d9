"""Draft data (chat template, loss mask, cache), the head trainer and the CLI on a tiny random target."""

import json
import shutil

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    ChatFormatter,
    DraftDataConfig,
    EvalConfig,
    FeatureDataset,
    GenerationConfig,
    HeadTrainConfig,
    TargetAdapter,
    TreeConfig,
    autoregressive_generate,
    build_eagle_head,
    chat_example,
    eval_eagle,
    generate_draft_data,
    load_eagle_head,
    speculative_generate,
    train_head,
)
from transformers import LlamaConfig, LlamaForCausalLM

CONVERSATION = [{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "i am fine"},
                {"role": "user", "content": "what is the answer"}, {"role": "assistant", "content": "forty two"}]


def test_chat_example_masks_exactly_the_assistant_tokens(target):
    _, tokenizer, _ = target
    ids, mask = chat_example(ChatFormatter(tokenizer), CONVERSATION, max_len=100)
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    masked = [p for p, m in zip(pieces, mask.tolist(), strict=True) if m]
    # each assistant answer with its end-of-turn token and the newline after it
    assert masked == ["i", " ", "am", " ", "fine", "<|im_end|>", "\n", "forty", " ", "two", "<|im_end|>", "\n"]
    assert pieces[:4] == ["<|im_start|>", "user", "\n", "hello"]
    short_ids, short_mask = chat_example(ChatFormatter(tokenizer), CONVERSATION, max_len=10)
    assert short_ids.numel() == 10 and torch.equal(short_ids, ids[:10])


def test_unknown_or_missing_chat_template_is_a_clear_error(target, tiny_tokenizer_factory):
    _, tokenizer, _ = target
    with pytest.raises(UsageError, match="unknown chat template"):
        ChatFormatter(tokenizer, "no-such-template")
    bare = tiny_tokenizer_factory()
    bare.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        ChatFormatter(bare)


def test_draft_data_train_reload_and_lossless_with_a_trained_head(target, tmp_path):
    model, tokenizer, _ = target
    config = DraftDataConfig(target="tiny", sharegpt=24, max_len=64, feature_dtype="float32")
    folder = generate_draft_data(model, tokenizer, config, cache_root=tmp_path / "cache", progress=False)
    again = generate_draft_data(model, tokenizer, config, cache_root=tmp_path / "cache", progress=False)
    assert again == folder  # cached: same settings, same target -> same folder
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["samples"] > 10 and meta["hidden_size"] == 32
    sample = FeatureDataset(folder, "all")[0]
    with torch.no_grad():
        want = model.model(input_ids=sample["input_ids"].long()[None]).last_hidden_state[0]
    assert torch.allclose(sample["hidden_state"], want, atol=1e-5)  # post-final-norm features
    head = build_eagle_head(model.config, model.get_input_embeddings().weight)
    train = HeadTrainConfig(epochs=2, batch_size=4, lr=3e-3, warmup_steps=2, max_len=64)
    out = tmp_path / "run"
    result = train_head(head, model.lm_head.weight.detach(), folder, train, out, progress=False)
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and "eval_top1" in history[-1]
    resumed = train_head(build_eagle_head(model.config, model.get_input_embeddings().weight),
                         model.lm_head.weight.detach(), folder, train, out, progress=False)
    assert resumed["history"] == history  # resumed at the end: nothing retrained
    adapter = TargetAdapter(model, max_length=128)
    trained = load_eagle_head(out / "head.pt", adapter)
    assert torch.equal(trained.fc.weight, head.fc.weight)
    proposer = trained.make_proposer(model.lm_head.weight, TreeConfig(4, 3, 16))
    for seed in range(3):
        prompt = torch.randint(3, len(tokenizer), (6,), generator=torch.Generator().manual_seed(seed))
        plain = autoregressive_generate(adapter, prompt, GenerationConfig(max_new_tokens=32))
        assert speculative_generate(adapter, proposer, prompt, GenerationConfig(max_new_tokens=32)).tokens \
            == plain.tokens
    other = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=len(tokenizer))
    with pytest.raises(UsageError, match="hidden 32"):
        load_eagle_head(out / "head.pt", TargetAdapter(LlamaForCausalLM(other)))


def test_eval_harness_and_cli(target, tiny_tokenizer_factory, tmp_path, monkeypatch, capsys):
    from effrepro.specdec.cli import main

    _, _, folder = target
    monkeypatch.setenv("EFFREPRO_CACHE", str(tmp_path / "cache"))
    questions = tmp_path / "question.jsonl"
    questions.write_text('{"question_id": 1, "turns": ["tell me a story", "and more"]}\n'
                         '{"question_id": 2, "turns": ["what is the answer"]}\n')
    out = tmp_path / "eagle"
    assert main(["train-eagle", "--target", str(folder), "--out", str(out), "--sharegpt", "16", "--max-len", "64",
                 "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "1"]) == 0
    assert (out / "head.pt").is_file()
    model, tokenizer = LlamaForCausalLM.from_pretrained(folder).eval(), tiny_tokenizer_factory()
    adapter = TargetAdapter(model, max_length=256)
    config = EvalConfig(questions=str(questions), max_new_tokens=12, warmup=1, cost_model_repeats=3)
    result = eval_eagle(adapter, tokenizer, out / "head.pt", TreeConfig(3, 2, 8), config, tmp_path / "eval",
                        progress=False)
    summary = result["summary"]["eagle2"]
    assert summary["turns"] == 3 and summary["greedy_mismatches"] == 0
    assert summary["tau"] >= 1.0 and summary["cost_model_speedup"] > 0
    assert len((tmp_path / "eval" / "plain.jsonl").read_text().splitlines()) == 3
    assert main(["generate", "--target", str(folder), "--head", str(out / "head.pt"), "--prompt", "hello",
                 "--max-new-tokens", "8", "--top-k", "2", "--depth", "2", "--total-tokens", "6"]) == 0
    assert "tokens/s" in capsys.readouterr().out
    # --total-tokens -1 (generate's default): the tree tuned for this machine, measured once and cached
    record = tmp_path / "tune.json"
    assert main(["tune", "--target", str(folder), "--head", str(out / "head.pt"), "--tune-prompts", "1",
                 "--tune-tokens", "8", "--out", str(record)]) == 0
    chosen = json.loads(record.read_text())
    assert chosen["table"][0]["speedup"] == chosen["speedup"] and len(chosen["table"]) > 20
    assert main(["generate", "--target", str(folder), "--head", str(out / "head.pt"), "--prompt", "hello",
                 "--max-new-tokens", "8", "--tune-prompts", "1", "--tune-tokens", "8"]) == 0
    captured = capsys.readouterr()
    tree = chosen["tree"]
    assert "cached choice" in captured.err and "plain decoding" in captured.out
    assert f"top_k {tree['top_k']} depth {tree['depth']} total {tree['total_tokens']}" in captured.out
    with pytest.raises(UsageError, match="empty prompt"):
        main(["generate", "--target", str(folder), "--head", str(out / "head.pt"), "--prompt", " "])
    from effrepro.specdec.eagle import read_eagle_head  # --init-head: the same weights, fp32 and trainable

    start = read_eagle_head(out / "head.pt", model.get_input_embeddings().weight)
    loaded = load_eagle_head(out / "head.pt", adapter)
    assert start.fc.weight.requires_grad and torch.equal(start.fc.weight, loaded.fc.weight.float())
    with pytest.raises(UsageError, match="self_temperature"):
        main(["data", "--target", str(folder), "--sharegpt", "0", "--self-generated", "2", "--self-repeats", "2"])


def test_last_checkpoint_leaves_out_frozen_parts_and_resume_equals_a_straight_run(target, tmp_path):
    from effrepro.specdec.trainer import FROZEN_KEY

    model, tokenizer, _ = target
    folder = generate_draft_data(model, tokenizer, DraftDataConfig(target="tiny", sharegpt=16, max_len=64,
                                                                   feature_dtype="float32"),
                                 cache_root=tmp_path / "cache", progress=False)
    embed, lm_head = model.get_input_embeddings().weight, model.lm_head.weight.detach()
    train = HeadTrainConfig(epochs=2, batch_size=4, lr=3e-3, warmup_steps=2, max_len=64)
    torch.manual_seed(0)
    straight = build_eagle_head(model.config, embed)
    train_head(straight, lm_head, folder, train, tmp_path / "straight", progress=False)
    state = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert not [k for k in state["model"] if "embed_tokens" in k] and FROZEN_KEY in state["model"]
    assert "head.fc.weight" in state["model"]

    calls = {"n": 0}

    def interrupted(head, batch, ctx):  # dies in the second epoch, after epoch 1's last.pt
        calls["n"] += 1
        if ctx.epoch >= 1:
            raise KeyboardInterrupt
        return head.compute_loss(batch, ctx)

    torch.manual_seed(0)  # the same initial head
    with pytest.raises(KeyboardInterrupt):
        train_head(build_eagle_head(model.config, embed), lm_head, folder, train, tmp_path / "resumed",
                   loss_fn=interrupted, progress=False)
    resumed = build_eagle_head(model.config, embed)
    result = train_head(resumed, lm_head, folder, train, tmp_path / "resumed", progress=False)
    assert [row["epoch"] for row in result["history"]] == [1, 2]
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.equal(resumed.embed_tokens.weight, embed.detach().float())  # rebuilt from the target

    other = build_eagle_head(model.config, embed.detach() + 0.5)  # "another target" of the same shapes
    shutil.copytree(tmp_path / "straight", tmp_path / "other")
    with pytest.raises(UsageError, match="frozen parameters"):
        train_head(other, lm_head, folder, train, tmp_path / "other", progress=False)


def test_old_last_checkpoint_with_frozen_tensors_still_resumes(target, tmp_path):
    from effrepro.specdec.trainer import FROZEN_KEY, _HeadWithLoss

    model, _, _ = target
    head = build_eagle_head(model.config, model.get_input_embeddings().weight)
    wrapper = _HeadWithLoss(head, None)
    full = torch.nn.Module.state_dict(wrapper)  # the old format: every tensor, no fingerprint
    assert "head.embed_tokens.weight" in full and FROZEN_KEY not in full
    fresh = _HeadWithLoss(build_eagle_head(model.config, model.get_input_embeddings().weight), None)
    fresh.load_state_dict(full)
    assert torch.equal(fresh.head.fc.weight, head.fc.weight)
    full["head.embed_tokens.weight"] = full["head.embed_tokens.weight"] + 1
    with pytest.raises(UsageError, match="frozen parameters"):
        fresh.load_state_dict(full)


def test_prompt_list_and_prompt_sources_for_self_distillation(target, tmp_path):
    from effrepro.specdec.draft_data import distillation_prompts, load_prompt_file
    from effrepro.specdec.harness import load_questions, mtbench_split

    model, tokenizer, _ = target
    config = DraftDataConfig(target="tiny", sharegpt=0, self_generated=3, self_max_new_tokens=4, max_len=64,
                             feature_dtype="float32")
    prompts = ["hello how are you", "tell me a story", "what is the answer", "unused fourth"]
    folder = generate_draft_data(model, tokenizer, config, cache_root=tmp_path, progress=False, prompts=prompts)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["prompts"] == 3 and meta["samples"] == 3
    texts = [tokenizer.decode(sample["input_ids"].tolist()) for sample in FeatureDataset(folder, "all")]
    assert all(text.count("user") == 1 and text.count("assistant") == 1 for text in texts)
    assert sum("hello" in text for text in texts) == 1 and sum("story" in text for text in texts) == 1
    assert generate_draft_data(model, tokenizer, config, cache_root=tmp_path, progress=False,
                               prompts=prompts[1:]) != folder  # the list keys the cache
    with pytest.raises(UsageError, match="prompt list is empty"):
        generate_draft_data(model, tokenizer, config, cache_root=tmp_path, progress=False, prompts=[" "])

    train, held = mtbench_split()
    assert len(train) == 72 and len(held) == 8 and {q["question_id"] for q in held} == set(range(81, 161, 10))
    assert load_questions("mtbench-heldout") == held
    mixed = distillation_prompts([], "mtbench-train")
    assert mixed == [q["turns"][0].strip() for q in train]
    assert not {q["turns"][0].strip() for q in held} & set(mixed)
    text = tmp_path / "p.txt"
    text.write_text("one\n\ntwo\none\n")
    rows = tmp_path / "p.jsonl"
    rows.write_text('{"prompt": "three"}\n{"turns": ["four", "x"]}\n')
    assert load_prompt_file(text) == ["one", "two", "one"]
    assert distillation_prompts([], f"{text},{rows}") == ["one", "two", "three", "four"]
    with pytest.raises(UsageError, match="neither"):
        distillation_prompts([], "no-such-source")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(UsageError, match="bad.jsonl:1"):
        load_prompt_file(bad)


def test_multi_turn_self_generation_answers_each_turn_after_its_own_answers(target):
    from effrepro.specdec.draft_data import self_generate
    from effrepro.specdec.generate import stop_tokens

    model, tokenizer, _ = target
    formatter = ChatFormatter(tokenizer)
    greedy = DraftDataConfig(target="tiny", sharegpt=0, self_max_new_tokens=4, max_len=128)
    chat = self_generate(model, tokenizer, formatter, [("hello how are you", "tell me a story")], greedy)
    single = self_generate(model, tokenizer, formatter, ["hello how are you"], greedy)
    assert len(chat) == 1 and [m["role"] for m in chat[0]] == ["user", "assistant", "user", "assistant"]
    assert chat[0][:2] == single[0]  # turn one is answered exactly as the single prompt is
    # turn two: plain greedy decoding of the conversation so far, the target's own first answer included
    prompt = formatter.prompt_ids(chat[0][:3])
    row = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], max_new_tokens=4,
                         do_sample=False, pad_token_id=2)[0, prompt.numel():].tolist()
    stops = set(stop_tokens(model, tokenizer))
    cut = next((i for i, token in enumerate(row) if token in stops), len(row))
    assert chat[0][3]["content"] == tokenizer.decode(row[:cut], skip_special_tokens=True)
    # a turn that would not fit max_len ends the conversation after the turns that did
    tight = DraftDataConfig(target="tiny", sharegpt=0, self_max_new_tokens=4, max_len=prompt.numel() + 3)
    cut_short = self_generate(model, tokenizer, formatter, [("hello how are you", "tell me a story")], tight)
    assert cut_short == [chat[0][:2]]


def test_sampled_repeats_and_their_config_errors(target):
    from effrepro.specdec.draft_data import data_key, self_generate

    model, tokenizer, _ = target
    formatter = ChatFormatter(tokenizer)
    sampled = DraftDataConfig(target="tiny", sharegpt=0, self_max_new_tokens=6, max_len=128, self_temperature=1.0,
                              self_repeats=3)
    out = self_generate(model, tokenizer, formatter, ["hello how are you", ("what is the answer", "why")], sampled)
    first = [c[1]["content"] for c in out if c[0]["content"] == "hello how are you"]
    chats = [c for c in out if c[0]["content"] == "what is the answer"]
    assert len(first) == 3 and len(set(first)) > 1  # three answers, not one repeated
    assert len(chats) == 3 and all(len(c) == 4 and c[2]["content"] == "why" for c in chats)
    assert self_generate(model, tokenizer, formatter, ["hello how are you", ("what is the answer", "why")],
                         sampled) == out  # seeded
    greedy = DraftDataConfig(target="tiny", sharegpt=0)
    assert data_key(greedy, model) != data_key(sampled, model)
    with pytest.raises(UsageError, match="self_temperature"):
        DraftDataConfig(self_repeats=2)
    with pytest.raises(UsageError, match="self_repeats"):
        DraftDataConfig(self_repeats=0, self_temperature=0.7)


def test_mtbench_train_chat_prompts_and_extra_data_sources():
    from effrepro.specdec.draft_data import distillation_prompts
    from effrepro.specdec.harness import mtbench_split
    from effrepro.specdec.miniature import parse_extra_data

    train, held = mtbench_split()
    chats = distillation_prompts([], "mtbench-train-chat")
    assert chats == [tuple(turn.strip() for turn in q["turns"]) for q in train] and all(len(c) == 2 for c in chats)
    assert not {tuple(turn.strip() for turn in q["turns"]) for q in held} & set(chats)
    base = DraftDataConfig(target="smollm2-135m", sharegpt=0, self_generated=784, max_len=1024)
    greedy, sampled = parse_extra_data(["mtbench-train-chat:0:1:96", "a.txt,corpus:0.7:2:64"], base)
    assert (greedy.prompts, greedy.self_temperature, greedy.self_repeats, greedy.self_max_new_tokens) == \
        ("mtbench-train-chat", 0.0, 1, 96)
    assert (sampled.prompts, sampled.self_temperature, sampled.self_repeats, sampled.max_len) == \
        ("a.txt,corpus", 0.7, 2, 1024)
    for bad, message in (("mtbench-train-chat:0.7", "expected"), ("x:0.7:two:96", "expected"),
                         ("x:0.7:2:0", "MAX_NEW_TOKENS"), ("x:0:2:96", "self_temperature")):
        with pytest.raises(UsageError, match=message):
            parse_extra_data([bad], base)


@pytest.mark.slow
def test_smollm2_draft_data_cache_key_is_stable():
    """Fields added to ``DraftDataConfig`` must not move the keys of existing caches (hours of CPU time): this is
    the key of the recorded miniature run B (784 self-distilled prompts)."""
    from effrepro.data import load_target
    from effrepro.specdec.draft_data import data_key

    model, _ = load_target()
    model.config._name_or_path = "/root/.cache/effrepro/models/smollm2-135m"  # the recorded run's cache path
    config = DraftDataConfig(target="smollm2-135m", sharegpt=0, self_generated=784, self_max_new_tokens=128,
                             max_len=1024, prompts="mtbench-train,sharegpt,corpus")
    assert data_key(config, model) == "a30fb8f4f645feb6"


def test_reduced_vocabulary_training_saves_the_map_and_the_trained_head_is_lossless(target, tmp_path):
    from effrepro.specdec.vocab import frequent_tokens, token_counts
    from effrepro.train import load_checkpoint

    model, tokenizer, _ = target
    config = DraftDataConfig(target="tiny", sharegpt=24, max_len=64, feature_dtype="float32")
    folder = generate_draft_data(model, tokenizer, config, cache_root=tmp_path / "cache", progress=False)
    counts = token_counts(folder, len(tokenizer))
    assert int(counts.sum()) == json.loads((folder / "meta.json").read_text())["supervised_tokens"]
    head = build_eagle_head(model.config, model.get_input_embeddings().weight)
    train = HeadTrainConfig(epochs=2, batch_size=4, lr=3e-3, warmup_steps=2, max_len=64, draft_vocab=12)
    result = train_head(head, model.lm_head.weight.detach(), folder, train, tmp_path / "run", progress=False)
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    state = load_checkpoint(tmp_path / "run" / "head.pt")
    assert state["draft_vocab"] == 12 and torch.equal(state["state_dict"]["d2t"], frequent_tokens(counts, 12))
    adapter = TargetAdapter(model, max_length=128)
    trained = load_eagle_head(tmp_path / "run" / "head.pt", adapter)
    assert torch.equal(trained.draft_vocab, frequent_tokens(counts, 12))
    proposer = trained.make_proposer(model.lm_head.weight, TreeConfig(4, 3, 16))
    assert proposer.lm_head.shape[0] == 12
    accepted = 0
    for seed in range(3):
        prompt = torch.randint(3, len(tokenizer), (6,), generator=torch.Generator().manual_seed(seed))
        plain = autoregressive_generate(adapter, prompt, GenerationConfig(max_new_tokens=32))
        spec = speculative_generate(adapter, proposer, prompt, GenerationConfig(max_new_tokens=32))
        assert spec.tokens == plain.tokens
        accepted += sum(spec.accept_lengths)
    with pytest.raises(UsageError, match="already drafts over 12"):
        train_head(trained.float(), model.lm_head.weight.detach(), folder,
                   HeadTrainConfig(epochs=1, batch_size=4, max_len=64, draft_vocab=8), tmp_path / "again",
                   progress=False)
