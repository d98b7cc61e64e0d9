"""Tables, notes, plots and the ResNet-18 storage measurement of Double Rounding's reproduction report."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from effrepro.quant import export_int8, save_int8
from effrepro.report import save_figure
from effrepro.train import save_checkpoint

from double_rounding.models import ModelConfig, build_float_model, build_quant_model

PAPER_TABLE = """Top-1 (%) on ImageNet-1K, {8,6,4,2} multi-precision, one model stored in INT8 (Tables 1, 4, 5, 6).

| model | method | stored | w8a8 | w6a6 | w4a4 | w2a2 | FP |
|---|---|---|---|---|---|---|---|
| ResNet-18 | LSQ, separate per bit (Table 6) | 4 models | 71.10 | – | 71.10 | 67.60 | 70.50 |
| ResNet-18 | Ours w/o ALRS (Table 4) | 8b | 70.05 | 69.80 | 69.32 | 65.83 | 69.76 |
| ResNet-18 | **Ours** (Table 1) | 8b | 70.74 | 70.71 | 70.43 | 66.35 | 69.76 |
| ResNet-50 | Ours w/o ALRS | 8b | 76.18 | 76.08 | 75.64 | 70.28 | 76.13 |
| ResNet-50 | **Ours** | 8b | 76.51 | 76.28 | 75.74 | 72.31 | 76.13 |
| MobileNetV2 | **Ours** | 8b | 70.98 | 70.70 | 68.77 | 50.43 | 71.14 |

Mixed precision {4,3,2} (Table 3, ResNet-18, HASB + ILP, no fine-tuning): w3a3 68.63, 3MP 68.85.
Training cost (Table 5, ResNet-18 {8,6,4,2}): 16.3 h vs 19.0 h for the separate models (ratio 0.86)."""

# "Ours*" (unshared weight scales) minus Ours, both without KD: ResNet-50 {4,3,2}, Table 2 (the only place the
# paper reports the variant)
PAPER_UNSHARED = {2: 73.28 - 71.62, 4: 76.42 - 75.81}


def half_gain(value: float) -> str:
    """Half the paper's gain: the smallest effect of interest of a claim that expects the gain."""
    return f"{value / 2:.3g}"


ARM_LABEL = {"fp32": "FP32 start", "ours": "**joint, ALRS (ours)**", "ours_noalrs": "joint, no ALRS",
             "ours_accum": "joint, accumulated step (A.1)", "floor": "joint, floor shift",
             "posthoc": "8-bit model switched post hoc", "ours_unshared": "joint, unshared weight steps (Ours*)"}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def arm_table(plan: Any, results: dict[str, list[dict[str, Any]]]) -> str:
    bits = list(plan.bits)
    lines = ["Top-1 (%), mean ± sd over the seeds each arm ran; every quantised number read from the exported int8 "
             "file.", "", "| arm | seeds | epochs | optimizer steps | " + " | ".join(f"w{b}a{b}" for b in bits)
             + " | FP32 | CPU s |", "|---|---|---|---|" + "---|" * (len(bits) + 2)]
    for arm, runs in results.items():
        cells = [_mean_sd([r["acc"][str(b)] for r in runs]) if str(b) in runs[0]["acc"] else "–" for b in bits]
        fp = _mean_sd([r["acc"]["32"] for r in runs]) if "32" in runs[0]["acc"] else "–"
        label = ARM_LABEL.get(arm, f"separate LSQ, {arm[3:]} bits")
        epochs = runs[0].get("epochs", plan.fp_epochs)
        steps = runs[0].get("optimizer_steps", "–")
        cpu = statistics.fmean(r["cpu_seconds"] for r in runs)
        lines.append(f"| {label} | {len(runs)} | {epochs} | {steps} | {' | '.join(cells)} | {fp} | {cpu:.1f} |")
    return "\n".join(lines)


def notes(plan: Any) -> str:
    return (f"Miniature: {plan.dataset}, {plan.train_size} training / {plan.test_size} test images, tiny CNN (FP32 "
            f"stem, five quantised 3x3 convs, width {plan.width}, FP32 classifier), batch {plan.batch_size}. FP32 "
            f"start: {plan.fp_epochs} epochs Adam {plan.fp_lr}. Joint runs: bits {list(plan.bits)}, {plan.q_epochs} "
            f"epochs, Adam {plan.q_lr} cosine, one optimizer step per precision per batch; separate LSQ models "
            f"{list(plan.sep_bits)}: {plan.q_epochs * len(plan.bits)} epochs (equal optimizer steps). Seeds "
            f"{list(plan.seeds)} (separate LSQ and accumulate arms: {list(plan.sep_seeds)}; floor-shift and post-hoc "
            f"ablations: {list(plan.ablation_seeds)}; Ours* (unshared weight steps, same ALRS and steps as ours) "
            f"with FP32 and ours: {list(plan.unshared_seeds)}); per seed every "
            "arm starts from the same FP32 model with the same data order. The training-loss plot shows whether "
            "each arm flattened out before its last epoch. CPU seconds are process CPU time (the 2-core machine "
            "was shared).")


def resnet18_storage(runs: Path) -> dict[str, Any]:
    """The storage statement on the real architecture: one int8 ResNet-18 file vs one FP32 file (no training)."""
    cfg = ModelConfig(arch="resnet18", num_classes=1000, in_channels=3, input_size=[64, 64])
    fp = build_float_model(cfg)
    fp_path = runs / "resnet18_fp32.pt"
    save_checkpoint(fp_path, fp.state_dict())
    model = build_quant_model(cfg, [8, 6, 4, 2], float_model=fp)
    int8_path = save_int8(runs / "resnet18.int8.pt", export_int8(model, {"model": cfg.__dict__}, [8, 6, 4, 2]))
    sizes = {"int8_bytes": int8_path.stat().st_size, "fp32_bytes": fp_path.stat().st_size}
    fp_path.unlink()
    int8_path.unlink()
    return {"ratio": sizes["int8_bytes"] / sizes["fp32_bytes"], **sizes}


def plots(plan: Any, results: dict[str, list[dict[str, Any]]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bits = list(plan.bits)
    for arm in ("ours", "ours_noalrs", "ours_accum", "floor", "posthoc", "ours_unshared"):
        if arm in results:
            left.plot(bits, [statistics.fmean(r["acc"][str(b)] for r in results[arm]) for b in bits], marker="o",
                      label=ARM_LABEL[arm].strip("*"))
    sep = [b for b in bits if f"sep{b}" in results]
    left.plot(sep, [statistics.fmean(r["acc"][str(b)] for r in results[f"sep{b}"]) for b in sep], marker="s",
              linestyle="--", label="separate LSQ (equal steps)")
    left.set_xlabel("bit-width (w = a)")
    left.set_ylabel("top-1 (%), mean over seeds")
    left.legend(fontsize=7)
    for arm in ("ours", *(f"sep{b}" for b in sep)):
        key = "loss_w2" if arm == "ours" else f"loss_w{arm[3:]}"
        curves = [r["losses"][key] for r in results[arm] if key in r["losses"]]
        if curves:
            mean = [statistics.fmean(c) for c in zip(*curves)]
            epochs = [(i + 1) / len(mean) for i in range(len(mean))]
            right.plot(epochs, mean, marker=".", label=f"{arm} ({key[5:]})")
    right.set_xlabel("fraction of training (epochs / total)")
    right.set_ylabel("training loss, mean over seeds")
    right.legend(fontsize=7)
    return [save_figure(fig, out / "accuracy_and_training_loss.png")]
