import json

import pytest
from effrepro.errors import UsageError
from effrepro.report import validate_claims
from gumiho.cli import run


@pytest.mark.slow
def test_reproduce_tiny_writes_valid_claims(tmp_path):
    assert run(["reproduce", "--scale", "smoke", "--tiny", "--threads", "2", "--out", str(tmp_path)]) == 0
    claims = json.loads((tmp_path / "claims.json").read_text())
    validate_claims(claims)
    ids = {c["id"] for c in claims}
    assert {"tau_ratio_vs_eagle2", "lossless_fta_off", "fta_outputs_identical", "serial_passes_gumiho",
            "compat_fix_tau"} <= ids  # --tiny runs the optional decoders too
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {"gumiho-official", "medusa-chain", "eagle2-chain", "gumiho-chain"} <= set(summary["summary"])
    lossless = next(c for c in claims if c["id"] == "lossless_fta_off")
    assert lossless["measured"] == 0 and lossless["holds"]
    assert (tmp_path / "report.md").is_file() and (tmp_path / "acceptance_and_tau.png").is_file()


def test_cli_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="key=value"):
        run(["train", "--out", str(tmp_path), "epochs"])
    with pytest.raises(UsageError, match="unknown variant"):
        run(["train", "--out", str(tmp_path), "--variant", "hydra"])
    with pytest.raises(UsageError, match="--target"):
        run(["reproduce", "--scale", "full"])
    with pytest.raises(UsageError, match="not found"):
        run(["eval", "--head", str(tmp_path / "missing.pt")])


def test_device_and_dtype_options():
    from gumiho.cli import _device, build_parser
    from gumiho.train import load_target_on

    parse = build_parser().parse_args
    assert _device(parse(["reproduce", "--scale", "smoke"])) == "cpu"  # the miniature is a CPU experiment
    assert _device(parse(["reproduce", "--scale", "smoke", "--device", "cuda:1"])) == "cuda:1"
    assert _device(parse(["train", "--out", "x"])) in ("cpu", "cuda")
    assert parse(["eval", "--head", "h.pt", "--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(UsageError, match="dtype"):
        load_target_on("smollm2-135m", "cpu", "int8")


def test_extra_decoders_are_checked():
    from gumiho.reproduce import _config

    assert _config(None, [], tiny=False).extra_decoders == []  # the smoke budget leaves them out
    with pytest.raises(UsageError, match="extra_decoders"):
        _config(None, ["extra_decoders=[hydra-chain]"], tiny=False)
