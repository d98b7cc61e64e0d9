"""DDP on CPU (torchrun, gloo, 2 processes): component gradients are all-reduced, so every rank holds the same
student, and the sharded evaluation gives every rank the same accuracy."""

import socket
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from deepkd.config import TrainConfig
    from deepkd.train import train
    from effrepro.config import load_config

    out, method, teacher = sys.argv[1:4]
    torch.set_num_threads(1)
    cfg = load_config(None, TrainConfig, [
        "data.dataset=mnist100", "data.train_size=128", "data.test_size=64", "data.batch_size=16",
        "data.workers=0", "data.test_batch_size=64", "solver.epochs=2", "student=mlp_tiny", "teacher=mlp_tiny",
        f"teacher_ckpt={teacher}", "distiller.warmup=1", f"solver.method={method}", "device=cpu"])
    rank = int(__import__("os").environ["RANK"])

    def save_params(distiller, finished):
        if finished == 2:
            torch.save({k: v.detach().clone() for k, v in distiller.student.named_parameters()},
                       f"{out}/rank{rank}.pt")
        return {}

    result = train(cfg, f"{out}/run", progress=False, probe=save_params)
    torch.save(result["top1"], f"{out}/top1_{rank}.pt")
    dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["deepkd"])
def test_ddp_ranks_stay_identical(tmp_path, method):
    from deepkd.models import build_model
    from effrepro.train import save_checkpoint

    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, {"model": build_model("mlp_tiny", 100, "mnist").state_dict(), "arch": "mlp_tiny"})
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(script), str(tmp_path), method, str(teacher)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                                   **__import__("os").environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = dict(build_model("mlp_tiny", 100, "mnist").named_parameters())
    assert any(not torch.equal(rank0[k], init[k]) for k in init)  # it trained
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=1e-6)
    assert torch.load(tmp_path / "top1_0.pt") == torch.load(tmp_path / "top1_1.pt")
    assert (tmp_path / "run" / "student.pt").is_file()
