import pytest
import torch
from effrepro.errors import UsageError
from effrepro.train import Trainer, load_checkpoint, load_state_dict_checked, save_checkpoint, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def test_save_is_atomic_when_the_write_crashes(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})

    def crash(obj, handle):
        handle.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no temporary left behind


def test_corrupt_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "ok.pt", {"model": {}})
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(UsageError, match="lacks config"):
        load_checkpoint(tmp_path / "ok.pt", required=("model", "config"))


def test_state_dict_mismatch_is_one_clear_error():
    model = nn.Linear(3, 2)
    with pytest.raises(UsageError, match="shape mismatch at weight"):
        load_state_dict_checked(model, nn.Linear(4, 2).state_dict())
    with pytest.raises(UsageError, match="missing 1 keys"):
        load_state_dict_checked(model, {"weight": torch.zeros(2, 3)})


def _make(out_dir, epochs, config=None):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 8)
    y = torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)

    def loss_fn(m, batch):
        xb, yb = batch
        return {"loss": nn.functional.cross_entropy(m(xb), yb)}

    def eval_fn(m):
        return {"loss": float(nn.functional.cross_entropy(m(x), y))}

    return Trainer(model, opt, loader, loss_fn, epochs=epochs, out_dir=out_dir, scheduler=sched, grad_clip=1.0,
                   ema_decay=0.9, eval_fn=eval_fn, progress=False, config=config or {"lr": 0.1})


def test_resume_equals_uninterrupted(tmp_path):
    straight = _make(tmp_path / "a", epochs=4)
    result_a = straight.fit()
    first = _make(tmp_path / "b", epochs=2)
    first.fit()
    resumed = _make(tmp_path / "b", epochs=4)  # a new process would build exactly this
    assert resumed.start_epoch == 2
    result_b = resumed.fit()
    for pa, pb in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for pa, pb in zip(straight.eval_model.parameters(), resumed.eval_model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert result_a["history"] == result_b["history"]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


def test_resume_refuses_a_different_config(tmp_path):
    _make(tmp_path, epochs=1).fit()
    with pytest.raises(UsageError, match="different config"):
        _make(tmp_path, epochs=2, config={"lr": 0.2})


def test_custom_step_fn_and_nonfinite_loss(tmp_path):
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [torch.ones(4, 2)] * 3
    seen = []

    def step_fn(m, batch, optimizer):
        seen.append(batch.shape)
        return {"loss": 1.0}

    Trainer(model, opt, loader, step_fn=step_fn, epochs=1, progress=False).fit()
    assert len(seen) == 3

    def nan_loss(m, batch):
        return {"loss": m(batch).sum() * float("nan")}

    with pytest.raises(FloatingPointError):
        Trainer(model, opt, loader, nan_loss, epochs=1, progress=False).fit()
