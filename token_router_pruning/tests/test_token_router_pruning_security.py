"""A plan file is data: ``token_router_pruning eval | bench --plan`` and the plan loader refuse a crafted plan
(whose unpickling would create a marker file) and files of another kind with one clear error (exit 2 from the
command line). The commands load SmolLM2 first, hence ``slow``."""

import pytest
import torch
from effrepro.errors import UsageError
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint
from token_router_pruning.cli import main
from token_router_pruning.planfile import load_plan


def test_load_plan_refuses_crafted_and_wrong_kind_files(tmp_path):
    marker = tmp_path / "pwned"
    for layout in ("zip", "legacy", "pickle"):
        with pytest.raises(UsageError, match="refusing to load"):
            load_plan(write_crafted(tmp_path / f"{layout}.pt", marker, layout), 4, torch.float32)
    head = save_checkpoint(tmp_path / "head.pt", {"method": "EagleHead", "config": {}, "state_dict": {}})
    with pytest.raises(UsageError, match="is a trained draft head.*expected an FTP plan file"):
        load_plan(head, 4, torch.float32)
    bad = save_checkpoint(tmp_path / "bad.pt", {"kind": "ftp_plan", "schedule": [0.1] * 4, "scope": "block",
                                                "router": {"state": {}, "options": {"no_such_option": 1}}})
    with pytest.raises(UsageError, match="router options do not fit"):
        load_plan(bad, 4, torch.float32)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["eval", "--limit", "1"], ["bench", "--repeats", "1", "--seq-len", "16"]])
def test_plan_option_refuses_a_crafted_plan(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "plan.pt", marker)
    code, _, err = exit_of(main, [*command, "--plan", str(evil), *(["--out", str(tmp_path / "o")]
                                                                    if command[0] == "eval" else [])], capsys)
    assert_refused(code, err, marker)
