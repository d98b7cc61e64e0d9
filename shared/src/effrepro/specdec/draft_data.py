"""Draft-head training data: target features over chat conversations, cached on disk.

Each sample is one conversation rendered in the target's chat template: ``input_ids [L]``, ``hidden_state [L, H]``
(the target's last hidden state after the final norm, one teacher-forced pass) and ``loss_mask [L]`` (1 on
assistant tokens, their end-of-turn token included). Sources:

* ``sharegpt``: the ShareGPT-format conversations shipped with the assets (``effrepro.data``), as the official
  ``ge_data`` scripts use them (fixed responses, not regenerated);
* ``self_generated``: prompts answered by the target itself (greedy or sampled, ``self_repeats`` answers each), a
  self-distillation set that matches the draft to the target's own distribution. A prompt is one user turn or a
  sequence of turns (``mtbench-train-chat``): the target answers each turn after its own earlier answers, as the
  MT-bench evaluation does.

The cache lives under ``effrepro.data.cache_dir()/specdec/draft_data/<hash>``, the hash taken over every setting
that changes the data (``DraftDataConfig``) and the target's identity, so EAGLE / Jakiro / Gumiho runs on the same
target reuse one cache. It is written into a temporary folder and renamed into place when complete.

Chat templates: the tokenizer's own template (SmolLM2, Llama-3), or an fschat template name (``vicuna``,
``llama-2``...) at full scale. The assistant spans come from rendering conversation prefixes, so any
prefix-stable template works; a template that is not prefix-stable gives a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from effrepro.errors import UsageError
from effrepro.outputs import make_temporary_folder
from effrepro.specdec.batch import DraftBatch
from effrepro.specdec.questions import mtbench_split

DATA_VERSION = 1


@dataclass
class DraftDataConfig:
    """What the feature cache is keyed by (hashed): target, sources, sizes, template, self-generation settings."""

    target: str = "smollm2-135m"
    sharegpt: int = 500  # ShareGPT conversations to encode (0 = none)
    self_generated: int = 0  # prompts answered by the target itself (self-distillation); the first N
    max_len: int = 2048
    self_max_new_tokens: int = 256
    self_temperature: float = 0.0
    self_repeats: int = 1  # answers per prompt; > 1 needs self_temperature > 0 (each answer a fresh sample)
    chat_template: str = "auto"  # "auto" = the tokenizer's template; else an fschat template name
    sharegpt_path: str = ""  # full scale: a local ShareGPT json (e.g. ShareGPT_V4.3_unfiltered_cleaned_split.json)
    feature_dtype: str = "float16"
    seed: int = 42
    # Prompts of the self-generated source, in order: comma-separated items among "sharegpt" (distinct user turns
    # of the ShareGPT pool), "corpus" (instructions over the text corpus), "mtbench-train" (first turns of the
    # MT-bench questions the held-out evaluation does not use, ``harness.mtbench_split``), "mtbench-train-chat"
    # (the same questions with both turns, answered turn by turn) and file paths (a .txt with one prompt a line,
    # a .jsonl of {"prompt"} / {"turns"} rows, or a ShareGPT json: its user turns).
    # "" = "sharegpt,corpus" (the original behaviour, and the original cache keys).
    prompts: str = ""

    def __post_init__(self) -> None:
        if self.self_repeats < 1:
            raise UsageError(f"self_repeats must be >= 1, got {self.self_repeats}")
        if self.self_repeats > 1 and self.self_temperature <= 0:
            raise UsageError("self_repeats > 1 needs self_temperature > 0: greedy answers would repeat verbatim")


def check_chat_template(template: str) -> None:
    """A UsageError unless ``template`` is "auto" or an fschat conversation template name (needs no tokenizer,
    so the CLIs check it before loading anything)."""
    if template == "auto":
        return
    try:
        from fastchat.conversation import conv_templates
    except ImportError:
        raise UsageError(f"--chat-template {template!r} needs fschat (pip install fschat); or use 'auto', the "
                         "tokenizer's own template") from None
    if template not in conv_templates:
        raise UsageError(f"unknown chat template {template!r}; use 'auto' (the tokenizer's own) or an fschat "
                         "template name such as vicuna_v1.1 or llama-2") from None


class ChatFormatter:
    """Renders conversations to text with the tokenizer's chat template or an fschat conversation template."""

    def __init__(self, tokenizer: Any, template: str = "auto") -> None:
        self.tokenizer, self.template = tokenizer, template
        check_chat_template(template)
        if template == "auto" and not getattr(tokenizer, "chat_template", None):
            raise UsageError("the tokenizer has no chat template; pass an fschat template name "
                             "(--chat-template vicuna_v1.1 | llama-2; config: chat_template)")

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self.template == "auto":
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        from fastchat.conversation import get_conv_template

        conv = get_conv_template(self.template)
        for message in messages:
            if message["role"] == "system":
                conv.set_system_message(message["content"])
                continue
            conv.append_message(conv.roles[0] if message["role"] == "user" else conv.roles[1], message["content"])
        if add_generation_prompt:
            conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def encode(self, text: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token", None)
        add_special = self.template != "auto" and not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special).input_ids

    def prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        """Token ids of a conversation ending in a user turn, with the assistant generation prompt appended."""
        return torch.tensor(self.encode(self.render(messages, add_generation_prompt=True)), dtype=torch.long)


def chat_example(formatter: ChatFormatter, conversation: list[dict],
                 max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [L], loss_mask [L])`` of a conversation; the mask is 1 on assistant tokens (module docstring)."""
    if not conversation:
        raise UsageError("empty conversation")
    full = formatter.render(conversation)
    spans = []
    for k, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        start_text = formatter.render(conversation[:k], add_generation_prompt=True) if k else ""
        end_text = formatter.render(conversation[: k + 1])
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise UsageError("the chat template is not prefix-stable, so assistant spans cannot be located; "
                             "use an fschat template name (--chat-template)")
        spans.append((len(start_text), len(end_text)))
    bos = getattr(formatter.tokenizer, "bos_token", None)
    add_special = formatter.template != "auto" and not (bos and full.startswith(bos))
    encoded = formatter.tokenizer(full, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = torch.tensor(encoded.input_ids[:max_len], dtype=torch.long)
    mask = torch.zeros(ids.numel(), dtype=torch.long)
    for i, (begin, _end) in enumerate(encoded.offset_mapping[:max_len]):
        if any(lo <= begin < hi for lo, hi in spans) and _end > begin:
            mask[i] = 1
    return ids, mask


def _target_fingerprint(model: Any) -> dict[str, Any]:
    config = model.config
    weight = model.get_output_embeddings().weight
    probe = weight[:: max(1, weight.shape[0] // 64)].float().sum().item()
    return {"name_or_path": str(getattr(config, "_name_or_path", "")), "hidden_size": config.hidden_size,
            "vocab_size": weight.shape[0], "layers": config.num_hidden_layers, "head_probe": round(probe, 4)}


def data_key(config: DraftDataConfig, model: Any) -> str:
    settings = asdict(config)
    for key in ("sharegpt_path", "prompts"):  # added later: unset, they keep the keys of existing caches
        if not settings[key]:
            del settings[key]
    if settings["self_repeats"] == 1:  # added later too
        del settings["self_repeats"]
    if config.self_generated and config.prompts:  # a prompt file's content, not only its name, keys the data
        settings["prompt_files"] = {item: _file_digest(item) for item in _prompt_items(config.prompts)
                                    if item not in PROMPT_SOURCES}
    payload = {"config": settings, "target": _target_fingerprint(model), "version": DATA_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


PROMPT_SOURCES = ("sharegpt", "corpus", "mtbench-train", "mtbench-train-chat")
Prompt = str | tuple[str, ...]  # one user turn, or the user turns of a conversation answered one after another


def _prompt_items(spec: str) -> list[str]:
    return [item.strip() for item in (spec or "sharegpt,corpus").split(",") if item.strip()]


def _file_digest(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"prompt source {path!r} is neither one of {', '.join(PROMPT_SOURCES)} nor a file")
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def load_prompt_file(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: ``.txt`` (one a line), ``.jsonl`` (rows with ``prompt`` / ``text`` / ``turns``: the
    first turn) or a ShareGPT ``.json`` (its user turns)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"prompt file {file} not found")
    if file.suffix == ".json":
        from effrepro.data.text import load_sharegpt_file

        return [t["content"] for c in load_sharegpt_file(file) for t in c if t["role"] == "user"]
    lines = [line for line in file.read_text().splitlines() if line.strip()]
    if file.suffix != ".jsonl":
        return [line.strip() for line in lines]
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            text = row.get("prompt") or row.get("text") or row["turns"][0]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise UsageError(f"{file}:{number} is not a prompt row ({{'prompt': str}} or {{'turns': [str]}})")\
                from None
        prompts.append(str(text))
    return prompts


SHIPPED_SHAREGPT = "the shipped ShareGPT set (FastChat's dummy conversations)"


def _count_error(asked: int, held: int, path: str) -> UsageError:
    if path:
        return UsageError(f"sharegpt={asked} conversations asked, {path} holds {held}; lower the count")
    return UsageError(f"sharegpt={asked} conversations asked, {SHIPPED_SHAREGPT} holds {held}; give the full "
                      "ShareGPT json with --sharegpt-path (config: data.sharegpt_path) or lower the count")


def check_sharegpt(config: DraftDataConfig) -> None:
    """The checks that need no model, before any work: the ShareGPT file exists, and without one the count fits
    the shipped set (a full-scale count such as 68,000 must not fall back to its 500 dummy conversations). A
    given file's count is checked when it is read (``sharegpt_pool``)."""
    if config.sharegpt_path:  # also the prompt pool of the self-generated source
        if not Path(config.sharegpt_path).expanduser().is_file():
            raise UsageError(f"ShareGPT file {config.sharegpt_path} not found; pass --sharegpt-path "
                             "/path/to/ShareGPT.json")
        return
    if not config.sharegpt:
        return
    from effrepro.data.text import sharegpt_conversations

    held = len(sharegpt_conversations())
    if config.sharegpt > held:
        raise _count_error(config.sharegpt, held, "")


def sharegpt_pool(config: DraftDataConfig) -> list[list[dict]]:
    """The ShareGPT conversations of ``config`` (its file, else the shipped set), in file order; a UsageError
    when ``config.sharegpt`` asks for more than they hold."""
    from effrepro.data.text import load_sharegpt_file, sharegpt_conversations

    pool = load_sharegpt_file(config.sharegpt_path) if config.sharegpt_path else sharegpt_conversations()
    if config.sharegpt > len(pool):
        raise _count_error(config.sharegpt, len(pool), config.sharegpt_path)
    return pool


def _conversations(model: Any, tokenizer: Any, formatter: ChatFormatter, config: DraftDataConfig,
                   prompts: list[Prompt] | None = None) -> list[list[dict]]:
    pool = sharegpt_pool(config)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(config.seed)).tolist()
    conversations = [pool[i] for i in order[: config.sharegpt]]
    if config.self_generated or prompts is not None:
        if prompts is None:
            prompts = distillation_prompts([pool[i] for i in order], config.prompts)
        prompts = prompts[: config.self_generated or None]
        conversations += self_generate(model, tokenizer, formatter, prompts, config)
    if not conversations:
        raise UsageError("no conversations selected; set sharegpt > 0 or self_generated > 0")
    return conversations


def _corpus_prompts() -> list[str]:
    from effrepro.data import text_corpus

    prompts = []
    for number, doc in enumerate(text_corpus()):
        if number % 2 == 0:
            paragraph = doc.strip().split("\n\n")[0][:300]
            prompts.append(f"Explain the following in simple terms and give an example:\n\n{paragraph}")
        else:
            prompts.append(f"Summarize the following text in a few sentences:\n\n{doc.strip()[:600]}")
    return prompts


def _clean_prompt(prompt: Prompt | list[str]) -> Prompt | None:
    """A stripped single turn, or a tuple of stripped turns (a multi-turn prompt); None when nothing is left."""
    if isinstance(prompt, str):
        return prompt.strip() or None
    turns = tuple(str(turn).strip() for turn in prompt)
    return turns if turns and all(turns) else None


def distillation_prompts(pool: list[list[dict]], spec: str = "") -> list[Prompt]:
    """Prompts for self-distillation, in the order of ``spec`` (``DraftDataConfig.prompts``), duplicates dropped.

    ``sharegpt``: the distinct user turns of ``pool``; ``corpus``: instructions over the shipped text corpus
    (``effrepro.data.text_corpus``: Python docs), alternating "explain" and "summarize"; ``mtbench-train``: the
    first turns of the 72 MT-bench questions that ``harness.mtbench_split`` does not hold out (never the evaluated
    ones); ``mtbench-train-chat``: those questions with both turns (a tuple each, answered turn by turn); a path:
    ``load_prompt_file``. The embedded ShareGPT set is FastChat's identity/dummy conversations (a few dozen
    distinct questions), so at smoke scale the corpus and MT-bench-train prompts carry the diversity.
    """
    seen: set[Prompt] = set()
    prompts: list[Prompt] = []
    for item in _prompt_items(spec):
        batch: list[Any]
        if item == "sharegpt":
            batch = [m["content"] for c in pool for m in c if m["role"] == "user"]
        elif item == "corpus":
            batch = _corpus_prompts()
        elif item == "mtbench-train":
            batch = [q["turns"][0] for q in mtbench_split()[0]]
        elif item == "mtbench-train-chat":
            batch = [tuple(q["turns"]) for q in mtbench_split()[0]]
        else:
            _file_digest(item)
            batch = load_prompt_file(item)
        for raw in batch:
            text = raw if item == "corpus" and raw.strip() else _clean_prompt(raw)  # corpus verbatim (old keys)
            if text is not None and text not in seen:
                seen.add(text)
                prompts.append(text)
    return prompts


def _prompts(pool: list[list[dict]], count: int) -> list[str]:
    """The default prompt list (``distillation_prompts(pool)``), first ``count``; kept for older callers."""
    return distillation_prompts(pool)[:count]


@torch.no_grad()
def self_generate(model: Any, tokenizer: Any, formatter: ChatFormatter, pool: list[list[dict]] | list[Prompt],
                  config: DraftDataConfig, batch_size: int = 32) -> list[list[dict]]:
    """The target's own answers (batched ``transformers`` generate, greedy unless ``config.self_temperature``).

    ``pool``: a list of prompts (all answered, ``config.self_repeats`` times each), or conversations whose
    ``distillation_prompts`` (the default spec, first ``config.self_generated``) are answered. A multi-turn prompt
    is answered turn by turn, each turn after the target's own earlier answers; its conversation ends early where
    an answer is empty or the next turn would not fit ``max_len``. Conversations come back in the order their
    first turns were generated (shortest prompt first), which keeps the caches of single-turn data unchanged.
    """
    from effrepro.specdec.target import stop_tokens

    if pool and all(isinstance(item, str | tuple) for item in pool):
        prompts = [p for p in (_clean_prompt(item) for item in pool) if p is not None]
    else:
        prompts = _prompts(pool, config.self_generated)
    jobs = [(p,) if isinstance(p, str) else p for p in prompts for _ in range(config.self_repeats)]
    conversations: list[list[dict]] = [[] for _ in jobs]
    first_order: list[int] = []
    stops = list(stop_tokens(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        for turn in range(max((len(turns) for turns in jobs), default=0)):
            pending = []
            for index, turns in enumerate(jobs):
                if turn >= len(turns) or len(conversations[index]) != 2 * turn:  # done, or ended at an earlier turn
                    continue
                messages = conversations[index] + [{"role": "user", "content": turns[turn]}]
                ids = formatter.prompt_ids(messages)
                if ids.numel() + config.self_max_new_tokens <= config.max_len:
                    pending.append((index, messages, ids))
            pending.sort(key=lambda item: item[2].numel())
            if turn == 0:
                first_order = [index for index, _, _ in pending]
            for start in range(0, len(pending), batch_size):
                chunk = pending[start:start + batch_size]
                answers = _generate_answers(model, [ids for _, _, ids in chunk], config, stops, pad)
                for (index, messages, _), answer_ids in zip(chunk, answers, strict=True):
                    answer = tokenizer.decode(answer_ids, skip_special_tokens=True)
                    if answer.strip():
                        conversations[index] = messages + [{"role": "assistant", "content": answer}]
    finally:
        torch.random.set_rng_state(generator_state)
    return [conversations[index] for index in first_order if conversations[index]]


def _generate_answers(model: Any, prompts: list[torch.Tensor], config: DraftDataConfig, stops: list[int],
                      pad: int) -> list[list[int]]:
    """One batched ``generate`` over left-padded prompts; each answer's ids up to (without) its stop token."""
    width = max(ids.numel() for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    attention = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - ids.numel():] = ids
        attention[row, width - ids.numel():] = 1
    device = model.get_input_embeddings().weight.device
    sampling = config.self_temperature > 0
    generated = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device),
        max_new_tokens=config.self_max_new_tokens, do_sample=sampling,
        temperature=config.self_temperature if sampling else None, top_p=None, top_k=None,
        eos_token_id=stops or None, pad_token_id=pad,
    )[:, width:].cpu()
    answers = []
    for row in generated.tolist():
        cut = next((i for i, token in enumerate(row) if token in stops), len(row))
        answers.append(row[:cut])
    return answers


@torch.no_grad()
def encode_features(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """The target's last hidden state after the final norm, ``[L, H]`` (one teacher-forced pass)."""
    device = model.get_input_embeddings().weight.device
    out = model.get_decoder()(input_ids=input_ids.to(device)[None], use_cache=False)
    return out.last_hidden_state[0]


def generate_draft_data(model: Any, tokenizer: Any, config: DraftDataConfig, cache_root: Path | None = None,
                        progress: bool = True, prompts: list[Prompt] | None = None) -> Path:
    """Encode the conversations with the target and store one ``.pt`` per sample; returns the (cached) folder.

    ``prompts``: an explicit prompt list for the self-generated source (the first ``config.self_generated``
    answered), instead of ``config.prompts``; the list is part of the cache key.
    """
    from effrepro.data import cache_dir

    root = Path(cache_root) if cache_root is not None else cache_dir() / "specdec" / "draft_data"
    key = data_key(config, model)
    if prompts is not None:
        cleaned = (_clean_prompt(p) for p in prompts if p)
        prompts = [p for p in cleaned if p is not None][: config.self_generated or None]
        if not prompts:
            raise UsageError("the prompt list is empty; give at least one non-empty prompt")
        key = hashlib.sha256(json.dumps([key, prompts]).encode()).hexdigest()[:16]
    folder = root / key
    if (folder / "meta.json").is_file():
        return folder
    formatter = ChatFormatter(tokenizer, config.chat_template)
    conversations = _conversations(model, tokenizer, formatter, config, prompts)
    dtype = getattr(torch, config.feature_dtype)
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_folder(root, "draft-data")  # removed below; a killed run's is removed by the next
    iterator: Any = conversations
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(conversations, desc="draft data", mininterval=5.0)
    try:
        count = tokens = supervised = 0
        for conversation in iterator:
            ids, mask = chat_example(formatter, conversation, config.max_len)
            if int(mask.sum()) == 0:
                continue
            hidden = encode_features(model, ids).to("cpu", dtype)
            torch.save({"input_ids": ids.to(torch.int32), "hidden_state": hidden, "loss_mask": mask.to(torch.uint8)},
                       tmp / f"{count:07d}.pt")
            count, tokens, supervised = count + 1, tokens + ids.numel(), supervised + int(mask.sum())
        meta = {"config": asdict(config), "target": _target_fingerprint(model), "samples": count, "tokens": tokens,
                "supervised_tokens": supervised, "hidden_size": int(model.config.hidden_size),
                "version": DATA_VERSION}
        if prompts is not None:
            meta["prompts"] = len(prompts)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def draft_data_folders(model: Any, tokenizer: Any, config: DraftDataConfig, cache_root: Path | None = None,
                       progress: bool = True, prompts: list[Prompt] | None = None) -> list[Path]:
    """One cached folder per source (ShareGPT, self-generated), so each is reused by any run that needs it.

    ``prompts``: an explicit prompt list for the self-generated source (else ``config.prompts``)."""
    folders = []
    defaults = DraftDataConfig()
    if config.sharegpt:  # the self-generation settings do not change this source: keep them out of its key
        sharegpt_only = replace(config, self_generated=0, self_max_new_tokens=defaults.self_max_new_tokens,
                                self_temperature=defaults.self_temperature, self_repeats=1, prompts="")
        folders.append(generate_draft_data(model, tokenizer, sharegpt_only, cache_root, progress))
    if config.self_generated or prompts is not None:
        folders.append(generate_draft_data(model, tokenizer, replace(config, sharegpt=0), cache_root, progress,
                                           prompts=prompts))
    if not folders:
        raise UsageError("no draft data selected; set sharegpt > 0 or self_generated > 0")
    return folders


class FeatureDataset(torch.utils.data.Dataset):
    """Samples of one or several draft-data folders. In each folder (sorted files) ``split`` "train" is the first
    ``1 - holdout`` and "test" the rest (the official 95/5 split, in a reproducible order)."""

    def __init__(self, root: str | os.PathLike | list[str | os.PathLike], split: str = "train",
                 holdout: float = 0.05) -> None:
        if split not in ("train", "test", "all"):
            raise UsageError(f"split {split!r}; use train, test or all")
        roots = [Path(r) for r in root] if isinstance(root, (list, tuple)) else [Path(root)]
        self.files: list[Path] = []
        metas = []
        for folder in roots:
            if not (folder / "meta.json").is_file():
                raise UsageError(f"{folder} is not a draft-data folder (no meta.json); run generate_draft_data")
            metas.append(json.loads((folder / "meta.json").read_text()))
            files = sorted(folder.glob("*.pt"))
            cut = len(files) - max(1, round(len(files) * holdout)) if holdout > 0 and len(files) > 1 else len(files)
            self.files += {"train": files[:cut], "test": files[cut:], "all": files}[split]
        if len({m["hidden_size"] for m in metas}) > 1:
            raise UsageError(f"draft-data folders {roots} come from targets of different hidden sizes")
        self.meta = metas[0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return torch.load(self.files[index], map_location="cpu", weights_only=True)


class DraftCollator:
    """Pads, shifts and noises samples into a ``DraftBatch`` (the official EAGLE pairing).

    ``noise="uniform"``: ``f += (U(0,1) - 0.5) * std * 512 / L`` with L the sample's length (EAGLE's
    length-dependent amplitude); ``"gaussian"``: ``f += N(0, std^2)``; noise only when ``train``.
    """

    def __init__(self, noise_std: float = 0.2, noise: str = "uniform", train: bool = True, max_len: int = 2048,
                 generator: torch.Generator | None = None) -> None:
        if noise not in ("uniform", "gaussian", "none"):
            raise UsageError(f"noise {noise!r}; use uniform, gaussian or none")
        self.noise_std, self.noise, self.train, self.max_len = noise_std, noise, train, max_len
        self.generator = generator

    def _noise(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.train or self.noise == "none" or self.noise_std == 0:
            return hidden
        if self.noise == "uniform":
            rand = torch.rand(hidden.shape, generator=self.generator)
            return hidden + (rand - 0.5) * self.noise_std * 512 / hidden.shape[0]
        return hidden + torch.randn(hidden.shape, generator=self.generator) * self.noise_std

    def __call__(self, samples: list[dict[str, torch.Tensor]]) -> DraftBatch:
        lengths = [min(int(s["input_ids"].numel()), self.max_len) for s in samples]
        batch, length = len(samples), max(lengths)
        hidden_size = samples[0]["hidden_state"].shape[-1]
        input_ids = torch.zeros(batch, length, dtype=torch.long)
        next_ids = torch.zeros(batch, length, dtype=torch.long)
        features = torch.zeros(batch, length, hidden_size)
        targets = torch.zeros(batch, length, hidden_size)
        loss_mask = torch.zeros(batch, length)
        attention = torch.zeros(batch, length, dtype=torch.long)
        for row, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
            ids = sample["input_ids"][:n].long()
            hidden = sample["hidden_state"][:n].float()
            input_ids[row, :n] = ids
            next_ids[row, : n - 1] = ids[1:]
            features[row, :n] = self._noise(hidden)
            targets[row, : n - 1] = hidden[1:]
            loss_mask[row, : n - 1] = sample["loss_mask"][: n - 1].float()  # M_{L-1} = 0: no f_L to regress
            attention[row, :n] = 1
        return DraftBatch(input_ids, features, next_ids, targets, loss_mask, attention)
