"""Stage 2: training the global dynamic router with the frozen LLM (paper §3.3, Eq. 6).

Per step: a dense teacher forward (no grad), then a routed student forward in which every routing block
(``s_i > 0``) keeps its top-``k_i`` tokens by router probability and gates the kept rows (``gate="ste"``: the
forward is the hard skip of evaluation, the backward takes the gradient of ``p``; ``"soft"``: MoD-style
``x + p (F(x) - x)``; see :mod:`token_router_pruning.ftp`), then ``λ_g(step) L_guide + λ_s L_sparse +
λ_d L_distill`` over the routing blocks.

The distillation KL is taken where the evaluation reads the model (``distill_positions="scored"``): each
training example carries the number of trailing positions that are scored (1 for a multiple-choice prompt: the
answer is predicted from its last token; a tail for a text window). ``"all"`` averages over every position
(the ablation). Only the router's 385 parameters train; the loop is :class:`effrepro.train.Trainer` (atomic,
resumable checkpoints in ``out_dir``); ``heldout`` examples give a per-epoch KL of the hard-routed model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from effrepro.errors import UsageError
from effrepro.train import Trainer, seed_everything
from torch import nn

from token_router_pruning.ftp import GATES, DynamicRouter, SkipPlan, TokenSkipper, static_guide_mask
from token_router_pruning.losses import (
    distill_hidden_mse,
    distill_kl,
    guide_loss,
    guide_weight,
    realized_sparsity,
    sparsity_loss,
)

DISTILL = ("logits_kl", "final_hidden_mse")
DISTILL_POSITIONS = ("scored", "all")


@dataclass(frozen=True)
class TrainExample:
    """One training sequence and how many of its trailing positions the evaluation scores."""

    ids: torch.Tensor  # (L,) token ids
    scored: int = 1


def as_examples(windows: torch.Tensor | Sequence[TrainExample], scored: int) -> list[TrainExample]:
    """Text windows (N, L) become examples scored on their last ``scored`` positions."""
    if isinstance(windows, torch.Tensor):
        return [TrainExample(row, min(scored, int(row.shape[0]))) for row in windows]
    return list(windows)


def pad_examples(examples: Sequence[TrainExample]) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and the mask of scored positions."""
    width = max(int(e.ids.shape[0]) for e in examples)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    scored = torch.zeros_like(ids, dtype=torch.bool)
    for row, example in enumerate(examples):
        n = int(example.ids.shape[0])
        ids[row, :n], mask[row, :n] = example.ids, 1
        scored[row, n - example.scored:n] = True
    return {"input_ids": ids, "attention_mask": mask, "scored": scored}


@dataclass
class RouterTrainConfig:
    """[RECONSTRUCTION] defaults (the paper gives no full recipe; README "Reconstructions"): AdamW lr 1e-3, wd 0,
    cosine, batch 1, equal loss weights."""

    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1
    guide_decay: float = 0.5  # λ_g reaches 0 at this fraction of the steps
    lambda_guide: float = 1.0
    lambda_sparse: float = 1.0
    lambda_distill: float = 1.0
    symmetric_sparse: bool = False
    distill_on: str = "logits_kl"
    distill_positions: str = "scored"  # KL where the evaluation reads the model; "all" = every position (ablation)
    text_scored: int = 16  # scored tail of a text window
    # hard top-k forward (the evaluation's), gradient of p backward on the kept tokens ("ste") or on every token
    # ("ste_all": a gradient-free dense pass gives the skipped tokens' block update; see ftp.py); "soft" = MoD blend
    gate: str = "ste"
    steps_per_epoch: int = 50  # checkpoint interval (and held-out KL interval)
    warm_start: int = 0  # examples whose router features fit the static keep mask before training (0: none)
    warm_start_steps: int = 300
    keep_best: bool = False  # end with the epoch of lowest held-out KL (needs held-out examples)
    seed: int = 0
    hidden: int = 64
    attn_feature: str = "received"
    attn_scale: str = "length"
    scope: str = "block"

    def __post_init__(self) -> None:
        if self.distill_on not in DISTILL:
            raise UsageError(f"distill_on {self.distill_on!r} unknown; use one of {', '.join(DISTILL)}")
        if self.distill_positions not in DISTILL_POSITIONS:
            raise UsageError(f"distill_positions {self.distill_positions!r} unknown; use one of "
                             f"{', '.join(DISTILL_POSITIONS)}")
        if self.gate not in GATES:
            raise UsageError(f"router gate {self.gate!r} unknown; use one of {', '.join(GATES)}")
        if self.gate == "ste_all" and self.scope != "block":
            raise UsageError("router gate ste_all needs scope block (its dense pass replaces whole blocks)")
        if self.steps < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise UsageError("router training needs steps, batch_size and steps_per_epoch >= 1")


class _StepLoader:
    """Deterministic stream of training steps; epoch ``e`` yields steps ``e*S .. (e+1)*S - 1``."""

    def __init__(self, examples: Sequence[TrainExample], n_schedules: int, cfg: RouterTrainConfig) -> None:
        self.examples, self.n_schedules, self.cfg = examples, n_schedules, cfg
        self.order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
        self.epoch = 0
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return min(self.cfg.steps_per_epoch, self.cfg.steps - self.epoch * self.cfg.steps_per_epoch)

    def __iter__(self):
        cfg = self.cfg
        for j in range(len(self)):
            step = self.epoch * cfg.steps_per_epoch + j
            picks = [int(self.order[(step * cfg.batch_size + b) % len(self.order)]) for b in range(cfg.batch_size)]
            yield {"step": step, "schedule": step % self.n_schedules,
                   **pad_examples([self.examples[i] for i in picks])}


class RouterObjective(nn.Module):
    """Holds the router (the only registered, trainable module) and computes the three losses."""

    def __init__(self, model: nn.Module, skipper: TokenSkipper, router: DynamicRouter,
                 schedules: Sequence[Sequence[float]], cfg: RouterTrainConfig) -> None:
        super().__init__()
        self.router = router
        object.__setattr__(self, "_model", model)  # not a registered sub-module: the frozen LLM is not saved
        self._skipper = skipper
        self.schedules = [tuple(float(v) for v in s) for s in schedules]
        self.cfg = cfg

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, model, skipper = self.cfg, self._model, self._skipper
        ids, mask = batch["input_ids"], batch["attention_mask"]
        step = int(batch["step"])
        schedule = self.schedules[int(batch["schedule"])]
        plan = SkipPlan(name="train", sparsity=schedule, router=self.router, scope=cfg.scope)
        call = {"input_ids": ids, "attention_mask": mask}
        if cfg.distill_on == "final_hidden_mse":  # the final-norm hidden state
            with torch.no_grad(), skipper.use(None):
                teacher = model.model(**call).last_hidden_state
            with skipper.use(plan), skipper.training(cfg.gate):
                student = model.model(**call).last_hidden_state
        else:
            with torch.no_grad(), skipper.use(None):
                teacher = model(**call).logits
            with skipper.use(plan), skipper.training(cfg.gate):
                student = model(**call).logits
        records = skipper.last_state.records
        blocks = [i for i in sorted(records) if schedule[i] > 0]  # the routing blocks
        probs = [records[i].probs for i in blocks]
        guides = [records[i].guide for i in blocks]
        targets = [schedule[i] for i in blocks]
        valid = mask.bool()
        where = batch["scored"] & valid if cfg.distill_positions == "scored" else valid
        l_sparse = sparsity_loss(probs, targets, valid, symmetric=cfg.symmetric_sparse)
        l_guide = guide_loss(probs, guides, valid)
        if cfg.distill_on == "final_hidden_mse":
            l_distill = distill_hidden_mse(teacher, student, where)
        else:
            l_distill = distill_kl(teacher, student, where)
        lam_g = guide_weight(step, cfg.steps, cfg.guide_decay) * cfg.lambda_guide
        loss = lam_g * l_guide + cfg.lambda_sparse * l_sparse + cfg.lambda_distill * l_distill
        soft = torch.stack([realized_sparsity(p, valid) for p in probs]).mean().detach()
        return {"loss": loss, "guide": l_guide.detach(), "sparse": l_sparse.detach(),
                "distill": l_distill.detach(), "lambda_guide": torch.tensor(lam_g),
                "soft_sparsity": soft, "target_sparsity": torch.tensor(sum(schedule) / len(schedule))}


def make_router(cfg: RouterTrainConfig, dtype: torch.dtype = torch.float32) -> DynamicRouter:
    seed_everything(cfg.seed)
    return DynamicRouter(hidden=cfg.hidden, attn_feature=cfg.attn_feature, attn_scale=cfg.attn_scale).to(dtype)


def warm_start(model: nn.Module, skipper: TokenSkipper, router: DynamicRouter,
               schedules: Sequence[Sequence[float]], examples: Sequence[TrainExample], cfg: RouterTrainConfig
               ) -> float:
    """Fit the router to the static router's keep mask (the guide target) on router features recorded from
    routed forwards of ``examples``: cheap (the LLM runs once per example, the 385-parameter MLP then takes
    ``warm_start_steps`` Adam steps), so distillation starts from the static router's ranking instead of a random
    one. Returns the final BCE."""
    recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    original = router.features

    def record(ctx):
        feats = original(ctx)
        if ctx.sparsity > 0:
            lengths = [int(n) for n in ctx.lengths.tolist()]
            guide = static_guide_mask(lengths, router.kept_counts(ctx), ctx.seq_len, ctx.lengths.device)
            valid = torch.arange(ctx.seq_len, device=guide.device)[None, :] < ctx.lengths[:, None]
            recorded.append((feats.detach(), guide, valid))
        return feats

    router.features = record
    try:
        with torch.no_grad():
            for j, example in enumerate(examples):
                plan = SkipPlan(name="warm", sparsity=tuple(schedules[j % len(schedules)]), router=router,
                                scope=cfg.scope)
                with skipper.use(plan):
                    model.model(input_ids=example.ids[None].to(next(model.parameters()).device))
    finally:
        del router.features
    feats = torch.cat([f[v] for f, _, v in recorded])
    guide = torch.cat([g[v] for _, g, v in recorded])
    optimizer = torch.optim.Adam(router.parameters(), lr=1e-2)
    loss = torch.tensor(float("nan"))
    for _ in range(cfg.warm_start_steps):
        probs = router.probabilities(feats).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(probs, guide.to(probs.dtype))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def heldout_kl(model: nn.Module, skipper: TokenSkipper, plan: SkipPlan | None, examples: Sequence[TrainExample],
               teacher: list[torch.Tensor] | None = None) -> tuple[float, list[torch.Tensor]]:
    """Mean KL(dense || routed) at the scored positions of ``examples``, hard routing as in evaluation
    (one example per forward); also returns the dense log-probabilities so later calls can reuse them."""
    device = next(model.parameters()).device
    dense, values = [], []
    for j, example in enumerate(examples):
        ids = example.ids[None].to(device)
        if teacher is None:
            with skipper.use(None):
                ref = torch.log_softmax(model(input_ids=ids).logits[0, -example.scored:].float(), -1)
        else:
            ref = teacher[j]
        dense.append(ref)
        with skipper.use(plan):
            out = torch.log_softmax(model(input_ids=ids).logits[0, -example.scored:].float(), -1)
        values.append(float((ref.exp() * (ref - out)).sum(-1).mean()))
    return float(sum(values) / max(len(values), 1)), dense


def train_router(
    model: nn.Module,
    skipper: TokenSkipper,
    schedules: Sequence[Sequence[float]],
    examples: torch.Tensor | Sequence[TrainExample],
    cfg: RouterTrainConfig,
    out_dir: str | Path | None = None,
    progress: bool = False,
    heldout: Sequence[TrainExample] = (),
) -> tuple[DynamicRouter, dict[str, Any]]:
    """Train a router for the given per-block schedules (several: steps cycle through them). ``examples``:
    text windows (N, L), scored on their last ``cfg.text_scored`` positions, or :class:`TrainExample` s.
    With ``heldout`` examples, each epoch's history row has ``eval_kl``: the hard-routed KL at their scored
    positions under the first schedule."""
    if not schedules:
        raise UsageError("router training needs at least one per-block sparsity schedule")
    examples = as_examples(examples, cfg.text_scored)
    if not examples:
        raise UsageError("router training needs at least one training example")
    dtype = next(model.parameters()).dtype
    router = make_router(cfg, dtype)
    objective = RouterObjective(model, skipper, router, schedules, cfg)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    warm_bce = warm_start(model, skipper, router, schedules, examples[:cfg.warm_start], cfg) \
        if cfg.warm_start else None
    optimizer = torch.optim.AdamW(router.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)))
    loader = _StepLoader(examples, len(schedules), cfg)
    epochs = math.ceil(cfg.steps / cfg.steps_per_epoch)
    lengths = [int(e.ids.shape[0]) for e in examples]
    config = {**asdict(cfg), "schedules": [list(s) for s in objective.schedules],
              "examples": [len(examples), min(lengths), max(lengths)]}
    teacher: list[torch.Tensor] | None = None
    best: dict[str, Any] = {"kl": math.inf, "epoch": 0, "state": None}
    best_file = Path(out_dir) / "best.pt" if out_dir is not None else None
    if best_file is not None and best_file.is_file():  # a resumed run keeps the best epoch of its first part
        best.update(torch.load(best_file, weights_only=True))
    if heldout:
        start = SkipPlan(name="heldout", sparsity=tuple(schedules[0]), router=router, scope=cfg.scope)
        best["start_kl"], teacher = heldout_kl(model, skipper, start, heldout)

    def evaluate(module: RouterObjective) -> dict[str, float]:
        nonlocal teacher
        plan = SkipPlan(name="heldout", sparsity=module.schedules[0], router=module.router, scope=cfg.scope)
        value, teacher = heldout_kl(model, skipper, plan, heldout, teacher)
        if value < best["kl"]:
            best.update(kl=value, epoch=len(trainer.history) + 1,
                        state={k: v.detach().clone() for k, v in module.router.state_dict().items()})
            if best_file is not None:
                best_file.parent.mkdir(parents=True, exist_ok=True)
                torch.save({k: best[k] for k in ("kl", "epoch", "state")}, best_file)
        return {"kl": value}

    try:
        trainer = Trainer(objective, optimizer, loader, loss_fn=lambda module, batch: module.losses(batch),
                          epochs=epochs, out_dir=out_dir, scheduler=scheduler, scheduler_step="step",
                          config=config, log_every=10, progress=progress, eval_fn=evaluate if heldout else None)
        summary = trainer.fit()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    summary = {**summary, "warm_start_bce": warm_bce, "start_heldout_kl": best.get("start_kl"),
               "best_epoch": best["epoch"] if cfg.keep_best and best["state"] is not None else None}
    if summary["best_epoch"] is not None:
        router.load_state_dict(best["state"])
    router.eval()
    return router, summary
