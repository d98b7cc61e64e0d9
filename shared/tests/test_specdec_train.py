"""Draft data (chat template, loss mask, cache), the head trainer and the CLI on a tiny random target."""

import json

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
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = ("hello there how are you i am fine thanks what is the answer to life it is forty two and more words "
         "the quick brown fox jumps over lazy dog please tell me a story once upon a time").split()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "user": 3, "assistant": 4, "system": 5, "\n": 6, " ": 7}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[ \n]"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>", pad_token="<|im_end|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                         eos_token_id=2, bos_token_id=1, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny_target")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


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


def test_unknown_or_missing_chat_template_is_a_clear_error(target):
    _, tokenizer, _ = target
    with pytest.raises(UsageError, match="unknown chat template"):
        ChatFormatter(tokenizer, "no-such-template")
    bare = tiny_tokenizer()
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


def test_eval_harness_and_cli(target, tmp_path, monkeypatch, capsys):
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
    model, tokenizer = LlamaForCausalLM.from_pretrained(folder).eval(), tiny_tokenizer()
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
    assert "tokens" in capsys.readouterr().out
    with pytest.raises(UsageError, match="empty prompt"):
        main(["generate", "--target", str(folder), "--head", str(out / "head.pt"), "--prompt", " "])
