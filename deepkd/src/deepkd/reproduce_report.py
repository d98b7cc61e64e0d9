"""Tables, notes and plots of DeepKD's reproduction report (the experiment is in ``deepkd.reproduce``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from effrepro.report import save_figure, seed_span

from deepkd.miniature import ARM_LABEL, gsnr_window, schedule

PAPER_TABLE = """CIFAR-100 top-1 (%), best epoch, mean of runs; KD / DKD / MLKD baselines from the anchor repositories
(logit-standardization-KD, DKD, MLKD papers), DOT from mdistiller. The DeepKD columns (+DeepKD) could not be
read here (the paper body was not retrievable): TO-FILL from arXiv 2505.15133, Tables 1-4.

| teacher -> student | KD | +DeepKD | DKD | +DeepKD | MLKD | +DeepKD | DOT |
|---|---|---|---|---|---|---|---|
| resnet32x4 (79.42) -> resnet8x4 (72.50) | 73.33 | TO-FILL | 76.32 | TO-FILL | 77.08 | TO-FILL | 75.12 |
| vgg13 (74.64) -> vgg8 (70.36) | 72.98 | TO-FILL | 74.68 | TO-FILL | 75.18 | TO-FILL | 73.77 |
| wrn_40_2 (75.61) -> wrn_40_1 (71.98) | 73.54 | TO-FILL | 74.81 | TO-FILL | 75.35 | TO-FILL | – |
| wrn_40_2 -> wrn_16_2 (73.26) | 74.92 | TO-FILL | 76.24 | TO-FILL | 76.63 | TO-FILL | – |
| resnet56 (72.34) -> resnet20 (69.06) | 70.66 | TO-FILL | 71.97 | TO-FILL | 72.19 | TO-FILL | – |
| resnet32x4 -> ShuffleV2 (71.82) | 74.45 | TO-FILL | 77.07 | TO-FILL | 78.44 | TO-FILL | 75.55 |

ImageNet top-1 (%): ResNet34 (73.31) -> ResNet18 (69.76): KD 71.03, DKD 71.70, DOT 71.72, MLKD 71.90, DeepKD
TO-FILL; ResNet50 (76.16) -> MobileNet-V1 (68.87): KD 70.50, DKD 72.05, DOT 73.09, MLKD 73.01, DeepKD TO-FILL.
Paper's qualitative claims: DeepKD improves every base (KD, DKD, MLKD, CRLD) and beats DOT; the best momentum
of each component grows with its GSNR (mu: TOG 0.975 >= NCG 0.95 > TCG 0.825); DeepKD has higher GSNR than
KD / DKD / DOT; the dynamic top-k mask adds a further gain."""


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def arm_table(by_arm: dict[str, list[dict[str, Any]]], prep: dict[str, Any]) -> str:
    """Per-arm top-1 (last and best epoch), spread over seeds and CPU time."""
    rises = sorted(k for k in next(iter(by_arm.values()))[0]["flatness"] if k.startswith("rise_"))
    rows = [f"Student top-1 (%) on the test pairs, mean ± sd over seeds (teacher {prep['teacher_top1']:.2f} %); "
            "training CE loss of the final student and its mean rise under filter-normalised random "
            "perturbations of relative radius r:", "",
            "| arm | top-1 last | top-1 best epoch | last − best | train CE | "
            + " | ".join(f"rise r={k[5:]}" for k in rises) + " | CPU s per run |",
            "|---|---|---|---|---|" + "---|" * len(rises) + "---|"]
    for arm, runs in by_arm.items():
        last, best = [r["top1"] for r in runs], [r["best_top1"] for r in runs]
        gap = statistics.fmean(a - b for a, b in zip(last, best))
        cpu = statistics.fmean(r["cpu_seconds"] for r in runs)
        flat = " | ".join(f"{statistics.fmean(r['flatness'][k] for r in runs):.4f}" for k in ["loss", *rises])
        rows.append(f"| {ARM_LABEL[arm]} | {_mean_sd(last)} | {_mean_sd(best)} | {gap:+.2f} | {flat} | {cpu:.1f} |")
    return "\n".join(rows)


def notes(plan: Any, by_arm: dict[str, list[dict[str, Any]]], confirm: dict[str, list[dict[str, Any]]]) -> str:
    warmup, decay = schedule(plan.epochs)
    cpu = sum(r["cpu_seconds"] for runs in by_arm.values() for r in runs)
    confirm_cpu = sum(r["cpu_seconds"] for runs in confirm.values() for r in runs)
    confirmatory = (f" Confirmatory GSNR runs ({', '.join(ARM_LABEL[a] for a in confirm)}; seeds "
                    f"{seed_span(plan.confirm_seeds)}, n = {len(plan.confirm_seeds)}, new seeds only; GSNR averaged "
                    f"over epochs {gsnr_window(plan)}): {confirm_cpu / 60:.1f} CPU-minutes; they decide the GSNR "
                    f"claims without _pilot, every other claim uses seeds {seed_span(plan.seeds)} only."
                    if plan.confirm_seeds and confirm else "")
    return (f"Miniature: teacher {plan.teacher_arch} trained on {plan.teacher_train} MNIST-100 pairs for "
            f"{plan.teacher_epochs} epochs; students {plan.student_arch} on the first {plan.student_train} of those "
            f"pairs for {plan.epochs} epochs, batch {plan.batch}, LR {plan.lr} x0.1 at epochs {decay}, wd 5e-4, "
            f"T 4; KD arms CE 0.5 / KD 0.5 (the released KD + DeepKD loss), DKD arms alpha 1, beta 8, warm-up "
            f"{warmup:.1f} epochs; DeepKD momenta as released (TOG 0.825, TCG 0.825, NCG 0.95 on DKD, 0.975 on KD); "
            f"dynamic mask K 10 -> 100 over the first 60 % of training. Seeds {list(plan.seeds)}: per seed every arm "
            f"has the same initialisation, data order and budget. Test set {plan.test_size} pairs. The student runs "
            f"used {cpu / 60:.1f} CPU-minutes ({plan.workers} worker process(es), 1 thread each). The accuracy "
            "curves (mean over seeds) show whether each arm reached its plateau before the last epoch." + confirmatory)


GSNR_PANELS = (("DKD loss (DKD runs)", ("dkd", "dkd_deepkd")),
               ("KD loss, 0.5 CE + 0.5 KD (KD runs)", ("kd", "kd_dot", "kd_deepkd")))


def plots(by_arm: dict[str, list[dict[str, Any]]], out: Path, gsnr_epochs: list[int]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, runs in by_arm.items():
        curve = [statistics.fmean(c) for c in zip(*(r["curve"] for r in runs))]
        ax.plot(range(1, len(curve) + 1), curve, label=ARM_LABEL[arm])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, out / "accuracy_curves.png"))
    panels = [(title, [a for a in arms if a in by_arm and by_arm[a][0]["gsnr"]]) for title, arms in GSNR_PANELS]
    panels = [(title, arms) for title, arms in panels if arms]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
        for ax, (title, arms) in zip(axes[0], panels):
            for arm, style in zip(arms, ("-", "--", ":")):  # colour: the component; line style: the run
                for comp, colour in zip(("tog", "tcg", "ncg", "total"), ("C0", "C1", "C2", "k")):
                    values = [statistics.fmean(r["gsnr"][str(e)][comp] for r in by_arm[arm]) for e in gsnr_epochs]
                    ax.plot(gsnr_epochs, values, style, color=colour, marker="o", label=f"{ARM_LABEL[arm]}: {comp}")
            ax.set_yscale("log")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("median GSNR over parameters, mean over seeds")
            ax.legend(fontsize=6, ncol=2)
        paths.append(save_figure(fig, out / "gsnr.png"))
    return paths
