"""The tiny target the Gumiho engine-level tests share (vocabulary 97, the tests' VOCAB)."""

import pytest
import torch
from effrepro.specdec import TargetAdapter
from effrepro.testing import tiny_llama


@pytest.fixture(scope="module")
def target():
    return TargetAdapter(tiny_llama(vocab=97, hidden=64, dtype=torch.float32), max_length=256)
