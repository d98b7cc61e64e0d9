"""Train a Gumiho draft (or one of its ablations) on the shared engine's draft data (``effrepro.specdec``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.specdec import generate_draft_data, train_head
from effrepro.specdec.target import load_target_on  # noqa: F401 (re-export: gumiho's loader is the engine's)
from effrepro.train import load_checkpoint
from effrepro.train.checkpoint import config_from

from gumiho.config import GumihoRunConfig, StructureConfig
from gumiho.gumiho import GumihoConfig, GumihoDraft, head_from_checkpoint

# The variants of the reproduce run: the paper, the serial/parallel split ablations, the all-parallel end.
VARIANTS: dict[str, StructureConfig] = {
    "gumiho": StructureConfig(num_layers=2, serial_steps=2, mlp_num=5),
    "gumiho-1s": StructureConfig(num_layers=2, serial_steps=1, mlp_num=6),
    "gumiho-3s": StructureConfig(num_layers=2, serial_steps=3, mlp_num=4),
    "medusa": StructureConfig(num_layers=0, serial_steps=0, mlp_num=7),
}


def variant_structure(name: str) -> StructureConfig:
    if name not in VARIANTS:
        raise UsageError(f"unknown variant {name!r}; use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def build_draft(config: GumihoRunConfig, model: Any) -> GumihoDraft:
    """A fresh draft with the target's widths and its embedding frozen in (``model``: the HF target)."""
    draft = GumihoDraft(config.draft_config(model.config))
    draft.freeze_embedding(model.get_input_embeddings().weight.detach().float())
    return draft


def draft_data_dir(config: GumihoRunConfig, model: Any, tokenizer: Any, progress: bool = True) -> Path:
    """The (cached) draft-data folder for ``config.data_source`` (see ``GumihoRunConfig``)."""
    config.check_data()
    if config.data_source == "mtbench_split":
        from effrepro.specdec.questions import mtbench_split

        from gumiho.data import prompt_draft_data

        train_questions, _ = mtbench_split()
        return prompt_draft_data(model, tokenizer, config.data, [q["turns"][0] for q in train_questions])
    return Path(generate_draft_data(model, tokenizer, config.data, progress=progress))


def train_draft(config: GumihoRunConfig, model: Any, tokenizer: Any, out_dir: str | Path,
                data_dir: str | Path | None = None, progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """Generate (or reuse) the draft data, then train with Gumiho's loss; writes ``out_dir/head.pt``.

    Returns the engine's training result (``history``, ``steps``) plus ``data_dir`` and ``head``.
    """
    if data_dir is None:
        data_dir = draft_data_dir(config, model, tokenizer, progress)
    draft = build_draft(config, model)
    lm_head = model.get_output_embeddings().weight.detach().float()
    result = train_head(draft, lm_head, data_dir, config.train_config(), out_dir, progress=progress, resume=resume)
    return {**result, "data_dir": str(data_dir), "head": str(Path(out_dir) / "head.pt")}


def load_draft(path: str | Path, model: Any) -> GumihoDraft:
    """A trained draft from ``head.pt`` for this target (clear error for another target or another method).

    The draft lands on the device of the target's embedding and stays float32 (the proposer casts the target's
    features to the dtype of the LM head it is given, float32 in ``gumiho.eval``)."""
    state = load_checkpoint(Path(path), required=("config", "state_dict"), expect="draft-head")
    if state.get("method") not in (None, "GumihoDraft"):
        raise UsageError(f"{path} holds a {state['method']} head, not a Gumiho draft; pass the head.pt that "
                         "`gumiho train` wrote")
    config_from(GumihoConfig, state["config"], str(path))  # one clear error for a config of another version
    embed = model.get_input_embeddings().weight.detach()
    return head_from_checkpoint(state, embed).to(embed.device)


def trainable_parameters(draft: torch.nn.Module) -> int:
    return sum(p.numel() for p in draft.parameters() if p.requires_grad)
