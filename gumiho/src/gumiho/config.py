"""Run configuration (YAML in ``gumiho/configs``, ``key=value`` overrides via ``effrepro.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from effrepro.errors import UsageError
from effrepro.specdec import DraftDataConfig, EvalConfig, HeadTrainConfig, TreeConfig
from effrepro.specdec.draft_data import check_chat_template, check_sharegpt

from gumiho.gumiho import GumihoConfig, LossWeights, ProposerConfig

EXTRA_DECODERS = ("gumiho-official", "medusa-chain")


@dataclass
class StructureConfig:
    """The draft's structure; widths always come from the target. Paper: 2 layers, 2 serial steps, 5 MLP heads."""

    num_layers: int = 2
    serial_steps: int = 2
    mlp_num: int = 5
    mlp_res_blocks: int = 5
    fc_bias: bool = True


@dataclass
class GumihoTreeConfig:
    """Inference tree (official ``scripts/eval_*.sh``: top_k 14, total 64, 7 levels, mlptopk 35, pruning 35, FTA on).

    Our default ``fta`` is ``off`` (FTA is approximate) and both compat flags default to the corrected
    behaviour; ``official_compat: true`` switches all three to the official code's behaviour.
    """

    top_k: int = 14
    total_tokens: int = 64
    depth: int = 7
    mlptopk: int = 35
    pruning: int = 35
    sibling_mask: str = "isolated"
    mlp_pairing: str = "parent"
    fta: str = "off"
    official_compat: bool = False

    def tree(self) -> TreeConfig:
        if self.tuned:
            raise UsageError("tree.total_tokens=-1 is sized for this machine first (gumiho.eval.tuned_tree); "
                             "gumiho eval does it")
        return TreeConfig(top_k=self.top_k, depth=self.depth, total_tokens=self.total_tokens)

    def options(self) -> dict[str, Any]:
        """The keyword options of ``gumiho.gumiho.make_proposer``."""
        if self.official_compat:
            return {"mlptopk": self.mlptopk, "pruning": self.pruning, "sibling_mask": "official",
                    "mlp_pairing": "row", "fta": "official"}
        return {"mlptopk": self.mlptopk, "pruning": self.pruning, "sibling_mask": self.sibling_mask,
                "mlp_pairing": self.mlp_pairing, "fta": self.fta}

    @property
    def tuned(self) -> bool:
        """``total_tokens: -1``: the tree is sized for the machine before use (``gumiho.eval.tuned_tree``)."""
        return self.total_tokens == -1

    def check(self) -> None:
        total = 2 if self.tuned else self.total_tokens
        ProposerConfig(top_k=self.top_k, total_tokens=total, depth=self.depth, **self.options())


def _deepspeed_recipe() -> HeadTrainConfig:
    """``scripts/train.sh`` + ``ds_config.json``: AdamW 2e-4 (0.9, 0.95), wd 0, 200 warm-up steps, linear decay."""
    return HeadTrainConfig(epochs=20, batch_size=4, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, warmup_steps=200,
                           schedule="linear", clip_value=0.5, noise="uniform", noise_std=0.2, max_len=2048)


@dataclass
class GumihoRunConfig:
    """Everything one Gumiho training + evaluation needs."""

    target: str = "smollm2-135m"
    # "mtbench_split": self-distilled answers to the 72 MT-bench questions the evaluation does not use (gumiho.data);
    # "engine": effrepro.specdec.generate_draft_data (ShareGPT conversations and/or its self-generated answers)
    data_source: str = "engine"
    structure: StructureConfig = field(default_factory=StructureConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    data: DraftDataConfig = field(default_factory=DraftDataConfig)
    train: HeadTrainConfig = field(default_factory=_deepspeed_recipe)
    tree: GumihoTreeConfig = field(default_factory=GumihoTreeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Decoders ``reproduce`` adds beyond the set (plain, the five trees, FTA on, EAGLE-2/Gumiho chains):
    # "gumiho-official" (the official sibling mask + row pairing + FTA) and "medusa-chain" (Medusa's per-position
    # acceptance). Each costs as much evaluation time as a method; the smoke budget leaves them out.
    extra_decoders: list[str] = field(default_factory=lambda: list(EXTRA_DECODERS))

    def __post_init__(self) -> None:
        if self.data_source not in ("engine", "mtbench_split"):
            raise UsageError(f"data_source={self.data_source!r}; use engine or mtbench_split")
        unknown = sorted(set(self.extra_decoders) - set(EXTRA_DECODERS))
        if unknown:
            raise UsageError(f"unknown extra_decoders {unknown}; choose from {list(EXTRA_DECODERS)}")
        self.tree.check()
        check_chat_template(self.data.chat_template)
        check_chat_template(self.eval.chat_template)
        if self.structure.serial_steps + self.structure.mlp_num < self.tree.depth:
            raise UsageError(f"tree.depth={self.tree.depth} exceeds the draft's "
                             f"{self.structure.serial_steps} + {self.structure.mlp_num} levels; lower tree.depth")

    def check_data(self) -> None:
        """The data checks that need no model, before any work: with ``data_source: engine``, a ShareGPT count
        the given file (or, without ``data.sharegpt_path``, the 500 shipped dummy conversations) cannot hold is
        an error (``full.yaml`` asks 68,000)."""
        if self.data_source == "engine":
            check_sharegpt(self.data)

    def train_config(self) -> HeadTrainConfig:
        """The engine's trainer config with Gumiho's loss weights (read back by ``GumihoDraft.compute_loss``)."""
        self.train.loss_weights = self.loss.as_dict()
        return self.train

    def draft_config(self, target_config: Any) -> GumihoConfig:
        s = self.structure
        return GumihoConfig.from_target(target_config, num_layers=s.num_layers, serial_steps=s.serial_steps,
                                        mlp_num=s.mlp_num, mlp_res_blocks=s.mlp_res_blocks, fc_bias=s.fc_bias)
