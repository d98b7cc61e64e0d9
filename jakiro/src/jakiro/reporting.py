"""The report's paper table, per-method tables and plot for ``jakiro reproduce``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from effrepro.report import save_figure

PAPER_TABLE = """\
README figure (A100-40G, MT-bench, **T = 1**; the figure's setting is not documented):

| target | speedup EAGLE-2 | speedup Jakiro | tau EAGLE-2 | tau Jakiro |
|---|---|---|---|---|
| Vicuna 7B | 2.69x | 3.86x | 4.27 | 5.68 |
| LLaMA2-chat 7B | 2.95x | 3.36x | 4.49 | 5.17 |
| LLaMA3-instruct 8B | 2.31x | 2.84x | 3.97 | 4.63 |

What the official repository's own logs show (A40, fp16, MT-bench; tau per cycle):

| target | T | Jakiro speedup | Jakiro tau | EAGLE-2 speedup | EAGLE-2 tau |
|---|---|---|---|---|---|
| vicuna_7b | 0 | 2.99 | 4.72 | 2.89 | 4.72 |
| vicuna_7b | 1 | 2.47 | 4.01 | 2.44 | 4.15 |
| vicuna_13b | 0 | 3.08 | 4.58 | 2.95 | 4.63 |
| vicuna_33b | 0 | 3.30 | 4.38 | 3.16 | 4.29 |

The logs: Jakiro +3..6 % faster than EAGLE-2 at essentially the same tau, from one fewer sequential draft forward
(5 vs 6 at depth 5) and a cheaper FFN.
"""


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def method_table(summary: dict[str, dict[str, Any]], tree: str, costs: dict[str, float] | None) -> str:
    """One row per method: tau, acceptance, measured costs, tokens/s (absolute and vs plain), the tree and the
    break-even tau ``(t_draft + t_verify) / t_step`` from the measured costs (plain: the step alone)."""
    rows = ["| method | turns | tau | tau (script) | acc. by depth | draft fwd/cycle | draft ms/cycle | "
            "verify ms/cycle | cost-model speedup | break-even tau | tokens/s | tokens/s vs plain | tree | "
            "greedy mismatches |", "|---" * 14 + "|"]
    step_ms = f"{1000 * costs['step']:.1f} ms/step" if costs and costs.get("step") else "–"
    for name, s in summary.items():
        if name == "plain":
            rows.append(f"| plain | {s['turns']} | 1 | – | – | – | – | – | 1 | 1 | {s['tokens_per_s']:.2f} | 1 | "
                        f"none ({step_ms}) | – |")
            continue
        depths = ", ".join(_num(r, 2) for r in s.get("acceptance_by_depth", [])[:6])
        speedup = s.get("cost_model_speedup")
        break_even = s["tau"] / speedup if speedup else None
        rows.append(f"| {name} | {s['turns']} | {_num(s['tau'])} | {_num(s['tau_script'])} | {depths} | "
                    f"{_num(s['draft_forwards_per_cycle'], 2)} | {_num(s['draft_ms_per_cycle'], 1)} | "
                    f"{_num(s['verify_ms_per_cycle'], 1)} | {_num(speedup)} | {_num(break_even, 2)} | "
                    f"{_num(s.get('tokens_per_s'), 2)} | {_num(s.get('speedup'))} | "
                    f"{'official static 26 nodes' if name.startswith('jakiro_star') else tree} | "
                    f"{s.get('greedy_mismatches', '–')} |")
    return "\n".join(rows)


def notes(plan: Any, data: dict, training: dict, evals: dict, bench: dict, tree: Any) -> str:
    from jakiro.prereqs import EXTRA_BLOCK

    runs = evals.get("greedy", {}).get("blocks", 1)
    extra = (f" plus {plan.extra_heldout} corpus instructions the draft data did not answer (one turn each; "
             f"{runs} interleaved run(s) of up to {EXTRA_BLOCK} of them, the first with the MT-bench turns; turns "
             "pooled, target costs the median of the runs')" if plan.extra_heldout else "")
    tree_text = f"top_k {tree.top_k} / depth {tree.depth} / {tree.total_tokens} tokens"
    parts = [
        f"Target `{plan.target}` ({plan.dtype}, {plan.device}). Draft data: {data['samples']} conversations "
        f"({plan.prompts} prompts `{plan.distill_prompts}` answered by the target, up to {plan.data_new_tokens} "
        f"tokens a turn{', plus ' + plan.sharegpt_json if plan.sharegpt_json else ''}), {data['tokens']} tokens "
        f"({data['supervised_tokens']} supervised). Every head: the same budget ({plan.epochs} epochs x "
        f"{plan.steps_per_epoch or 'all'} steps, batch {plan.batch_size}, lr {plan.lr}, cosine, warm-up "
        f"{plan.warmup_steps}, draft vocabulary {plan.draft_vocab or 'full'}), same seed and data order; each head "
        "is a cached prerequisite (`make prepare PAPER=jakiro`), the EAGLE-2 one shared with gumiho.",
        f"Tree: top_k {plan.top_k}, depth {plan.depth}, total_tokens {plan.total_tokens} for every method (Jakiro*: "
        f"the official static 26-node tree). MT-bench `{plan.questions}`: {plan.max_questions or 'all'} questions "
        f"at T = 0 ({plan.max_turns or 'all'} turn(s)){extra} and {plan.t1_max_questions or 'all'} at T = "
        f"{plan.temperature} ({plan.t1_max_turns or 'all'} turn(s)), {plan.max_new_tokens} new tokens. Intervals: "
        "percentile bootstrap over turns, both methods of a turn resampled together; tau and tokens/s of a set of "
        "turns are ratios of sums over its turns.",
        "", "Training (held-out split of the draft data, last epoch; curve: training.png):", "",
        "| method | steps | seconds | held-out top-1 (branch 0) | contrastive top-1 (t+2) | cache entry |",
        "|---|---|---|---|---|---|",
    ]
    for method, t in training.items():
        final = t["final"]
        top1 = final.get("eval_acc0", final.get("eval_top1"))
        parts.append(f"| {method} | {t['steps']} | {t['seconds']:.0f} | {_num(top1)} | "
                     f"{_num(final.get('eval_acc1'))} | `{t['budget']['cache']}` |")
    for label, title in (("greedy", "Greedy (T = 0)"), ("t1", f"Sampling (T = {plan.temperature})")):
        if label in evals:
            parts += ["", f"{title}, pooled over turns (tokens/s: each method's own, in the same interleaved runs; "
                      "break-even tau: the tau at which the method would match plain decoding given its measured "
                      "draft and verify times per cycle and the target's step time):", "",
                      method_table(evals[label]["summary"], tree_text, evals[label].get("costs"))]
    parts += ["", "Drafting cost per tree (paired micro-benchmark, median):", "",
              "| schedule | ms | ratio to EAGLE-2 | sequential forwards | trainable params |", "|---|---|---|---|---|"]
    for name, ms in bench["ms_per_tree"].items():
        parts.append(f"| {name} | {ms:.2f} | {bench['ratio_to_eagle2'][name]:.3f} | {bench['draft_forwards'][name]} "
                     f"| {bench['trainable_params'][name]:,} |")
    return "\n".join(parts)


def training_plot(heads: dict[str, Any], out_dir: Path) -> list[Path]:
    """Held-out top-1 per epoch of every head (``effrepro.specdec.headcache.plot_training``)."""
    from effrepro.specdec.headcache import plot_training

    curves = {}
    for name, head in heads.items():
        metric = "eval_acc0" if any("eval_acc0" in row for row in head.entry["history"]) else "eval_top1"
        curves[name] = (head, metric)
    path = plot_training({n: h for n, (h, _) in curves.items()}, out_dir / "training.png",
                         metrics={n: m for n, (_, m) in curves.items()})
    return [path] if path else []


def plot(evals: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, item in evals.items():
        summary = {k: v for k, v in item["summary"].items() if k != "plain"}
        axes[0].bar([f"{k}\n{label}" for k in summary], [v["tau"] for v in summary.values()])
        for name, s in summary.items():
            rates = s.get("acceptance_by_depth", [])
            axes[1].plot(range(1, len(rates) + 1), rates, marker="o", label=f"{name} ({label})")
    axes[0].set_ylabel("tau (tokens per target forward)")
    axes[0].tick_params(axis="x", labelsize=7, rotation=45)
    axes[1].set_xlabel("draft depth")
    axes[1].set_ylabel("acceptance | parent accepted")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return [save_figure(fig, out_dir / "tau_and_acceptance.png")]
