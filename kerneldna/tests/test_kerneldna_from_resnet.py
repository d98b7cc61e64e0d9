"""``kerneldna convert``: a torchvision / timm ResNet state dict -> KernelDNA ResNet weights in the official deeper
structure (added blocks start as identities), then fine-tuned with ``train --set init=...``."""

import json

import pytest
import timm
import torch
import torchvision
from effrepro.errors import UsageError
from effrepro.train import load_checkpoint, save_checkpoint
from kerneldna.cli import main
from kerneldna.convert import from_resnet, resnet_module_map
from kerneldna.models import build_model


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_resnet18_weights_go_to_their_roles():
    source = torchvision.models.resnet18(num_classes=10).state_dict()
    model = from_resnet(source, 18)
    assert set(model.state_dict()) == set(build_model("resnet18", "kerneldna", num_classes=10).state_dict())
    assert torch.equal(model.layer1[1].conv2.weight, source["layer1.1.conv2.weight"])  # unchanged stages
    for stage in ("layer3", "layer4"):
        assert torch.equal(model.get_submodule(stage).conv1.weight, source[f"{stage}.0.conv1.weight"])
        assert torch.equal(model.get_submodule(stage).conv2.weight, source[f"{stage}.0.conv2.weight"])
        assert torch.equal(model.get_submodule(stage).conv3.weight, source[f"{stage}.1.conv2.weight"])
        assert torch.equal(model.get_submodule(stage).downsample[1].running_var,
                           source[f"{stage}.0.downsample.1.running_var"])
        added = model.get_submodule(stage).bn2  # the added block's last BN: zero, so the block adds nothing
        assert added.weight.abs().sum() == 0 and added.bias.abs().sum() == 0
    assert torch.equal(model.fc.weight, source["fc.weight"])


def test_resnet50_layer3_gets_seven_blocks_the_added_one_an_identity():
    source = timm.create_model("resnet50", num_classes=7).state_dict()
    model = from_resnet(source, 50).eval()
    assert torch.equal(model.layer3.kids[2].half1.conv1.weight, source["layer3.5.conv1.weight"])
    assert torch.equal(model.layer3.parents[1].layers.conv2.weight, source["layer3.4.conv2.weight"])
    assert torch.equal(model.layer4.last_block.layers.conv3.weight, source["layer4.2.conv3.weight"])
    x = torch.relu(torch.randn(2, 1024, 5, 5))
    with torch.no_grad():
        assert torch.equal(model.layer3.parents[2](x), x)
    assert len(set(resnet_module_map(50).values())) == len(resnet_module_map(50))  # no source layer used twice


def test_convert_cli_then_fine_tune(tmp_path, capsys):
    source = torchvision.models.resnet18(num_classes=10)
    source.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # a grey-scale ResNet: the miniature's inputs
    save_checkpoint(tmp_path / "resnet18.pth", source.state_dict())
    code, out, err = _run(["convert", "--source", str(tmp_path / "resnet18.pth"), "--arch", "resnet18",
                           "--out", str(tmp_path / "kdna.pt")], capsys)
    assert code == 0, err
    assert json.loads(out)["classes"] == 10
    converted = load_checkpoint(tmp_path / "kdna.pt", expect="state-dict")
    assert torch.equal(converted["layer3.conv3.weight"], source.state_dict()["layer3.1.conv2.weight"])
    code, out, err = _run(["train", "--arch", "resnet18", "--out", str(tmp_path / "ft"), "--set", "dataset=mnist100",
                           "--set", "epochs=1", "--set", "batch_size=8", "--set", "train_size=16",
                           "--set", "test_size=8", "--set", "workers=0", "--set", "progress=false",
                           "--set", f"init={tmp_path / 'kdna.pt'}"], capsys)
    assert code == 0, err
    trained = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    assert trained["fc.weight"].shape[0] == 100  # the new task's classifier, the rest fine-tuned from the source
    assert not torch.equal(trained["layer3.conv3.weight"], converted["layer3.conv3.weight"])


def test_bad_sources_are_usage_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="ResNet-50"):
        from_resnet(torchvision.models.resnet18().state_dict(), 50)
    with pytest.raises(UsageError, match="not a torchvision/timm ResNet"):
        from_resnet({"weight": torch.zeros(2)}, 18)
    save_checkpoint(tmp_path / "r.pth", torchvision.models.resnet18().state_dict())
    code, _, err = _run(["convert", "--source", str(tmp_path / "r.pth"), "--arch", "vgg16", "--out",
                         str(tmp_path / "o.pt")], capsys)
    assert code == 2 and err.count("\n") == 1 and "resnet18, resnet50, mobilenetv2_100, mobilenetv2_050" in err


def test_another_number_of_classes_keeps_the_new_classifier_at_its_initialisation():
    source = torchvision.models.resnet18(num_classes=10).state_dict()
    model = from_resnet(source, 18, num_classes=100)
    assert model.fc.weight.shape == (100, 512)
    assert torch.equal(model.layer4.conv3.weight, source["layer4.1.conv2.weight"])


def test_convert_takes_a_trained_baseline_run_not_a_kerneldna_one(tmp_path, capsys):
    common = ["--set", "dataset=mnist100", "--set", "epochs=1", "--set", "batch_size=8", "--set", "train_size=16",
              "--set", "test_size=8", "--set", "workers=0", "--set", "progress=false"]
    for variant in ("baseline", "kerneldna"):
        code, _, err = _run(["train", "--arch", "resnet18", "--out", str(tmp_path / variant), "--set",
                             f"variant={variant}", *common], capsys)
        assert code == 0, err
    code, out, err = _run(["convert", "--source", str(tmp_path / "baseline" / "last.pt"), "--arch", "resnet18",
                           "--out", str(tmp_path / "kdna.pt")], capsys)
    assert code == 0, err
    trained = load_checkpoint(tmp_path / "baseline" / "last.pt")["model"]
    converted = load_checkpoint(tmp_path / "kdna.pt", expect="state-dict")
    assert json.loads(out)["classes"] == 100 and converted["conv1.weight"].shape[1] == 1
    assert torch.equal(converted["layer3.conv3.weight"], trained["layer3.1.conv2.weight"])
    code, _, err = _run(["convert", "--source", str(tmp_path / "kerneldna" / "last.pt"), "--arch", "resnet18",
                         "--out", str(tmp_path / "again.pt")], capsys)
    assert code == 2 and "resnet18 kerneldna run" in err and err.count("\n") == 1
