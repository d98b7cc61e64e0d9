"""The report's paper table, per-method table and plot for ``gumiho reproduce``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from effrepro.report import save_figure

from gumiho.train import VARIANTS

PAPER_TABLE = """Speedup / tau at temperature 0 (README of AMD-AIG-AIMA/Gumiho = the paper's main table; mean of
MT-Bench, HumanEval, GSM8K, Alpaca, CNN/DM, Natural Questions; FP16 on AMD Instinct GPUs):

| Model | EAGLE-2 | Gumiho | tau ratio | speedup ratio |
|---|---|---|---|---|
| Vicuna 7B | 2.74x / 4.68 | **2.97x / 4.89** | 1.045 | 1.084 |
| Vicuna 13B | 3.04x / 4.67 | **3.23x / 4.87** | 1.043 | 1.063 |
| LLaMA2-chat 7B | 2.82x / 4.64 | **2.95x / 4.70** | 1.013 | 1.046 |
| LLaMA2-chat 13B | 3.13x / 4.70 | **3.27x / 4.85** | 1.032 | 1.045 |
| LLaMA2-chat 70B | 2.47x / 4.40 | **2.76x / 4.54** | 1.032 | 1.117 |
| LLaMA3-Instruct 8B | 2.12x / 4.35 | **2.34x / 4.46** | 1.025 | 1.104 |
| LLaMA3-Instruct 70B | 2.98x / 4.25 | **3.45x / 4.35** | 1.024 | 1.158 |

Medusa on Vicuna 7B: 1.89x / 2.39. Draft per round: Gumiho 2 serial Transformer passes + 1 batched MLP call;
EAGLE-2 6 serial passes (official depth 5 + the context pass)."""


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def method_table(summary: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> str:
    rows = ["| method | params (trainable) | train s | steps | turns | tau | acc. by depth | serial passes / cycle | "
            "draft ms / cycle | verify ms / cycle | cost-model x | wall x vs plain | greedy mismatches |",
            "|---" * 13 + "|"]
    for name, item in summary.items():
        if name == "plain":
            rows.append(f"| plain | – | – | – | {item['turns']} | 1 | – | – | – | – | 1 | 1 "
                        f"({item['tokens_per_s']:.1f} tok/s) | – |")
            continue
        base = name.split("-chain")[0].split("+")[0]
        info = trained.get("gumiho" if base == "gumiho-official" else base, {})
        depths = ", ".join(_num(r, 2) for r in item.get("acceptance_by_depth", []))
        rows.append(f"| {name} | {info.get('params', 0) / 1e6:.2f} M | {info.get('seconds', 0):.0f} | "
                    f"{info.get('steps', '')} | {item['turns']} | {_num(item['tau'])} | {depths} | "
                    f"{_num(item['draft_forwards_per_cycle'], 2)} | {_num(item['draft_ms_per_cycle'], 1)} | "
                    f"{_num(item['verify_ms_per_cycle'], 1)} | {_num(item.get('cost_model_speedup'))} | "
                    f"{_num(item.get('speedup'))} | {item.get('greedy_mismatches', '–')} |")
    return "\n".join(rows)


def _extra(count: int) -> str:
    if not count:
        return ""
    return (f", plus {count} corpus instructions the draft data did not answer (one turn each, a second interleaved "
            "run; pooled with the MT-bench turns in the claims, not in the per-method table below)")


def _headline(count: int) -> str:
    if not count:
        return ""
    return (f" The two headline ratios (tau and tokens/s, Gumiho / EAGLE-2) also pool {count} further unseen corpus "
            "instructions answered by the EAGLE-2 and Gumiho trees alone (interleaved, cached blocks; not in the "
            "per-method table); every other claim uses the turns above.")


def notes(config: Any, trained: dict[str, dict[str, Any]], data_meta: dict[str, Any],
          summary: dict[str, dict[str, Any]], extra_heldout: int = 0, headline_extra: int = 0) -> str:
    budget = (f"Target `{config.target}`. Data: {data_meta.get('samples')} conversations, {data_meta.get('tokens')} "
              f"tokens ({data_meta.get('supervised_tokens')} supervised). Trainer (same for every head): "
              f"{config.train.epochs} epochs, batch {config.train.batch_size}, steps/epoch "
              f"{config.train.steps_per_epoch or 'all'}, lr {config.train.lr}, {config.train.schedule}, draft "
              f"vocabulary {config.train.draft_vocab or 'full'}; every head is a cached prerequisite (`make prepare "
              "PAPER=gumiho`), the EAGLE-2 one shared with jakiro. Gumiho MLP CE "
              f"from epoch {config.loss.mlp_ce_warmup_epochs}. Tree: top_k {config.tree.top_k}, total tokens "
              f"{config.tree.total_tokens}, {config.tree.depth} levels, mlptopk {config.tree.mlptopk}, pruning "
              f"{config.tree.pruning}. Eval: {config.eval.max_questions or 'all'} held-out MT-bench questions, "
              f"{config.eval.max_turns or 'all'} turn(s), {config.eval.max_new_tokens} new tokens, "
              f"T = {config.eval.temperature}{_extra(extra_heldout)}. Intervals: percentile bootstrap over turns, the "
              "methods of a turn "
              "resampled together; tau and tokens/s of a set of turns are ratios of sums over its turns."
              + _headline(headline_extra))
    heads = ["| head | steps | train s | held-out top-1 (first draft position) | cache entry |",
             "|---|---|---|---|---|"]
    for name, info in trained.items():
        final = info.get("final", {})
        top1 = final.get("eval_top1", final.get("eval_top1_T"))
        heads.append(f"| {name} | {info['steps']} | {info['seconds']:.0f} | {_num(top1)} | "
                     f"`{info['budget']['cache']}` |")
    return "\n".join([budget, "", "Heads (held-out split of the draft data, last epoch; curve: training.png):", "",
                      *heads, "", "Per method, pooled over turns:", "", method_table(summary, trained)])


def training_plot(heads: dict[str, Any], out: Path) -> list[Path]:
    """Held-out top-1 of the first draft position per epoch of every head."""
    from effrepro.specdec.headcache import plot_training

    metrics = {name: "eval_top1" if name == "eagle2" else "eval_top1_T" for name in heads}
    path = plot_training(heads, out / "training.png", metrics=metrics)
    return [path] if path else []


def plot(summary: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in [n for n in ("eagle2-chain", "gumiho-chain", "medusa-chain") if n in summary]:
        rates = summary[name]["acceptance_by_depth"]
        axes[0].plot(range(1, len(rates) + 1), rates, marker="o", label=name)
    axes[0].set(xlabel="draft position k", ylabel="conditional acceptance a_k", title="chain mode", ylim=(0, 1))
    axes[0].legend()
    names = [n for n in ("eagle2", *VARIANTS, "gumiho+fta", "gumiho-official") if n in summary]
    axes[1].bar(names, [summary[n]["tau"] for n in names])
    axes[1].set(ylabel="tau (tokens / cycle)", title="tree mode, equal budget")
    axes[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return [save_figure(fig, out / "acceptance_and_tau.png")]
