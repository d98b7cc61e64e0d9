"""GA scheduler (repair invariants, known optimum, determinism), losses, kept-count invariants, FLOPs counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from effrepro.errors import UsageError
from token_router_pruning.flops import ModelDims, block_flops, layer_removal_flops, model_flops
from token_router_pruning.ftp import (
    BlockContext,
    DynamicRouter,
    StaticRouter,
    num_kept,
    static_keep_indices,
)
from token_router_pruning.losses import distill_kl, guide_loss, guide_weight, sparsity_loss
from token_router_pruning.scheduler import (
    Budget,
    GAConfig,
    GeneticScheduler,
    bi_proportional_allocation,
    genetic_search,
    u_shaped_allocation,
)


def _ctx(length, s, table=None, training=False):
    return BlockContext(index=1, sparsity=s, lengths=torch.tensor([length]), seq_len=length, table=table,
                        training=training)


def test_kept_counts_and_static_order():
    assert [num_kept(10, s) for s in (0.0, 0.25, 0.3, 0.35, 0.5, 0.94)] == [10, 7, 7, 6, 5, 1]
    for length in range(1, 41):
        for s in np.linspace(0, 0.95, 20):
            k = num_kept(length, float(s))
            assert k == max(1, length - int(np.floor(s * length + 0.5 + 1e-9)))
            kept = StaticRouter().select(_ctx(length, float(s))).kept[0].tolist()
            assert kept == static_keep_indices(length, k) == sorted(kept)
            assert len(kept) == k and kept[0] == 0
            assert kept[1:] == list(range(length - k + 1, length))
            table = torch.rand(1, length)
            dyn = DynamicRouter().select(_ctx(length, float(s), table)).kept[0].tolist()
            assert len(dyn) == k and dyn == sorted(dyn) and dyn[0] == 0 and len(set(dyn)) == k
            if k >= 2:
                assert dyn[-1] == length - 1


def _check_feasible(s, target, s_max=0.95):
    assert abs(float(np.mean(s)) - target) < 1e-4
    assert s.min() >= 0.0 and s.max() <= s_max + 1e-12


def test_ga_repair_holds_after_every_operator():
    cfg = GAConfig(population=10, generations=0, seed=3)
    ga = GeneticScheduler(30, Budget(0.4), cfg)
    pop = ga.initial_population()
    for s in pop:
        _check_feasible(s, 0.4)
    for _ in range(50):
        child = ga.budget.repair(ga.crossover(pop[0], pop[1]))
        _check_feasible(child, 0.4)
        _check_feasible(ga.mutate(child), 0.4)
    _check_feasible(u_shaped_allocation(30, 0.25), 0.25)
    _check_feasible(bi_proportional_allocation(np.linspace(0.01, 0.5, 30), 0.25), 0.25)
    extreme = ga.budget.repair(np.r_[np.ones(1), np.zeros(29)])  # one non-zero gene cannot carry 0.4 alone
    _check_feasible(extreme, 0.4)


def test_ga_flops_budget():
    dims = ModelDims(hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=96, layers=6)
    budget = Budget(0.3, "flops", dims, seq_len=64)
    s = budget.repair(np.linspace(0.0, 1.0, 6))
    assert abs(budget.measure(s) - 0.3) < 1e-6


def test_ga_finds_a_known_optimum_and_is_deterministic():
    target = 0.3
    ref = Budget(target).repair(np.r_[np.zeros(3), np.linspace(0.2, 0.6, 24), np.zeros(3)])

    def fitness(s):
        return -float(np.linalg.norm(s - ref))

    cfg = GAConfig(population=32, generations=60, seed=0)
    first = genetic_search(fitness, 30, target, cfg)
    start = max(fitness(s) for s in GeneticScheduler(30, Budget(target), cfg).initial_population())
    assert first.best_fitness > start
    assert np.linalg.norm(first.best - ref) < 0.25 * abs(start)
    _check_feasible(first.best, target)
    again = genetic_search(fitness, 30, target, cfg)
    assert np.array_equal(first.best, again.best)


def test_budget_errors():
    with pytest.raises(UsageError, match="outside"):
        Budget(1.2)
    with pytest.raises(UsageError, match="cannot be met"):
        Budget(0.97, s_max=0.95)
    with pytest.raises(UsageError, match="crossover"):
        GAConfig(crossover="sbx")


def test_sparsity_hinge():
    valid = torch.ones(1, 10, dtype=torch.bool)
    over = torch.full((1, 10), 0.5, requires_grad=True)  # realised sparsity 0.5 >= target 0.3
    assert sparsity_loss([over], [0.3], valid).item() == 0.0
    under = torch.full((1, 10), 0.9, requires_grad=True)  # realised sparsity 0.1 < target 0.3
    loss = sparsity_loss([under], [0.3], valid)
    assert loss.item() == pytest.approx(0.2)
    loss.backward()
    assert (under.grad > 0).all()  # gradient descent lowers p: prune more
    sym = sparsity_loss([over], [0.3], valid, symmetric=True)
    assert sym.item() == pytest.approx(0.04)


def test_guide_loss_minimal_at_static_mask():
    valid = torch.ones(1, 12, dtype=torch.bool)
    guide = torch.zeros(1, 12)
    guide[0, static_keep_indices(12, 8)] = 1.0
    at_mask = guide_loss([guide.clamp(1e-6, 1 - 1e-6)], [guide], valid)
    for _ in range(5):
        other = torch.rand(1, 12)
        assert guide_loss([other], [guide], valid) > at_mask
    assert at_mask.item() < 1e-4


def test_kl_zero_when_student_is_teacher_and_guide_schedule():
    logits = torch.randn(2, 7, 50)
    valid = torch.ones(2, 7, dtype=torch.bool)
    assert distill_kl(logits, logits, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_kl(logits, logits + torch.randn_like(logits), valid).item() > 0
    assert guide_weight(0, 100) == 1.0
    assert guide_weight(25, 100) == pytest.approx(0.5)
    assert guide_weight(50, 100) == 0.0 and guide_weight(99, 100) == 0.0


def test_flops_counter_known_values():
    dims = ModelDims(hidden=64, heads=4, kv_heads=2, head_dim=16, ffn=128, vocab=96, layers=4)
    L = 10
    # by hand: attn proj 2*L*(64*(64+2*32) + 64*64) = 2*10*12288 = 245760; scores 2*64*100 = 12800;
    # mlp 2*10*3*64*128 = 491520 -> block 750080, 4 blocks 3000320; head 2*10*64*96 = 122880
    assert block_flops(dims, L) == 750080
    dense = model_flops(dims, L)
    assert dense.blocks == 3000320 and dense.head == 122880 and dense.ratio == 1.0
    assert layer_removal_flops(dims, L, [1, 3]).ratio == pytest.approx(1 - 2 / 4)
    s = 0.3
    routed = model_flops(dims, L, sparsity=[s] * 4)
    linear = lambda k: 2 * k * 12288 + 2 * k * 3 * 64 * 128  # noqa: E731
    assert routed.blocks == 4 * (linear(7) + 2 * 64 * 49)
    assert (routed.blocks - 4 * 2 * 64 * 49) / (dense.blocks - 4 * 12800) == pytest.approx(1 - s)
    mlp_only = model_flops(dims, L, sparsity=[s] * 4, scope="mlp_only")
    assert mlp_only.blocks == 4 * (2 * L * 12288 + 12800 + 2 * 7 * 3 * 64 * 128)


def test_flops_counter_agrees_with_torch_flop_counter(tiny_llama):
    """Linear layers match torch.utils.flop_counter exactly; with eager attention so do QK^T and AV."""
    from effrepro.bench import count_flops

    model = tiny_llama(layers=2, dtype=torch.float32, attn="eager")
    dims = ModelDims.from_config(model.config)
    L = 16
    measured = count_flops(model, torch.randint(0, 96, (1, L)))
    analytic = model_flops(dims, L)
    analytic_scores = 2 * dims.q_dim * L * L * dims.layers  # causal: half of the full score matmuls
    attention_full = 2 * analytic_scores  # torch counts the full (masked) QK^T and AV matmuls
    assert measured == analytic.blocks - analytic_scores + attention_full + analytic.head


def test_router_distils_on_scored_positions_and_gates_only_routing_blocks(tiny_llama):
    """The KL of ``distill_positions="scored"`` is the KL at each example's scored tail (padding excluded), the
    ``"all"`` ablation averages every real position; a block with s_i = 0 gets no gate and no guide/sparse term."""
    from token_router_pruning.ftp import DynamicRouter, SkipPlan, attach
    from token_router_pruning.train import RouterObjective, RouterTrainConfig, TrainExample, pad_examples

    model = tiny_llama(layers=3, dtype=torch.float32)
    skipper = attach(model)
    gen = torch.Generator().manual_seed(0)
    examples = [TrainExample(torch.randint(0, 96, (12,), generator=gen), 1),
                TrainExample(torch.randint(0, 96, (9,), generator=gen), 3)]
    batch = pad_examples(examples)
    assert batch["scored"].sum().item() == 4 and not (batch["scored"] & ~batch["attention_mask"].bool()).any()
    assert batch["scored"][1, 6:9].all() and not batch["scored"][1, 9:].any()
    schedule = (0.0, 0.5, 0.5)
    router = DynamicRouter()
    losses = {}
    for where in ("scored", "all"):
        cfg = RouterTrainConfig(steps=1, distill_positions=where, gate="ste")
        objective = RouterObjective(model, skipper, router, [schedule], cfg)
        losses[where] = objective.losses({"step": 0, "schedule": 0, **batch})
    records = skipper.last_state.records
    assert records[0].gate is None and records[1].gate is not None  # dense block 0 is not gated
    mask = batch["attention_mask"]
    with torch.no_grad():
        teacher = model(input_ids=batch["input_ids"], attention_mask=mask).logits
        with skipper.use(SkipPlan(name="x", sparsity=schedule, router=router)):
            student = model(input_ids=batch["input_ids"], attention_mask=mask).logits  # STE forward = hard skip
    assert losses["scored"]["distill"].item() == pytest.approx(
        distill_kl(teacher, student, batch["scored"]).item(), rel=1e-4)
    assert losses["all"]["distill"].item() == pytest.approx(distill_kl(teacher, student, mask.bool()).item(),
                                                            rel=1e-4)
    assert losses["scored"]["distill"].item() != pytest.approx(losses["all"]["distill"].item())


def test_warm_start_fits_the_static_mask_and_keep_best_ends_on_the_best_epoch(tiny_llama):
    from token_router_pruning.ftp import SkipPlan, StaticRouter, attach
    from token_router_pruning.train import RouterTrainConfig, TrainExample, heldout_kl, make_router, train_router
    from token_router_pruning.train import warm_start as fit_static

    model = tiny_llama(layers=3, dtype=torch.float32)
    skipper = attach(model)
    gen = torch.Generator().manual_seed(0)
    examples = [TrainExample(torch.randint(0, 96, (16,), generator=gen), 1) for _ in range(6)]
    schedule = (0.0, 0.5, 0.5)
    cfg = RouterTrainConfig(steps=4, steps_per_epoch=2, warm_start_steps=200)
    router = make_router(cfg)
    bce = fit_static(model, skipper, router, [schedule], examples, cfg)
    assert bce < 0.3  # the guide target (token 0 + the most recent tokens) is learnable from the features
    plan = SkipPlan(name="w", sparsity=schedule, router=router)
    static_kl, _ = heldout_kl(model, skipper, SkipPlan(name="s", sparsity=schedule, router=StaticRouter()), examples)
    assert heldout_kl(model, skipper, plan, examples)[0] == pytest.approx(static_kl, rel=1e-4)  # same kept sets
    cfg = RouterTrainConfig(steps=4, steps_per_epoch=2, warm_start=4, keep_best=True, lr=0.05)
    _, summary = train_router(model, skipper, [schedule], examples, cfg, heldout=examples[:3])
    kls = [h["eval_kl"] for h in summary["history"]]
    assert summary["best_epoch"] == 1 + kls.index(min(kls)) and summary["start_heldout_kl"] is not None


def test_ste_all_gate_is_the_hard_skip_forward_with_a_gradient_for_skipped_tokens(tiny_llama):
    """``gate="ste_all"``: the forward is exactly the hard top-k skip (as ``"ste"``, with the model's KV cache on);
    the router probability of a kept token gets the same gradient as under ``"ste"``, and that of a skipped token,
    zero under ``"ste"``, gets ``<F_dense(x) - x, dL/dy>`` (the block's dense update on that row)."""
    from token_router_pruning.ftp import DynamicRouter, SkipPlan, attach

    model = tiny_llama(layers=3, attn="eager")
    skipper = attach(model)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    weights = torch.randn(2, 12, 96, generator=gen, dtype=torch.float64) * mask[..., None]
    plan = SkipPlan(name="t", sparsity=(0.0, 0.5, 0.5), router=DynamicRouter().double())
    with torch.no_grad(), skipper.use(plan):
        hard = model(input_ids=ids, attention_mask=mask).logits
    block, seen = 1, {}

    def pre(module, args, kwargs):
        seen["x"], seen["kwargs"] = args[0].detach(), kwargs

    def post(module, args, kwargs, out):
        out.register_hook(lambda grad: seen.__setitem__("dy", grad))

    hooks = [skipper.wrappers[block].register_forward_pre_hook(pre, with_kwargs=True),
             skipper.wrappers[block].register_forward_hook(post, with_kwargs=True)]
    grads = {}
    try:
        for gate in ("ste", "ste_all"):
            with skipper.use(plan), skipper.training(gate):
                logits = model(input_ids=ids, attention_mask=mask).logits
            assert torch.allclose(logits, hard, atol=1e-10, rtol=0), gate  # the value is the hard skip
            record = skipper.last_state.records[block]
            record.probs.retain_grad()
            (logits * weights).sum().backward()
            grads[gate] = record.probs.grad.clone()
    finally:
        for hook in hooks:
            hook.remove()
    kept = torch.zeros_like(mask, dtype=torch.bool).scatter(1, record.kept, True) & mask.bool()
    skipped = mask.bool() & ~kept
    assert skipped.sum() >= 8 and kept.sum() >= 8
    assert torch.equal(grads["ste"][skipped], torch.zeros_like(grads["ste"][skipped]))
    assert torch.allclose(grads["ste_all"][kept], grads["ste"][kept], atol=1e-10)
    kwargs = dict(seen["kwargs"], past_key_values=None, use_cache=False)
    with torch.no_grad(), skipper.use(None):
        update = skipper.wrappers[block](seen["x"], **kwargs) - seen["x"]
    expected = (update * seen["dy"]).sum(-1)
    assert expected[skipped].abs().min() > 1e-6
    assert torch.allclose(grads["ste_all"][skipped], expected[skipped], atol=1e-9, rtol=1e-6)
    with pytest.raises(UsageError, match="ste_all needs scope block"):
        from token_router_pruning.train import RouterTrainConfig
        RouterTrainConfig(gate="ste_all", scope="mlp_only")
