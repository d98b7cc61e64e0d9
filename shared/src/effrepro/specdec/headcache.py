"""Trained draft heads as cached prerequisites, and the miniature setting the EAGLE-family papers share.

A head is trained once per setting and kept under ``cache_dir()/specdec/heads/<name>-<digest>/``: ``head.pt``
(what ``train_head`` writes) and ``entry.json`` (the key payload, the steps, the training seconds, the per-epoch
history and the SHA-256 of ``head.pt``). The digest hashes the head's description (kind, constructor settings,
loss), the training config (without its logging knobs), the draft-data folders (their names are the data cache
keys, which already hash the target) and :data:`HEADS_VERSION`, bumped whenever the training code changes what
a head learns. A code edit that keeps the behaviour (a move, a rename) keeps the key, so caches survive it.

Building happens in ``.<entry>.partial`` next to the entry (the trainer's ``last.pt`` there makes an
interrupted build resume per epoch) under a file lock, and the finished folder is renamed into place. On load
the entry is checked (key, ``head.pt`` present, checksum); a missing, partial or corrupt entry is rebuilt, never
used. The EAGLE-2 baseline (:func:`eagle2_baseline`) is one such head: every paper that trains on the same data
with the same budget gets the same cached head.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from effrepro.specdec.draft_data import DraftDataConfig
from effrepro.specdec.trainer import HeadTrainConfig

HEADS_VERSION = 1
NOT_KEYED = ("log_every", "num_workers")  # training knobs that do not change the trained head

# The miniature setting of the jakiro and gumiho smoke runs (SmolLM2-135M-Instruct on a CPU): self-distilled
# answers to both turns of the 72 MT-bench questions the evaluation does not hold out, plus 64 instructions over
# the text corpus; every head trained on it with the same budget, over a reduced draft vocabulary of 8192 tokens.
SMOKE_DRAFT_DATA = DraftDataConfig(target="smollm2-135m", sharegpt=0, self_generated=136,
                                   prompts="mtbench-train-chat,corpus", self_max_new_tokens=128, max_len=768)
SMOKE_HEAD_TRAIN = HeadTrainConfig(epochs=8, batch_size=4, steps_per_epoch=25, lr=1e-3, weight_decay=0.0,
                                   warmup_steps=20, schedule="cosine", max_len=768, holdout=0.05, seed=0,
                                   log_every=10, draft_vocab=8192)
EAGLE_WEIGHTS = {"v_w": 1.0, "p_w": 0.1}


def unseen_corpus_prompts(data: DraftDataConfig, count: int) -> list[str]:
    """``count`` corpus instructions (``distillation_prompts``' corpus order) that draft data built with ``data``
    did not answer: extra evaluation turns from a held-out split of the training distribution. For prompt specs
    without ShareGPT items (their prompts depend on the conversation pool)."""
    from effrepro.specdec.draft_data import distillation_prompts

    used = set(distillation_prompts([], data.prompts)[: data.self_generated]) if data.self_generated else set()
    return [p for p in distillation_prompts([], "corpus") if p not in used][:count]


@dataclass
class CachedHead:
    """A built entry: ``path`` is its ``head.pt``; ``entry`` the contents of its ``entry.json``."""

    path: Path
    entry: dict[str, Any]
    reused: bool

    @property
    def steps(self) -> int:
        return int(self.entry["steps"])

    @property
    def seconds(self) -> float:
        return float(self.entry["seconds"])

    def budget(self) -> dict[str, Any]:
        """What the head was trained with, for claims' details and reports."""
        train = self.entry["key"]["train"]
        return {"steps": self.steps, "batch_size": train["batch_size"], "draft_vocab": train["draft_vocab"],
                "lr": train["lr"], "data": self.entry["key"]["data"], "train_seconds": round(self.seconds, 1),
                "cache": self.path.parent.name}


def heads_root() -> Path:
    from effrepro.data import cache_dir

    return cache_dir() / "specdec" / "heads"


def _data_id(folders: list[Path]) -> list[dict[str, Any]]:
    out = []
    for folder in folders:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        out.append({"folder": Path(folder).name, "samples": meta.get("samples"), "tokens": meta.get("tokens")})
    return out


def head_key(spec: dict[str, Any], config: HeadTrainConfig, data_dirs: list[Path]) -> tuple[str, dict[str, Any]]:
    """``(digest, payload)`` of a head setting (see the module docstring)."""
    train = {k: v for k, v in asdict(config).items() if k not in NOT_KEYED}
    payload = json.loads(json.dumps({"head": spec, "train": train, "data": _data_id(data_dirs),
                                     "version": HEADS_VERSION}, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return digest, payload


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_entry(folder: Path, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(entry, "")`` for a complete entry with this key and an intact ``head.pt``; ``(None, why)`` otherwise."""
    if not folder.is_dir():
        return None, "missing"
    try:
        entry = json.loads((folder / "entry.json").read_text())
    except (OSError, ValueError):
        return None, "no readable entry.json (a partial or corrupt entry)"
    if entry.get("key") != payload:
        return None, "its key differs from this setting"
    head = folder / "head.pt"
    if not head.is_file() or _sha256(head) != entry.get("sha256"):
        return None, "head.pt is missing or does not match its checksum"
    return entry, ""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_head(name: str, spec: dict[str, Any], config: HeadTrainConfig, data_dirs: list[Path],
                train: Callable[[Path], dict[str, Any]], root: Path | None = None) -> CachedHead:
    """The cached head for this setting, built with ``train(out_dir)`` (which must write ``out_dir/head.pt``,
    resume from ``out_dir/last.pt`` and return ``train_head``'s result) when absent, partial or corrupt."""
    data_dirs = [Path(d) for d in data_dirs]
    digest, payload = head_key(spec, config, data_dirs)
    root = Path(root) if root is not None else heads_root()
    folder = root / f"{name}-{digest}"
    with _locked(root / f".{folder.name}.lock"):
        entry, why = check_entry(folder, payload)
        if entry is not None:
            print(f"[heads] {name}: reusing {folder} ({entry['steps']} steps)", flush=True)
            return CachedHead(folder / "head.pt", entry, reused=True)
        if folder.exists():
            print(f"[heads] {name}: rebuilding {folder}: {why}", flush=True)
            shutil.rmtree(folder)
        work = root / f".{folder.name}.partial"
        try:
            if json.loads((work / "key.json").read_text()) != payload:
                shutil.rmtree(work)
        except (OSError, ValueError):
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        (work / "key.json").write_text(json.dumps(payload, indent=1))
        resumed = (work / "last.pt").is_file()
        print(f"[heads] {name}: training into {folder}{' (resuming)' if resumed else ''}", flush=True)
        start = time.perf_counter()
        result = train(work)
        seconds = time.perf_counter() - start  # a resumed build: this process's share only (``resumed``)
        history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in result.get("history", [])]
        entry = {"key": payload, "name": name, "steps": int(result["steps"]), "seconds": round(seconds, 1),
                 "resumed": resumed, "history": history, "sha256": _sha256(work / "head.pt"),
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (work / "last.pt").unlink(missing_ok=True)  # optimizer state: only a resume needs it
        (work / "entry.json").write_text(json.dumps(entry, indent=1))
        os.replace(work, folder)
        return CachedHead(folder / "head.pt", entry, reused=False)


def eagle2_baseline(model: Any, data_dirs: list[Path], config: HeadTrainConfig, progress: bool = True,
                    root: Path | None = None) -> CachedHead:
    """The EAGLE-2 head (one decoder layer, EAGLE loss ``v_w`` 1 / ``p_w`` 0.1) for this target, data and budget:
    the baseline every EAGLE-family paper compares against, trained once and shared."""
    from effrepro.specdec.eagle import build_eagle_head
    from effrepro.specdec.trainer import train_head

    config = replace(config, loss_weights=dict(EAGLE_WEIGHTS))
    spec = {"kind": "eagle2", "loss": "eagle"}  # the widths come from the target, which the data key names

    def train(out: Path) -> dict[str, Any]:
        head = build_eagle_head(model.config, model.get_input_embeddings().weight.detach().float())
        lm_head = model.get_output_embeddings().weight.detach().float()
        return train_head(head, lm_head, data_dirs, config, out, progress=progress, resume=True)

    return cached_head("eagle2", spec, config, data_dirs, train, root=root)


def plot_training(heads: dict[str, CachedHead], path: Path, metrics: dict[str, str] | None = None) -> Path | None:
    """Held-out top-1 per epoch of each head against optimizer steps (``metrics``: the history key per head,
    default ``eval_top1``); None when no head has a history."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from effrepro.report import save_figure

    metrics = metrics or {}
    curves = {}
    for name, head in heads.items():
        metric = metrics.get(name, "eval_top1")
        rows = head.entry["history"]
        per_epoch = head.steps / max(len(rows), 1)
        curves[name] = [(row["epoch"] * per_epoch, row[metric]) for row in rows if metric in row]
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, points in curves.items():
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=name)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("held-out top-1 (next token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
