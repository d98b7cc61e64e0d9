"""The DPConv workflow: search (every mixer a DPConv) -> per-layer splits in <out>/splits.json -> a PATConv model
built from that file (one n_div per block) -> retrained, and evaluated from its checkpoint without the file."""

import json
from pathlib import Path

import pytest
import torch
from effrepro.errors import UsageError
from partialnet.cli import main
from partialnet.eval import load_model
from partialnet.models import PartialNet, dpconv_layers
from partialnet.splits import KIND, load_splits, save_splits

TINY = "model_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], feature_dim: 16%s}"
COMMON = ["--set", "epochs=1", "--set", "batch_size=4", "--set", "workers=0", "--set", "augment.image_size=32",
          "--set", "augment.multi_scale=null"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 4), ("val", 2)):
        for label in ("n01", "n02"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 255, (36, 36, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / label / f"{i}.JPEG")
    return root


def _train(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "partialnet_t0", *argv, *COMMON])
    assert exc.value.code == 0


def _blocks(model):
    return [b.spatial_mixing for stage in model.stages for b in stage.blocks]


def test_search_writes_splits_and_retrain_builds_them(image_folder, tmp_path, capsys):
    _train(["--data", str(image_folder), "--out", str(tmp_path / "search"), "--set", TINY % ", dynamic_split: true"])
    doc = json.loads((tmp_path / "search" / "splits.json").read_text())
    assert doc["kind"] == KIND and doc["model"] == "partialnet_t0"
    assert [r["dim"] for r in doc["layers"]] == [8, 16, 32, 64]
    doc["layers"][2]["n_div"], doc["layers"][2]["dim_conv"] = 8, 4  # as if the search had closed one more gate
    (tmp_path / "splits.json").write_text(json.dumps(doc))
    _train(["--data", str(image_folder), "--out", str(tmp_path / "retrain"), "--set", TINY % "",
            "--set", f"splits={tmp_path / 'splits.json'}"])
    model = load_model("partialnet_t0", tmp_path / "retrain" / "last.pt", num_classes=2)  # no splits file needed
    assert not dpconv_layers(model)
    assert [m.dim_conv for m in _blocks(model)] == [r["dim"] // r["n_div"] for r in doc["layers"]] == [2, 4, 4, 16]
    assert type(_blocks(model)[0]).__name__ == "PATConvChannel" and type(_blocks(model)[3]).__name__ == "PATConvSelf"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # the search's dynamic model and a splits file do not mix
        main(["train", "--model", "partialnet_t0", "--data", str(image_folder), "--out", str(tmp_path / "x"),
              "--set", TINY % ", dynamic_split: true", "--set", f"splits={tmp_path / 'splits.json'}", *COMMON])
    assert exc.value.code == 2 and "dynamic_split" in capsys.readouterr().err


def test_learnt_splits_round_trip_to_the_patconv_model(tmp_path):
    search = PartialNet(embed_dim=16, depths=(1, 1, 2, 1), num_classes=5, dynamic_split=True)
    with torch.no_grad():
        for layer, closed in zip(dpconv_layers(search), (0, 1, 3, 2, 4), strict=True):
            layer.gate.fill_(1.0)
            layer.gate[:closed] = -1.0
    path = save_splits(search, "partialnet_custom", tmp_path / "splits.json")
    divs = load_splits(path, "partialnet_custom")
    assert divs == [1, 2, 8, 4, 16]
    retrain = PartialNet(embed_dim=16, depths=(1, 1, 2, 1), num_classes=5, layer_n_div=divs)
    assert [m.dim_conv for m in _blocks(retrain)] == [layer.dim_conv for layer in dpconv_layers(search)]
    assert [m.dim_conv for m in _blocks(retrain)] == [layer.to_partial_conv().dim_conv
                                                      for layer in dpconv_layers(search)]


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"), ("{", "not JSON"), ('{"kind": "other", "layers": []}', "not a DPConv splits file"),
    (json.dumps({"kind": KIND, "model": "partialnet_t2", "layers": []}), "searched on partialnet_t2"),
    (json.dumps({"kind": KIND, "model": "partialnet_t0", "layers": [{"dim": 8, "n_div": 3}]}), "n_div dividing"),
])
def test_bad_splits_file_is_a_usage_error(tmp_path, content, message):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        load_splits(path, "partialnet_t0")
    with pytest.raises(UsageError, match="no DPConv layers"):
        save_splits(PartialNet(embed_dim=8, depths=(1, 1, 1, 1)), "partialnet_t0", tmp_path / "o.json")


def test_a_learnt_split_of_one_convolves_every_channel_and_deploys():
    """A search can learn n_div 1 (every gate open): the PAT_ch and PAT_sf blocks then convolve all channels with
    no attention branch (there are no untouched channels), train, and fuse to an equal deploy form."""
    from partialnet.deploy import fusion_max_abs_diff

    model = PartialNet(in_chans=1, embed_dim=16, depths=(1, 1, 1, 2), num_classes=5, layer_n_div=(1, 4, 2, 1, 4))
    blocks = _blocks(model)
    assert blocks[0].dim_conv == 16 and blocks[0].dim_untouched == 0 and blocks[3].attn is None
    out = model(torch.randn(2, 1, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 5) and blocks[0].conv.weight.grad.abs().sum() > 0
    assert fusion_max_abs_diff(model, (1, 1, 32, 32)) < 1e-9
