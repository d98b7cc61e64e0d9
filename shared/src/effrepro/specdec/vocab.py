"""A reduced draft vocabulary (EAGLE-3's draft-to-target map, FR-Spec's frequency-ranked vocabulary).

The draft scores only the ``K`` target tokens that are most frequent in its training data: its LM head is the
``K`` rows ``W_lm[d2t]`` of the frozen target head, so every draft forward multiplies by a ``[K, H]`` matrix
instead of ``[V, H]`` (SmolLM2: 8k of 49k rows), and its soft cross-entropy runs over the same ``K`` tokens with
the teacher renormalised over them (``softmax(W_lm[d2t] f)``). A draft index ``i`` means the target token
``d2t[i]``; proposers map their top-k indices back with ``DraftHead.to_target_ids`` before a token is fed to
the draft again or put in the tree. Verification stays on the full vocabulary, so decoding stays lossless: a
token outside the ``K`` is simply never proposed.

``d2t`` is a buffer of the head (``DraftHead.set_draft_vocab``), so it is saved in ``head.pt`` with the weights
and a loaded head drafts with the vocabulary it was trained on. ``K = 0`` (no map) keeps the full vocabulary,
the paper-faithful setting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from effrepro.errors import UsageError


def token_counts(folders: str | Path | list[str | Path], vocab_size: int) -> torch.Tensor:
    """``[V]`` int64: how often each target token is a supervised token (loss mask 1) in draft-data folders."""
    from effrepro.specdec.draft_data import FeatureDataset

    counts = torch.zeros(vocab_size, dtype=torch.long)
    data = FeatureDataset(folders, "all", holdout=0)
    for index in range(len(data)):
        sample = data[index]
        ids = sample["input_ids"].long()[sample["loss_mask"].bool()]
        if ids.numel() and int(ids.max()) >= vocab_size:
            raise UsageError(f"draft data holds token id {int(ids.max())} >= the target's vocabulary {vocab_size}; "
                             "the data comes from another target")
        counts += torch.bincount(ids, minlength=vocab_size)
    return counts


def frequent_tokens(counts: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` most frequent token ids, most frequent first (ties: smaller id first); unseen ids fill up."""
    vocab = counts.numel()
    if not 1 <= size <= vocab:
        raise UsageError(f"draft vocabulary of {size} tokens; need 1 <= size <= {vocab} (0 = full vocabulary)")
    order = torch.sort(-counts.long(), stable=True).indices  # ids ascending within equal counts
    return order[:size].clone()


def check_d2t(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``d2t`` as a 1-D int64 tensor of distinct ids in ``[0, vocab_size)``; a UsageError otherwise."""
    d2t = torch.as_tensor(d2t)
    if d2t.dim() != 1 or d2t.numel() == 0 or d2t.is_floating_point():
        raise UsageError(f"a draft vocabulary map is a non-empty 1-D id tensor, got shape {tuple(d2t.shape)}")
    d2t = d2t.long()
    if int(d2t.min()) < 0 or int(d2t.max()) >= vocab_size:
        raise UsageError(f"draft vocabulary map holds ids outside the target's vocabulary [0, {vocab_size})")
    if torch.unique(d2t).numel() != d2t.numel():
        raise UsageError("draft vocabulary map repeats a token id")
    return d2t


def target_to_draft(d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[V]`` int64: the draft index of every target id, ``-1`` for ids outside the draft vocabulary."""
    t2d = torch.full((vocab_size,), -1, dtype=torch.long, device=d2t.device)
    t2d[d2t] = torch.arange(d2t.numel(), device=d2t.device)
    return t2d


def vocab_digest(d2t: torch.Tensor | None) -> str:
    """A short stable digest of a map (``"full"`` without one), for cache keys that depend on it."""
    if d2t is None:
        return "full"
    data = d2t.detach().cpu().long().numpy().tobytes()
    return f"{d2t.numel()}-{hashlib.sha256(data).hexdigest()[:12]}"


def scatter_full(logits: torch.Tensor, d2t: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[..., K]`` draft logits -> ``[..., V]`` target-space logits, ``-inf`` outside the draft vocabulary (for
    proposers that need a distribution over target ids, e.g. Jakiro*'s mixtures)."""
    full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
    index = d2t.to(logits.device).expand(*logits.shape[:-1], -1)
    return full.scatter(-1, index, logits)
