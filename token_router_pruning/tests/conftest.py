"""Tiny random Llama models for the token_router_pruning unit tests (seconds on CPU)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_tiny_llama(layers: int = 4, dtype: torch.dtype = torch.float64, attn: str = "sdpa", vocab: int = 96,
                    seed: int = 0, init_std: float = 0.08):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=init_std, attn_implementation=attn, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    return model


@pytest.fixture
def tiny_llama():
    return make_tiny_llama


@pytest.fixture
def tokens():
    def make(batch: int = 1, length: int = 24, vocab: int = 96, seed: int = 1) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (batch, length), generator=gen)

    return make


@pytest.fixture(autouse=True)
def _private_shared_cache(tmp_path, monkeypatch):
    """Tests keep the shared dense-evaluation cache in their own folder, never the user's effrepro cache."""
    from token_router_pruning import pipeline

    monkeypatch.setattr(pipeline, "shared_dir", lambda: tmp_path / "shared-cache")
