"""The cached prerequisites of ``jakiro reproduce``: the target, the draft-data folders and the trained heads.

The draft data and every head are built once under ``EFFREPRO_CACHE`` (``effrepro.specdec.draft_data`` and
``effrepro.specdec.headcache``) and reused by any later run with the same settings; the EAGLE-2 head is the
cache entry gumiho's reproduction uses too (same data, same budget).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.reproduce import Context
from effrepro.specdec import HeadTrainConfig
from effrepro.specdec.headcache import SMOKE_DRAFT_DATA, CachedHead, cached_head, eagle2_baseline

from jakiro.draft_sources import DataSettings, build_draft_data
from jakiro.train import method_train_config, train_method

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def train_config(plan: Any) -> HeadTrainConfig:
    """The budget every head of the plan trains with (its loss weights come per method)."""
    return HeadTrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, steps_per_epoch=plan.steps_per_epoch,
                           lr=plan.lr, weight_decay=plan.weight_decay, warmup_steps=plan.warmup_steps,
                           schedule="cosine", max_len=plan.train_max_len, holdout=plan.holdout, seed=plan.seed,
                           log_every=10, draft_vocab=plan.draft_vocab)


def cached_heads(plan: Any, model: Any, data_dirs: list, progress: bool = False) -> dict[str, CachedHead]:
    """Every method's head as a cached prerequisite (the EAGLE-2 one shared with other papers), same budget."""
    base = train_config(plan)
    heads = {}
    for method in plan.methods:
        if method == "eagle2":
            heads[method] = eagle2_baseline(model, data_dirs, base, progress=progress)
            continue
        config = method_train_config(method, base)
        spec = {"kind": f"jakiro/{method}", "fc_bias": True}

        def train(out: Any, method: str = method) -> dict:
            return train_method(method, model, data_dirs, base, out, progress=progress, resume=True)

        heads[method] = cached_head(f"jakiro-{method}", spec, config, data_dirs, train)
    return heads


def target_and_data(plan: Any) -> tuple[Any, Any, list, dict]:
    """The target, its tokenizer and the draft-data folders (built once, then cached under EFFREPRO_CACHE)."""
    from effrepro.data import load_target
    from effrepro.specdec import draft_data_folders

    model, tokenizer = load_target(plan.target, dtype=DTYPES[plan.dtype])
    model = model.to(plan.device)
    data_dirs = []
    if plan.sharegpt_json:
        data_dirs += build_draft_data(DataSettings(prompts=0, max_len=plan.data_max_len,
                                                   sharegpt_json=plan.sharegpt_json,
                                                   sharegpt_limit=plan.sharegpt_limit), plan.target, model, tokenizer)
    if plan.prompts:
        config = dataclasses.replace(SMOKE_DRAFT_DATA, target=plan.target, self_generated=plan.prompts,
                                     prompts=plan.distill_prompts, self_max_new_tokens=plan.data_new_tokens,
                                     max_len=plan.data_max_len)
        data_dirs += draft_data_folders(model, tokenizer, config, progress=False)
    if not data_dirs:
        raise UsageError("no draft data selected; set prompts or sharegpt_json")
    metas = [json.loads((d / "meta.json").read_text()) for d in data_dirs]
    data = {k: sum(m[k] for m in metas) for k in ("samples", "tokens", "supervised_tokens")}
    return model, tokenizer, data_dirs, {**data, "folders": [str(d) for d in data_dirs]}


# The extra held-out turns are evaluated in blocks of this many instructions, each its own interleaved run and
# cache entry: a run with more extra turns reuses the blocks an earlier run with the same settings measured.
EXTRA_BLOCK = 16


def extra_prompts(plan: Any) -> list[str]:
    """The plan's ``extra_heldout`` corpus instructions the draft data did not answer (an error when the corpus
    holds fewer)."""
    from effrepro.specdec.draft_data import distillation_prompts

    used = set(distillation_prompts([], plan.distill_prompts)[: plan.prompts])
    fresh = [p for p in distillation_prompts([], "corpus") if p not in used][: plan.extra_heldout]
    if len(fresh) < plan.extra_heldout:
        raise UsageError(f"extra_heldout={plan.extra_heldout}, but the corpus holds only {len(fresh)} instructions "
                         "the draft data did not answer")
    return fresh


def greedy_blocks(plan: Any, out: Path) -> list[tuple[str, str, int, dict[str, int]]]:
    """The greedy evaluation as ``(cache name, question source, max questions, key fields)`` blocks.

    Without ``plan.extra_heldout``: one block, ``plan.questions``. With it: block 0 holds the first
    ``max_questions`` of ``plan.questions`` and the first :data:`EXTRA_BLOCK` corpus instructions the draft data
    did not answer (one turn each); each further block the next :data:`EXTRA_BLOCK` of them. The draft data
    answered the first ``plan.prompts`` prompts of ``distill_prompts``; the extra ones come after them in the
    corpus order, so the heads never saw them. The question files are written to ``out``."""
    if not plan.extra_heldout:
        return [("eval_greedy", plan.questions, plan.max_questions, {})]
    from effrepro.specdec.harness import load_questions

    fresh = extra_prompts(plan)
    blocks = []
    for offset in range(0, len(fresh), EXTRA_BLOCK):
        chunk = fresh[offset: offset + EXTRA_BLOCK]
        questions = load_questions(plan.questions)[: plan.max_questions or None] if offset == 0 else []
        questions += [{"question_id": f"corpus-{offset + i}", "category": "corpus", "turns": [p]}
                      for i, p in enumerate(chunk)]
        name = "eval_greedy" if offset == 0 else f"eval_greedy_{offset // EXTRA_BLOCK}"
        path = out / f"{name}_questions.jsonl"
        path.write_text("".join(json.dumps(q) + "\n" for q in questions))
        # block 0 keeps the key of a single-block run with extra_heldout = EXTRA_BLOCK (its cache stays valid)
        fields = {"extra_heldout": len(chunk)} | ({"extra_offset": offset} if offset else {})
        blocks.append((name, str(path), 0, fields))
    return blocks


def training_summary(heads: dict[str, CachedHead], ctx: Context) -> dict[str, dict]:
    """Steps, seconds, last held-out metrics and budget of every head (logged to the run's metrics)."""
    training = {}
    for method, head in heads.items():
        final = head.entry["history"][-1] if head.entry["history"] else {}
        training[method] = {"steps": head.steps, "final": final, "seconds": head.seconds, "budget": head.budget()}
        ctx.log.log(stage="train", method=method, steps=head.steps, seconds=head.seconds, reused=head.reused,
                    **{k: v for k, v in final.items() if isinstance(v, float)})
    return training
