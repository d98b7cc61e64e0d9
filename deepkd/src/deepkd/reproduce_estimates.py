"""The estimates behind DeepKD's miniature claims (``deepkd.reproduce`` declares the claims): paired top-1 gains,
GSNR ratios and flatness differences, each over seeds."""

from __future__ import annotations

from typing import Any

from effrepro import stats

from deepkd.miniature import gsnr_epochs, gsnr_window

Runs = dict[str, list[dict[str, Any]]]  # arm -> one result per seed, in seed order
Estimates = dict[str, stats.Estimate]


def gain_estimates(plan: Any, gains: list[tuple[Any, ...]], by_arm: Runs) -> Estimates:
    estimates = {}
    for cid, arm, base, *_ in gains:
        if arm in by_arm and base in by_arm:
            a, b = [r["top1"] for r in by_arm[arm]], [r["top1"] for r in by_arm[base]]
            estimates[cid] = stats.paired_diff(a, b, seeds=list(plan.seeds), **{arm: a, base: b},
                                               best_epoch_gain=stats.paired_diff(
                                                   [r["best_top1"] for r in by_arm[arm]],
                                                   [r["best_top1"] for r in by_arm[base]]).value)
    return estimates


def _gsnr_at(run: dict[str, Any], epoch: int) -> dict[str, float]:
    return run["gsnr"][str(epoch)]


def gsnr_estimates(plan: Any, by_arm: Runs) -> Estimates:
    if "dkd" not in by_arm:
        return {}
    epochs = gsnr_epochs(plan)
    mid = epochs[len(epochs) // 2]
    dkd = [_gsnr_at(r, mid) for r in by_arm["dkd"]]
    estimates = {
        "gsnr_ncg_over_tcg_pilot": stats.mean_ci([g["ncg"] / g["tcg"] for g in dkd], epoch=mid),
        "gsnr_tog_over_tcg": stats.mean_ci([g["tog"] / g["tcg"] for g in dkd], epoch=mid),
    }
    if "dkd_deepkd" in by_arm:
        for cid, epoch in (("gsnr_total_deepkd_over_dkd_pilot", mid),
                           ("gsnr_total_deepkd_over_dkd_end_pilot", epochs[-1])):
            deep = [_gsnr_at(r, epoch)["total"] for r in by_arm["dkd_deepkd"]]
            base = [_gsnr_at(r, epoch)["total"] for r in by_arm["dkd"]]
            estimates[cid] = stats.paired_ratio(deep, base, epoch=epoch)
    return estimates


def flat_estimates(plan: Any, flats: list[tuple[str, str, str]], by_arm: Runs) -> Estimates:
    """Loss rise of ``arm`` minus ``base`` at the middle radius (negative: flatter), with the difference at every
    radius and in the unperturbed training loss in the details."""
    key = f"rise_{plan.flat_radii[len(plan.flat_radii) // 2]:g}"
    estimates = {}
    for cid, arm, base in flats:
        if arm in by_arm and base in by_arm:
            a, b = ([r["flatness"][key] for r in by_arm[x]] for x in (arm, base))
            by_radius = {k: stats.paired_diff(*([r["flatness"][k] for r in by_arm[x]] for x in (arm, base))).value
                         for k in by_arm[arm][0]["flatness"] if k.startswith("rise_")}
            estimates[cid] = stats.paired_diff(a, b, radius=key[5:], diff_by_radius=by_radius,
                                               loss_at_minimum=stats.paired_diff(
                                                   [r["flatness"]["loss"] for r in by_arm[arm]],
                                                   [r["flatness"]["loss"] for r in by_arm[base]]).value)
    return estimates


# confirmatory GSNR claims: claim -> (DeepKD arm, its base run)
GSNR_CONFIRM = {"gsnr_total_deepkd_over_dkd": ("dkd_deepkd", "dkd"),
                "gsnr_total_kd_deepkd_over_kd": ("kd_deepkd", "kd"),
                "gsnr_total_kd_deepkd_over_kd_dot": ("kd_deepkd", "kd_dot")}


def gsnr_confirm_estimate(plan: Any, confirm: Runs) -> Estimates:
    """The pre-registered confirmatory estimates on ``plan.confirm_seeds`` alone: per seed and run, the
    total-gradient GSNR averaged over the epochs of :func:`gsnr_window`; the DeepKD run / its base run as a paired
    ratio of means."""
    if not plan.confirm_seeds:
        return {}
    window = gsnr_window(plan)

    def windowed(arm: str) -> list[float]:
        return [windowed_component(r, "total", window) for r in confirm[arm]]

    seeds = list(plan.confirm_seeds)
    estimates = {}
    for cid, (arm, base) in GSNR_CONFIRM.items():
        if {arm, base} <= set(confirm):
            deep, ref = windowed(arm), windowed(base)
            estimates[cid] = stats.paired_ratio(deep, ref, epochs=window, seeds=seeds, **{arm: deep, base: ref},
                                                ratios=[a / b for a, b in zip(deep, ref)])
    if "dkd" in confirm:  # the two pilot GSNR claims, decided on these runs (registered after they ran)
        ratios = [windowed_component(r, "ncg", window) / windowed_component(r, "tcg", window) for r in confirm["dkd"]]
        estimates["gsnr_ncg_over_tcg"] = stats.mean_ci(ratios, epochs=window, seeds=seeds, per_seed=ratios)
    if {"dkd", "dkd_deepkd"} <= set(confirm):
        end = gsnr_epochs(plan)[-1]
        deep, ref = ([_gsnr_at(r, end)["total"] for r in confirm[arm]] for arm in ("dkd_deepkd", "dkd"))
        estimates["gsnr_total_deepkd_over_dkd_end"] = stats.paired_ratio(
            deep, ref, epoch=end, seeds=seeds, dkd_deepkd=deep, dkd=ref, ratios=[a / b for a, b in zip(deep, ref)])
    return estimates


def windowed_component(run: dict[str, Any], component: str, window: list[int]) -> float:
    """One run's GSNR of ``component`` averaged over the probes at the ends of the ``window`` epochs."""
    return sum(_gsnr_at(run, e)[component] for e in window) / len(window)
