"""Report tables and plots of ``token_router_pruning reproduce`` (markdown and PNG files in the output folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from effrepro.report import save_figure

from token_router_pruning.eval import retention
from token_router_pruning.pipeline import pct


def _accs(row: dict) -> dict[str, float]:
    return {t: v["acc"] for t, v in row["tasks"].items()}


def _mean_acc(row: dict) -> float:
    return float(np.mean(list(_accs(row).values())))


def method_table(exp: Any) -> str:
    dense = exp.rows["dense"]
    tasks = sorted(dense["tasks"])
    short = [t.removeprefix("ftp_mini_") for t in tasks]
    lines = ["| method | budget | FLOPs ratio (mean prompt) | FLOPs ratio (bench) | mean acc | retention % | "
             "PPL ratio | " + " | ".join(short) + " |", "|---" * (7 + len(tasks)) + "|"]
    for key, row in exp.rows.items():
        accs = _accs(row)
        lines.append(f"| {key} | {row['budget'] if row['budget'] is not None else '-'} | "
                     f"{row['flops']['flops_ratio']:.3f} | {row['flops_bench']['flops_ratio']:.3f} | "
                     f"{_mean_acc(row):.3f} | {retention(accs, _accs(dense)):.1f} | {row['ppl'] / dense['ppl']:.3f} | "
                     + " | ".join(f"{accs[t]:.3f}" for t in tasks) + " |")
    return "\n".join(lines)


def _wilson(correct: list[float]) -> tuple[float, float]:
    """95 % Wilson interval of a proportion."""
    n, z = len(correct), 1.959964
    if n == 0:
        return float("nan"), float("nan")
    p = float(np.mean(correct))
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    return centre - half, centre + half


def family_table(exp: Any) -> str:
    """Per task family: accuracy [95 % Wilson interval] (n) of every method."""
    tasks = sorted(exp.rows["dense"]["tasks"])
    lines = ["| method | " + " | ".join(t.removeprefix("ftp_mini_") for t in tasks) + " |",
             "|---" * (1 + len(tasks)) + "|"]
    for key, row in exp.rows.items():
        cells = []
        for t in tasks:
            lo, hi = _wilson(row["correct"][t])
            cells.append(f"{np.mean(row['correct'][t]):.3f} [{lo:.2f}, {hi:.2f}] ({len(row['correct'][t])})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(exp: Any, latency: dict[str, list[float]]) -> str:
    cfg = exp.cfg
    dense_mean = float(np.mean(latency["dense"]))
    lat = ["| method | median s | min s | max s | speed-up vs dense (ratio of means) | median per-round ratio |",
           "|---|---|---|---|---|---|"]
    for key, values in latency.items():
        ratio = float(np.median(np.asarray(latency["dense"]) / np.asarray(values)))
        lat.append(f"| {key} | {np.median(values):.4f} | {min(values):.4f} | {max(values):.4f} | "
                   f"{dense_mean / float(np.mean(values)):.3f} | {ratio:.3f} |")
    n_items = sum(v["n"] for v in exp.rows["dense"]["tasks"].values())
    return "\n".join([
        f"Target `{cfg.target}`, scope `{cfg.scope}`, budgets {list(cfg.budgets)}, {n_items} test items "
        f"({len(exp.rows['dense']['tasks'])} task families), reference length {exp.ref_len} tokens (mean test "
        "prompt) for FLOPs matching. Retention = mean over task families of accuracy / dense accuracy (the "
        "paper's Avg. %); its interval is a bootstrap over items with the method's and the dense model's "
        "correctness resampled together. Gaps between methods are paired over the same items. PPL ratio = "
        "perplexity of the last 32 tokens of held-out text windows, one routed forward each.", "",
        "### Every method (same harness, same items)", "",
        *([f"The secondary arms (random, uniform, the stage-1 router arms) score the first "
           f"{cfg.data.secondary_per_family} test items of each family; their claims pair them with the other arm "
           "on those items.", ""] if cfg.data.secondary_per_family else []), method_table(exp), "",
        "### Per task family: accuracy [95 % Wilson interval] (items)", "",
        "`recall` states a fact at the start of the prompt and asks for it at the end: a token skipped early by "
        "most blocks loses it, whatever the router; retention is therefore also reported without this family.",
        "", family_table(exp), "",
        f"### Prefill latency (batch {cfg.bench.batch_size}, {cfg.bench.seq_len} tokens, {cfg.bench.repeats} "
        "interleaved rounds)", "", "\n".join(lat),
    ])


def plots(exp: Any, red: dict, searched: dict, tuned: dict, router_summary: dict,
          latency: dict[str, list[float]], ablation: tuple | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    blocks = np.arange(exp.n)
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
    ax[0].bar(blocks, red["share_per_block"], color="tab:blue")
    ax[0].set(title="Share of tokens with cos(in, out) > 0.8", xlabel="block", ylim=(0, 1.02))
    ax[1].plot(blocks, red["block_influence"], marker="o")
    ax[1].set(title="Block influence (ShortGPT BI)", xlabel="block")
    paths.append(save_figure(fig, exp.ctx.out / "redundancy.png"))

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
    for b in exp.cfg.budgets:
        ax[0].plot(blocks, searched[b]["best"], marker=".", label=f"GA static {pct(b)} %")
        ax[0].plot(blocks, tuned[b]["best"], ls="--", label=f"GA fine-tuned {pct(b)} %")
        for name, result in (("static", searched[b]), ("fine-tune", tuned[b])):
            hist = result["history"]
            ax[1].plot([h["evaluations"] for h in hist], [h["best"] for h in hist], marker="o",
                       label=f"{name} {pct(b)} % best")
        if "uniform_fitness" in searched[b]:
            ax[1].axhline(searched[b]["uniform_fitness"], ls=":", color="k", lw=0.8)
            ax[1].annotate(f"uniform {pct(b)} %", (0, searched[b]["uniform_fitness"]), fontsize=6)
    ax[0].set(title="Searched per-block sparsity", xlabel="block", ylabel="s_i")
    ax[1].set(title="GA fitness (calibration gold log-lik)", xlabel="evaluations", ylabel="best fitness")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    paths.append(save_figure(fig, exp.ctx.out / "schedules.png"))

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
    steps = exp.cfg.router.steps_per_epoch
    runs = [("scored positions", router_summary)] + ([("all positions", ablation[1])] if ablation else [])
    for label, summary in runs:
        hist = summary["history"]
        epochs = [h["epoch"] * steps for h in hist]
        if hist and "eval_kl" in hist[0]:
            ax[0].plot(epochs, [h["eval_kl"] for h in hist], marker="o", label=f"distilled on {label}")
        for key in ("train_distill", "train_sparse", "train_guide"):
            if hist and key in hist[0] and label == "scored positions":
                ax[1].plot(epochs, [h[key] for h in hist], marker="o", label=key)
    ax[0].axhline(router_summary["static_heldout_kl"], color="k", ls=":", label="static router")
    ax[0].set(title="Held-out KL at the answer position (hard routing)", xlabel="step", ylabel="nats")
    ax[1].set(title=f"Training losses ({exp.cfg.router.steps} steps, epoch means)", xlabel="step", yscale="log")
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    paths.append(save_figure(fig, exp.ctx.out / "router_training.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    dense = exp.rows["dense"]
    for key, row in exp.rows.items():
        ret = retention(_accs(row), _accs(dense))
        ax.scatter(row["flops"]["flops_ratio"], ret)
        ax.annotate(key, (row["flops"]["flops_ratio"], ret), fontsize=6)
    ax.set(xlabel="analytic FLOPs ratio", ylabel="accuracy retention %", title="Retention at matched compute")
    paths.append(save_figure(fig, exp.ctx.out / "retention_vs_flops.png"))

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    names = list(latency)
    ax.boxplot([np.mean(latency["dense"]) / np.asarray(latency[k]) for k in names], tick_labels=names)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set(ylabel="dense mean / round time", title=f"Prefill, {exp.cfg.bench.seq_len} tokens, batch 1")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    paths.append(save_figure(fig, exp.ctx.out / "latency.png"))
    return paths
