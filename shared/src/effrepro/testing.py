"""Helpers for the projects' tests.

* security: a crafted checkpoint whose unpickling would create a marker file, and the check that a command refused
  it the way every command refuses bad input (exit 2, one ``error:`` line);
* a tiny random Llama (the speculative-decoding tests of effrepro.specdec, jakiro, gumiho);
* a toy MLP with three losses of one forward pass (the multi-buffer momentum tests of effrepro.optim and deepkd);
* export checks: an exported program (and its saved copy) or an ONNX session computes what the eager model computes
  (the deployed PartialNet and the folded KernelDNA);
* a tiny ImageNet folder of random images (the full-scale drivers' data tests of deepkd and double_rounding).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


class Payload:
    """Unpickled without restrictions, this runs ``touch <marker>`` (``how="system"``) or writes it with
    ``exec`` (``how="exec"``): what a malicious checkpoint would do, made harmless and observable."""

    def __init__(self, marker: str | os.PathLike, how: str = "system") -> None:
        self.marker, self.how = str(marker), how

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        if self.how == "exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return os.system, (f"touch {self.marker}",)


def write_crafted(path: str | os.PathLike, marker: str | os.PathLike, layout: str = "zip", how: str = "system",
                  wrap: Callable[[Payload], Any] | None = None) -> Path:
    """Write a checkpoint that creates ``marker`` when loaded with a full unpickler.

    ``layout``: ``zip`` (torch's format), ``legacy`` (torch's pre-1.6 format) or ``pickle`` (a bare pickle).
    ``wrap`` builds the top-level object around the payload; by default a plausible checkpoint with the payload
    as its config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = Payload(marker, how)
    obj = wrap(payload) if wrap else {"model": {"w": torch.zeros(2)}, "config": payload}
    if layout == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=layout == "zip")
    return path


def exit_of(main: Callable[[list[str]], Any], argv: list[str], capsys: Any) -> tuple[int, str, str]:
    """Run a console script's ``main`` (which exits) in-process: ``(exit code, stdout, stderr)``."""
    try:
        main(argv)
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


def assert_refused(code: int, err: str, marker: str | os.PathLike, match: str = "refusing to load") -> None:
    """Exit code 2, exactly one ``error:`` line on stderr (containing ``match``), no traceback, and the payload's
    marker file does not exist."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, f"exit code {code}; stderr: {err[-2000:]}"
    assert len(errors) == 1 and match in errors[0], err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert not Path(marker).exists(), "the checkpoint's payload ran"


def tiny_llama(vocab: int = 97, hidden: int = 64, seed: int = 0, layers: int = 2,
               dtype: torch.dtype = torch.float64) -> Any:
    """A seeded 2-layer Llama (4 heads, 2 KV heads; float64 by default) for equivalence tests of the speculative
    engine and its heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=512, rms_norm_eps=1e-6)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).to(dtype).eval()


def toy_mlp(dtype: torch.dtype = torch.float64, bn: bool = False) -> torch.nn.Sequential:
    """A seeded 6 -> 12 -> 5 MLP: the student of the multi-buffer momentum tests (effrepro.optim, deepkd)."""
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Linear(6, 12)] + ([nn.BatchNorm1d(12)] if bn else []) + [nn.Tanh(), nn.Linear(12, 5)]
    return nn.Sequential(*layers).to(dtype)


def three_losses(model: torch.nn.Module, step: int, dtype: torch.dtype = torch.float64
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Three different scalar losses of the same logits (stand-ins for DeepKD's TOG / TCG / NCG) at ``step``."""
    from torch.nn import functional as F

    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(16, 6, generator=gen, dtype=dtype)
    y = torch.randint(0, 5, (16,), generator=gen)
    target = torch.randn(16, 5, generator=gen, dtype=dtype).softmax(-1)
    logits = model(x)
    return {
        "tog": F.cross_entropy(logits, y),
        "tcg": 0.7 * F.kl_div(logits.log_softmax(-1), target, reduction="batchmean"),
        "ncg": 2.0 * (logits ** 2).mean(),
    }, logits


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest absolute difference between corresponding parameters of two models."""
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def assert_export_matches(model: torch.nn.Module, x: torch.Tensor, path: Path, atol: float = 1e-6) -> None:
    """``effrepro.export.export_program`` of ``model`` computes ``model(x)``, before and after a save/load."""
    from effrepro.export import export_program

    with torch.no_grad():
        expected = model(x)
    program = export_program(model, x, path)
    torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=atol)
    torch.testing.assert_close(torch.export.load(str(path)).module()(x), expected, rtol=0, atol=atol)


def assert_onnx_matches(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:  # pragma: no cover - onnx
    """The ONNX export of ``model`` run by onnxruntime computes ``model(x)`` (needs onnx, onnxscript, onnxruntime)."""
    import onnxruntime

    from effrepro.export import export_onnx

    with torch.no_grad():
        expected = model(x)
    session = onnxruntime.InferenceSession(str(export_onnx(model, x, path)))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # exporting leaves the eager model as it was
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def tiny_imagenet_folder(root: Path, per_class: tuple[int, int] = (4, 2), suffix: str = "JPEG") -> Path:
    """``root/{train,val}/<wnid>/<i>.<suffix>``: two real ImageNet class folders with ``per_class`` random 40x48
    RGB images per split (deterministic), the layout ``effrepro.data.imagenet_folder`` reads."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in zip(("train", "val"), per_class, strict=True):
        for wnid in ("n01440764", "n01443537"):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.{suffix}")
    return root
