"""The plug-in protocol: what a paper adds to the shared engine (a head, a proposer, a loss).

* ``DraftHead``: an ``nn.Module`` trained on cached target features. It holds a frozen copy of the target's input
  embedding (``embed_tokens``), never the LM head (the frozen target head is passed in where needed), and
  implements ``train_forward`` (teacher-forced pass) and ``compute_loss`` (the per-method trainer hook; the
  default is the EAGLE loss on ``train_forward``'s output). It knows nothing of its proposers.
* ``Proposer``: a stateful drafter for one sequence. It keeps the draft's context-only KV (the official
  ``stable_kv``) and, each round, turns the target features of the newly accepted positions into a ``DraftTree``.
  ``LevelProposer`` is the usual base: implement ``propose_levels`` and the engine does the global re-ranking.
  A proposer class (or a method's ``make_proposer`` function) is called as ``build(head, lm_head, tree,
  max_length=..., **options)``; ``proposer_factory`` turns it into the harness's ``target -> proposer`` factory.
  Heads import nothing of their proposers, proposers import their head: no import cycle.

Feature alignment (as in the official EAGLE code): ``f_t`` is the target's last hidden state *after the final norm* at
position t; the draft input at position t is the pair ``(f_t, x_{t+1})``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from effrepro.errors import UsageError
from effrepro.specdec.batch import DraftBatch, LossContext
from effrepro.specdec.losses import eagle_loss, topk_accuracy
from effrepro.specdec.tree import DraftLevel, DraftTree, tree_from_levels

if TYPE_CHECKING:
    from effrepro.specdec.target import TargetAdapter, TreeKVCache


@dataclass
class TreeConfig:
    """Dynamic-tree budget. Official EAGLE-2 / Jakiro: top_k 10, depth 5, total_tokens 60 (59 drafted + root)."""

    top_k: int = 10
    depth: int = 5
    total_tokens: int = 60

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.depth < 1 or self.total_tokens < 2:
            raise UsageError(f"tree top_k={self.top_k}, depth={self.depth}, total_tokens={self.total_tokens}: "
                             "need top_k >= 1, depth >= 1, total_tokens >= 2")


@runtime_checkable
class Proposer(Protocol):
    """A stateful drafter for one sequence, driven by the generate loop.

    * ``reset()``: forget the context (new sequence).
    * ``context_length``: positions the draft has cached; the engine passes every position from there on.
    * ``propose(new_features [n, H], next_ids [n]) -> DraftTree``: ``new_features`` are the target features
      ``f_t`` of the positions ``t = context_length .. context_length + n - 1`` and ``next_ids`` their next
      tokens ``x_{t+1}``; the last of ``next_ids`` is this round's root (tree node 0).
    * ``last_forwards`` (attribute, optional): sequential draft forward passes of the last round (stats).
    """

    def reset(self) -> None: ...

    @property
    def context_length(self) -> int: ...

    def propose(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> DraftTree: ...


class LevelProposer:
    """Base proposer: subclasses implement ``propose_levels``; ``propose`` re-ranks globally and builds the tree.

    A drafting proposer sets ``cache`` (the draft's ``TreeKVCache``: context rows between rounds, the official
    ``stable_kv``; this round's tree rows until it crops them) and ``lm_head`` (the rows it scores,
    ``head.draft_lm_head``); ``reset``, ``context_length`` and ``_logprobs`` then come from here.
    ``postprocess_tree`` is the hook for tree edits after re-ranking (e.g. Gumiho's FTA padding); identity here.
    """

    total_tokens: int = 60
    last_forwards: int = 0
    cache: TreeKVCache
    lm_head: torch.Tensor

    def reset(self) -> None:
        self.cache.reset()

    @property
    def context_length(self) -> int:
        return self.cache.length

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft log-probabilities over the scored rows, in float32: ``log_softmax(hidden @ lm_head^T)``."""
        return torch.log_softmax((hidden @ self.lm_head.to(hidden.dtype).t()).float(), dim=-1)

    def propose_levels(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> list[DraftLevel]:
        raise NotImplementedError

    def postprocess_tree(self, tree: DraftTree) -> DraftTree:
        return tree

    @torch.no_grad()
    def propose(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> DraftTree:
        levels = self.propose_levels(new_features, next_ids)
        return self.postprocess_tree(tree_from_levels(levels, next_ids[-1], self.total_tokens))


D2T_KEY = "d2t"  # the reduced-vocabulary buffer of a draft head


class DraftHead(nn.Module):
    """Base class of draft heads. Subclasses set ``embed_tokens`` (frozen) and implement ``train_forward`` (and
    ``compute_loss`` / ``eval_metrics`` when the EAGLE loss is not theirs).

    ``hidden_size`` and ``vocab_size`` are checked against the target before a head is used with it
    (``check_compatible``), so a head trained for another target gives a clear error.

    A head may draft over a reduced vocabulary (``set_draft_vocab``, ``effrepro.specdec.vocab``): its proposers
    score ``draft_lm_head(lm_head)`` and map indices back with ``to_target_ids``; ``vocab_size`` stays the target's.
    """

    hidden_size: int
    vocab_size: int
    embed_tokens: nn.Embedding

    def train_forward(self, features: torch.Tensor, next_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> Any:
        """Teacher-forced pass over ``features [B, L, H]`` (f_t, noised) and ``next_ids [B, L]`` (x_{t+1})."""
        raise NotImplementedError

    def compute_loss(self, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
        """The trainer hook: ``{"loss": total, **parts}``. Default: the EAGLE loss on ``train_forward``'s output
        (a ``[B, L, H]`` prediction of f_{t+1}): ``v_w * SmoothL1 + p_w * soft-CE``."""
        prediction = self.train_forward(batch.features, batch.next_ids, batch.attention_mask)
        return eagle_loss(prediction, batch, ctx)

    @torch.no_grad()
    def eval_metrics(self, batch: DraftBatch, ctx: LossContext) -> dict[str, float]:
        """Held-out metrics (the trainer averages them over the test split). Default: the loss parts and the
        top-1 / top-3 agreement of the draft's next token with the target's, when ``train_forward`` returns a
        ``[B, L, H]`` tensor. Heads with several outputs override this."""
        metrics = {k: float(v) for k, v in self.compute_loss(batch, ctx).items()}
        prediction = self.train_forward(batch.features, batch.next_ids, batch.attention_mask)
        if isinstance(prediction, torch.Tensor):
            for k in (1, 3):
                hits, count = topk_accuracy(prediction, batch, ctx.lm_head, k=k)
                metrics[f"top{k}"] = hits / max(count, 1.0)
        return metrics

    def config_dict(self) -> dict[str, Any]:
        """The constructor config saved in checkpoints (``asdict(self.config)`` for a dataclass config)."""
        return asdict(self.config)

    def freeze_embedding(self, weight: torch.Tensor) -> None:
        """Copy the target's input embedding into ``embed_tokens`` and freeze it (never trained, never saved)."""
        if tuple(weight.shape) != tuple(self.embed_tokens.weight.shape):
            raise UsageError(f"target embedding {tuple(weight.shape)} does not fit the head "
                             f"{tuple(self.embed_tokens.weight.shape)}; build the head from this target's config")
        with torch.no_grad():
            self.embed_tokens.weight.copy_(weight)
        self.embed_tokens.weight.requires_grad_(False)

    def restore(self, state_dict: dict[str, torch.Tensor], embed_weight: torch.Tensor,
                source: str = "head checkpoint") -> DraftHead:
        """This freshly built head with the target's embedding frozen in and a checkpoint's trainable weights
        loaded (``head.pt``'s ``state_dict``); one UsageError for a head of another target or keys that do not
        fit its config. Returns the head."""
        self.check_compatible(int(embed_weight.shape[1]), int(embed_weight.shape[0]))
        self.freeze_embedding(embed_weight.detach().float())
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing = [m for m in missing if not m.startswith("embed_tokens")]
        if missing or unexpected:
            raise UsageError(f"{source} does not match its config (missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]})")
        return self

    def check_compatible(self, hidden_size: int, vocab_size: int) -> None:
        """UsageError when the head was built for a target of another hidden size or vocabulary."""
        if (self.hidden_size, self.vocab_size) != (hidden_size, vocab_size):
            raise UsageError(
                f"draft head was built for hidden {self.hidden_size} / vocab {self.vocab_size}, the target has "
                f"hidden {hidden_size} / vocab {vocab_size}; train a head for this target (train-eagle --target ...)"
            )

    # ----- the reduced draft vocabulary (``effrepro.specdec.vocab``) -----
    @property
    def draft_vocab(self) -> torch.Tensor | None:
        """``d2t [K]``: the target ids the draft scores (draft index i = target id ``d2t[i]``); None = all V."""
        return self._buffers.get(D2T_KEY)

    @property
    def draft_vocab_size(self) -> int:
        d2t = self.draft_vocab
        return self.vocab_size if d2t is None else int(d2t.numel())

    def set_draft_vocab(self, d2t: torch.Tensor | None) -> None:
        """Draft over the target ids ``d2t`` only (None: the full vocabulary). Stored as a buffer, so it is saved
        in ``head.pt`` and restored by ``load_state_dict``."""
        if d2t is None:
            self._buffers.pop(D2T_KEY, None)
            return
        from effrepro.specdec.vocab import check_d2t

        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        self.register_buffer(D2T_KEY, check_d2t(d2t, self.vocab_size).to(device))

    def draft_lm_head(self, lm_head: torch.Tensor) -> torch.Tensor:
        """The rows of the target LM head ``[V, H]`` the draft scores: ``lm_head[d2t]`` ``[K, H]`` (or all)."""
        if int(lm_head.shape[0]) != self.vocab_size:
            raise UsageError(f"expected the target's full LM head ({self.vocab_size} rows), got "
                             f"{int(lm_head.shape[0])} rows")
        d2t = self.draft_vocab
        return lm_head if d2t is None else lm_head.index_select(0, d2t.to(lm_head.device))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft indices (rows of ``draft_lm_head``) -> target token ids (identity without a map)."""
        d2t = self.draft_vocab
        return draft_ids if d2t is None else d2t.to(draft_ids.device)[draft_ids]

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # a checkpoint's map decides the vocabulary: (re)size the buffer before nn.Module copies into it
        saved = state_dict.get(prefix + D2T_KEY)
        if isinstance(saved, torch.Tensor) and (self.draft_vocab is None or self.draft_vocab.shape != saved.shape):
            self.set_draft_vocab(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The checkpointed weights: everything except the frozen embedding (the official savers drop it)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("embed_tokens")}


ProposerBuilder = Callable[..., Proposer]  # build(head, lm_head [V, H], tree, max_length=..., **options)


def proposer_factory(build: ProposerBuilder, head: DraftHead, tree: TreeConfig | None,
                     **options: Any) -> Callable[[TargetAdapter], Proposer]:
    """The engine's proposer factory: a harness factory ``target -> proposer`` that calls
    ``build(head, lm_head, tree, max_length=target.max_length, **options)`` with the target's frozen LM head cast
    once to the head's device and dtype. ``build`` is a proposer class (``EagleProposer``) or a method's
    ``make_proposer`` function (Jakiro, Gumiho)."""

    def make(target: TargetAdapter) -> Proposer:
        weight = next(head.parameters())
        lm_head = target.lm_head_weight.detach().to(weight.device, weight.dtype)
        return build(head, lm_head, tree, max_length=target.max_length, **options)

    return make
