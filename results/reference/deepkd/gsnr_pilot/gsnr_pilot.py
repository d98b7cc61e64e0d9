"""The cheap pilot computation behind the design of DeepKD's confirmatory GSNR claim (``gsnr_total_deepkd_over_dkd``).

``probe RUNS OUT.json SEEDS``: re-trains the pilot's DKD and DKD + DeepKD runs of SEEDS (e.g. ``0,1,2``) with the
smoke plan to the end of epoch 14 (the same trajectories as the cached runs in RUNS, a reference run's ``runs``
folder: each epoch-12 value equals the cached one) and probes the GSNR of the total DKD gradient at the ends of
epochs 10-14 with four disjoint sets of 16 probe mini-batches (``b16_0`` is the reference probe) and with all 78.

``design OUT.json``: where the per-seed spread comes from (probe batches or iterate), the pilot ratio and per-seed
spread of one probe and of the five-epoch mean, and the probability that n new seeds decide
``"> 1, fails below 1.1"`` if the truth equals the pilot (normal approximation, and resampling the pilot's pairs).

Run from the repository root with PYTHONPATH=shared/src:deepkd/src.
"""

from __future__ import annotations

import json
import sys
import tempfile

import numpy as np

EPOCHS = ["10", "11", "12", "13", "14"]
EXPECT = "> 1, fails below 1.1"


def probe(runs: str, out: str, seeds: list[int]) -> None:
    import torch
    from deepkd.distillers import warmup_factor
    from deepkd.losses import dkd_parts
    from deepkd.reproduce import SMOKE as plan
    from deepkd.train import train
    from effrepro.optim import GSNRAccumulator, component_grads, sum_grads
    from torch.nn import functional as F

    from deepkd import miniature as mini

    class Stop(Exception):
        pass

    torch.set_num_threads(1)
    data = torch.load(f"{runs}/data.pt", weights_only=True)
    train_set = mini.CachedTeacherSet(data["train_images"], data["train_labels"], data["train_logits"])
    test_set = mini.CachedTeacherSet(data["test_images"][:500], data["test_labels"][:500])  # not used here
    count = len(train_set) // plan.batch
    batches = [train_set[i * plan.batch:(i + 1) * plan.batch] for i in range(count)]
    sets = {**{f"b16_{k}": range(16 * k, 16 * k + 16) for k in range(4)}, f"b{count}": range(count)}
    warmup, _ = mini.schedule(plan.epochs)

    def make_probe(record: dict) -> object:
        def fn(distiller: object, finished: int) -> dict:
            if finished < int(EPOCHS[0]):
                return {}
            params = list(distiller.student.parameters())
            ramp = warmup_factor(finished, warmup)
            grads = []
            for images, labels, teacher in batches:
                logits = distiller.student(images)
                tckd, nckd = dkd_parts(logits, teacher, labels, 4.0)
                losses = {"tog": F.cross_entropy(logits, labels), "tcg": ramp * tckd.mean(),
                          "ncg": 8.0 * ramp * nckd.mean()}
                grads.append({"total": [g.detach().clone() for g in sum_grads(component_grads(losses, params))]})
            record[str(finished)] = {}
            for name, index in sets.items():
                acc = GSNRAccumulator()
                for i in index:
                    acc.update(grads[i])
                record[str(finished)][name] = acc.summary()["total"]
            if finished >= int(EPOCHS[-1]):
                raise Stop
            return {}
        return fn

    result = {}
    for seed in seeds:
        for arm in ("dkd", "dkd_deepkd"):
            record: dict = {}
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    train(mini.student_config(plan, arm, seed, f"{runs}/teacher/student.pt"), tmp, progress=False,
                          datasets=(train_set, test_set), probe=make_probe(record))
                except Stop:
                    pass
            cached = json.load(open(f"{runs}/{arm}_seed{seed}.json"))["value"]["gsnr"]["12"]["total"]
            print(f"seed {seed} {arm}: cached {cached:.4f}, re-probed {record['12']['b16_0']:.4f}", flush=True)
            result[f"{arm}_{seed}"] = record
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)


def _ratio_sd(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Ratio of means and the per-seed sd of the ratio (delta method: sd of a - R b over mean b)."""
    ratio = a.mean() / b.mean()
    return float(ratio), float((a - ratio * b).std(ddof=1) / b.mean())


def _decides_normal(n: int, ratio: float, sd: float, z: float = 1.96) -> float:
    from scipy.stats import norm

    se = sd / np.sqrt(n)
    return 1 - max(0.0, norm.cdf((1 + z * se - ratio) / se) - norm.cdf((1.1 - z * se - ratio) / se))


def _decides_resampled(n: int, a: np.ndarray, b: np.ndarray, sims: int = 1000) -> float:
    from effrepro import stats

    rng = np.random.default_rng(2)
    decided = 0
    for _ in range(sims):
        i = rng.integers(0, len(a), n)
        est = stats.bootstrap(np.stack([a[i], b[i]], 1), lambda x: x[:, 0].mean() / x[:, 1].mean(), draws=2000)
        decided += stats.verdict(est.ci, EXPECT) != "inconclusive"
    return decided / sims


def design(path: str) -> None:
    record = json.load(open(path))
    seeds = sorted({int(k.rsplit("_", 1)[1]) for k in record})

    def value(arm: str, seed: int, epoch: str, probe: str) -> float:
        return record[f"{arm}_{seed}"][epoch][probe]

    arms = ("dkd", "dkd_deepkd")
    within = [np.std([np.log(value(a, s, e, f"b16_{k}")) for k in range(4)], ddof=1)
              for a in arms for s in seeds for e in EPOCHS]
    across = [np.std([np.log(value(a, s, e, "b16_0")) for e in EPOCHS], ddof=1) for a in arms for s in seeds]
    print(f"sd of log GSNR, same iterate, four disjoint 16-batch probes: {np.sqrt(np.mean(np.square(within))):.3f}")
    print(f"sd of log GSNR, same run, epochs {EPOCHS[0]}-{EPOCHS[-1]} (16-batch probe): "
          f"{np.sqrt(np.mean(np.square(across))):.3f}")
    for probe_name in ("b16_0", "b78"):
        a = np.array([value("dkd_deepkd", s, "12", probe_name) for s in seeds])
        b = np.array([value("dkd", s, "12", probe_name) for s in seeds])
        print(f"one probe at epoch 12 ({probe_name}): ratio %.3f, per-seed sd %.3f" % _ratio_sd(a, b))
    a = np.array([np.mean([value("dkd_deepkd", s, e, "b16_0") for e in EPOCHS]) for s in seeds])
    b = np.array([np.mean([value("dkd", s, e, "b16_0") for e in EPOCHS]) for s in seeds])
    ratio, sd = _ratio_sd(a, b)
    print(f"mean of the probes at epochs {EPOCHS[0]}-{EPOCHS[-1]} (b16_0): ratio {ratio:.3f}, per-seed sd {sd:.3f}")
    print(f"P(decided, {EXPECT!r}) if the true ratio is {ratio:.3f}:")
    for n in (20, 25, 30, 35, 40, 45, 50):
        print(f"  n = {n}: normal {_decides_normal(n, ratio, sd):.2f} (sd x1.25: "
              f"{_decides_normal(n, ratio, 1.25 * sd):.2f}), resampled pilot pairs {_decides_resampled(n, a, b):.2f}")
    smallest = int(np.ceil((2 * 1.96 * sd / 0.1) ** 2))
    print(f"smallest n with an interval narrower than the band 1-1.1 at this spread: {smallest}")


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        probe(sys.argv[2], sys.argv[3], [int(s) for s in sys.argv[4].split(",")])
    else:
        design(sys.argv[2])
