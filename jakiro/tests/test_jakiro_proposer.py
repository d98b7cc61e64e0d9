"""Jakiro's hybrid drafting: forward counts, tree-masked drafting == per-path recompute, last-level alignment."""

import pytest
import torch
import torch.nn.functional as F
from effrepro.errors import UsageError
from effrepro.specdec import TreeConfig
from jakiro.jakiro import JakiroConfig, JakiroDraft, causal_allowed, make_proposer

H, V = 32, 50


def random_draft(seed: int = 0) -> tuple[JakiroDraft, torch.Tensor]:
    torch.manual_seed(seed)
    draft = JakiroDraft(JakiroConfig(hidden_size=H, intermediate_size=64, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=V)).double()
    for p in draft.parameters():  # larger weights: peaky, distinct distributions per row
        p.data.mul_(3.0)
    return draft, torch.randn(V, H, dtype=torch.float64)


def context(n: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, dtype=torch.float64, generator=g), torch.randint(0, V, (n,), generator=g)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_forwards_per_round_one_fewer_than_eagle2_schedule(depth):
    draft, lm = random_draft()
    feats, ids = context()
    tree = TreeConfig(top_k=3, depth=depth, total_tokens=20)
    jak = make_proposer(draft, lm, tree)
    full = make_proposer(draft, lm, tree, last_level="forward")
    t_j, t_f = jak.propose(feats, ids), full.propose(feats, ids)
    assert jak.last_forwards == depth and full.last_forwards == depth + 1
    assert int(t_j.depth.max()) <= depth + 1 and int(t_f.depth.max()) <= depth + 1
    # both keep only the context in the draft KV
    assert jak.context_length == feats.shape[0] == full.context_length
    # levels 1..depth are identical (same MoE branch); only the last level's source differs
    levels_j = make_proposer(draft, lm, tree).propose_levels(feats, ids)
    levels_f = make_proposer(draft, lm, tree, last_level="forward").propose_levels(feats, ids)
    assert len(levels_j) == len(levels_f) == depth + 1
    for a, b in zip(levels_j[:-1], levels_f[:-1], strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
        torch.testing.assert_close(a.scores, b.scores)


def path_index(levels, level_no, entry):
    """Tokens of the root-to-node path of ``levels[level_no][entry]`` (level 1 first), node itself included."""
    path, idx = [], entry
    for back in range(level_no, -1, -1):
        path.append(int(levels[back].tokens[idx]))
        idx = int(levels[back].parents[idx])
    return path[::-1]


def plain_path_logprobs(draft, lm, feats, ids, path_tokens, branch: int = 0):
    """Log-probs after a root-to-node path by a plain causal forward (no tree mask, no KV); branch 1 is the
    contrastive output at the path's end (the draft features along the path come from branch 0)."""
    n = ids.numel()
    out = draft(feats[None], ids[None], torch.arange(n)[None], causal_allowed(n, 0))[0]
    all_feats, all_ids, g = feats, ids, out[-1]
    for step, token in enumerate(path_tokens):
        all_feats = torch.cat([all_feats, g[None]])
        all_ids = torch.cat([all_ids, torch.tensor([token])])
        m = all_ids.numel()
        last = step == len(path_tokens) - 1
        both = draft(all_feats[None], all_ids[None], torch.arange(m)[None], causal_allowed(m, 0), branches="both")
        g = both[branch if last else 0, 0, -1]
    return F.log_softmax(g @ lm.t(), dim=-1)


def test_tree_masked_drafting_equals_per_path_recompute():
    draft, lm = random_draft()
    feats, ids = context()
    proposer = make_proposer(draft, lm, TreeConfig(top_k=3, depth=4, total_tokens=30), last_level="forward")
    levels = proposer.propose_levels(feats, ids)
    k = 3
    # walk one kept path per level: level l entries' parents index level l-1 entries
    for level_no in range(1, 4):
        level = levels[level_no]
        for entry in range(0, level.tokens.numel(), k):  # first child of every expanded node
            parent_entry = int(level.parents[entry])
            logp = plain_path_logprobs(draft, lm, feats, ids, path_index(levels, level_no - 1, parent_entry))
            top = torch.topk(logp, k)
            parent_score = levels[level_no - 1].scores[parent_entry]
            assert level.tokens[entry:entry + k].tolist() == top.indices.tolist()
            torch.testing.assert_close(level.scores[entry:entry + k], top.values.float() + parent_score,
                                       rtol=1e-5, atol=1e-5)


def test_incremental_rounds_equal_fresh_catch_up():
    """Context KV carried across rounds == one catch-up over the whole context (stable_kv semantics)."""
    draft, lm = random_draft()
    feats, ids = context(9)
    tree = TreeConfig(top_k=3, depth=3, total_tokens=15)
    p1 = make_proposer(draft, lm, tree)
    p1.propose(feats[:5], ids[:5])
    t_inc = p1.propose(feats[5:], ids[5:])
    p2 = make_proposer(draft, lm, tree)
    t_full = p2.propose(feats, ids)
    assert torch.equal(t_inc.tokens, t_full.tokens) and torch.equal(t_inc.parents, t_full.parents)
    torch.testing.assert_close(t_inc.scores, t_full.scores)


def test_last_level_alignment_official_vs_parent():
    draft, lm = random_draft(3)
    feats, ids = context(6, seed=4)
    k, depth = 4, 3
    tree = TreeConfig(top_k=k, depth=depth, total_tokens=40)
    official = make_proposer(draft, lm, tree).propose_levels(feats, ids)
    parent = make_proposer(draft, lm, tree, alignment="parent").propose_levels(feats, ids)
    # the contrastive rows themselves, from the penultimate forward's inputs (kept level-(D-1) nodes)
    last_o, last_p = official[-1], parent[-1]
    kept = last_o.parents.view(k, k)[:, 0]  # flat index (in level D) of the j-th kept node at level D
    assert torch.equal(kept, last_p.parents.view(k, k)[:, 0])
    par_row = kept // k  # its parent: input row of the penultimate forward
    assert bool((par_row != torch.arange(k)).any()), "pick a seed where alignment matters"
    blocks_o = last_o.tokens.view(k, k)
    blocks_p = last_p.tokens.view(k, k)
    for j in range(k):
        # official: row j under the j-th kept node; parent-aligned: row par_row[j]
        assert torch.equal(blocks_p[j], blocks_o[int(par_row[j])])
    # official row j is the contrastive (two-steps-ahead) prediction made for input j of the penultimate forward
    inputs = official[depth - 1].parents.view(k, k)[:, 0]  # level-(D-1) entries fed to the penultimate forward
    for j in range(k):
        path = path_index(official, depth - 2, int(inputs[j]))
        logp = plain_path_logprobs(draft, lm, feats, ids, path, branch=1)
        top = torch.topk(logp, k)
        assert blocks_o[j].tolist() == top.indices.tolist()
        kept_score = official[depth - 1].scores[int(kept[j])]
        torch.testing.assert_close(last_o.scores.view(k, k)[j], top.values.float() + kept_score,
                                   rtol=1e-5, atol=1e-5)


def test_bad_options_are_usage_errors():
    draft, lm = random_draft()
    with pytest.raises(UsageError, match="alignment"):
        make_proposer(draft, lm, TreeConfig(top_k=2, depth=3, total_tokens=8), alignment="child")
    with pytest.raises(UsageError, match="depth"):
        make_proposer(draft, lm, TreeConfig(top_k=2, depth=1, total_tokens=8))
    with pytest.raises(UsageError, match="unknown"):
        make_proposer(draft, lm, TreeConfig(top_k=2, depth=3, total_tokens=8), temperature=1.0)
