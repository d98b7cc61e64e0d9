"""Draft data for the miniature: the target's own answers to the MT-bench questions the evaluation does not use.

Why not the engine's ``generate_draft_data`` prompts: the ShareGPT file shipped with the assets is fastchat's dummy
set, 500 conversations over 52 distinct identity questions ("Who are you?", "Are you GPT-4?") with fixed Vicuna
answers. Drafts trained on it see almost nothing of the writing / math / coding answers MT-bench asks for. Here
MT-bench is split: one question per category is held out for evaluation (ids 81, 91, ..., 151), and the first
turns of the other 72 are answered by the target (greedy, self-distillation). The folder has the engine's on-disk
format (``FeatureDataset``); the engine's own helpers render, generate and encode, only the prompt source differs.
(Gap reported to the engine: ``generate_draft_data`` should accept a prompt list.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from effrepro.data import cache_dir
from effrepro.errors import UsageError
from effrepro.outputs import make_temporary_folder
from effrepro.specdec.draft_data import (
    ChatFormatter,
    DraftDataConfig,
    chat_example,
    data_key,
    encode_features,
    self_generate,
)
from effrepro.specdec.questions import mtbench_split

split_mtbench = mtbench_split  # ``(train_questions, eval_questions)``: the engine's one MT-bench split


def write_questions(questions: list[dict], path: Path) -> Path:
    """An MT-bench-format ``question.jsonl`` (what ``EvalConfig.questions`` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


def prompt_draft_data(model: Any, tokenizer: Any, config: DraftDataConfig, prompts: list[str],
                      cache_root: Path | None = None) -> Path:
    """Self-distilled draft data for ``prompts`` (first ``config.self_generated`` of them), cached by content.

    Same sample format and ``meta.json`` as ``effrepro.specdec.generate_draft_data``.
    """
    if config.sharegpt:
        raise UsageError("prompt-based draft data takes no ShareGPT conversations; set data.sharegpt=0")
    prompts = prompts[: config.self_generated] if config.self_generated else prompts
    if not prompts:
        raise UsageError("no prompts for the draft data; raise data.self_generated")
    digest = hashlib.sha256(json.dumps([data_key(config, model), prompts]).encode()).hexdigest()[:16]
    root = Path(cache_root) if cache_root is not None else cache_dir() / "gumiho" / "draft_data"
    folder = root / digest
    if (folder / "meta.json").is_file():
        return folder
    formatter = ChatFormatter(tokenizer, config.chat_template)
    pool = [[{"role": "user", "content": text}] for text in prompts]
    conversations = self_generate(model, tokenizer, formatter, pool, replace(config, self_generated=len(pool)))
    root.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_folder(root, "draft-data")  # removed below; a killed run's is removed by the next
    try:
        count = tokens = supervised = 0
        for conversation in conversations:
            ids, mask = chat_example(formatter, conversation, config.max_len)
            if int(mask.sum()) == 0:
                continue
            hidden = encode_features(model, ids).to("cpu", getattr(torch, config.feature_dtype))
            torch.save({"input_ids": ids.to(torch.int32), "hidden_state": hidden, "loss_mask": mask.to(torch.uint8)},
                       tmp / f"{count:07d}.pt")
            count, tokens, supervised = count + 1, tokens + ids.numel(), supervised + int(mask.sum())
        meta = {"config": asdict(config), "prompts": len(prompts), "samples": count, "tokens": tokens,
                "supervised_tokens": supervised, "hidden_size": int(model.config.hidden_size), "source": "prompts"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
