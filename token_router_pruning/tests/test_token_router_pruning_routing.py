"""Token skipping inside a HF Llama: identity, gather == masked formulation, skipped rows, RoPE, causality, KV."""

from __future__ import annotations

import pytest
import torch
from effrepro.errors import UsageError
from token_router_pruning.ftp import (
    DynamicRouter,
    FixedRouter,
    RandomRouter,
    SkipPlan,
    StaticRouter,
    attach,
    count_router_params,
)
from token_router_pruning.generate import greedy_generate


def _plan(model, sparsity, router, **kw):
    n = model.config.num_hidden_layers
    values = (sparsity,) * n if isinstance(sparsity, float) else tuple(sparsity)
    return SkipPlan(name="t", sparsity=values, router=router, **kw)


def _block_io(skipper, index):
    """Capture the input and output hidden states of wrapped block ``index``."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        seen["out"] = output.detach().clone()
        seen["pos"] = kwargs.get("position_embeddings")

    handle = skipper.wrappers[index].register_forward_hook(hook, with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_zero_sparsity_is_the_hf_forward(tiny_llama, tokens, attn):
    reference = tiny_llama(attn=attn)
    model = tiny_llama(attn=attn)
    x = tokens(2, 20)
    skipper = attach(model)
    with torch.no_grad():
        for router in (StaticRouter(), RandomRouter(), DynamicRouter().double()):
            # the dynamic router reads attention weights, so it runs eager attention (whose softmax is fp32):
            # compare it with the HF forward under the same attention implementation
            reference.set_attn_implementation("eager" if router.needs_attention else attn)
            ref = reference(x, output_hidden_states=True)
            with skipper.use(_plan(model, 0.0, router)):
                out = model(x, output_hidden_states=True)
            assert torch.allclose(out.logits, ref.logits, atol=1e-10, rtol=0)
            for a, b in zip(out.hidden_states, ref.hidden_states):
                assert torch.allclose(a, b, atol=1e-10, rtol=0)
        assert model.config._attn_implementation == attn  # restored after the dynamic plan


def _masked_reference(layer, x, keep, cos_sin):
    """Full-length run with a 4-D additive mask removing skipped keys and queries, skipped rows copied."""
    length = x.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & keep[None, :] & keep[:, None]
    allowed |= torch.eye(length, dtype=torch.bool) & ~keep[:, None]  # skipped queries: a harmless row
    mask = torch.zeros(length, length, dtype=x.dtype).masked_fill(~allowed, torch.finfo(x.dtype).min)
    out = layer(x, attention_mask=mask[None, None], position_embeddings=cos_sin,
                position_ids=torch.arange(length)[None])
    return torch.where(keep[None, :, None], out, x)


def _mlp_only_reference(layer, x, keep, cos_sin):
    length = x.shape[1]
    causal = torch.full((length, length), torch.finfo(x.dtype).min, dtype=x.dtype).triu(1)[None, None]
    h, _ = layer.self_attn(hidden_states=layer.input_layernorm(x), attention_mask=causal, position_embeddings=cos_sin)
    y = x + h
    update = layer.mlp(layer.post_attention_layernorm(y))
    return y + update * keep[None, :, None].to(y.dtype), y


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("scope", ["block", "mlp_only"])
def test_gather_equals_masked_formulation(tiny_llama, tokens, attn, scope):
    model = tiny_llama(attn=attn)
    skipper = attach(model)
    x = tokens(1, 18)
    kept = [0, 2, 3, 7, 11, 12, 15, 17]
    keep = torch.zeros(18, dtype=torch.bool)
    keep[kept] = True
    block = 2
    plan = _plan(model, 0.0, FixedRouter({block: kept}), scope=scope)
    seen, handle = _block_io(skipper, block)
    with torch.no_grad(), skipper.use(plan):
        model(x)
    handle.remove()
    layer = skipper.wrappers[block].layer
    cos_sin = seen["pos"]
    with torch.no_grad():
        if scope == "block":
            expected = _masked_reference(layer, seen["in"], keep, cos_sin)
            skipped_before = seen["in"]
        else:
            expected, skipped_before = _mlp_only_reference(layer, seen["in"], keep, cos_sin)
    atol = 1e-10 if attn == "sdpa" else 1e-6  # HF eager attention takes its softmax in fp32
    assert torch.allclose(seen["out"][:, keep], expected[:, keep], atol=atol, rtol=0)
    # skipped rows are bit-identical to the block input (block scope) / the MLP sub-layer input (mlp_only)
    assert torch.equal(seen["out"][:, ~keep], skipped_before[:, ~keep])


def test_skipped_rows_unchanged_in_every_block(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    x = tokens(2, 30)
    plan = _plan(model, 0.4, StaticRouter())
    hooks, seen = [], []
    for i in range(4):
        s, h = _block_io(skipper, i)
        hooks.append(h)
        seen.append(s)
    with torch.no_grad(), skipper.use(plan):
        model(x)
    for h in hooks:
        h.remove()
    for i, s in enumerate(seen):
        record = skipper.last_state.records[i]
        for b in range(2):
            keep = torch.zeros(30, dtype=torch.bool)
            keep[record.kept[b, : record.n_kept[b]]] = True
            assert torch.equal(s["out"][b, ~keep], s["in"][b, ~keep])
            assert not torch.allclose(s["out"][b, keep], s["in"][b, keep])


def test_rope_positions_are_not_renumbered(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    x = tokens(1, 12)
    captured = {}

    def grab(name):
        def hook(module, args, kwargs):
            captured[name] = [t.clone() for t in kwargs["position_embeddings"]]
        return hook

    inner = skipper.wrappers[1].attn_gate.inner
    kept = [t for t in range(12) if t != 5]
    handle = inner.register_forward_pre_hook(grab("dense"), with_kwargs=True)
    with torch.no_grad():
        model(x)
    handle.remove()
    handle = inner.register_forward_pre_hook(grab("routed"), with_kwargs=True)
    with torch.no_grad(), skipper.use(_plan(model, 0.0, FixedRouter({1: kept}))):
        model(x)
    handle.remove()
    for dense, routed in zip(captured["dense"], captured["routed"]):
        assert routed.shape[1] == 11
        assert torch.equal(routed[0], dense[0, kept])


def test_right_padding_matches_single_sequences(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    a, b = tokens(1, 20, seed=3), tokens(1, 13, seed=4)
    batch = torch.zeros(2, 20, dtype=torch.long)
    batch[0], batch[1, :13] = a[0], b[0]
    mask = torch.zeros(2, 20, dtype=torch.long)
    mask[0], mask[1, :13] = 1, 1
    for router in (StaticRouter(), DynamicRouter().double()):
        plan = _plan(model, (0.0, 0.35, 0.5, 0.2), router)
        with torch.no_grad(), skipper.use(plan):
            joint = model(batch, attention_mask=mask).logits
            single_a, single_b = model(a).logits, model(b).logits
        atol = 1e-6 if router.needs_attention else 1e-10  # eager attention: fp32 softmax
        assert torch.allclose(joint[0], single_a[0], atol=atol)
        assert torch.allclose(joint[1, :13], single_b[0], atol=atol)
    left = mask.flip(-1)
    with pytest.raises(UsageError, match="right-padded"), skipper.use(_plan(model, 0.3, StaticRouter())):
        model(batch, attention_mask=left)


def test_static_router_is_causal(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    x = tokens(1, 24)
    y = x.clone()
    y[0, 15:] = (y[0, 15:] + 7) % 96
    with torch.no_grad(), skipper.use(_plan(model, 0.4, StaticRouter())):
        lx, ly = model(x).logits, model(y).logits
    assert torch.allclose(lx[:, :15], ly[:, :15], atol=1e-10)
    assert not torch.allclose(lx[:, 15:], ly[:, 15:])


def test_causal_router_variant_is_prefix_invariant_and_received_is_not(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    x = tokens(1, 24)
    y = x.clone()
    y[0, 15:] = (y[0, 15:] + 7) % 96
    torch.manual_seed(0)
    causal = DynamicRouter(attn_feature="causal", selection="threshold").double()
    with torch.no_grad():  # keep a token iff its prefix attention rank >= 0.5: data-dependent, causal
        for param in causal.parameters():
            param.zero_()
        causal.net[0].weight[0, 2] = 1.0
        causal.net[2].weight[0, 0] = 1.0
        causal.net[2].bias.fill_(-0.5)
    with torch.no_grad(), skipper.use(_plan(model, 0.4, causal)):
        lx, ly = model(x).logits, model(y).logits
        kept = [skipper.last_state.records[i].n_kept.item() for i in range(4)]
    assert any(k < 24 for k in kept)  # the threshold router really skips tokens here
    assert torch.allclose(lx[:, :15], ly[:, :15], atol=1e-10)
    received = DynamicRouter().double()
    probs = []
    with torch.no_grad(), skipper.use(_plan(model, 0.4, received)):
        for ids in (x, y):
            model(ids)
            probs.append(skipper.last_state.records[2].probs[:, :15].clone())
    # the default "received attention" feature averages over later queries: not prefix-invariant
    assert not torch.allclose(probs[0], probs[1], atol=1e-9)


def test_router_shape_params_and_sharing(tiny_llama, tokens):
    router = DynamicRouter()
    assert count_router_params(router) == 385
    feats = torch.rand(3, 17, 4)
    assert router.probabilities(feats).shape == (3, 17)
    model = tiny_llama()
    skipper = attach(model)
    router = router.double()
    calls = []
    router.net.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad(), skipper.use(_plan(model, 0.3, router)):
        model(tokens(1, 16))
    assert len(calls) == model.config.num_hidden_layers  # one global router, called once per block


def test_kv_cache_strict_equals_no_cache_under_identical_routing(tiny_llama, tokens):
    model = tiny_llama()
    skipper = attach(model)
    from transformers import DynamicCache

    prompt = tokens(1, 20)
    plan = _plan(model, (0.0, 0.4, 0.5, 0.25), StaticRouter())
    steps = 6
    with torch.no_grad(), skipper.use(plan):
        cache = DynamicCache(config=model.config)
        logits = model(prompt, past_key_values=cache, use_cache=True).logits
        prefill_kept = {i: r.kept[0, : r.n_kept[0]].tolist() for i, r in skipper.last_state.records.items()}
        for i, kept in prefill_kept.items():  # skipped prompt tokens left no K/V in the blocks they skipped
            assert cache.layers[i].keys.shape[-2] == len(kept)
        seq = torch.cat([prompt, logits[:, -1:].argmax(-1)], dim=1)
        cached_logits = []
        for _ in range(steps - 1):
            pos = torch.tensor([[seq.shape[1] - 1]])
            step = model(seq[:, -1:], position_ids=pos, past_key_values=cache, use_cache=True).logits
            cached_logits.append(step[:, -1])
            seq = torch.cat([seq, step[:, -1:].argmax(-1)], dim=1)
        for i, kept in prefill_kept.items():
            assert cache.layers[i].keys.shape[-2] == len(kept) + steps - 1
    # reference: no cache, every step re-runs the whole sequence with the prefill's prompt kept sets
    ref = prompt
    ref_logits = []
    for step in range(steps):
        length = ref.shape[1]
        fixed = FixedRouter({i: kept + list(range(20, length)) for i, kept in prefill_kept.items()})
        with torch.no_grad(), skipper.use(_plan(model, 0.0, fixed)):
            out = model(ref).logits[:, -1]
        if step:
            ref_logits.append(out)
        ref = torch.cat([ref, out.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ref, seq)
    for a, b in zip(cached_logits, ref_logits):
        assert torch.allclose(a, b, atol=1e-9)
    # HF generate (position ids from its attention mask) gives the same tokens as our cached loop
    with torch.no_grad(), skipper.use(plan):
        ours, _ = greedy_generate(model, prompt, steps)
        hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps,
                            do_sample=False, pad_token_id=0)
    assert torch.equal(ours, seq)
    assert torch.equal(hf, seq)


def test_threshold_kv_mode_skips_new_tokens(tiny_llama, tokens):
    model = tiny_llama(attn="eager")
    skipper = attach(model)
    router = DynamicRouter().double()
    with torch.no_grad():
        router.net[2].bias.fill_(-50.0)  # p ~ 0 for every token: the new token skips every routed block
    plan = _plan(model, (0.0, 0.3, 0.3, 0.3), router, kv_mode="threshold")
    with torch.no_grad(), skipper.use(plan):
        out, cache = greedy_generate(model, tokens(1, 12), 4)
    assert out.shape == (1, 16)
    lengths = [cache.layers[i].keys.shape[-2] for i in range(4)]
    assert lengths[1:] == [12 - round(0.3 * 12)] * 3  # nothing was appended in the routed blocks
    assert lengths[0] == 12 + 3  # ... while decode steps still ran the blocks the router kept them in


def test_bad_input_errors(tiny_llama):
    model = tiny_llama()
    skipper = attach(model)
    with pytest.raises(UsageError, match=r"outside \[0, 1\)"):
        _plan(model, 1.0, StaticRouter())
    with pytest.raises(UsageError, match=r"outside \[0, 1\)"):
        _plan(model, -0.1, StaticRouter())
    with pytest.raises(UsageError, match="block sparsities"):
        skipper.set_plan(SkipPlan(sparsity=(0.2,) * 3, router=StaticRouter()))
    with pytest.raises(UsageError, match="scope"):
        SkipPlan(scope="attention")
    with pytest.raises(UsageError, match="not a Llama-family"):
        attach(torch.nn.Linear(2, 2))
    skipper.detach()
    assert type(model.model.layers[0]).__name__ == "LlamaDecoderLayer"
