"""The tiny target and untrained Jakiro drafts the engine-level tests share."""

import pytest
import torch
from effrepro.specdec import TargetAdapter
from effrepro.testing import tiny_llama
from jakiro.jakiro import JakiroConfig, JakiroDraft

VOCAB = 16  # a small vocabulary so random drafts get accepted now and then (exercises the accept paths)


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(vocab=VOCAB, hidden=32, dtype=torch.float32)
    return model, TargetAdapter(model, max_length=400)


@pytest.fixture
def draft_for():
    def make(model, variant: str, seed: int = 1) -> JakiroDraft:
        torch.manual_seed(seed)
        draft = JakiroDraft(JakiroConfig.from_target(model.config, variant=variant)).eval()
        draft.freeze_embedding(model.get_input_embeddings().weight)
        return draft

    return make
