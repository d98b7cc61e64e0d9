"""The draft-head trainer shared by EAGLE-2, Jakiro and Gumiho (the recipes of their official training scripts).

Recipe knobs follow the official accelerate scripts: AdamW betas (0.9, 0.95), weight decay 1e-3, warm-up then
cosine decay (per-step schedule over ``epochs * steps_per_epoch`` steps of *this* process, the consistent choice
under DDP: a schedule over the global step count would end early on every rank), gradient clipping **by value**
at 0.5, uniform feature noise, bf16 autocast on GPU.
The loss is the head's ``compute_loss(batch, ctx)`` hook (EAGLE loss by default) or an explicit ``loss_fn``.

Runs single-process or under ``torchrun`` (``effrepro.train.dist_setup``; the loss runs inside the DDP-wrapped
module so gradients are synchronised). Resumable per epoch through ``effrepro.train.Trainer``; the final head goes
to ``out_dir/head.pt`` (config + weights without the frozen embedding, written atomically).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from effrepro.errors import UsageError
from effrepro.specdec.draft_data import DraftCollator, FeatureDataset
from effrepro.specdec.protocol import DraftBatch, DraftHead, LossContext
from effrepro.train import Trainer, dist_setup, is_main_process, save_checkpoint, seed_everything

LossHook = Callable[[DraftHead, DraftBatch, LossContext], dict[str, torch.Tensor]]
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class HeadTrainConfig:
    """Official recipe defaults (Jakiro/EAGLE accelerate scripts); scale ``epochs`` / ``lr`` for miniatures."""

    epochs: int = 20
    batch_size: int = 4
    steps_per_epoch: int = 0  # > 0: sample this many batches per epoch (with replacement when larger than the set)
    lr: float = 9e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-3
    warmup_steps: int = 2000
    schedule: str = "cosine"
    clip_value: float = 0.5  # clip_grad_value_, not by norm
    noise: str = "uniform"
    noise_std: float = 0.2
    max_len: int = 2048
    holdout: float = 0.05
    loss_weights: dict[str, float] = field(default_factory=lambda: {"v_w": 1.0, "p_w": 0.1})
    seed: int = 0
    num_workers: int = 0
    bf16: bool = True  # autocast on CUDA only
    log_every: int = 50
    # > 0: the draft scores only the K most frequent supervised target tokens of the data (its LM head and the
    # soft-CE over K rows, teacher renormalised over them; ``effrepro.specdec.vocab``); 0: the full vocabulary
    draft_vocab: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"schedule {self.schedule!r}; use one of {SCHEDULES}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs, batch_size must be >= 1 and lr > 0")
        if self.draft_vocab < 0:
            raise UsageError(f"draft_vocab={self.draft_vocab}; give K > 0 tokens, or 0 for the full vocabulary")


FROZEN_KEY = "_frozen_fingerprint"


def frozen_fingerprint(module: nn.Module) -> dict[str, list]:
    """``{name: [shape, sum, sum of squares]}`` of the frozen parameters (``requires_grad`` False): what a resume
    checks instead of storing them (the target's embedding copy is ~100 MB at 128k vocabularies)."""
    out = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            data = param.detach().double()
            out[name] = [list(param.shape), float(data.sum()), float((data * data).sum())]
    return out


def _same_fingerprint(a: list | None, b: list | None) -> bool:
    if a is None or b is None or list(a[0]) != list(b[0]):
        return False
    return all(abs(x - y) <= 1e-6 * max(1.0, abs(x), abs(y)) for x, y in zip(a[1:], b[1:], strict=True))


class _HeadWithLoss(nn.Module):
    """Runs the loss hook inside ``forward`` so a DDP wrapper sees the pass and synchronises gradients.

    Its ``state_dict`` (what the Trainer's ``last.pt`` stores) leaves out the frozen parameters (the target's
    embedding copy and anything else with ``requires_grad`` False) and keeps a fingerprint of them instead; on
    resume the frozen parts come from the freshly built head (i.e. from the target) and ``load_state_dict``
    raises a clear error if they differ from the run's. A checkpoint that still holds them loads too.
    """

    def __init__(self, head: DraftHead, hook: LossHook | None) -> None:
        super().__init__()
        self.head, self.hook = head, hook

    def forward(self, batch: DraftBatch, ctx: LossContext) -> dict[str, torch.Tensor]:
        if self.hook is not None:
            return self.hook(self.head, batch, ctx)
        return self.head.compute_loss(batch, ctx)

    def _frozen_names(self) -> set[str]:
        return {name for name, param in self.named_parameters() if not param.requires_grad}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if args or kwargs:  # nn.Module's recursive form (prefix / destination): leave it alone
            return super().state_dict(*args, **kwargs)
        frozen = self._frozen_names()
        state = {k: v for k, v in super().state_dict().items() if k not in frozen}
        state[FROZEN_KEY] = frozen_fingerprint(self)
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        state = dict(state)
        saved = state.pop(FROZEN_KEY, None)
        frozen = self._frozen_names()
        own = frozen_fingerprint(self)
        if saved is not None:
            bad = sorted(k for k in set(saved) | set(own) if not _same_fingerprint(saved.get(k), own.get(k)))
        else:  # an older checkpoint with the frozen tensors inside: compare them directly
            current = super().state_dict()
            bad = sorted(k for k in frozen if k in state and not torch.equal(state[k].to(current[k].device),
                                                                            current[k]))
        if bad:
            raise UsageError(
                f"the checkpoint's frozen parameters ({', '.join(bad[:3])}) differ from this head's, which come "
                "from the target: resume with the target the run was started with, or start a new run "
                "(another output directory or --no-resume)")
        state = {k: v for k, v in state.items() if k not in frozen}
        result = super().load_state_dict(state, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in frozen]
        if strict and (missing or result.unexpected_keys):
            raise UsageError(f"checkpoint does not match the draft head (missing {missing[:4]}, unexpected "
                             f"{result.unexpected_keys[:4]}); use a new output directory or --no-resume")
        return result


def _schedule(optimizer: torch.optim.Optimizer, config: HeadTrainConfig, total: int) -> Any:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = min(config.warmup_steps, max(total - 1, 0))
    if config.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if config.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def _loader(dataset: FeatureDataset, config: HeadTrainConfig, train: bool, distributed: bool) -> DataLoader:
    collate = DraftCollator(config.noise_std, config.noise, train=train, max_len=config.max_len)
    if not train:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate)
    if distributed:
        sampler: Any = DistributedSampler(dataset, shuffle=True, seed=config.seed)
    elif config.steps_per_epoch > 0:
        wanted = config.steps_per_epoch * config.batch_size
        sampler = RandomSampler(dataset, replacement=wanted > len(dataset), num_samples=wanted)
    else:
        sampler = RandomSampler(dataset)
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate,
                      num_workers=config.num_workers, drop_last=False)


def _resume_key(config: HeadTrainConfig) -> dict[str, Any]:
    """The config a resumed run must match; ``draft_vocab`` only when set, so runs started before the field
    existed still resume."""
    values = asdict(config)
    if not values["draft_vocab"]:
        values.pop("draft_vocab")
    return values


def setup_draft_vocab(head: DraftHead, data_dir: str | Path | list, size: int) -> None:
    """Give ``head`` the ``size`` most frequent supervised tokens of the data as its draft vocabulary (``size``
    0, or at least the target's vocabulary: keep what the head has). A head that already has a map (continued
    training) keeps it; a map of another size is an error."""
    if not size or (size >= head.vocab_size and head.draft_vocab is None):
        return
    if head.draft_vocab is not None:
        if head.draft_vocab_size != size:
            raise UsageError(f"the head already drafts over {head.draft_vocab_size} tokens, the training config "
                             f"asks for {size}; use the head's size (or 0 to keep it)")
        return
    from effrepro.specdec.vocab import frequent_tokens, token_counts

    head.set_draft_vocab(frequent_tokens(token_counts(data_dir, head.vocab_size), size))


def train_head(head: DraftHead, lm_head: torch.Tensor, data_dir: str | Path | list, config: HeadTrainConfig,
               out_dir: str | Path, loss_fn: LossHook | None = None, progress: bool = True,
               resume: bool = True) -> dict[str, Any]:
    """Train ``head`` on draft-data folder(s) (``draft_data_folders``); returns the Trainer's history.

    ``lm_head [V, H]`` is the frozen target head (teacher distribution, soft-CE); with a draft vocabulary
    (``config.draft_vocab`` or a map the head already has) the loss sees only its rows ``[K, H]``.
    ``loss_fn(head, batch, ctx)`` overrides ``head.compute_loss``. Writes ``out_dir/last.pt`` (resume),
    ``metrics.jsonl`` and ``head.pt``.
    """
    out_dir = Path(out_dir)
    dist = dist_setup()
    seed_everything(config.seed)
    train_set = FeatureDataset(data_dir, "train", config.holdout)
    test_set = FeatureDataset(data_dir, "test", config.holdout)
    hidden = int(train_set.meta.get("hidden_size", head.hidden_size))
    head.check_compatible(hidden, int(lm_head.shape[0]))
    setup_draft_vocab(head, data_dir, config.draft_vocab)
    if len(train_set) == 0:
        raise UsageError(f"{data_dir} holds no training samples")
    loader = _loader(train_set, config, train=True, distributed=dist.distributed)
    steps_per_epoch = len(loader)
    total = config.epochs * steps_per_epoch
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config, total)
    # the draft's own rows of the frozen head: the whole [V, H] head, or [K, H] with a reduced vocabulary
    ctx = LossContext(lm_head=head.draft_lm_head(lm_head.detach()).to(dist.device), total_steps=total,
                      weights=dict(config.loss_weights))
    model = _HeadWithLoss(head, loss_fn)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if config.bf16 and dist.device.type == "cuda"
                else contextlib.nullcontext())
    trainer: Trainer | None = None

    def step_fn(module: nn.Module, batch: DraftBatch, opt: torch.optim.Optimizer) -> dict[str, float]:
        ctx.step = trainer.global_step
        ctx.epoch = trainer.global_step // steps_per_epoch
        with autocast:
            losses = module(batch.to(dist.device), ctx)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite draft loss {float(loss)} at step {ctx.step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_value:
            nn.utils.clip_grad_value_(params, config.clip_value)
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def eval_fn(module: nn.Module) -> dict[str, float]:
        if len(test_set) == 0:
            return {}
        sums: dict[str, float] = {}
        batches = 0
        for batch in _loader(test_set, config, train=False, distributed=False):
            with autocast:
                metrics = module.head.eval_metrics(batch.to(dist.device), ctx)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            batches += 1
        return {k: v / batches for k, v in sums.items()}

    trainer = Trainer(model, optimizer, loader, step_fn=step_fn, epochs=config.epochs, out_dir=out_dir,
                      scheduler=scheduler, scheduler_step="step", config={"train": _resume_key(config)},
                      eval_fn=eval_fn, dist=dist, progress=progress, log_every=config.log_every, resume=resume)
    result = trainer.fit()
    if is_main_process():
        save_checkpoint(out_dir / "head.pt", {
            "method": type(head).__name__, "config": head.config_dict(), "state_dict": head.trainable_state_dict(),
            "target": {"hidden_size": head.hidden_size, "vocab_size": head.vocab_size},
            "draft_vocab": head.draft_vocab_size,
            "train": asdict(config), "history": result["history"], "steps": total,
        })
    result["steps"] = total
    return result
