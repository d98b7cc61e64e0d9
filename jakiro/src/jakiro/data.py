"""Draft-data sources the engine does not have, written in the engine's folder format (``FeatureDataset``).

Engine gap: ``effrepro.specdec.draft_data_folders`` reads only the conversations shipped with the assets, and that
"ShareGPT" file is fastchat's dummy set (500 conversations over ~50 identity questions such as "Who are you?",
with fixed Vicuna answers): a draft trained on it learns almost nothing MT-bench asks for (measured: tau about
1.1 for EAGLE-2 and Jakiro). Two sources here, both through the engine's own pieces (``ChatFormatter``,
``self_generate``, ``chat_example``, ``encode_features``):

* :func:`corpus_prompt_data` (smoke): self-distillation on instructions built from the documents Python ships
  (``effrepro.data.text_corpus``: pydoc topics and standard-library docstrings), e.g. "Explain ... in simple
  terms", "Summarize ...", "Write a short Python example ...": the target answers them greedily and the draft
  learns the target's own answers. MT-bench stays fully held out for evaluation.
* :func:`encode_sharegpt_file` (full scale): a user's ShareGPT json (the official 68k conversations, fixed answers,
  as officially): shuffle with seed 42, keep the first ``limit``. ``shard=(i, n)`` splits the encoding over processes
  (one GPU each); run the ``n`` shards, then once more without sharding to merge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec.draft_data import (
    ChatFormatter,
    DraftDataConfig,
    chat_example,
    data_key,
    encode_features,
    self_generate,
)

INSTRUCTIONS = (
    "Explain the following in simple terms:\n\n{text}",
    "Summarize this documentation in a few sentences:\n\n{text}",
    "Write a short Python example that illustrates this:\n\n{text}",
    "What are the key points of the following text? Answer with a short list.\n\n{text}",
    "Rewrite the following as a friendly explanation for a beginner:\n\n{text}",
    "Read this and answer: what problem does it solve, and when would you use it?\n\n{text}",
)

def corpus_prompts(count: int, excerpt_chars: int = 600, seed: int = 0) -> list[str]:
    """``count`` instructions over documents of ``effrepro.data.text_corpus`` (shuffled with ``seed``)."""
    from effrepro.data import text_corpus

    documents = text_corpus()
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    prompts = []
    for rank, index in enumerate(order[:count]):
        text = documents[index].strip()
        if len(text) > excerpt_chars:  # cut at a paragraph or line end
            cut = text.rfind("\n", 0, excerpt_chars)
            text = text[: cut if cut > excerpt_chars // 2 else excerpt_chars]
        prompts.append(INSTRUCTIONS[rank % len(INSTRUCTIONS)].format(text=text))
    return prompts


def encode_conversations(model: Any, tokenizer: Any, conversations: list[list[dict]], folder: Path,
                         max_len: int, chat_template: str = "auto", extra_meta: dict | None = None,
                         progress: bool = True) -> Path:
    """Teacher-force ``conversations`` through the target into ``folder`` (engine format; written atomically)."""
    formatter = ChatFormatter(tokenizer, chat_template)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    iterator: Any = conversations
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(conversations, desc="encode", mininterval=10.0)
    try:
        count = tokens = supervised = 0
        for conversation in iterator:
            ids, mask = chat_example(formatter, conversation, max_len)
            if int(mask.sum()) == 0:
                continue
            hidden = encode_features(model, ids).to("cpu", torch.float16)
            torch.save({"input_ids": ids.to(torch.int32), "hidden_state": hidden, "loss_mask": mask.to(torch.uint8)},
                       tmp / f"{count:07d}.pt")
            count, tokens, supervised = count + 1, tokens + ids.numel(), supervised + int(mask.sum())
        meta = {"samples": count, "tokens": tokens, "supervised_tokens": supervised,
                "hidden_size": int(model.config.hidden_size), **(extra_meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def corpus_prompt_data(model: Any, tokenizer: Any, prompts: int, max_new_tokens: int = 128, max_len: int = 1024,
                       seed: int = 0, cache_root: str | os.PathLike | None = None, progress: bool = True,
                       chat_template: str = "auto") -> Path:
    """Self-distilled draft data: the target's greedy answers to :func:`corpus_prompts` (cached by content),
    rendered with ``chat_template`` ("auto": the tokenizer's own; else an fschat template name)."""
    from effrepro.data import cache_dir

    if prompts < 1:
        raise UsageError(f"data.prompts={prompts}; need at least one prompt")
    texts = corpus_prompts(prompts, seed=seed)
    config = DraftDataConfig(sharegpt=0, self_generated=len(texts), max_len=max_len,
                             self_max_new_tokens=max_new_tokens, self_temperature=0.0, seed=42,
                             chat_template=chat_template)
    digest = hashlib.sha256(json.dumps([data_key(config, model), texts]).encode()).hexdigest()[:16]
    root = Path(cache_root) if cache_root is not None else cache_dir() / "jakiro" / "draft_data"
    folder = root / f"corpus-{digest}"
    if (folder / "meta.json").is_file():
        return folder
    formatter = ChatFormatter(tokenizer, config.chat_template)
    pool = [[{"role": "user", "content": text}] for text in texts]
    conversations = self_generate(model, tokenizer, formatter, pool, config)
    return encode_conversations(model, tokenizer, conversations, folder, max_len, chat_template, progress=progress,
                                extra_meta={"source": "corpus prompts, self-generated", "prompts": len(texts),
                                            "max_new_tokens": max_new_tokens})


def read_sharegpt(path: str | os.PathLike, limit: int = 68000, seed: int = 42) -> list[list[dict]]:
    """ShareGPT json -> conversations of ``{"role", "content"}`` (the engine's reader), shuffled with ``seed``,
    the first ``limit`` kept (0 = all). Asking for more than the file holds is an error, not a smaller run."""
    from effrepro.data.text import load_sharegpt_file

    conversations = load_sharegpt_file(path)
    if not conversations:
        raise UsageError(f"{path} holds no usable conversations (need 'conversations' with from/value turns)")
    if limit > len(conversations):
        raise UsageError(f"--limit {limit} ShareGPT conversations asked, {path} holds {len(conversations)} usable "
                         "ones; lower --limit or give the full file")
    order = torch.randperm(len(conversations), generator=torch.Generator().manual_seed(seed)).tolist()
    return [conversations[i] for i in (order[:limit] if limit else order)]


def encode_sharegpt_file(model: Any, tokenizer: Any, path: str | os.PathLike, max_len: int = 2048,
                         limit: int = 68000, chat_template: str = "auto", out_root: str | os.PathLike | None = None,
                         shard: tuple[int, int] = (0, 1), progress: bool = True) -> Path:
    """Encode a ShareGPT file with the target into a draft-data folder (engine format); returns the folder."""
    from effrepro.data import cache_dir

    index, count = shard
    if not 0 <= index < count:
        raise UsageError(f"shard {index}/{count}: need 0 <= i < n")
    key = hashlib.sha256(json.dumps([str(Path(path).resolve()), max_len, limit, chat_template,
                                     str(getattr(model.config, "_name_or_path", ""))]).encode()).hexdigest()[:16]
    root = Path(out_root) if out_root else cache_dir() / "specdec" / "draft_data"
    folder = root / f"sharegpt-{key}"
    if (folder / "meta.json").is_file():
        return folder
    formatter = ChatFormatter(tokenizer, chat_template)
    conversations = read_sharegpt(path, limit)
    parts = folder.with_name(folder.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    iterator: Any = list(enumerate(conversations))[index::count]
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"encode {index}/{count}", mininterval=10.0)
    for number, conversation in iterator:
        target = parts / f"{number:07d}.pt"
        if target.exists():
            continue  # resumable
        ids, mask = chat_example(formatter, conversation, max_len)
        if int(mask.sum()) == 0:
            continue
        hidden = encode_features(model, ids).to("cpu", torch.float16)
        tmp = target.with_suffix(".tmp")
        torch.save({"input_ids": ids.to(torch.int32), "hidden_state": hidden, "loss_mask": mask.to(torch.uint8)}, tmp)
        os.replace(tmp, target)
    if count > 1:
        return parts  # merge with a run without --shard once every shard is done
    files = sorted(parts.glob("*.pt"))
    tokens = supervised = 0
    for file in files:
        sample = torch.load(file, weights_only=True)
        tokens += int(sample["input_ids"].numel())
        supervised += int(sample["loss_mask"].sum())
    meta = {"source": str(path), "samples": len(files), "tokens": tokens, "supervised_tokens": supervised,
            "hidden_size": int(model.config.hidden_size), "max_len": max_len, "limit": limit}
    (parts / "meta.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(parts, folder)
    return folder
