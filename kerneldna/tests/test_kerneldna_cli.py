"""The ``kerneldna`` command: recipes, bench, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from effrepro.config import load_config
from kerneldna.cli import COMMON, RECIPES, main, recipe_config
from kerneldna.train import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("arch", sorted(RECIPES))
def test_yaml_recipes_equal_the_built_in_ones(arch):
    from_yaml = load_config(CONFIGS / f"{arch}_imagenet.yaml", TrainConfig)
    built_in = recipe_config(arch, [f"out={from_yaml.out}", "workers=8"])
    assert from_yaml == built_in
    assert {k: getattr(from_yaml, k) for k in COMMON} == COMMON


@pytest.mark.parametrize("argv,message", [
    (["bench", "--arch", "vgg16"], "unknown arch 'vgg16'"),
    (["bench", "--variants", "kerneldna"], "must include baseline"),
    (["bench", "--batch-sizes", "1,x"], "comma-separated integers"),
    (["train", "--config", "missing.yaml"], "config file not found"),
    (["train", "--arch", "resnet18", "lrr=0.1"], "unknown config key 'lrr'"),
    (["train", "--arch", "vgg"], "no official recipe"),
    (["train", "--arch", "resnet18", "epochs=1"], "needs a path"),
    (["eval", "missing.pt"], "checkpoint not found"),
    (["reproduce", "--scale", "full"], "pass --data"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("KERNELDNA_DATA", raising=False)
    code, err = _exit_code(argv, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_bench_runs_and_writes_ratios(tmp_path, capsys):
    code, _ = _exit_code(["bench", "--arch", "mini", "--variants", "baseline,kerneldna,condconv",
                          "--batch-sizes", "2", "--image-size", "16", "--repeats", "1", "--warmup", "0",
                          "--out", str(tmp_path)], capsys)
    assert code == 0
    result = json.loads((tmp_path / "bench_mini.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"baseline", "kerneldna", "condconv"} and rows["baseline"]["throughput_vs_baseline"] == 1
    assert rows["kerneldna"]["params"] < rows["baseline"]["params"] < rows["condconv"]["params"]
