"""A head file is data: ``gumiho eval --head / --eagle-head`` and the draft loader refuse a crafted ``head.pt``
(whose unpickling would create a marker file) and files of another kind with one clear error (exit 2 from the
command line). The commands load SmolLM2 first, hence ``slow``."""

import pytest
from effrepro.errors import UsageError
from effrepro.testing import assert_refused, exit_of, write_crafted
from effrepro.train import save_checkpoint
from gumiho.cli import CONFIGS, main
from gumiho.train import load_draft


def test_load_draft_refuses_crafted_and_wrong_kind_files(tmp_path):
    marker = tmp_path / "pwned"
    for layout in ("zip", "legacy", "pickle"):
        with pytest.raises(UsageError, match="refusing to load"):
            load_draft(write_crafted(tmp_path / f"{layout}.pt", marker, layout), model=None)
    eagle = save_checkpoint(tmp_path / "eagle.pt", {"method": "EagleHead", "config": {}, "state_dict": {}})
    with pytest.raises(UsageError, match="holds a EagleHead head, not a Gumiho draft"):
        load_draft(eagle, model=None)
    bad = save_checkpoint(tmp_path / "bad.pt", {"method": "GumihoDraft", "config": {"nope": 1}, "state_dict": {}})
    with pytest.raises(UsageError, match="unknown fields nope"):
        load_draft(bad, model=None)
    assert not marker.exists()


@pytest.mark.slow
def test_head_options_refuse_a_crafted_checkpoint(tmp_path, capsys):
    from effrepro.config import load_config
    from gumiho.config import GumihoRunConfig
    from gumiho.train import build_draft, load_target_on

    marker = tmp_path / "pwned"
    evil = write_crafted(tmp_path / "evil.pt", marker)
    code, _, err = exit_of(main, ["eval", "--head", str(evil), "--device", "cpu"], capsys)
    assert_refused(code, err, marker)
    config = load_config(CONFIGS / "smoke.yaml", GumihoRunConfig)
    model, _ = load_target_on(config.target)
    draft = build_draft(config, model)
    good = save_checkpoint(tmp_path / "head.pt", {"method": "GumihoDraft", "config": draft.config_dict(),
                                                  "state_dict": draft.trainable_state_dict()})
    code, _, err = exit_of(main, ["eval", "--head", str(good), "--eagle-head", str(evil), "--device", "cpu"], capsys)
    assert_refused(code, err, marker)
    code, _, err = exit_of(main, ["eval", "--head", str(good), "--eagle-head", str(good), "--device", "cpu"], capsys)
    assert_refused(code, err, marker, match="holds a GumihoDraft head, not an EAGLE head")
