"""The full-scale grid driver end to end on tiny local data (CIFAR-100 python layout, ImageNet folder layout), in
one process and with 2-process gloo torchrun jobs: teachers found or trained (and said so), MLKD / CRLD arms
with and without DeepKD and the mask, claims with the published baselines beside ours, one-line errors."""

import os
import pickle
import sys

import numpy as np
import pytest
import torch
from deepkd.cli import main, run
from deepkd.grid import PAIRS, arm_config, base_config
from effrepro.errors import UsageError
from effrepro.report import read_claims
from effrepro.testing import tiny_imagenet_folder

FAST = ["solver.epochs=1", "data.batch_size=4", "data.test_batch_size=8", "data.workers=0", "device=cpu"]
# torchvision checks the MD5 sums of the real CIFAR-100 files; the tiny copy made here passes only with this patch
PATCH = ("import torchvision.datasets.cifar as c\n"
         "c.CIFAR10._check_integrity = lambda self: True\nc.check_integrity = lambda *a, **k: True\n")


def _cifar(root, n_train=16, n_test=8):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": labels,
                         "coarse_labels": [x // 5 for x in labels]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, f)
    return root


@pytest.fixture
def cifar_ok(monkeypatch, tmp_path):
    import torchvision.datasets.cifar as c

    monkeypatch.setattr(c.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(c, "check_integrity", lambda *a, **k: True)
    site = tmp_path / "site"  # the same patch for the torchrun workers, through sitecustomize
    site.mkdir()
    (site / "sitecustomize.py").write_text(PATCH)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    return _cifar(tmp_path / "cifar")


def _ids(document):
    return {c["id"] for c in document["claims"]}, {f["id"]: f for f in document["facts"]}


def _reproduce(out, data, *sets, extra=()):
    argv = ["reproduce", "--scale", "full", "--out", str(out), "--data", str(data), "--threads", "1"]
    for item in sets:
        argv += ["--set", item]
    return run(argv + [*FAST, *extra])


@pytest.mark.slow
def test_cifar_grid_in_one_process_trains_the_teacher_and_writes_claims(tmp_path, cifar_ok, capsys):
    out = tmp_path / "out"
    assert _reproduce(out, cifar_ok, "pairs=[resnet56_resnet20]", "bases=[mlkd,crld]") == 0
    printed = capsys.readouterr().out
    assert "teacher resnet56: no checkpoint" in printed and "training it with cross-entropy" in printed
    claims, facts = _ids(read_claims(out / "claims.json"))
    pair = "cifar100_resnet56_resnet20"
    gains = ("deepkd", "dtm", "dtm_over_base")
    assert claims == {f"gain_{pair}_{b}_{g}" for b in ("mlkd", "crld") for g in gains} | {
        f"gain_cifar100_{b}_{g}" for b in ("mlkd", "crld") for g in gains}
    document = read_claims(out / "claims.json")
    for claim in document["claims"]:  # one seed, one pair: n = 1, no interval, never a verdict
        assert claim["n"] == 1 and claim["verdict"] == "inconclusive", claim
    by_id = {c["id"]: c for c in document["claims"]}
    assert by_id[f"gain_{pair}_mlkd_deepkd"]["details"]["paper_baseline"] == 72.19  # MLKD's published number
    assert by_id[f"gain_{pair}_mlkd_deepkd"]["details"]["paper_arm"] is None  # the paper's +DeepKD: not here
    mlkd = facts[f"top1_{pair}_mlkd_base"]
    assert mlkd["paper"] == 72.19 and 0 <= mlkd["value"] <= 100
    assert facts[f"top1_{pair}_crld_base"]["paper"] is None and facts[f"top1_{pair}_mlkd_dtm"]["paper"] is None
    teacher = facts["teacher_cifar100_resnet56"]
    assert teacher["paper"] == 72.34 and teacher["details"]["trained_here"] is True
    for arm in ("mlkd_base", "mlkd_deepkd", "mlkd_dtm", "crld_base", "crld_deepkd", "crld_dtm"):
        assert (out / "runs" / f"{pair}_{arm}_seed0" / "student.pt").is_file()
    report = (out / "report.md").read_text()
    assert "resnet56 -> resnet20" in report and "72.19" in report
    assert _reproduce(out, cifar_ok, "pairs=[resnet56_resnet20]", "bases=[mlkd,crld]") == 0
    assert capsys.readouterr().out.count("reusing") == 1 + 6  # the teacher and every arm


def _torchvision_teacher(tmp_path):
    """A ResNet34 state dict under the torchvision file name, as a user places the real one."""
    from deepkd.models import build_model

    teachers = tmp_path / "teachers"
    teachers.mkdir()
    torch.save(build_model("ResNet34", 1000, "imagenet").state_dict(), teachers / "resnet34-333f7ec4.pth")
    return teachers


@pytest.mark.slow
def test_imagenet_grid_in_one_process_uses_a_found_teacher(tmp_path):
    data = tiny_imagenet_folder(tmp_path / "imagenet")
    teachers = _torchvision_teacher(tmp_path)
    out = tmp_path / "out"
    assert _reproduce(out, data, "dataset=imagenet", "pairs=[r34_r18]", "bases=[mlkd,crld]",
                      f"teachers={teachers}", "variants=[base,deepkd]", extra=["data.image_size=32"]) == 0
    claims, facts = _ids(read_claims(out / "claims.json"))
    assert "gain_imagenet_r34_r18_mlkd_deepkd" in claims and "gain_imagenet_r34_r18_crld_dtm" not in claims
    assert facts["top1_imagenet_r34_r18_mlkd_base"]["paper"] == 71.90
    assert facts["teacher_imagenet_ResNet34"]["details"]["trained_here"] is False


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
def test_grid_with_two_process_gloo_torchrun_jobs(tmp_path, cifar_ok, dataset):
    if dataset == "cifar100":  # the teacher is trained by a torchrun job too
        data, sets, extra = cifar_ok, ["pairs=[resnet56_resnet20]"], []
    else:
        data, sets, extra = tiny_imagenet_folder(tmp_path / "imagenet"), ["dataset=imagenet", "pairs=[r34_r18]",
                                                                f"teachers={_torchvision_teacher(tmp_path)}"], \
            ["data.image_size=32"]
    out = tmp_path / "out"
    assert _reproduce(out, data, *sets, "bases=[mlkd,crld]", "variants=[base,dtm]", "nproc=2", extra=extra) == 0
    claims, facts = _ids(read_claims(out / "claims.json"))
    pair = "cifar100_resnet56_resnet20" if dataset == "cifar100" else "imagenet_r34_r18"
    assert {f"top1_{pair}_{b}_{v}" for b in ("mlkd", "crld") for v in ("base", "dtm")} <= set(facts)
    assert claims == {f"gain_{pair}_{b}_dtm_over_base" for b in ("mlkd", "crld")} | {
        f"gain_{pair.split('_')[0]}_{b}_dtm_over_base" for b in ("mlkd", "crld")}
    arm = out / "runs" / f"{pair}_crld_dtm_seed0"
    assert (arm / "config.yaml").is_file() and (arm / "student.pt").is_file()  # a torchrun job wrote them
    assert "mode: dynamic" in (arm / "config.yaml").read_text()
    teacher = next(f for k, f in facts.items() if k.startswith("teacher_"))
    assert teacher["details"]["trained_here"] is (dataset == "cifar100")


def test_arm_configs_share_the_loss_and_differ_only_in_the_optimizer():
    pair = PAIRS["cifar100"]["resnet32x4_ShuffleV1"]
    base, deep = arm_config("cifar100", pair, "crld", "base"), arm_config("cifar100", pair, "crld", "dtm")
    assert base["distiller"] == deep["distiller"] and base["solver"]["lr"] == 0.01  # light student
    assert (base["solver"]["method"], deep["solver"]["method"], deep["mask"]["mode"]) == ("sgd", "deepkd", "dynamic")
    assert base_config("cifar100", pair, "dkd")["distiller"]["beta"] == 8.0  # the pair's released DKD config
    kd = base_config("cifar100", PAIRS["cifar100"]["vgg13_vgg8"], "kd")["distiller"]
    assert (kd["ce_weight"], kd["kd_weight"]) == (0.1, 0.9)
    assert base_config("imagenet", PAIRS["imagenet"]["r50_mv1"], "mlkd")["solver"]["lr"] == 0.1


def test_missing_or_wrong_data_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    with pytest.raises(UsageError, match="ImageNet folder .* not found"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "a"), "--data", str(tmp_path),
             "--set", "dataset=imagenet"])
    with pytest.raises(UsageError, match="imagenet needs a data path"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "a"), "--set", "dataset=imagenet"])
    with pytest.raises(UsageError, match="unknown cifar100 pair"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "a"), "--set", "pairs=[r34_r18]"])
    with pytest.raises(UsageError, match="compare nothing"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "a"), "--set", "variants=[base,dot]"])
    with pytest.raises(UsageError, match="choose one or more of kd, dkd, mlkd, crld"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "a"), "--set", "bases=[fitnet]"])
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--scale", "full", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "none")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CIFAR-100 not found under")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="run the full driver as one process"):
        run(["reproduce", "--scale", "full", "--out", str(tmp_path / "c"), "--data", str(tmp_path)])


def test_every_declared_full_claim_and_fact_is_unique_and_names_its_pair():
    from deepkd.reproduce import CLAIMS, FACTS

    ids = [c.id for c in CLAIMS] + [f.id for f in FACTS]
    assert len(ids) == len(set(ids))
    for dataset, table in PAIRS.items():
        for name in table:
            for base in ("kd", "dkd", "mlkd", "crld"):
                assert f"gain_{dataset}_{name}_{base}_deepkd" in ids and f"top1_{dataset}_{name}_{base}_base" in ids
    assert sys.modules["deepkd.reproduce"].FULL.seeds == (0,)


@pytest.mark.slow
def test_seeds_give_the_per_pair_gain_a_paired_interval(tmp_path, cifar_ok):
    out = tmp_path / "out"
    assert _reproduce(out, cifar_ok, "pairs=[resnet56_resnet20]", "bases=[kd]", "variants=[base,deepkd]",
                      extra=["--seeds", "2"]) == 0
    claims = {c["id"]: c for c in read_claims(out / "claims.json")["claims"]}
    gain = claims["gain_cifar100_resnet56_resnet20_kd_deepkd"]
    assert gain["n"] == 2 and None not in gain["ci"] and gain["details"]["seeds"] == [0, 1]
    assert gain["ci"][0] <= gain["measured"] <= gain["ci"][1]
    assert claims["gain_cifar100_kd_deepkd"]["n"] == 1  # pooled over pairs: one pair run
    fact = {f["id"]: f for f in read_claims(out / "claims.json")["facts"]}["top1_cifar100_resnet56_resnet20_kd_base"]
    assert len(fact["details"]["best_top1"]) == 2 and fact["paper"] == 70.66
