"""Cached draft heads: built once per setting, reused, and rebuilt when an entry is partial or corrupt."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from effrepro.specdec.headcache import SMOKE_HEAD_TRAIN, cached_head, check_entry, head_key


def _data(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "data" / "abc123"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"samples": 3, "tokens": 30}))
    return [folder]


class FakeTrainer:
    """Writes a head.pt like ``train_head`` and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, out: Path) -> dict:
        self.calls += 1
        torch.save({"state_dict": {"w": torch.full((4,), float(self.calls))}}, out / "head.pt")
        return {"steps": 12, "history": [{"epoch": 1, "eval_top1": 0.25, "note": "text is dropped"}]}


def test_built_once_then_reused(tmp_path: Path) -> None:
    data, train = _data(tmp_path), FakeTrainer()
    first = cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, train, root=tmp_path / "heads")
    second = cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, train, root=tmp_path / "heads")
    assert train.calls == 1 and not first.reused and second.reused
    assert second.path == first.path and second.steps == 12
    assert second.entry["history"] == [{"epoch": 1, "eval_top1": 0.25}]
    assert second.budget()["draft_vocab"] == SMOKE_HEAD_TRAIN.draft_vocab
    assert not list((tmp_path / "heads").glob(".*.partial"))  # the build folder was renamed into place


def test_setting_changes_the_key(tmp_path: Path) -> None:
    data = _data(tmp_path)
    base, _ = head_key({"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data)
    assert head_key({"kind": "eagle2"}, replace(SMOKE_HEAD_TRAIN, log_every=1), data)[0] == base  # logging only
    assert head_key({"kind": "eagle2"}, replace(SMOKE_HEAD_TRAIN, epochs=11), data)[0] != base
    assert head_key({"kind": "eagle2"}, replace(SMOKE_HEAD_TRAIN, draft_vocab=0), data)[0] != base
    assert head_key({"kind": "jakiro/jakiro"}, SMOKE_HEAD_TRAIN, data)[0] != base
    (data[0] / "meta.json").write_text(json.dumps({"samples": 4, "tokens": 30}))
    assert head_key({"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data)[0] != base


@pytest.mark.parametrize("damage", ["truncate", "no_entry", "other_key", "no_head"])
def test_partial_or_corrupt_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    data, train, root = _data(tmp_path), FakeTrainer(), tmp_path / "heads"
    built = cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, train, root=root)
    folder = built.path.parent
    if damage == "truncate":
        built.path.write_bytes(built.path.read_bytes()[:20])
    elif damage == "no_entry":
        (folder / "entry.json").unlink()
    elif damage == "other_key":
        entry = json.loads((folder / "entry.json").read_text())
        entry["key"]["train"]["epochs"] = 99
        (folder / "entry.json").write_text(json.dumps(entry))
    else:
        built.path.unlink()
    assert check_entry(folder, built.entry["key"])[0] is None
    again = cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, train, root=root)
    assert train.calls == 2 and not again.reused
    assert torch.load(again.path)["state_dict"]["w"][0] == 2.0
    assert check_entry(folder, again.entry["key"])[0] is not None


def test_interrupted_build_leaves_no_entry(tmp_path: Path) -> None:
    data, root = _data(tmp_path), tmp_path / "heads"

    def crash(out: Path) -> dict:
        torch.save({"half": True}, out / "head.pt")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, crash, root=root)
    digest, payload = head_key({"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data)
    assert check_entry(root / f"eagle2-{digest}", payload)[0] is None  # never used
    train = FakeTrainer()
    rebuilt = cached_head("eagle2", {"kind": "eagle2"}, SMOKE_HEAD_TRAIN, data, train, root=root)
    assert train.calls == 1 and not rebuilt.reused
