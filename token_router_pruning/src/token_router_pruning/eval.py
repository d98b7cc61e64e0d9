"""Evaluation: lm-eval (offline, ``HFLM(pretrained=<model object>)``), a batched option scorer for the GA
fitness, perplexity on the embedded text corpus, and accuracy retention (method / dense, as the paper).

The batched scorer computes exactly lm-eval's ``loglikelihood`` (same context/continuation split, same
inputs ``(context + continuation)[:-1]``; a test checks equality) but batches right-padded sequences,
which the token skipper routes per sample; it only evaluates the LM head at the scored positions.
lm-eval runs with batch size 1 because its ``HFLM`` pads batches without an attention mask, and a
router must not count padding as recent tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from torch import nn


@dataclass
class EncodedItem:
    context: list[int]
    continuations: list[list[int]]
    gold: int
    family: str = ""


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: trailing context spaces move to the continuation; no special tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


def encode_items(tokenizer: Any, items: Sequence[dict], delimiter: str = " ") -> list[EncodedItem]:
    encoded = []
    for item in items:
        conts = []
        ctx: list[int] = []
        for choice in item["choices"]:
            ctx, cont = encode_pair(tokenizer, item["context"], delimiter + choice)
            conts.append(cont)
        encoded.append(EncodedItem(ctx, conts, int(item["gold"]), item.get("family", "")))
    return encoded


def _batched_forward_logprobs(
    model: nn.Module, sequences: list[list[int]], targets: list[list[tuple[int, int]]], batch_size: int
) -> list[list[float]]:
    """For each sequence, log p(token | prefix) at the requested (position, token) pairs."""
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    head = model.get_output_embeddings()
    results: list[list[float]] = [[] for _ in sequences]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, : len(sequences[i])] = torch.tensor(sequences[i], device=device)
            mask[row, : len(sequences[i])] = 1
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        for row, i in enumerate(chunk):
            positions = torch.tensor([p for p, _ in targets[i]], device=device)
            tokens = torch.tensor([t for _, t in targets[i]], device=device)
            logprobs = torch.log_softmax(head(hidden[row, positions]).float(), dim=-1)
            results[i] = logprobs.gather(1, tokens[:, None]).squeeze(1).tolist()
    return results


@torch.no_grad()
def option_logliks(
    model: nn.Module, items: Sequence[EncodedItem], batch_size: int = 8, gold_only: bool = False
) -> list[list[float]]:
    """Summed log-likelihood of each option (or only the gold one) per item, as lm-eval computes it.

    Options that are one token and share the context are scored from one forward (lm-eval's cache).
    """
    sequences, targets, owners = [], [], []
    for index, item in enumerate(items):
        options = [item.gold] if gold_only else list(range(len(item.continuations)))
        single = all(len(item.continuations[o]) == 1 for o in options)
        if single:
            last = len(item.context) - 1
            sequences.append(item.context)
            targets.append([(last, item.continuations[o][0]) for o in options])
            owners.append((index, options, None))
            continue
        for option in options:
            cont = item.continuations[option]
            full = item.context + cont
            first = len(item.context) - 1
            sequences.append(full[:-1])
            targets.append([(first + j, tok) for j, tok in enumerate(cont)])
            owners.append((index, [option], len(cont)))
    scores = _batched_forward_logprobs(model, sequences, targets, batch_size)
    out: list[list[float]] = [[math.nan] * (1 if gold_only else len(it.continuations)) for it in items]
    for (index, options, cont_len), values in zip(owners, scores):
        if cont_len is None:
            for slot, option in enumerate(options):
                out[index][0 if gold_only else option] = values[slot]
        else:
            out[index][0 if gold_only else options[0]] = float(sum(values))
    return out


def mc_metrics(items: Sequence[EncodedItem], logliks: Sequence[Sequence[float]]) -> dict[str, float]:
    """Accuracy (argmax option == gold) and mean gold NLL ("continuation loss")."""
    correct = [max(range(len(ll)), key=lambda o: ll[o]) == it.gold for it, ll in zip(items, logliks)]
    nll = [-ll[it.gold] for it, ll in zip(items, logliks)]
    return {"acc": sum(correct) / len(correct), "gold_nll": sum(nll) / len(nll), "n": len(items)}


TEXT_SPLITS = {"eval": (0,), "calib": (1,), "train": tuple(range(2, 10))}


@lru_cache(maxsize=4)
def _corpus_ids(tokenizer_key: str, tokenizer: Any, corpus: tuple[str, ...] | None = None) -> tuple[int, ...]:
    from effrepro.data import text_corpus

    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    ids: list[int] = []
    for doc in corpus if corpus is not None else text_corpus():
        ids.extend(tokenizer(doc, add_special_tokens=False).input_ids + [eos])
    return tuple(ids)


def _window_ids(tokenizer: Any, length: int, split: str, corpus: tuple[str, ...] | None) -> tuple[tuple, list]:
    if split not in TEXT_SPLITS:
        raise UsageError(f"unknown text split {split!r}; use one of {', '.join(TEXT_SPLITS)}")
    if length < 2:
        raise UsageError(f"text windows need at least 2 tokens, got {length}")
    ids = _corpus_ids(getattr(tokenizer, "name_or_path", "") + f":{len(tokenizer)}", tokenizer, corpus)
    return ids, [j for j in range(len(ids) // length) if j % 10 in TEXT_SPLITS[split]]


def available_windows(tokenizer: Any, length: int, split: str, corpus: tuple[str, ...] | None = None) -> int:
    """How many ``split`` windows of ``length`` tokens the corpus holds."""
    return len(_window_ids(tokenizer, length, split, corpus)[1])


def text_windows(tokenizer: Any, length: int, split: str, count: int | None = None,
                 corpus: tuple[str, ...] | None = None) -> torch.Tensor:
    """Non-overlapping ``length``-token windows of a corpus (the embedded one unless ``corpus`` gives the
    documents), documents joined by EOS: window ``j`` belongs to ``eval`` when ``j % 10 == 0``, ``calib`` when
    ``== 1``, else ``train``, so the three splits never overlap."""
    ids, chosen = _window_ids(tokenizer, length, split, corpus)
    if count is not None:
        if len(chosen) < count:
            raise UsageError(f"the text corpus has only {len(chosen)} {split} windows of {length} tokens")
        chosen = chosen[:count]
    return torch.tensor([ids[j * length:(j + 1) * length] for j in chosen], dtype=torch.long)


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, tail: int = 32, batch_size: int = 4) -> dict[str, float]:
    """Next-token NLL of one routed forward per window: over the last ``tail`` positions (``tail_nll``,
    the reported "continuation" perplexity, as in the spec's probe) and over every position (``nll``).

    Every-position perplexity of a single routed prefill is a harsh diagnostic: an early token skipped
    by most blocks predicts its successor from a barely-updated state.
    """
    sums = {"all": 0.0, "tail": 0.0}
    counts = {"all": 0, "tail": 0}
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(next(model.parameters()).device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        sums["all"] += float(nll.sum())
        counts["all"] += nll.numel()
        sums["tail"] += float(nll[:, -tail:].sum())
        counts["tail"] += nll[:, -tail:].numel()
    mean, tail_mean = sums["all"] / counts["all"], sums["tail"] / counts["tail"]
    return {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "tail_nll": tail_mean,
            "tail_ppl": math.exp(min(tail_mean, 700.0)), "tokens": counts["all"]}


def retention(method: dict[str, float], dense: dict[str, float]) -> float:
    """Paper's "Avg. Percentage": mean over tasks of acc_method / acc_dense, in percent."""
    ratios = [method[t] / dense[t] for t in dense if dense[t] > 0 and t in method]
    if not ratios:
        raise UsageError("dense accuracy is zero on every task; retention is undefined")
    return 100.0 * sum(ratios) / len(ratios)


def _gold_index(task: Any, sample: dict[str, Any]) -> int:
    """The correct option of a logged lm-eval sample: WinoGrande-style tasks (several contexts, one continuation)
    name it by ``doc_to_text``; others by the target, an index or the option text."""
    if getattr(task, "multiple_input", False):
        return int(task.doc_to_text(sample["doc"]))
    target = sample["target"]
    target = target[0] if isinstance(target, list) else target
    if isinstance(target, str) and not target.strip().isdigit():
        return list(task.doc_to_choice(sample["doc"])).index(target)
    return int(target)


class LmEval:
    """lm-eval over a (routed) model object: tasks are built once, ``run`` evaluates the current plan."""

    def __init__(self, model: nn.Module, tokenizer: Any, tasks: Sequence[str | dict], include_path: Sequence[Path] = (),
                 limit: int | None = None, metric: dict[str, str] | None = None, max_length: int = 2048) -> None:
        import logging

        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=max_length)
        # only our / the user's tasks are indexed: indexing lm-eval's thousands of built-in YAMLs takes minutes
        named = [t for t in tasks if isinstance(t, str)]
        manager = TaskManager(include_path=[str(p) for p in include_path] or None, verbosity="ERROR",
                              include_defaults=bool(named) and not include_path)
        try:
            self.task_dict = manager.load(list(tasks))
        except (KeyError, ValueError) as exc:
            raise UsageError(f"cannot load the lm-eval tasks {list(tasks)}: {exc}") from None
        for task in self.task_dict["tasks"].values():
            if hasattr(task, "set_fewshot_seed"):
                task.set_fewshot_seed(seed=0)
        self.limit, self.metric = limit, dict(metric or {})

    @property
    def task_names(self) -> list[str]:
        return sorted(self.task_dict["tasks"])

    def run(self) -> dict[str, dict[str, Any]]:
        """Per task: ``acc`` (the task's metric), ``n`` and the per-item gold log-likelihood."""
        from lm_eval.evaluator import evaluate

        out = evaluate(self.lm, self.task_dict, limit=self.limit, bootstrap_iters=0, log_samples=True,
                       verbosity="ERROR")
        rows = {}
        for task in self.task_names:
            metrics = out["results"][task]
            metric = self.metric.get(task, "acc")
            value = metrics.get(f"{metric},none", metrics.get("acc,none"))
            samples = out["samples"][task]
            gold_ll = [float(sample["filtered_resps"][_gold_index(self.task_dict["tasks"][task], sample)][0])
                       for sample in samples]
            correct = [float(s["acc"]) for s in samples] if samples and "acc" in samples[0] else []
            rows[task] = {"acc": float(value), "n": len(samples), "gold_loglik": gold_ll, "correct": correct}
        return rows
