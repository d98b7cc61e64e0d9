"""The command line: the ImageNet-folder train -> resume -> eval (training and deploy form) path on a tiny
generated folder, the recipes, and one-line errors (exit 2) for bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from effrepro.config import config_to_dict
from partialnet.cli import main
from partialnet.train import RECIPES, TrainConfig, WarmupCosine, load_train_config, recipe

CONFIGS = Path(__file__).parents[1] / "configs"
TINY_MODEL = ["model_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], feature_dim: 16}"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    code, _, err = _run(argv, capsys)
    return code, err


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """A 2-class ImageNet-layout folder of real JPEG files (random pixels)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 8), ("val", 4)):
        for label in ("n01", "n02"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 255, (40, 48, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.JPEG")
    return root


def test_recipe_yamls_match_the_built_in_recipes():
    for variant in RECIPES:
        from_file = load_train_config(CONFIGS / f"imagenet_{variant}.yaml")
        built_in = load_train_config(recipe(f"partialnet_{variant}"))
        assert config_to_dict(from_file) == config_to_dict(built_in)
    assert load_train_config(CONFIGS / "imagenet_l.yaml").clip_grad == 0.01


def test_warmup_cosine_schedule_shape():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, lr=1.0, lr_base_batch=4096, warmup_lr=0.0, min_lr=0.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, lrs = WarmupCosine(opt, cfg, steps_per_epoch=5), []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.1


def test_train_resume_and_eval_on_an_imagenet_folder(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "partialnet_t0", "--data", str(image_folder), "--out", str(out), "epochs=1",
            "batch_size=4", "eval_batch_size=4", "workers=0", "warmup_epochs=0", "augment.image_size=32",
            "augment.multi_scale=null", "ema_decay=0.9", *TINY_MODEL]
    code, _ = _exit_code(args, capsys)
    assert code == 0 and (out / "last.pt").is_file()
    code, _ = _exit_code([*args[:-len(TINY_MODEL) - 1], "epochs=2", *TINY_MODEL], capsys)  # config differs: refused
    assert code == 2
    code, _ = _exit_code(args, capsys)  # same config: resumes, nothing left to do
    assert code == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["ema"] is not None
    results = {}
    for flags in ([], ["--deploy"], ["--ema"]):
        code, stdout, _ = _run(["eval", "--model", "partialnet_t0", "--data", str(image_folder), "--checkpoint",
                                str(out / "last.pt"), "--img-size", "32", "--workers", "0", *flags], capsys)
        assert code == 0
        results[tuple(flags)] = json.loads(stdout)
    assert results[()]["images"] == 8 and 0 <= results[()]["top1"] <= 100
    assert results[()]["top1"] == results[("--deploy",)]["top1"]
    assert results[()]["loss"] == pytest.approx(results[("--deploy",)]["loss"], rel=1e-4)


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "--variants", "t9"], "unknown variant"),
    (["bench", "--variants", "t0", "--img-size", "100"], "not a positive multiple"),
    (["train", "--model", "resnet50"], "no recipe"),
    (["train", "--model", "partialnet_t0"], "needs a path"),
    (["train", "--model", "partialnet_t0", "--data", "/nonexistent/imagenet"], "not found"),
    (["train", "--model", "partialnet_t0", "bogus_key=1"], "unknown config key"),
    (["reproduce", "--scale", "full"], "--data"),
    (["eval", "--model", "partialnet_t0", "--data", "/nonexistent"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code, err = _exit_code(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_checkpoint_of_another_variant_or_corrupt_file(image_folder, tmp_path, capsys):
    ckpt = tmp_path / "t1.pth"
    import timm

    torch.save(timm.create_model("partialnet_t1", num_classes=2).state_dict(), ckpt)
    code, err = _exit_code(["eval", "--model", "partialnet_t0", "--data", str(image_folder), "--checkpoint",
                            str(ckpt), "--img-size", "32", "--workers", "0"], capsys)
    assert code == 2 and "does not match the model" in err
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    code, err = _exit_code(["eval", "--model", "partialnet_t0", "--data", str(image_folder), "--checkpoint",
                            str(bad), "--img-size", "32"], capsys)
    assert code == 2 and "corrupt" in err


def test_trained_checkpoint_knows_its_model(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    _exit_code(["train", "--model", "fasternet_t0", "--data", str(image_folder), "--out", str(out), "epochs=1",
                "batch_size=4", "workers=0", "augment.image_size=32", "augment.multi_scale=null",
                "model_kwargs={embed_dim: 8, depths: [1, 1, 1, 1]}"], capsys)
    code, err = _exit_code(["eval", "--model", "partialnet_t0", "--data", str(image_folder), "--checkpoint",
                            str(out / "last.pt"), "--img-size", "32"], capsys)
    assert code == 2 and "trained as fasternet_t0" in err
    assert yaml.safe_load("[1, 2]") == [1, 2]


def test_multi_scale_schedule_switches_the_training_transform():
    from partialnet.data import MultiScaleSampler, parse_multi_scale
    from torch.utils.data import SequentialSampler

    class Data:
        transform = None

    data = Data()
    sampler = MultiScaleSampler(SequentialSampler(range(3)), data, "early", "late", switch_epoch=2)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen.append(data.transform)
    assert seen == ["early", "early", "late", "late"] and list(sampler) == [0, 1, 2]
    assert parse_multi_scale("192_280") == parse_multi_scale([192, 280]) == (192, 280)
    assert parse_multi_scale(None) is None
    from effrepro.errors import UsageError

    with pytest.raises(UsageError, match="quoted"):
        parse_multi_scale(192280)  # what unquoted 192_280 becomes in YAML


def test_training_with_dpconv_reports_the_learnt_splits(image_folder, tmp_path):
    from partialnet.train import train

    cfg = load_train_config(recipe("partialnet_t0"), [
        f"data={image_folder}", f"out_dir={tmp_path / 'dp'}", "epochs=1", "batch_size=4", "workers=0",
        "augment.image_size=32", "augment.multi_scale=null", "dpconv_budget_div=8",
        "model_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], feature_dim: 16, dynamic_split: true}"])
    result = train(cfg, progress=False)
    splits = result["final"]["dpconv_splits"]
    assert [row["dim"] for row in splits] == [8, 16, 32, 64]
    assert all(row["dim"] == row["dim_conv"] * row["divisor"] for row in splits)


def test_epoch_seeded_order_is_shared_across_models_and_resumes():
    from partialnet.data import EpochSeededSampler

    a, b = EpochSeededSampler(10, seed=3), EpochSeededSampler(10, seed=3)
    torch.rand(5)  # a model's initialisation consuming the global RNG changes nothing
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b) and list(a) == list(a)
