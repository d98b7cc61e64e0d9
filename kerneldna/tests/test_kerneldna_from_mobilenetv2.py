"""``kerneldna convert --arch mobilenetv2_100``: a torchvision MobileNetV2 state dict -> KernelDNA MobileNetV2 weights
(the official sharing clusters, same depth), then fine-tuned with ``train --set init=...``."""

import json

import pytest
import torch
import torchvision
from effrepro.errors import UsageError
from effrepro.train import load_checkpoint, save_checkpoint
from kerneldna.cli import main
from kerneldna.convert import from_mobilenetv2, from_pretrained, mobilenetv2_module_map
from kerneldna.kerneldna import fold_model
from kerneldna.models import build_model

# the children of the four clusters (features 5; 8, 9; 12; 15) drop their two pointwise kernels: they share the
# parent's (features 6, 10, 13, 16)
DROPPED = {f"features.{i}.conv.{layer}.weight" for i in (5, 8, 9, 12, 15) for layer in ("0.0", "2")}


def _source_key(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    return f"{mobilenetv2_module_map().get(module, module)}.{leaf}"


@pytest.mark.parametrize(("width", "arch"), [(1.0, "mobilenetv2_100"), (0.5, "mobilenetv2_050")])
def test_every_static_weight_is_its_source_weight(width, arch):
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2(num_classes=10, width_mult=width)
    with torch.no_grad():  # non-default BatchNorm statistics, so a weight taken from the wrong layer shows
        for name, buf in source.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    source = source.state_dict()
    model = from_pretrained(source, arch)
    own = model.state_dict()
    assert set(own) == set(build_model(arch, "kerneldna", num_classes=10).state_dict())
    taken = {key: _source_key(key) for key in own if _source_key(key) in source}
    for key, src in taken.items():
        assert torch.equal(own[key], source[src]), (key, src)
    assert set(source) - set(taken.values()) == DROPPED  # every other source weight is used, each once
    assert len(set(taken.values())) == len(taken)
    new = {key for key in own if key not in taken}  # only the adapters start fresh: static attentions and SE gates
    assert new and all("static_filter_attn" in key or ".se1." in key or ".se3." in key for key in new)
    assert torch.equal(model.features[6].last_block.layers.pw1.weight, source["features.6.conv.0.0.weight"])
    assert torch.equal(model.features[10].blocks[1].dwconv.weight, source["features.9.conv.1.0.weight"])


def test_converted_model_runs_and_folds_to_the_same_outputs():
    torch.manual_seed(0)
    model = from_mobilenetv2(torchvision.models.mobilenet_v2(num_classes=7).state_dict()).eval()
    with torch.no_grad():  # trained-looking adapters: the folded child kernels differ from their parents
        for name, p in model.named_parameters():
            if "static" in name:
                p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(2, 3, 64, 64)
        unfolded = model(x)
        folded = fold_model(model)(x)
    assert unfolded.shape == (2, 7) and torch.isfinite(unfolded).all()
    assert torch.equal(folded, unfolded)


def test_convert_cli_then_fine_tune(tmp_path, capsys):
    source = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)
    source.features[0][0] = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=False)  # grey-scale inputs, as the miniature's
    save_checkpoint(tmp_path / "mnv2.pth", source.state_dict())
    with pytest.raises(SystemExit) as exc:
        main(["convert", "--source", str(tmp_path / "mnv2.pth"), "--arch", "mobilenetv2_050",
              "--out", str(tmp_path / "kdna.pt")])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert json.loads(out.out)["classes"] == 10
    converted = load_checkpoint(tmp_path / "kdna.pt", expect="state-dict")
    assert torch.equal(converted["features.13.last_block.layers.pw2.weight"],
                       source.state_dict()["features.13.conv.2.weight"])
    with pytest.raises(SystemExit) as exc:
        main(["train", "--arch", "mobilenetv2_050", "--out", str(tmp_path / "ft"), "--set", "dataset=mnist100",
              "--set", "epochs=1", "--set", "batch_size=8", "--set", "train_size=16", "--set", "test_size=8",
              "--set", "workers=0", "--set", "progress=false", "--set", f"init={tmp_path / 'kdna.pt'}"])
    assert exc.value.code == 0, capsys.readouterr().err
    trained = load_checkpoint(tmp_path / "ft" / "last.pt")["model"]
    assert trained["classifier.1.weight"].shape[0] == 100  # the new task's classifier
    assert not torch.equal(trained["features.13.last_block.layers.pw2.weight"],
                           converted["features.13.last_block.layers.pw2.weight"])  # fine-tuned from the source


def test_bad_sources_are_usage_errors():
    with pytest.raises(UsageError, match="MobileNetV2 0.5x"):
        from_pretrained(torchvision.models.mobilenet_v2().state_dict(), "mobilenetv2_050")
    with pytest.raises(UsageError, match="not a torchvision MobileNetV2"):
        from_mobilenetv2(torchvision.models.resnet18().state_dict())
    with pytest.raises(UsageError, match="--arch must be one of"):
        from_pretrained({}, "mobilenetv3")
