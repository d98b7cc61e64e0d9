"""The PAT_sf position-bias caches are bounded: one offset table sized by the largest map (sliced per shape)
and a small LRU of deploy-form biases, so many input shapes (detection) do not grow memory."""

import pytest
import torch
from partialnet.deploy import randomize_bn_statistics
from partialnet.models import PATConvSelf, RelPosSelfAttention, rpe_bucket_ids
from partialnet.models.patconv import SHAPE_CACHE_SIZE, ShapeLRU, ids_from_offset_table, rpe_offset_buckets

SHAPES = [(h, w) for h in (1, 2, 3, 5, 7) for w in (1, 4, 6, 9)]


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("ratio", [20.0, 1.5])
def test_sliced_offset_table_equals_the_direct_bucket_ids(ratio):
    table = rpe_offset_buckets(9, 12, ratio)
    assert table.shape == (17, 23) and table[8, 11] == rpe_bucket_ids(1, 1, ratio)[0, 0]
    for height, width in SHAPES + [(9, 12), (1, 12)]:
        assert ids_from_offset_table(table, height, width).equal(rpe_bucket_ids(height, width, ratio))
    with pytest.raises(ValueError, match="smaller than"):
        ids_from_offset_table(table, 10, 2)


def _held_bytes(attn: RelPosSelfAttention, cache: ShapeLRU | None = None) -> int:
    tensors = [attn._offset_table] + (list(cache._items.values()) if cache is not None else [])
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def test_many_shapes_keep_one_table_and_the_outputs():
    torch.manual_seed(0)
    mixer = randomize_bn_statistics(PATConvSelf(32, n_div=4, num_heads=4), 0).double().eval()
    with torch.no_grad():
        mixer.attn.rpe_bias.copy_(torch.randn_like(mixer.attn.rpe_bias))
    fused = mixer.fuse()
    expected = {}
    for height, width in SHAPES:
        x = _x(1, 32, height, width)
        expected[(height, width)] = x + mixer(x)
        torch.testing.assert_close(fused(x), expected[(height, width)], rtol=0, atol=1e-12)
    max_h, max_w = max(h for h, _ in SHAPES), max(w for _, w in SHAPES)
    assert mixer.attn._offset_table.shape == (2 * max_h - 1, 2 * max_w - 1)
    assert len(fused._bias_cache) == SHAPE_CACHE_SIZE < len(SHAPES)
    held = _held_bytes(fused.attn, fused._bias_cache)
    for height, width in reversed(SHAPES):  # every shape again, evicted ones recomputed: same outputs
        torch.testing.assert_close(fused(_x(1, 32, height, width)), expected[(height, width)], rtol=0, atol=1e-12)
    assert len(fused._bias_cache) == SHAPE_CACHE_SIZE
    assert _held_bytes(fused.attn, fused._bias_cache) <= held


def test_training_attention_keeps_no_per_shape_tensor():
    attn = RelPosSelfAttention(16, num_heads=2).double()
    before = {name for name, _ in attn.named_buffers()}
    for height, width in SHAPES:
        attn(_x(2, 16, height, width)).sum().backward()
    assert {name for name, _ in attn.named_buffers()} == before
    assert [k for k, v in vars(attn).items() if isinstance(v, (dict, list)) and k.startswith("_") and v
            and k not in ("_parameters", "_modules", "_buffers")] == []
    assert _held_bytes(attn) == 13 * 17 * 8  # the largest (7 x 9) map's offset table, int64


def test_lru_drops_the_least_recently_used():
    cache = ShapeLRU(2)
    calls = []

    def make(value):
        return lambda: calls.append(value) or torch.tensor(value)

    cache.get("a", make(1))
    cache.get("b", make(2))
    cache.get("a", make(9))  # hit: "a" becomes most recent
    cache.get("c", make(3))  # evicts "b"
    assert calls == [1, 2, 3] and len(cache) == 2
    assert int(cache.get("b", make(4))) == 4 and int(cache.get("a", make(5))) == 5
    with pytest.raises(ValueError):
        ShapeLRU(0)
