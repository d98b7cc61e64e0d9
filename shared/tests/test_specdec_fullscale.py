"""The engine's full-scale path and its exactness bookkeeping: released EAGLE-2 heads, ShareGPT counts, chat
templates, target dtypes, near-ties, EAGLE-2's official row-walk sampling rule and the absence of import cycles."""

import ast
import json
from pathlib import Path

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.specdec import (
    DraftDataConfig,
    GenerationConfig,
    SamplingConfig,
    TargetAdapter,
    TreeConfig,
    autoregressive_generate,
    build_eagle_head,
    eagle_factory,
    sample_verify,
    speculative_generate,
    tree_from_parents,
)
from effrepro.specdec.draft_data import ChatFormatter, check_chat_template, check_sharegpt, sharegpt_pool
from effrepro.specdec.eagle import load_eagle_head, read_eagle_head
from effrepro.specdec.target import resolve_dtype
from effrepro.specdec.turns import mismatch_rate
from effrepro.specdec.verify import near_tie_tolerance, rows_sample_verify
from effrepro.testing import tiny_llama, write_crafted

VOCAB = 97
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(VOCAB, 64, seed=0, dtype=torch.float32)


def released_layout(head, embed: torch.Tensor, layers: int = 1) -> dict[str, torch.Tensor]:
    """``head``'s weights under the key names of SafeAILab's released EAGLE heads (``cnets.py`` ``Model``), fp16,
    with the stored embedding and the rotary buffer those files carry."""
    state = {k: v.half().clone() for k, v in head.trainable_state_dict().items() if "rotary" not in k}
    state["embed_tokens.weight"] = embed.detach().half().clone()
    for i in range(layers):
        state[f"layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    return state


def trained_like_head(model, layers: int = 1, seed: int = 3):
    torch.manual_seed(seed)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight, num_layers=layers)
    for p in head.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return head


@pytest.mark.parametrize("layout", ["bin", "safetensors", "folder"])
def test_released_eagle_head_loads_and_decodes_losslessly(model, tmp_path, layout):
    head = trained_like_head(model, layers=2)
    state = released_layout(head, model.get_input_embeddings().weight, layers=2)
    assert "layers.1.input_layernorm.weight" in state and "layers.0.input_layernorm.weight" not in state
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    source = tmp_path if layout == "folder" else path
    target = TargetAdapter(model, max_length=256)
    loaded = load_eagle_head(source, target)
    assert loaded.config.num_layers == 2 and loaded.config.fc_bias
    for key, value in head.trainable_state_dict().items():  # every released tensor landed on its own parameter
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), rtol=0, atol=0)
    prompt = torch.randint(0, VOCAB, (7,), generator=torch.Generator().manual_seed(2))
    config = GenerationConfig(max_new_tokens=24)
    spec = speculative_generate(target, eagle_factory(loaded, TreeConfig(3, 3, 10))(target), prompt, config)
    assert spec.tokens == autoregressive_generate(target, prompt, config).tokens


def test_released_head_for_another_target_is_refused(model, tmp_path):
    head = trained_like_head(model)
    embed = model.get_input_embeddings().weight
    wide_target = tiny_llama(VOCAB, 128, dtype=torch.float32)
    wide = released_layout(trained_like_head(wide_target), wide_target.get_input_embeddings().weight)
    del wide["embed_tokens.weight"]  # no stored embedding: the tensor shapes must tell
    cases = {
        "another target's embedding": {**released_layout(head, embed), "embed_tokens.weight": torch.randn(VOCAB, 64)},
        "another vocabulary": {**released_layout(head, embed), "embed_tokens.weight": torch.zeros(VOCAB + 1, 64)},
        "a wider head": wide,
        "an EAGLE-3 head": {"midlayer.self_attn.q_proj.weight": torch.zeros(64, 64), "d2t": torch.zeros(3)},
        "no EAGLE keys": {"weight": torch.zeros(3)},
    }
    messages = {}
    for name, state in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.bin"
        torch.save(state, path)
        with pytest.raises(UsageError) as info:
            read_eagle_head(path, embed, model.config)
        messages[name] = str(info.value)
    assert "another target" in messages["another target's embedding"]
    assert "another target" in messages["another vocabulary"]
    assert "does not fit" in messages["a wider head"]
    assert "EAGLE-3" in messages["an EAGLE-3 head"]
    assert "not an EAGLE head" in messages["no EAGLE keys"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="neither of"):
        read_eagle_head(empty, embed, model.config)
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    write_crafted(crafted / "pytorch_model.bin", tmp_path / "pwned")
    with pytest.raises(UsageError, match="refusing to load"):
        read_eagle_head(crafted, embed, model.config)
    assert not (tmp_path / "pwned").exists()  # a released head is read as data only


def test_cli_takes_a_released_head_folder(tmp_path):
    from effrepro.specdec.cli import _check_args, build_parser

    folder = tmp_path / "eagle"
    folder.mkdir()
    args = build_parser().parse_args(["generate", "--head", str(folder), "--prompt", "hi"])
    with pytest.raises(UsageError, match="pytorch_model.bin: (no such file|not found)"):
        _check_args(args)
    torch.save({"fc.weight": torch.zeros(1)}, folder / "pytorch_model.bin")
    _check_args(args)  # the weights file is there; the loader checks its keys against the target


def _sharegpt_file(path: Path, count: int) -> Path:
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": f"answer {i}"}]}
            for i in range(count)]
    rows.append({"conversations": [{"from": "gpt", "value": "assistant only"}]})  # not usable: dropped
    path.write_text(json.dumps(rows))
    return path


def test_sharegpt_counts_beyond_the_data_are_errors(tmp_path):
    with pytest.raises(UsageError, match="500.*--sharegpt-path"):  # full.yaml's 68,000 on the shipped set
        check_sharegpt(DraftDataConfig(sharegpt=68000))
    check_sharegpt(DraftDataConfig(sharegpt=500))  # the shipped set holds 500
    with pytest.raises(UsageError, match="not found"):
        check_sharegpt(DraftDataConfig(sharegpt=10, sharegpt_path=str(tmp_path / "missing.json")))
    file = _sharegpt_file(tmp_path / "sharegpt.json", 3)
    assert len(sharegpt_pool(DraftDataConfig(sharegpt=3, sharegpt_path=str(file)))) == 3
    with pytest.raises(UsageError, match="sharegpt=4 conversations asked, .* holds 3"):
        sharegpt_pool(DraftDataConfig(sharegpt=4, sharegpt_path=str(file)))


def test_chat_templates_fschat_names_or_the_tokenizers_own():
    check_chat_template("auto")
    check_chat_template("vicuna_v1.1")
    with pytest.raises(UsageError, match="unknown chat template 'vicuna-7b'"):
        check_chat_template("vicuna-7b")

    class NoTemplate:
        chat_template = None

    with pytest.raises(UsageError, match="no chat template.*--chat-template"):
        ChatFormatter(NoTemplate(), "auto")
    rendered = ChatFormatter(NoTemplate(), "vicuna_v1.1").render([{"role": "user", "content": "Hi"}], True)
    assert "USER: Hi ASSISTANT:" in rendered


def test_target_dtype_defaults_to_bfloat16_on_gpus():
    assert resolve_dtype(None, "cpu") == "float32"
    assert resolve_dtype(None, "cuda") == resolve_dtype(None, "cuda:1") == resolve_dtype(None, "auto") == "bfloat16"
    assert resolve_dtype("float16", "cuda") == "float16"
    with pytest.raises(UsageError, match="dtype 'int8'"):
        resolve_dtype("int8", "cpu")


# ----- near-ties -----
def test_near_tie_tolerance_grows_with_coarser_dtypes():
    tolerances = [near_tie_tolerance(d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)]
    assert tolerances == sorted(tolerances) and len(set(tolerances)) == 4


def tied_model():
    """A tiny target whose LM-head rows come in identical pairs: every greedy decision is an exact tie."""
    model = tiny_llama(VOCAB + 1, 64, seed=0)
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        weight[1::2] = weight[0::2]
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_near_ties_are_counted_on_a_constructed_tie(tied):
    model = tied_model() if tied else tiny_llama(VOCAB, 64, seed=0)
    target = TargetAdapter(model, max_length=256)
    prompt = torch.randint(0, VOCAB, (6,), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(max_new_tokens=20)
    plain = autoregressive_generate(target, prompt, config)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight).double()
    spec = speculative_generate(target, eagle_factory(head, TreeConfig(3, 2, 8))(target), prompt, config)
    assert spec.tokens == plain.tokens
    if tied:  # every decision: each emitted token of plain decoding, the prefill's and every cycle's in speculation
        assert plain.near_ties == plain.new_tokens == 20 and plain.min_logit_gap == 0.0
        assert spec.near_ties == 1 + spec.cycle_tokens and spec.min_logit_gap == 0.0
    else:
        assert plain.near_ties == spec.near_ties == 0 and plain.min_logit_gap > near_tie_tolerance(torch.float64)
    sampled = autoregressive_generate(target, prompt, GenerationConfig(max_new_tokens=5, seed=0,
                                                                       sampling=SamplingConfig(temperature=1.0)))
    assert sampled.near_ties == 0 and sampled.min_logit_gap is None  # recorded at greedy only


def test_turn_records_and_summaries_carry_the_near_ties():
    from effrepro.specdec.generate import GenerationResult
    from effrepro.specdec.harness import summarize, turn_record

    def record(ties: int) -> dict:
        result = GenerationResult(tokens=[1, 2], cycles=1, accept_lengths=[1], tree_depths=[1], wall_time=1.0,
                                  near_ties=ties, min_logit_gap=0.0 if ties else 0.5, near_tie_tolerance=1e-3)
        return turn_record(7, 0, result)

    rows = record(2)
    assert (rows["near_ties"], rows["min_logit_gap"], rows["near_tie_tolerance"]) == (2, 0.0, 1e-3)
    summary = summarize({"plain": [record(1)], "eagle2": [record(2)]})
    assert (summary["plain"]["near_ties"], summary["eagle2"]["near_ties"]) == (1, 2)


def test_mismatch_details_name_the_near_ties():
    def record(turn: int, tokens: list[int], ties: int) -> dict:
        return {"question_id": 1, "turn": turn, "tokens": tokens, "near_ties": ties}

    plain = [record(0, [1, 2], 0), record(1, [3, 4], 1), record(2, [5], 0)]
    method = [record(0, [1, 2], 0), record(1, [3, 9], 2), record(2, [6], 0)]
    estimate = mismatch_rate([method], plain)
    assert estimate.value == pytest.approx(2 / 3)
    assert estimate.details["near_ties"] == 3 and estimate.details["mismatched_turns_with_near_tie"] == 1


# ----- EAGLE-2's official sampling rule over rows (Gumiho's FTA at T > 0) -----
def test_rows_rule_tries_padded_entries_like_the_official_code():
    """Rows ``[0, a, b]`` and ``[0, c, -1]``; FTA pads the second to ``[0, c, b]``. The target puts all its mass on
    ``c`` after the root and on ``b``'s token after ``c``: the rows rule accepts ``c`` then the padded ``b`` (the
    official code at T > 0); the parents walk stops at the leaf ``c`` and draws the bonus."""
    vocab = 5
    tree = tree_from_parents(torch.tensor([0, 1, 2, 3]), torch.tensor([-1, 0, 1, 0]))  # nodes: root, a, b, c
    logits = torch.full((4, vocab), -30.0)
    logits[0, 3] = 30.0  # at the root: token 3 (node c)
    logits[3, 2] = 30.0  # at c: token 2 (node b's token)
    logits[1, 2] = logits[2, 4] = 30.0
    sampling = SamplingConfig(temperature=1.0)
    parents = sample_verify(tree, logits, sampling, torch.Generator().manual_seed(0))
    assert parents.nodes.tolist() == [0, 3] and parents.bonus_token == 2
    padded = tree_from_parents(tree.tokens, tree.parents)
    padded.retrieve_indices = torch.tensor([[0, 1, 2], [0, 3, 2]])
    official = rows_sample_verify(padded, logits, sampling, torch.Generator().manual_seed(0))
    assert official.nodes.tolist() == [0, 3, 2] and official.accepted == 2
    assert official.bonus_token == 4  # drawn at node b's logits, computed under b's own ancestors (lossy)


def test_rows_rule_is_exact_on_a_trees_own_rows():
    """Unpadded rows: the first emitted token is distributed as the target's processed p (Monte Carlo)."""
    vocab = 4
    tree = tree_from_parents(torch.tensor([0, 1, 2, 1]), torch.tensor([-1, 0, 0, 1]))
    logits = torch.tensor([[0.3, 1.0, 0.2, -0.5]] * 4, dtype=torch.float64)
    sampling = SamplingConfig(temperature=1.0)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(vocab)
    draws = 6000
    for _ in range(draws):
        verdict = rows_sample_verify(tree, logits, sampling, generator)
        first = int(tree.tokens[verdict.nodes[1]]) if verdict.accepted else verdict.bonus_token
        counts[first] += 1
    expected = torch.softmax(logits[0].float(), dim=-1)
    assert (counts / draws - expected).abs().sum() / 2 < 0.03
    greedy = rows_sample_verify(tree, logits, SamplingConfig(), None)
    assert (greedy.nodes.tolist(), greedy.bonus_token) == ([0, 1, 3], 1)  # greedy: the longest all-argmax row


# ----- one engine -----
def _import_graph() -> dict[str, set[str]]:
    roots = {"effrepro": REPO / "shared" / "src", "jakiro": REPO / "jakiro" / "src", "gumiho": REPO / "gumiho" / "src"}
    modules = {}
    for package, root in roots.items():
        for file in (root / package).rglob("*.py"):
            name = ".".join(file.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
            if name.startswith(("effrepro.specdec.", "jakiro.", "gumiho.")):
                modules[name] = file
    graph = {}
    for name, file in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):  # every import statement, the lazy ones included
            if isinstance(node, ast.ImportFrom) and node.module:
                deps.update(c for c in [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                            if c in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles_in_the_engine_and_its_methods():
    graph = _import_graph()
    assert {"effrepro.specdec.protocol", "jakiro.jakiro", "gumiho.gumiho"} <= set(graph)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
