"""Gumiho on the engine: its config extends the engine's draft config, its proposer uses the engine's KV cache,
the full-scale recipe refuses a ShareGPT count it cannot deliver, and FTA at T > 0 verifies as the official code."""

import json

import pytest
import torch
from effrepro.config import load_config
from effrepro.errors import UsageError
from effrepro.specdec import DraftModelConfig, TreeConfig
from effrepro.specdec.generate import GenerationConfig, speculative_generate
from effrepro.specdec.target import TreeKVCache
from effrepro.specdec.verify import SamplingConfig, rows_sample_verify
from gumiho.cli import CONFIGS
from gumiho.config import GumihoRunConfig, GumihoTreeConfig
from gumiho.gumiho import GumihoConfig, GumihoDraft, make_proposer
from transformers import LlamaConfig

FULL = CONFIGS / "full.yaml"


def test_gumiho_config_extends_the_engines_draft_config():
    assert issubclass(GumihoConfig, DraftModelConfig)
    target = LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=50, pad_token_id=3, rope_theta=5e5)
    config = GumihoConfig.from_target(target, mlp_num=3)
    assert (config.num_layers, config.serial_steps, config.mlp_num, config.depth) == (2, 2, 3, 5)  # own defaults
    assert (config.pad_token_id, config.rope_theta, config.fc_bias) == (3, 5e5, True)
    assert config.llama_config().num_hidden_layers == 2
    with pytest.raises(UsageError, match="divisible"):
        GumihoConfig(hidden_size=30, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=5)


def test_full_recipe_without_its_sharegpt_file_is_an_error(tmp_path):
    config = load_config(FULL, GumihoRunConfig, [])
    assert config.data.sharegpt == 68000 and not config.data.sharegpt_path
    with pytest.raises(UsageError, match="68000 conversations asked.*500.*sharegpt_path"):
        config.check_data()
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    load_config(FULL, GumihoRunConfig, [f"data.sharegpt_path={path}"]).check_data()  # the count: when read
    with pytest.raises(UsageError, match="unknown chat template"):
        load_config(FULL, GumihoRunConfig, ["data.chat_template=vicuna-7b"])


def test_tuned_tree_is_sized_before_use():
    tree = GumihoTreeConfig(total_tokens=-1)
    tree.check()  # accepted in a config: gumiho eval sizes it (gumiho.eval.tuned_tree)
    with pytest.raises(UsageError, match="total_tokens=-1"):
        tree.tree()


def _draft(target, seed=0):
    torch.manual_seed(seed)
    draft = GumihoDraft(GumihoConfig.from_target(target.config)).eval()
    draft.freeze_embedding(target.embed_weight)
    for p in draft.mlp.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return draft


def test_proposer_uses_the_engines_kv_cache(target):
    proposer = make_proposer(_draft(target), target.lm_head_weight, TreeConfig(4, 7, 16), max_length=64)
    assert type(proposer.cache) is TreeKVCache and proposer.cache.max_length == 64 + 4 * 7
    feats, ids = torch.randn(5, target.hidden_size, dtype=target.dtype), torch.randint(0, 97, (5,))
    proposer.propose(feats, ids)
    assert proposer.context_length == 5  # tree rows cropped after the round
    proposer.reset()
    assert proposer.context_length == 0


def test_fta_at_temperature_one_walks_the_padded_rows(target):
    tree = TreeConfig(top_k=4, depth=7, total_tokens=16)
    on = make_proposer(_draft(target), target.lm_head_weight, tree, mlptopk=3, pruning=4, fta="official")
    off = make_proposer(_draft(target), target.lm_head_weight, tree, mlptopk=3, pruning=4)
    ids = torch.randint(0, 97, (8,), generator=torch.Generator().manual_seed(0))
    feats = torch.randn(8, target.hidden_size, dtype=target.dtype)
    assert on.propose(feats, ids).extras["sample_verifier"] is rows_sample_verify
    assert "sample_verifier" not in off.propose(feats, ids).extras
    config = GenerationConfig(max_new_tokens=12, seed=0, sampling=SamplingConfig(temperature=1.0))
    result = speculative_generate(target, on, ids, config)
    assert result.new_tokens == 12 and result.cycles >= 1


def test_cli_refuses_bad_full_scale_settings_before_loading_the_target(tmp_path):
    from gumiho.cli import run

    with pytest.raises(UsageError, match="68000 conversations asked"):
        run(["train", "--config", "full.yaml", "--out", str(tmp_path / "r")])
    with pytest.raises(UsageError, match="not found"):
        run(["train", "--config", "full.yaml", "--out", str(tmp_path / "r"), "--sharegpt-path",
             str(tmp_path / "missing.json")])
    (tmp_path / "head.pt").write_bytes(b"not read before the template is checked")
    with pytest.raises(UsageError, match="unknown chat template"):
        run(["eval", "--head", str(tmp_path / "head.pt"), "--chat-template", "vicuna-7b"])
    with pytest.raises(UsageError, match="not found|no such file"):
        run(["eval", "--head", str(tmp_path / "head.pt"), "--eagle-head", str(tmp_path / "eagle")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pt"]
