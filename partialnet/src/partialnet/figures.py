"""Reference figures, each with its source. Nothing here is measured by this project.

FLOPs are ``torch.utils.flop_counter`` counts (1 multiply-accumulate = 2 FLOPs) of a forward at 1x3x224x224;
papers in this field quote MACs as "FLOPs", i.e. half these numbers.
"""

from __future__ import annotations

OFFICIAL_COMMIT = "679cfc0"  # haiduo/PartialNet, the commit the configs and code were read at

# Built with the official ``models/partialnet.py`` from ``cfg/PartialNet_<v>.yaml`` (T0 with its PartialNet fields:
# the yaml's ``model_name: convnext_tiny`` builds a 43,815,148-parameter ConvNeXt instead), counted here with
# ``effrepro.bench.count_params`` / ``count_flops``.
OFFICIAL_COUNTS: dict[str, dict[str, int]] = {
    "t0": {"params": 3_486_160, "flops": 465_225_472},
    "t1": {"params": 6_144_552, "flops": 1_080_678_976},
    "t2": {"params": 12_269_816, "flops": 2_065_174_528},
    "s": {"params": 28_013_304, "flops": 5_409_115_648},
    "m": {"params": 59_179_000, "flops": 13_345_693_696},
    "l": {"params": 100_641_336, "flops": 23_763_089_920},
}
OFFICIAL_T0_YAML_CONVNEXT_PARAMS = 43_815_148

# FasterNet ImageNet-1K top-1 (%): the released checkpoints' names (``fasternet_t0-epoch.281-val_acc1.71.9180``
# ...), listed in timm's ``timm/models/fasternet.py``; the paper (Chen et al., CVPR 2023, Table 4) rounds them.
FASTERNET_TOP1 = {"t0": 71.918, "t1": 76.218, "t2": 78.886, "s": 81.284, "m": 82.962, "l": 83.506}

# PATNet abstract (arXiv 2503.03148): "PATNet-T2 achieves 1.3% higher accuracy than FasterNet-T2, while
# exhibiting 25% higher GPU throughput and 24% lower CPU latency". The per-variant tables of the two papers
# were not available offline; no other PartialNet accuracy is quoted here.
PAPER_T2 = {"top1_gain": 1.3, "gpu_throughput_ratio": 1.25, "cpu_latency_ratio": 0.76}
