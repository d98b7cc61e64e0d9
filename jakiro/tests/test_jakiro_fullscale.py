"""Jakiro on the engine: its config extends the engine's draft config, and the full-scale data settings refuse
what they cannot deliver (ShareGPT counts, missing files, unknown chat templates) before any work."""

import json

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import DraftModelConfig, TreeConfig
from effrepro.train.checkpoint import config_from
from jakiro.data import read_sharegpt
from jakiro.draft_sources import DataSettings
from jakiro.jakiro import JakiroConfig, JakiroDraft
from transformers import LlamaConfig


def llama(**overrides) -> LlamaConfig:
    values = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=50, pad_token_id=0, rms_norm_eps=1e-5, hidden_act="silu")
    return LlamaConfig(**{**values, **overrides})


def test_jakiro_config_extends_the_engines_draft_config():
    assert issubclass(JakiroConfig, DraftModelConfig)
    config = JakiroConfig.from_target(llama(), variant="star")
    engine = DraftModelConfig.from_target(llama())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                "rms_norm_eps", "rope_theta", "fc_bias", "num_layers"):
        assert getattr(config, key) == getattr(engine, key)
    assert (config.pad_token_id, config.variant, config.expert_width) == (0, "star", 64)
    assert config.llama_config().num_hidden_layers == 1
    with pytest.raises(UsageError, match="one decoder layer"):
        JakiroConfig.from_target(llama(), num_layers=2)
    with pytest.raises(UsageError, match="variant"):
        JakiroConfig.from_target(llama(), variant="moe")


def test_heads_saved_before_the_shared_config_still_load():
    """A head.pt config written before JakiroConfig extended the engine's (no hidden_act / num_layers)."""
    old = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 50, "head_dim": None, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "max_position_embeddings": 2048, "pad_token_id": None, "variant": "jakiro", "fc_bias": True,
           "expert_intermediate_size": None}
    config = config_from(JakiroConfig, old, "head.pt")
    draft = JakiroDraft(config)
    assert sum(p.numel() for p in draft.parameters() if p.requires_grad) > 0


def test_sharegpt_limits_beyond_the_file_are_errors(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(4)]
    rows.append({"conversations": [{"from": "human", "value": "no answer"}]})  # unusable
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    assert len(read_sharegpt(path, limit=4)) == 4 and len(read_sharegpt(path, limit=0)) == 4
    assert read_sharegpt(path, limit=2) == read_sharegpt(path, limit=2)  # seeded order
    with pytest.raises(UsageError, match="--limit 68000 .* holds 4"):
        read_sharegpt(path)
    with pytest.raises(UsageError, match="not found"):
        DataSettings(prompts=0, sharegpt_json=str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="500"):
        DataSettings(prompts=0, sharegpt=68000)  # the shipped set holds 500 dummy conversations
    with pytest.raises(UsageError, match="unknown chat template"):
        DataSettings(chat_template="vicuna-7b")
    assert DataSettings(chat_template="vicuna_v1.1").chat_template == "vicuna_v1.1"


def test_proposers_come_from_the_proposer_module_not_the_head():
    from jakiro.jakiro import JakiroProposer, StarProposer, make_proposer

    assert not hasattr(JakiroDraft, "make_proposer")
    torch.manual_seed(0)
    for variant, kind in (("jakiro", JakiroProposer), ("star", StarProposer)):
        draft = JakiroDraft(JakiroConfig.from_target(llama(), variant=variant))
        lm_head = torch.randn(50, 32)
        assert isinstance(make_proposer(draft, lm_head, TreeConfig(2, 3, 8)), kind)


def test_cli_refuses_bad_full_scale_settings_before_loading_the_target(tmp_path):
    from jakiro.cli import run

    with pytest.raises(UsageError, match="500"):
        run(["data", "--sharegpt", "68000"])
    with pytest.raises(UsageError, match="not found|no such file"):
        run(["train", "--method", "jakiro", "--out", str(tmp_path), "--sharegpt-json", str(tmp_path / "no.json")])
    with pytest.raises(UsageError, match="unknown chat template"):
        run(["data", "--prompts", "1", "--chat-template", "vicuna-7b"])
    with pytest.raises(UsageError, match="unknown chat template"):
        run(["eval", "--heads", str(tmp_path), "--chat-template", "vicuna-7b"])
    assert not any(tmp_path.iterdir())


def test_a_released_eagle_head_can_stand_in_for_the_baseline(tmp_path):
    """``--heads DIR`` with ``DIR/eagle2/pytorch_model.bin`` (a released EAGLE-2 head) instead of ``head.pt``."""
    from effrepro.specdec import EagleHead, build_eagle_head
    from effrepro.testing import tiny_llama
    from jakiro.train import load_head

    target = tiny_llama(vocab=50, hidden=32, dtype=torch.float32)
    embed = target.get_input_embeddings().weight
    head = build_eagle_head(target.config, embed)
    released = {k: v.half() for k, v in head.trainable_state_dict().items() if "rotary" not in k}
    released["embed_tokens.weight"] = embed.detach().half()
    (tmp_path / "eagle2").mkdir()
    torch.save(released, tmp_path / "eagle2" / "pytorch_model.bin")
    loaded = load_head(tmp_path / "eagle2" / "head.pt", target)
    assert isinstance(loaded, EagleHead)
    torch.testing.assert_close(loaded.fc.weight, head.fc.weight.half().float(), rtol=0, atol=0)
    with pytest.raises(UsageError, match="not found"):
        load_head(tmp_path / "jakiro" / "head.pt", target)
