"""Evaluation tasks: the generated miniature multiple-choice families and the paper's tasks from local files.

Miniature: five templated families, four options each, every option a single SmolLM2 token (so lm-eval scores
all options of an item from one forward pass), fixed seed, a ``calibration`` split (GA fitness) and a generated
``train`` split (router training), both disjoint from the ``test`` split (reported numbers): they ask about the
other half of each family's queries. The JSONL files ship in the package (``data/mini_mc``);
:func:`generate_items` reproduces them exactly (a test checks it).

Paper tasks (``--tasks-dir DIR``): ``DIR/<task>/<split>.jsonl`` exported from the HF datasets
(e.g. ``load_dataset("allenai/ai2_arc", "ARC-Challenge")["test"].to_json(".../arc_challenge/test.jsonl")``)
are plugged into lm-eval's own task configs (``dataset_path: json``), offline; any ``*.yaml`` in DIR
is also registered as a task, for the user's own evaluations.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import yaml
from effrepro.errors import UsageError

FAMILIES = ("capitals", "sequences", "recall", "antonyms", "agreement")
SPLITS = {"calibration": 16, "test": 200}  # items per family that ship
# router-training prompts: generated on demand (``generate_items(family, "train", n)``); like calibration they draw
# queries from the half that the test split never asks about, so both are disjoint from the test items
TRAIN_SPLIT = "train"
MINI_DIR = Path(__file__).parent / "data" / "mini_mc"
PAPER_TASKS = ("arc_challenge", "arc_easy", "hellaswag", "winogrande", "mmlu")
# [RECONSTRUCTION] harness settings of the paper: zero-shot acc_norm for ARC/HellaSwag, acc for WinoGrande, 5-shot MMLU
PAPER_METRIC = {"arc_challenge": "acc_norm", "arc_easy": "acc_norm", "hellaswag": "acc_norm", "winogrande": "acc",
                "mmlu": "acc"}
PAPER_FEWSHOT = {"mmlu": 5}

CAPITALS = [
    ("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("England", "London"),
    ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Peru", "Lima"),
    ("Canada", "Ottawa"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Portugal", "Lisbon"),
    ("Poland", "Warsaw"), ("Hungary", "Budapest"), ("China", "Beijing"), ("India", "Delhi"), ("Kenya", "Nairobi"),
    ("Cuba", "Havana"), ("South Korea", "Seoul"), ("Australia", "Canberra"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Afghanistan", "Kabul"),
    ("the Philippines", "Manila"), ("Chile", "Santiago"), ("the United States", "Washington"), ("Tunisia", "Tunis"),
    ("Ukraine", "Kiev"), ("Bulgaria", "Sofia"), ("the Czech Republic", "Prague"),
]
SEQUENCES = {
    "days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "months": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December"],
    "numbers": ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"],
}
RECALL_WORDS = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum"],
    "color": ["red", "blue", "green", "yellow", "black", "white", "purple", "brown"],
    "animal": ["cat", "dog", "horse", "cow", "bird", "fish", "lion", "tiger"],
}
FILLER = [
    "The weather was calm and the streets were quiet.", "A small group of people waited at the station.",
    "The meeting lasted longer than anyone had expected.", "Several letters arrived in the morning post.",
    "The old library was closed for repairs all week.", "Nobody remembered where the spare keys were kept.",
    "The train left on time and arrived a little early.", "A new bakery opened at the corner of the square.",
    "The children played in the garden until it got dark.", "The report was printed and left on the desk.",
]
ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("old", "young"), ("early", "late"), ("rich", "poor"), ("hard", "soft"), ("open", "closed"), ("wet", "dry"),
    ("high", "low"), ("long", "short"), ("strong", "weak"), ("full", "empty"), ("good", "bad"), ("true", "false"),
    ("first", "last"), ("inside", "outside"),
]
PRONOUN_SUBJECTS = {
    "she": ["Anna", "Mary", "Emma", "Sarah", "Lucy", "My sister", "The queen", "His mother"],
    "he": ["John", "Peter", "David", "Tom", "James", "My brother", "The king", "Her father"],
    "they": ["The children", "My parents", "The students", "The players", "Our neighbours", "The workers"],
    "it": ["The machine", "The car", "The old clock", "The computer", "The engine", "The printer"],
}
PRONOUN_EVENTS = [
    ("{s} lost the keys.", "Then {p} found them again."),
    ("{s} missed the bus.", "So {p} walked to work."),
    ("{s} was very tired.", "Later {p} went to bed early."),
    ("{s} finished the job.", "Afterwards {p} took a short rest."),
    ("{s} heard a loud noise.", "Suddenly {p} stopped moving."),
    ("{s} got a letter.", "Then {p} read it twice."),
]


def _options(rng: random.Random, answer: str, pool: list[str]) -> tuple[list[str], int]:
    others = rng.sample([w for w in pool if w != answer], 3)
    choices = others + [answer]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def _capitals(rng: random.Random, split: str, index: int) -> dict:
    half = len(CAPITALS) // 2
    queries = CAPITALS[:half] if split == "test" else CAPITALS[half:]
    country, capital = queries[index % len(queries)]
    shots = rng.sample([c for c in CAPITALS if c[0] != country], 3)
    lines = [f"Q: What is the capital of {c}?\nA: {k}\n" for c, k in shots]
    context = "Answer with the name of the city.\n\n" + "\n".join(lines) + f"\nQ: What is the capital of {country}?\nA:"
    choices, gold = _options(rng, capital, [k for _, k in CAPITALS])
    return {"context": context, "choices": choices, "gold": gold}


def _sequence_example(rng: random.Random, kind: str, parity: int | None = None) -> tuple[str, str]:
    words = SEQUENCES[kind]
    start = rng.randrange(len(words)) if parity is None else rng.randrange(parity, len(words), 2)
    run = [words[(start + j) % len(words)] for j in range(5)]
    return ", ".join(run[:4]), run[4]


def _sequences(rng: random.Random, split: str, index: int) -> dict:
    kinds = list(SEQUENCES)
    kind = kinds[index % len(kinds)]
    shots = [_sequence_example(rng, k) for k in rng.sample(kinds, 3)]
    query, answer = _sequence_example(rng, kind, parity=int(split != "test"))  # disjoint queries per split
    lines = [f"Sequence: {q}\nNext: {a}\n" for q, a in shots]
    context = "Continue each sequence with the item that comes next.\n\n" + "\n".join(lines) + \
        f"\nSequence: {query}\nNext:"
    choices, gold = _options(rng, answer, SEQUENCES[kind])
    return {"context": context, "choices": choices, "gold": gold}


def _recall(rng: random.Random, split: str, index: int) -> dict:
    kinds = list(RECALL_WORDS)
    kind = kinds[index % len(kinds)]
    answer = rng.choice(RECALL_WORDS[kind][int(split != "test")::2])  # disjoint answers per split
    filler = " ".join(rng.sample(FILLER, 3))
    context = (f"Remember this: the secret {kind} is {answer}.\n{filler}\n"
               f"Question: What is the secret {kind}?\nAnswer: The secret {kind} is")
    choices, gold = _options(rng, answer, RECALL_WORDS[kind])
    return {"context": context, "choices": choices, "gold": gold}


def _antonyms(rng: random.Random, split: str, index: int) -> dict:
    half = len(ANTONYMS) // 2
    queries = ANTONYMS[:half] if split == "test" else ANTONYMS[half:]
    word, answer = queries[index % len(queries)]
    if rng.random() < 0.5:
        word, answer = answer, word
    shots = rng.sample([p for p in ANTONYMS if word not in p], 8)
    lines = [f"{a} -> {b}" for a, b in shots]
    context = "Write the opposite of each word.\n\n" + "\n".join(lines) + f"\n{word} ->"
    choices, gold = _options(rng, answer, [w for pair in ANTONYMS for w in pair])
    return {"context": context, "choices": choices, "gold": gold}


def _agreement(rng: random.Random, split: str, index: int) -> dict:
    pronouns = list(PRONOUN_SUBJECTS)
    answer = pronouns[index % len(pronouns)]
    subject = rng.choice(PRONOUN_SUBJECTS[answer][int(split != "test")::2])  # disjoint subjects per split
    shots = []
    for p in rng.sample(pronouns, 3):
        first, second = rng.choice(PRONOUN_EVENTS)
        s = rng.choice(PRONOUN_SUBJECTS[p])
        shots.append(first.format(s=s) + " " + second.format(p=p))
    first, second = rng.choice(PRONOUN_EVENTS)
    lead = second.split("{p}")[0].rstrip()
    context = "Each story continues with the right pronoun.\n\n" + "\n".join(shots) + "\n" + \
        first.format(s=subject) + " " + lead
    choices, gold = list(pronouns), pronouns.index(answer)
    rng.shuffle(choices)
    gold = choices.index(answer)
    return {"context": context, "choices": choices, "gold": gold}


_GENERATORS = {"capitals": _capitals, "sequences": _sequences, "recall": _recall, "antonyms": _antonyms,
               "agreement": _agreement}


def generate_items(family: str, split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` items ``{"context", "choices", "gold"}`` of a family; deterministic in (family, split, seed)."""
    if family not in _GENERATORS:
        raise UsageError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}:{split}:{seed}")
    return [_GENERATORS[family](rng, split, i) for i in range(n)]


def write_mini_tasks(out_dir: Path = MINI_DIR, seed: int = 0) -> None:
    """Regenerate the shipped JSONL files (``<family>_<split>.jsonl``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        for split, n in SPLITS.items():
            rows = generate_items(family, split, n, seed)
            (out_dir / f"{family}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def load_mini_items(split: str, per_family: int | None = None, families: tuple[str, ...] = FAMILIES) -> list[dict]:
    """Shipped items of a split, ``per_family`` of each (all when None), each tagged with its family."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    items = []
    for family in families:
        path = MINI_DIR / f"{family}_{split}.jsonl"
        if not path.is_file():
            raise UsageError(f"missing task file {path}; reinstall token_router_pruning")
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if per_family is not None and per_family > len(rows):
            raise UsageError(f"{per_family} items per family requested, {len(rows)} ship in {path.name}")
        items += [dict(row, family=family) for row in rows[:per_family]]
    return items


def train_items(per_family: int, families: tuple[str, ...] = FAMILIES, seed: int = 0) -> list[dict]:
    """Router-training prompts of every family (generated, deterministic; disjoint queries from the test split)."""
    return [dict(row, family=family) for family in families
            for row in generate_items(family, TRAIN_SPLIT, per_family, seed)]


def mini_task_name(family: str) -> str:
    return f"ftp_mini_{family}"


def write_mini_task_yamls(out_dir: Path) -> list[str]:
    """lm-eval YAML tasks over the shipped test JSONL (absolute paths); returns the task names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for family in FAMILIES:
        name = mini_task_name(family)
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(MINI_DIR / f"{family}_test.jsonl")}},
            "output_type": "multiple_choice",
            "test_split": "test",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{gold}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0},
        }
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(name)
    return names


def _split_files(task_dir: Path) -> dict[str, str]:
    return {p.stem: str(p.resolve()) for p in sorted(task_dir.glob("*.jsonl"))}


def _builtin_yaml(task: str) -> Path:
    """lm-eval's own YAML of a paper task (direct paths: indexing every built-in task takes minutes)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    known = {"arc_challenge": "arc/arc_challenge.yaml", "arc_easy": "arc/arc_easy.yaml",
             "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml"}
    path = root / (known[task] if task in known else f"mmlu/default/{task}.yaml")
    if not path.is_file():
        raise UsageError(f"lm-eval has no task {task!r} to take the config from ({path} missing)")
    return path


def paper_task_configs(tasks_dir: str | Path, names: tuple[str, ...] = PAPER_TASKS) -> list[dict[str, Any]]:
    """lm-eval's own configs for the paper's tasks, redirected to local JSONL under ``tasks_dir``.

    ``mmlu`` expands to every ``mmlu_<subject>`` with ``tasks_dir/mmlu/<subject>/{test,dev}.jsonl``.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(tasks_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"--tasks-dir {root}: no such directory")
    configs = []
    for name in names:
        folders = sorted(p for p in (root / "mmlu").iterdir() if p.is_dir()) if name == "mmlu" and \
            (root / "mmlu").is_dir() else [root / name]
        for folder in folders:
            task = f"mmlu_{folder.name}" if name == "mmlu" else name
            files = _split_files(folder) if folder.is_dir() else {}
            if not files:
                continue
            cfg = load_yaml(_builtin_yaml(task), resolve_func=True)
            for key in ("group", "tag"):
                cfg.pop(key, None)
            cfg.update(task=task, dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
            for split_key in ("training_split", "validation_split", "test_split", "fewshot_split"):
                if cfg.get(split_key) not in files:
                    cfg.pop(split_key, None)
            if not any(cfg.get(k) for k in ("test_split", "validation_split")):
                raise UsageError(f"{folder}: needs test.jsonl or validation.jsonl for {task}")
            if name in PAPER_FEWSHOT:
                cfg["num_fewshot"] = PAPER_FEWSHOT[name]
            cfg["metadata"] = {"version": 1.0, "paper_task": name}
            configs.append(cfg)
    if not configs:
        expected = ", ".join(f"{n}/test.jsonl" for n in names)
        raise UsageError(f"--tasks-dir {root} holds none of the paper's tasks; expected e.g. {expected} "
                         "(HF dataset rows exported with .to_json), or your own lm-eval *.yaml tasks")
    return configs
