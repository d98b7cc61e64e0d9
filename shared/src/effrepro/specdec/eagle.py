"""The EAGLE-2 baseline draft head and its dynamic-tree proposer (SafeAILab/EAGLE ``cnets1.py`` semantics).

Head (one decoder layer, Jakiro's head with a dense FFN instead of the MoE):

    z = fc([Emb(x_{t+1}) ; f_t])          fc: Linear(2H -> H, bias=True), embedding first
    g = LlamaDecoderLayer(z)              layer 0 has NO input RMSNorm; no final norm
    logits = W_lm g                        frozen target LM head (passed in, never stored)

The FFN is the target's SwiGLU (intermediate = the target's ``intermediate_size``); widths, heads, GQA, RoPE theta
and rms eps are the target's. ``Emb`` is a frozen copy of the target embedding.

Proposer (EAGLE-2 ``topK_genrate``): a catch-up pass over the new context positions gives ``g`` at the root and the
K level-1 candidates; then ``depth`` tree passes, each over the K kept nodes of the previous level at one shared
position, with an ancestor-only tree mask; every pass puts all ``K*K`` children (cumulative log-probs) in the pool
and keeps the best K for the next pass. So ``depth`` = 5 gives 1 + 5 sequential forwards and 6 draft levels. The
pool (``K + depth*K^2`` candidates) is re-ranked globally to ``total_tokens - 1`` nodes (``tree_from_levels``).
The draft KV keeps only the accepted context between rounds (the official ``stable_kv``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

from effrepro.errors import UsageError
from effrepro.specdec.draft_data import DraftDataConfig, draft_data_folders
from effrepro.specdec.harness import EvalConfig, evaluate
from effrepro.specdec.protocol import DraftHead, LevelProposer, TreeConfig, proposer_factory
from effrepro.specdec.target import TargetAdapter, TreeKVCache, additive_mask
from effrepro.specdec.trainer import HeadTrainConfig, train_head
from effrepro.specdec.tree import DraftLevel


@dataclass
class DraftModelConfig:
    """The target widths a draft decoder layer copies, plus the draft's own structure knobs.

    The draft config of every method: Jakiro's and Gumiho's configs subclass it, add their knobs, extend
    ``TARGET_KEYS`` with what else they copy from the target and override the defaults that differ."""

    TARGET_KEYS: ClassVar[tuple[str, ...]] = (
        "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
        "rms_norm_eps", "max_position_embeddings", "hidden_act", "head_dim")

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    hidden_act: str = "silu"
    num_layers: int = 1
    fc_bias: bool = True

    def __post_init__(self) -> None:
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by {self.num_attention_heads} heads")

    @classmethod
    def from_target(cls, target_config: Any, **overrides: Any) -> Self:
        """Copy the ``TARGET_KEYS`` of an HF Llama-family config (and its RoPE theta); ``overrides`` set the
        draft knobs."""
        values = {k: getattr(target_config, k) for k in cls.TARGET_KEYS if getattr(target_config, k, None) is not None}
        values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
        rope = getattr(target_config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        values["rope_theta"] = float(theta or getattr(target_config, "rope_theta", None) or 10000.0)
        values.update(overrides)
        return cls(**values)

    def llama_config(self) -> LlamaConfig:
        config = LlamaConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim or self.hidden_size // self.num_attention_heads, vocab_size=self.vocab_size,
            rms_norm_eps=self.rms_norm_eps, max_position_embeddings=self.max_position_embeddings,
            hidden_act=self.hidden_act, num_hidden_layers=self.num_layers, attention_bias=False, mlp_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
        )
        config._attn_implementation = "sdpa"
        return config


class EagleHead(DraftHead):
    """fc + ``num_layers`` Llama decoder layers (layer 0 without input norm) + frozen embedding copy."""

    def __init__(self, config: DraftModelConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_size, self.vocab_size = config.hidden_size, config.vocab_size
        llama = config.llama_config()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.fc = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=config.fc_bias)
        self.layers = nn.ModuleList(LlamaDecoderLayer(llama, i) for i in range(config.num_layers))
        self.layers[0].input_layernorm = nn.Identity()  # EAGLE: the first layer reads fc's output directly
        self.rotary_emb = LlamaRotaryEmbedding(llama)

    def decode(self, features: torch.Tensor, token_ids: torch.Tensor, position_ids: torch.Tensor,
               allowed: torch.Tensor, cache: TreeKVCache | None = None) -> torch.Tensor:
        """``features [B, q, H]`` (f_t), ``token_ids [B, q]`` (x_{t+1}), ``position_ids [B, q]``, ``allowed``
        ``[B|1, q, kv]`` bool over cached + new keys; extends ``cache`` in place. Returns ``g [B, q, H]``."""
        embeds = self.embed_tokens(token_ids).to(features.dtype)
        hidden = self.fc(torch.cat([embeds, features], dim=-1))
        position_embeddings = self.rotary_emb(hidden, position_ids)
        mask = additive_mask(allowed.to(hidden.device), hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                           use_cache=cache is not None, position_embeddings=position_embeddings)
        return hidden

    def train_forward(self, features: torch.Tensor, next_ids: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length = next_ids.shape
        allowed = torch.ones(length, length, dtype=torch.bool, device=features.device).tril()[None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
        positions = torch.arange(length, device=features.device)[None].expand(batch, -1)
        return self.decode(features, next_ids, positions, allowed)

    def make_proposer(self, lm_head: torch.Tensor, tree: TreeConfig, **options: Any) -> EagleProposer:
        return EagleProposer(self, lm_head, tree, **options)


class EagleProposer(LevelProposer):
    """EAGLE-2's dynamic tree for one sequence (module docstring)."""

    def __init__(self, head: EagleHead, lm_head: torch.Tensor, tree: TreeConfig, max_length: int = 4096) -> None:
        self.head = head
        self.lm_head = head.draft_lm_head(lm_head)  # [K, H] rows with a reduced draft vocabulary, else [V, H]
        self.tree = tree
        self.total_tokens = tree.total_tokens
        self.cache = TreeKVCache(len(head.layers), max_length + tree.top_k * (tree.depth + 1))
        self.last_forwards = 0

    @torch.no_grad()
    def propose_levels(self, new_features: torch.Tensor, next_ids: torch.Tensor) -> list[DraftLevel]:
        head, k, depth = self.head, self.tree.top_k, self.tree.depth
        dtype = self.head.fc.weight.dtype
        device = self.head.fc.weight.device
        feats = new_features.to(device, dtype)[None]
        ids = next_ids.to(device)[None]
        ctx, n = self.cache.length, ids.shape[1]
        allowed = torch.ones(n, ctx + n, dtype=torch.bool, device=device).tril(ctx)[None]
        positions = torch.arange(ctx, ctx + n, device=device)[None]
        g = head.decode(feats, ids, positions, allowed, self.cache)[0, -1]  # draft feature at the root position
        context = self.cache.length
        self.last_forwards = 1
        top = torch.topk(self._logprobs(g), k)
        top_tokens = head.to_target_ids(top.indices)  # draft indices -> target ids (identity at full vocab)
        levels = [DraftLevel(top_tokens, top.values, torch.full_like(top.indices, -1))]
        inputs_tokens, inputs_feats = top_tokens, g.expand(k, -1)
        scores = top.values
        selected = torch.arange(k, device=device)  # entries of the previous level that are expanded
        ancestry = torch.eye(k, dtype=torch.bool, device=device)  # [k, tree keys so far]
        try:
            for step in range(depth):
                keys = torch.cat([torch.ones(k, context, dtype=torch.bool, device=device), ancestry], dim=1)
                pos = torch.full((1, k), context + step, dtype=torch.long, device=device)
                out = head.decode(inputs_feats[None], inputs_tokens[None], pos, keys[None], self.cache)[0]
                self.last_forwards += 1
                child = torch.topk(self._logprobs(out), k, dim=-1)  # [k, k]
                child_tokens = head.to_target_ids(child.indices.flatten())
                cumulative = child.values + scores[:, None]
                levels.append(DraftLevel(child_tokens, cumulative.flatten(), selected.repeat_interleave(k)))
                best = torch.topk(cumulative.flatten(), k)
                rows = best.indices // k
                selected, scores = best.indices, best.values
                inputs_tokens = child_tokens[best.indices]
                inputs_feats = out[rows]
                ancestry = torch.cat([ancestry[rows], torch.eye(k, dtype=torch.bool, device=device)], dim=1)
        finally:
            self.cache.crop(context)  # tree-branch KV never survives the round
        return levels


def build_eagle_head(target_config: Any, embed_weight: torch.Tensor | None = None, **overrides: Any) -> EagleHead:
    """An EAGLE head for a target (its config), with the target's embedding frozen in when given."""
    head = EagleHead(DraftModelConfig.from_target(target_config, **overrides))
    if embed_weight is not None:
        head.freeze_embedding(embed_weight.detach().float())
    return head


def head_from_checkpoint(state: dict[str, Any], embed_weight: torch.Tensor,
                         source: str = "head checkpoint") -> EagleHead:
    """Rebuild a trained head from ``train_head``'s checkpoint dict; clear errors for a mismatched target."""
    from effrepro.train.checkpoint import check_kind, config_from

    check_kind(state, source, "draft-head")
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise UsageError(f"{source} is not a draft-head checkpoint (needs 'config' and 'state_dict'); pass the "
                         "head.pt that train-eagle wrote")
    if state.get("method", "EagleHead") != "EagleHead":
        raise UsageError(f"{source} holds a {state['method']} head, not an EAGLE head; load it with its project")
    head = EagleHead(config_from(DraftModelConfig, state["config"], source))
    head.restore(state["state_dict"], embed_weight, source)
    return head


# ----- the EAGLE-2 baseline as functions (jakiro / gumiho reproduce runs call these) -----
# ----- released EAGLE-2 heads (SafeAILab ``yuhuili/EAGLE-*``: EAGLE-2 decodes with the EAGLE-1 weights) -----
RELEASED_FILES = ("model.safetensors", "pytorch_model.bin")
_RELEASED_PREFIXES = ("ea_layer.", "model.")


def is_released_checkpoint(path: str | Path) -> bool:
    """A released head: a folder holding ``model.safetensors`` / ``pytorch_model.bin``, or such a file."""
    path = Path(path)
    return path.is_dir() or path.suffix in (".bin", ".safetensors")


def read_released_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a released head (a folder or its weights file), read as data only."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / name for name in RELEASED_FILES if (path / name).is_file()]
        if not found:
            raise UsageError(f"{path} holds neither of {', '.join(RELEASED_FILES)}; give the released EAGLE "
                             "head's folder (e.g. a download of yuhuili/EAGLE-Vicuna-7B-v1.3) or its weights file")
        path = found[0]
    if not path.is_file():
        raise UsageError(f"released head {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UsageError(f"{path} is not a safetensors file ({exc})") from None
    from effrepro.train import load_checkpoint

    state = load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} is not a state dict of tensors (a released EAGLE head's pytorch_model.bin)")
    return state


def released_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released EAGLE key names -> ``EagleHead``'s: the same module tree (``fc``, ``layers.i.self_attn.*_proj``,
    ``layers.i.mlp.*_proj``, ``layers.i.{input,post_attention}_layernorm``; layer 0 has no input norm), after
    dropping a ``ea_layer.`` / ``model.`` prefix and the rotary buffers (recomputed). ``embed_tokens.weight``
    stays: it is checked against the target's, not loaded."""
    renamed = {}
    for key, value in state.items():
        for prefix in _RELEASED_PREFIXES:
            key = key.removeprefix(prefix)
        if "rotary_emb" not in key:
            renamed[key] = value
    return renamed


def head_from_released(state: dict[str, torch.Tensor], target_config: Any, embed_weight: torch.Tensor,
                       source: str = "released head") -> EagleHead:
    """An ``EagleHead`` from a released EAGLE-1/2 state dict for the target of ``target_config``: the layer count
    and the fc bias come from the keys, the widths from the target; every tensor's shape is checked, and a stored
    embedding must be the target's (a head trained for another target is one clear error)."""
    state = released_to_ours(state)
    if any(k.startswith(("midlayer.", "d2t", "t2d")) for k in state):
        raise UsageError(f"{source} is an EAGLE-3 head (midlayer / d2t keys); only EAGLE-1/2 heads load here")
    layers = {int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.split(".")[1].isdigit()}
    if "fc.weight" not in state or not layers:
        raise UsageError(f"{source} is not an EAGLE head (needs fc.weight and layers.N.* keys)")
    head = EagleHead(DraftModelConfig.from_target(target_config, num_layers=max(layers) + 1,
                                                  fc_bias="fc.bias" in state))
    head.check_compatible(int(embed_weight.shape[1]), int(embed_weight.shape[0]))
    stored = state.pop("embed_tokens.weight", None)
    if stored is not None:
        if tuple(stored.shape) != tuple(embed_weight.shape):
            raise UsageError(f"{source} embeds {tuple(stored.shape)}, the target {tuple(embed_weight.shape)}; the "
                             "head was trained for another target")
        reference = embed_weight.detach().float().cpu()
        if (stored.float() - reference).abs().max() > 1e-2 * reference.abs().max():
            raise UsageError(f"{source} was trained on another target's embedding (same shape, other weights); "
                             "use the head released for this target")
    head.freeze_embedding(embed_weight.detach().float())
    own = head.trainable_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise UsageError(f"{source} does not fit this target's EAGLE head (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}, other shapes {sorted(wrong)[:4]}); use the head released for it")
    head.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return head


def read_eagle_head(path: str | Path, embed_weight: torch.Tensor, target_config: Any = None) -> EagleHead:
    """A trained EAGLE head (fp32, trainable), checked against the target's embedding: ``head.pt`` written by
    ``train_eagle``, or a released EAGLE-2 head (its folder or weights file; needs ``target_config``)."""
    if is_released_checkpoint(path):
        if target_config is None:
            raise UsageError(f"{path}: a released head needs the target's config to be built")
        return head_from_released(read_released_state(path), target_config, embed_weight, source=str(path))
    from effrepro.train import load_checkpoint

    state = load_checkpoint(path, required=("config", "state_dict"), expect="draft-head")
    return head_from_checkpoint(state, embed_weight, source=str(path))


def load_eagle_head(path: str | Path, target: TargetAdapter) -> EagleHead:
    """A trained or released EAGLE head (``read_eagle_head``), checked against ``target`` and cast to its device
    and dtype."""
    return read_eagle_head(path, target.embed_weight, target.config).to(target.device, target.dtype).eval()


def eagle_factory(head: EagleHead, tree: TreeConfig) -> Callable[[TargetAdapter], EagleProposer]:
    """A harness method factory: one EAGLE-2 proposer per target (``proposer_factory``)."""
    return proposer_factory(EagleProposer, head, tree)


def train_eagle(model: Any, tokenizer: Any, out_dir: str | Path, data: DraftDataConfig | None = None,
                train: HeadTrainConfig | None = None, progress: bool = True, **head_overrides: Any) -> Path:
    """Draft data (cached) -> EAGLE head training -> ``out_dir/head.pt``; returns that path.

    ``model``/``tokenizer``: the target (``effrepro.data.load_target``). The data cache is shared with the other
    heads trained on the same target and settings.
    """
    data = data or DraftDataConfig()
    train = train or HeadTrainConfig()
    data_dir = draft_data_folders(model, tokenizer, data, progress=progress)
    head = build_eagle_head(model.config, model.get_input_embeddings().weight, **head_overrides)
    lm_head = model.get_output_embeddings().weight.detach().float()
    train_head(head, lm_head, data_dir, train, out_dir, progress=progress)
    return Path(out_dir) / "head.pt"


def eval_eagle(target: TargetAdapter, tokenizer: Any, head: EagleHead | str | Path, tree: TreeConfig,
               config: EvalConfig, out_dir: str | Path | None = None,
               extra_methods: dict[str, Callable[[TargetAdapter], Any]] | None = None,
               progress: bool = True) -> dict[str, Any]:
    """EAGLE-2 (method name ``eagle2``) beside plain decoding, plus any ``extra_methods``, in one interleaved run."""
    if not isinstance(head, EagleHead):
        head = load_eagle_head(head, target)
    methods = {"eagle2": eagle_factory(head, tree), **(extra_methods or {})}
    return evaluate(target, tokenizer, methods, config, out_dir, progress=progress)
