"""Speculative-decoding engine shared by the EAGLE-family papers (jakiro, gumiho) with an EAGLE-2 baseline head.

A paper plugs in three things (see README.md in this folder):

* a ``DraftHead`` (``nn.Module``: ``train_forward``, ``compute_loss``),
* a ``Proposer`` (usually a ``LevelProposer`` subclass implementing ``propose_levels``), built by
  ``proposer_factory(build, head, tree, **options)``,
* its loss, as ``DraftHead.compute_loss`` built from ``feature_losses`` (the trainer hook).

The engine does the rest: ``TargetAdapter`` (features after the final norm, tree-masked verification, KV
compaction), ``tree_from_levels`` (global re-ranking into a ``DraftTree``), ``greedy_verify`` / ``sample_verify``
(lossless), ``speculative_generate`` / ``autoregressive_generate``, a reduced draft vocabulary (``vocab``), a tree
sized for the hardware (``tuning``), draft data (``generate_draft_data``,
``FeatureDataset``, ``DraftCollator``), ``train_head`` and the evaluation harness (``evaluate``, ``tau_metrics``).
"""

from effrepro.specdec.draft_data import (
    ChatFormatter,
    DraftCollator,
    DraftDataConfig,
    FeatureDataset,
    chat_example,
    draft_data_folders,
    generate_draft_data,
)

# The EAGLE-2 baseline imports the engine pieces above, so it comes last.
from effrepro.specdec.eagle import (  # noqa: E402
    DraftModelConfig,
    EagleHead,
    EagleProposer,
    build_eagle_head,
    eagle_factory,
    eval_eagle,
    load_eagle_head,
    train_eagle,
)
from effrepro.specdec.generate import (
    GenerationConfig,
    GenerationResult,
    autoregressive_generate,
    speculative_generate,
    stop_tokens,
)
from effrepro.specdec.harness import (
    EvalConfig,
    acceptance_by_depth,
    evaluate,
    load_questions,
    speed_ratio,
    summarize,
    tau_metrics,
)
from effrepro.specdec.losses import eagle_loss, feature_losses, topk_accuracy
from effrepro.specdec.protocol import (
    DraftBatch,
    DraftHead,
    LevelProposer,
    LossContext,
    Proposer,
    TreeConfig,
    proposer_factory,
)
from effrepro.specdec.target import TargetAdapter, TreeKVCache
from effrepro.specdec.trainer import HeadTrainConfig, train_head
from effrepro.specdec.tree import (
    DraftLevel,
    DraftTree,
    ancestor_mask,
    expand_topk,
    node_depths,
    retrieve_paths,
    tree_from_levels,
    tree_from_parents,
)
from effrepro.specdec.tuning import TreeChoice, TreeGrid, best_tree, tune_tree, tuned_tree
from effrepro.specdec.verify import (
    SamplingConfig,
    Verdict,
    greedy_verify,
    greedy_verify_features,
    sample_verify,
    target_probs,
)
from effrepro.specdec.vocab import frequent_tokens, token_counts

__all__ = [
    "ChatFormatter", "DraftBatch", "DraftCollator", "DraftDataConfig", "DraftHead", "DraftLevel",
    "DraftModelConfig", "DraftTree", "EagleHead", "EagleProposer", "EvalConfig", "FeatureDataset",
    "GenerationConfig", "GenerationResult", "HeadTrainConfig", "LevelProposer", "LossContext", "Proposer",
    "SamplingConfig", "TargetAdapter", "TreeChoice", "TreeConfig", "TreeGrid", "TreeKVCache", "Verdict",
    "acceptance_by_depth", "ancestor_mask", "autoregressive_generate", "best_tree", "build_eagle_head",
    "chat_example", "draft_data_folders", "eagle_factory", "eagle_loss", "eval_eagle", "evaluate", "expand_topk",
    "feature_losses", "frequent_tokens", "generate_draft_data", "greedy_verify", "greedy_verify_features",
    "load_eagle_head", "load_questions", "node_depths", "proposer_factory", "retrieve_paths", "sample_verify",
    "speculative_generate", "speed_ratio", "stop_tokens", "summarize", "target_probs", "tau_metrics", "token_counts",
    "topk_accuracy", "train_eagle", "train_head", "tree_from_levels", "tree_from_parents", "tune_tree", "tuned_tree",
]
