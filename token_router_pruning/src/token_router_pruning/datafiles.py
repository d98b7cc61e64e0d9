"""The user's own data at full scale (``reproduce --data KIND=PATH``): an Alpaca-format json for router training and
a local text corpus for the calibration, evaluation and training windows; and the paper's lm-eval tasks from the
local HF datasets cache. Every problem is one :class:`UsageError` line, raised before any model work."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError

DATA_KINDS = ("alpaca", "corpus")
ALPACA_PROMPT = ("Below is an instruction that describes a task{extra}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n")


def parse_data_args(values: Sequence[str]) -> dict[str, Path]:
    """``["alpaca=a.json", "corpus=dir"]`` -> ``{"alpaca": Path, "corpus": Path}``, paths checked."""
    out: dict[str, Path] = {}
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep or kind not in DATA_KINDS or not path:
            raise UsageError(f"--data {value!r}: give KIND=PATH with KIND one of {', '.join(DATA_KINDS)} "
                             "(alpaca=instructions.json for router training, corpus=FILE_OR_DIR for text windows)")
        resolved = Path(path).expanduser()
        if not resolved.exists():
            raise UsageError(f"--data {kind}={path}: no such file or directory")
        out[kind] = resolved
    return out


def load_alpaca(path: Path) -> list[dict[str, str]]:
    """Rows ``{"instruction", "input", "output"}`` of an Alpaca-format json list (or JSON lines)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()
                                                                        if x.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"--data alpaca={path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    bad = [i for i, r in enumerate(rows) if not (isinstance(r, dict) and isinstance(r.get("instruction"), str)
                                                 and isinstance(r.get("output"), str))]
    if not rows or bad:
        raise UsageError(f"--data alpaca={path}: expected a list of {{instruction, input, output}} objects"
                         + (f"; row {bad[0]} is not one" if bad else "; the list is empty"))
    return [{"instruction": r["instruction"], "input": str(r.get("input") or ""), "output": r["output"]}
            for r in rows]


def alpaca_prompt(row: dict[str, str]) -> str:
    has_input = bool(row["input"].strip())
    return ALPACA_PROMPT.format(extra=", paired with an input that provides further context" if has_input else "",
                                instruction=row["instruction"],
                                input=f"### Input:\n{row['input']}\n\n" if has_input else "")


def alpaca_examples(tokenizer: Any, rows: Sequence[dict[str, str]], max_len: int) -> list:
    """Router-training examples: prompt + response tokens (at most ``max_len``), scored on the response (the
    positions the model generates), at least the last position."""
    from token_router_pruning.train import TrainExample

    examples = []
    for row in rows:
        prompt = tokenizer(alpaca_prompt(row), add_special_tokens=False).input_ids
        response = tokenizer(row["output"], add_special_tokens=False).input_ids
        ids = (prompt + response)[:max_len]
        if len(ids) < 2:
            continue
        scored = max(1, min(len(response), len(ids) - len(prompt)))
        examples.append(TrainExample(torch.tensor(ids, dtype=torch.long), scored))
    if not examples:
        raise UsageError("--data alpaca: no row has at least 2 tokens")
    return examples


def load_corpus(path: Path) -> tuple[str, ...]:
    """Documents of a text corpus: a ``.txt`` file (one document), a ``.jsonl`` file with a ``text`` field per
    line, or a directory of such files (sorted)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    docs: list[str] = []
    for file in files:
        if file.suffix == ".jsonl":
            for n, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    try:
                        docs.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise UsageError(f"--data corpus: {file} line {n + 1} is not a JSON object with a "
                                         "'text' field") from None
        else:
            docs.append(file.read_text(encoding="utf-8", errors="replace"))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UsageError(f"--data corpus={path}: no text found (.txt files or .jsonl with a 'text' field)")
    return tuple(docs)


# ---- lm-eval's standard tasks from the local HF datasets cache ------------------------------------------------
def hf_task_configs(names: Sequence[str]) -> list[dict[str, Any]]:
    """lm-eval's own configs of the paper's tasks, reading the HF datasets (``mmlu`` expands to its subjects)."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    from token_router_pruning.tasks import PAPER_FEWSHOT, _builtin_yaml

    root = Path(lm_eval.tasks.__file__).parent
    configs = []
    for name in names:
        paths = sorted((root / "mmlu" / "default").glob("mmlu_*.yaml")) if name == "mmlu" else [_builtin_yaml(name)]
        paths = [p for p in paths if not p.stem.startswith("_")]
        for path in paths:
            cfg = load_yaml(path, resolve_func=True)
            for key in ("group", "tag"):
                cfg.pop(key, None)
            cfg["task"] = cfg.get("task", path.stem)
            if name in PAPER_FEWSHOT:
                cfg["num_fewshot"] = PAPER_FEWSHOT[name]
            cfg["metadata"] = {"version": 1.0, "paper_task": name}
            configs.append(cfg)
    return configs


def check_hf_datasets(configs: Sequence[dict[str, Any]]) -> None:
    """Every task's dataset must be in the local HF datasets cache (nothing is downloaded): one line naming the
    first missing one otherwise."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    seen = set()
    for cfg in configs:
        key = (cfg.get("dataset_path"), cfg.get("dataset_name"))
        if key in seen:
            continue
        seen.add(key)
        try:
            datasets.load_dataset_builder(key[0], key[1], **(cfg.get("dataset_kwargs") or {}))
        except Exception:  # noqa: BLE001 - any failure means: not usable offline
            name = f"{key[0]}" + (f" ({key[1]})" if key[1] else "")
            raise UsageError(f"task {cfg['task']}: dataset {name} is not in the local HF datasets cache "
                             f"({datasets.config.HF_DATASETS_CACHE}); download it once with datasets.load_dataset"
                             f"({key[0]!r}, {key[1]!r}) where there is network, or pass --tasks-dir with the "
                             "tasks as local JSONL") from None


# ---- run settings checked before any model work -----------------------------------------------------------
DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(device: str | None, dtype: str | None, device_map: str | None) -> tuple[str, str]:
    """``(device, dtype)``: CPU unless asked; bf16 by default on a GPU, fp32 on the CPU."""
    device = device or "cpu"
    if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise UsageError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is visible here (torch.cuda.is_available() is False)")
    if device_map is not None:
        if not device.startswith("cuda"):
            raise UsageError("--device-map spreads a model over GPUs; it needs --device cuda")
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise UsageError("--device-map needs the accelerate package (pip install accelerate)") from None
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return device, dtype


def check_windows(needs: Sequence[tuple[str, int, int, str]], tokenizer: Any, corpus: tuple[str, ...] | None,
                  source: str) -> None:
    """Every window set the plan cuts must exist in the corpus: one line naming the first that does not."""
    from token_router_pruning.eval import available_windows

    for split, length, count, key in needs:
        have = available_windows(tokenizer, length, split, corpus)
        if count > have:
            raise UsageError(f"{key}={count} needs {count} {split} windows of {length} tokens; the corpus "
                             f"({source}) has {have}: pass --data corpus=PATH with more text or lower {key}")
