"""Evaluation questions: MT-bench (shipped), its train / held-out split, or a local MT-bench-format file.

One module for the split, so the draft data (prompts from the training part) and the evaluation (the held-out
part) cannot disagree about which questions are which.
"""

from __future__ import annotations

import json
from pathlib import Path

from effrepro.errors import UsageError

MTBENCH_HOLDOUT_EVERY = 10  # MT-bench lists 10 questions per category: the first of each block is held out


def mtbench_split(holdout_every: int = MTBENCH_HOLDOUT_EVERY) -> tuple[list[dict], list[dict]]:
    """``(train_questions, heldout_questions)`` of MT-bench: every ``holdout_every``-th question from the first
    (ids 81, 91, ..., 151: one per category) is held out for evaluation, the other 72 may prompt draft data
    (``DraftDataConfig.prompts = "mtbench-train"``). The one split every project uses."""
    from effrepro.data import mtbench_questions

    questions = mtbench_questions()
    held = [q for i, q in enumerate(questions) if i % holdout_every == 0]
    train = [q for i, q in enumerate(questions) if i % holdout_every != 0]
    return train, held


def load_questions(source: str) -> list[dict]:
    """``"mtbench"`` (the 80 shipped questions), ``"mtbench-heldout"`` / ``"mtbench-train"`` (``mtbench_split``)
    or a local question.jsonl with ``question_id`` and ``turns``."""
    if source == "mtbench":
        from effrepro.data import mtbench_questions

        return mtbench_questions()
    if source in ("mtbench-heldout", "mtbench-train"):
        return mtbench_split()[source == "mtbench-heldout"]
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"question file {path} not found; give 'mtbench' or a question.jsonl path")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"question file {path} cannot be read as a question.jsonl ({exc})") from None
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = [str(t) for t in row["turns"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(f"{path}:{number} is not an MT-bench question row "
                             "(JSON with 'question_id' and a 'turns' list)") from None
        if not turns or not all(t.strip() for t in turns):
            raise UsageError(f"{path}:{number} has an empty turn; every turn needs text")
        questions.append({"question_id": row.get("question_id", number), "category": row.get("category", ""),
                          "turns": turns})
    if not questions:
        raise UsageError(f"{path} holds no questions")
    return questions
