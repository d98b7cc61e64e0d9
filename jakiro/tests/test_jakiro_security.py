"""A head file is data: ``jakiro eval | bench --heads DIR`` and the head loader refuse a crafted ``head.pt``
(whose unpickling would create a marker file) and files of another kind with one clear error (exit 2 from the
command line). The commands load SmolLM2 first, hence ``slow``."""

import pytest
from effrepro.errors import UsageError
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint
from jakiro.cli import main
from jakiro.train import load_head


def test_load_head_refuses_crafted_and_wrong_kind_files(tmp_path):
    marker = tmp_path / "pwned"
    for layout in ("zip", "legacy", "pickle"):
        with pytest.raises(UsageError, match="refusing to load"):
            load_head(write_crafted(tmp_path / f"{layout}.pt", marker, layout), target_model=None)
    plan = save_checkpoint(tmp_path / "plan.pt", {"kind": "ftp_plan", "schedule": [], "scope": "block",
                                                  "router": None})
    with pytest.raises(UsageError, match="is an FTP plan file.*jakiro train"):
        load_head(plan, target_model=None)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["eval", "--variants", "jakiro", "--max-questions", "1"], ["bench"]])
def test_heads_option_refuses_a_crafted_head(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    for method in ("eagle2", "jakiro", "jakiro_nocepd", "jakiro_star"):
        write_crafted(tmp_path / "heads" / method / "head.pt", marker)
    code, _, err = exit_of(main, [*command, "--heads", str(tmp_path / "heads"), "--device", "cpu"], capsys)
    assert_refused(code, err, marker)
