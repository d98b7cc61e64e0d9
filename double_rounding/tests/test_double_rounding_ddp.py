"""torchrun with 2 CPU processes (gloo): the quantised stages sync gradients and BN buffers themselves, so
both ranks must end with identical parameters and buffers, and a HASB SuperNet must draw the same bits."""

import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from effrepro.config import load_config
    from effrepro.train import dist_setup, seed_everything
    from effrepro.quant import to_transitional
    from double_rounding.config import Config
    from double_rounding.data import build_loaders, calibration_batch
    from double_rounding.double_rounding import BitSampler
    from double_rounding.models import build_float_model
    from double_rounding.train import quant_model_from_fp32, train_quantized

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    cfg = load_config({"model": {"width": 4}, "data": {"dataset": "mnist", "train_size": 128, "batch_size": 16},
                       "quant": {"calib_images": 16}, "multi": {"epochs": 1, "lr": 5e-4},
                       "supernet": {"epochs": 1, "lr": 5e-4}}, Config)
    dist = dist_setup("cpu")
    seed_everything(0)
    train, _ = build_loaders(cfg.data, dist, 0)
    fp32 = build_float_model(cfg.model).state_dict()
    model = quant_model_from_fp32(cfg, fp32, [8, 4, 2], "half_up", calibration_batch(train, 16))
    train_quantized(cfg, model, cfg.multi, train, out / "multi", dist, "multi", progress=False)
    to_transitional(model)
    sampler = BitSampler(model.quant_graph.layers, [8, 4, 2], None, "uniform")
    train_quantized(cfg, model, cfg.supernet, train, out / "supernet", dist, "supernet", sampler, progress=False)
    torch.save(model.state_dict(), out / f"rank{dist.rank}.pt")
""")


@pytest.mark.slow
def test_two_cpu_ranks_stay_identical(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
           str(worker), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert (tmp_path / "multi" / "last.pt").is_file() and (tmp_path / "supernet" / "last.pt").is_file()
