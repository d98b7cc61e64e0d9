"""Target adapter: any plain HF causal LM driven through transformers' public interfaces, no modeling-file copy.

* **Features** ``f_t``: the decoder's ``last_hidden_state`` (after the final norm), the LM-head input; logits are
  ``lm_head(f_t)``. The decoder (``model.get_decoder()``) and head (``model.get_output_embeddings()``) are called
  separately so one pass yields both.
* **Tree attention**: a 4D additive mask ``[1, 1, q, kv]`` (0 = attend, dtype min = blocked) is passed as
  ``attention_mask``; transformers' ``create_causal_mask`` returns a 4D mask unchanged, and eager / sdpa attention
  add it. ``position_ids = prefix_len + depth`` go in explicitly (RoPE at the tree positions).
* **KV cache**: ``TreeKVCache`` is a ``transformers.Cache`` whose layers (``TreeKVLayer``, a ``CacheLayerMixin``)
  pre-allocate ``[B, kv_heads, max_length, head_dim]`` once and write each pass at the current length.
  ``commit(nodes)`` compacts the accepted path: the rows ``prefix_len + nodes`` move to
  ``prefix_len .. prefix_len + len(nodes) - 1`` and the length is set, dropping the rest of the tree.

Exception: flash-attention kernels take no custom mask, so a model loaded with ``flash_attention_*`` is switched to
``sdpa`` (``set_attn_implementation``), which supports it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from effrepro.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> str:
    """``cuda`` when there is a GPU, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str) -> str:
    """The target dtype name: ``dtype`` when given (checked), else ``bfloat16`` on a GPU (``cuda...`` or ``auto``)
    and ``float32`` on the CPU."""
    if dtype is None:
        return "float32" if device == "cpu" else "bfloat16"
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return dtype


def load_target_on(name: str, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """The target and its tokenizer on ``device`` (``cpu``, ``cuda``, ``cuda:1``; ``auto``: ``device_map="auto"``
    over every GPU, for targets that do not fit one; default: ``default_device()``) in ``dtype`` (``float32`` /
    ``bfloat16`` / ``float16``; default: ``resolve_dtype``, bfloat16 on GPUs)."""
    from effrepro.data import load_target

    device = device or default_device()
    torch_dtype = DTYPES[resolve_dtype(dtype, device)]
    if device == "auto":
        return load_target(name, dtype=torch_dtype, device_map="auto")
    model, tokenizer = load_target(name, dtype=torch_dtype)
    try:
        return model.to(device), tokenizer
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"cannot place the target on {device!r}: {str(exc).splitlines()[0]}") from None


class TreeKVLayer(CacheLayerMixin):
    """One layer's pre-allocated keys/values; ``update`` appends at ``length`` and returns the filled prefix."""

    is_compileable = False
    is_sliding = False

    def __init__(self, max_length: int) -> None:
        super().__init__()
        self.max_length = max_length
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads = key_states.shape[:2]
        self.keys = key_states.new_zeros(batch, heads, self.max_length, key_states.shape[-1])
        self.values = value_states.new_zeros(batch, heads, self.max_length, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.max_length:
            raise UsageError(f"KV cache overflow: {end} positions > max_length {self.max_length}; "
                             "raise max_length or lower max_new_tokens / total_tokens")
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_length

    def reset(self) -> None:
        self.length = 0

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def compact(self, start: int, source_rows: torch.Tensor) -> None:
        """Move rows ``source_rows`` (absolute, ascending, all >= ``start``) to ``start...``; length = start + n."""
        if self.is_initialized:
            rows = source_rows.to(self.keys.device)
            n = rows.numel()
            self.keys[:, :, start:start + n] = self.keys.index_select(2, rows)
            self.values[:, :, start:start + n] = self.values.index_select(2, rows)
        self.length = start + source_rows.numel()


class TreeKVCache(Cache):
    """A ``transformers.Cache`` of ``TreeKVLayer``s with crop and accepted-path compaction."""

    def __init__(self, num_layers: int, max_length: int) -> None:
        super().__init__(layers=[TreeKVLayer(max_length) for _ in range(num_layers)])
        self.max_length = max_length

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0  # a draft without attention layers caches nothing

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def crop(self, length: int) -> None:
        for layer in self.layers:
            layer.crop(length)

    def compact(self, start: int, source_rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.compact(start, source_rows)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool attention mask (True = attend) -> the additive 4D mask HF attention adds: ``[q, kv]`` ->
    ``[1, 1, q, kv]``, ``[B, q, kv]`` -> ``[B, 1, q, kv]``; 0 where allowed, ``finfo(dtype).min`` elsewhere. The one
    helper of the target and of every draft head."""
    if allowed.dim() not in (2, 3):
        raise ValueError(f"attention mask of shape {tuple(allowed.shape)}; expected [q, kv] or [B, q, kv]")
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask = mask.masked_fill(~allowed.bool(), torch.finfo(dtype).min)
    return mask[None, None] if allowed.dim() == 2 else mask[:, None]


class TargetAdapter:
    """Wraps a causal LM (batch 1) for speculative decoding: prefill, causal decode, tree verify, commit."""

    def __init__(self, model: Any, max_length: int = 2048) -> None:
        if not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
            raise UsageError(f"{type(model).__name__} is not an HF causal LM with a decoder and an LM head")
        implementation = getattr(model.config, "_attn_implementation", None) or ""
        if "flash" in implementation:  # flash kernels take no custom 4D mask (module docstring)
            model.set_attn_implementation("sdpa")
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.config = model.config
        self.max_length = int(max_length)
        self.cache = TreeKVCache(self.config.num_hidden_layers, self.max_length)
        embed = model.get_input_embeddings()
        self.device = embed.weight.device
        self.dtype = embed.weight.dtype
        self._tree_start: int | None = None
        self.forward_calls = 0

    # ----- shapes and frozen tensors the draft heads reuse -----
    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.head.weight.shape[0])

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.head.weight

    @property
    def embed_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def length(self) -> int:
        """Positions in the KV cache (during a tree pass: prefix + tree, until ``commit``)."""
        return self.cache.length

    def reset(self) -> None:
        self.cache.reset()
        self._tree_start = None

    # ----- passes -----
    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                 with_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        ids = ids.to(self.device)
        out = self.decoder(
            input_ids=ids[None], attention_mask=additive_mask(allowed.to(self.device), self.dtype),
            position_ids=positions.to(self.device)[None], past_key_values=self.cache, use_cache=True,
        )
        features = out.last_hidden_state[0]
        self.forward_calls += 1
        return (self.head(features) if with_logits else None), features

    def _causal(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, n = self.length, ids.numel()
        if start + n > self.max_length:
            raise UsageError(f"{start + n} tokens exceed the context budget max_length={self.max_length}; "
                             "shorten the prompt or raise max_length")
        allowed = torch.ones(n, start + n, dtype=torch.bool).tril(start)
        return self._forward(ids, torch.arange(start, start + n), allowed)

    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset, then ``input_ids [n]`` -> ``(logits [n, V], features [n, H])``; the cache holds n positions."""
        if input_ids.numel() == 0:
            raise UsageError("empty prompt; give at least one token")
        self.reset()
        return self._causal(input_ids.flatten())

    def decode(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``token_ids [m]`` causally -> ``(logits [m, V], features [m, H])``."""
        return self._causal(token_ids.flatten())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The target's LM head on some feature rows (``features [n, H]`` -> ``[n, V]``)."""
        return self.head(features)

    def verify(self, tree: Any, logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """One pass over the tree nodes -> ``(logits [N, V], features [N, H])``.

        Node i attends to the whole prefix and to its ancestors-or-self (``tree.tree_mask``), at position
        ``prefix_len + depth[i]``. The tree's KV stays in the cache until ``commit``. ``logits=False`` skips
        the LM head (``(None, features)``): the caller runs ``logits`` on the rows it reads.
        """
        prefix, n = self.length, tree.size
        if prefix + n > self.max_length:
            raise UsageError(f"prefix {prefix} + tree {n} exceed max_length={self.max_length}")
        allowed = torch.cat([torch.ones(n, prefix, dtype=torch.bool), tree.tree_mask.cpu().bool()], dim=1)
        self._tree_start = prefix
        return self._forward(tree.tokens, tree.position_ids(prefix).cpu(), allowed, with_logits=logits)

    def commit(self, nodes: torch.Tensor) -> None:
        """Keep the KV of the accepted tree ``nodes`` (root first, ascending) right after the prefix."""
        if self._tree_start is None:
            raise RuntimeError("commit() without a preceding verify()")
        start = self._tree_start
        self.cache.compact(start, start + nodes.cpu().long())
        self._tree_start = None


def stop_tokens(model: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """End-of-turn ids: the tokenizer's EOS and the model's generation-config EOS (one id or a list)."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return tuple(sorted(ids))
