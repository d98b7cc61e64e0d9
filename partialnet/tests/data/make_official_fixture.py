"""Regenerate ``official_tiny.torch``: a tiny model built by the *official* PartialNet code (haiduo/PartialNet @
679cfc0, ``models/partialnet.py``), with random weights and BN statistics, plus its float64 output on a fixed
input. ``test_partialnet_official_parity.py`` loads it into our model through ``checkpoint_filter_fn`` and
checks the outputs agree. Not run by the tests (the official code is not a dependency):

    OFFICIAL_PARTIALNET=/path/to/PartialNet python partialnet/tests/data/make_official_fixture.py

The official ``models/irpe.py`` imports ``easydict``; any dict with attribute access stands in for it.
"""

import importlib
import os
import sys
import types
from pathlib import Path

import torch

root = Path(os.environ["OFFICIAL_PARTIALNET"])
if "easydict" not in sys.modules:
    try:
        import easydict  # noqa: F401
    except ImportError:
        class EasyDict(dict):
            __getattr__ = dict.__getitem__

            def __setattr__(self, key, value):
                self[key] = value
        sys.modules["easydict"] = types.SimpleNamespace(EasyDict=EasyDict)
package = types.ModuleType("official_models")
package.__path__ = [str(root / "models")]
sys.modules["official_models"] = package
official = importlib.import_module("official_models.partialnet")

CASES = {
    # T1-like: GELU, PAT_ch + PAT_sp in stages 1-3, PAT_sf + PAT_sp in stage 4
    "spatial": dict(embed_dim=8, depths=(1, 1, 1, 1), act_layer="GELU", use_spatial_attn=True),
    # T2-like: ReLU, no PAT_sp
    "plain": dict(embed_dim=8, depths=(1, 2, 1, 1), act_layer="RELU", use_spatial_attn=False),
}
torch.manual_seed(0)
fixture = {}
for name, kwargs in CASES.items():
    model = official.PartialNet(num_classes=10, feature_dim=32, drop_path_rate=0.0, patnet_t0=True,
                                use_channel_attn=True, **kwargs).double()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if "running_var" in key:
                    tensor.copy_(torch.rand_like(tensor) + 0.5)
                else:
                    tensor.copy_(torch.randn_like(tensor) * 0.3)
                tensor.copy_(tensor.float().double())  # exactly representable in the float32 file
    model.eval()
    x = torch.randn(1, 3, 64, 96).half().double()  # stored as float16
    with torch.no_grad():
        y = model(x)
    state = model.state_dict()  # packed flat: per-tensor zip entries would dominate the file size
    layout = [(k, tuple(v.shape), v.is_floating_point()) for k, v in state.items()]
    flat = torch.cat([v.double().flatten() for v in state.values()]).float()
    fixture[name] = {"kwargs": kwargs, "layout": layout, "flat": flat, "input": x.half(), "output": y}
torch.save(fixture, Path(__file__).with_name("official_tiny.torch"))
print("wrote", Path(__file__).with_name("official_tiny.torch"))
