"""The reproduce skeleton, intervals and verdicts, the claims schema, README generation, compare and promote."""

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from effrepro import stats
from effrepro.errors import UsageError
from effrepro.papers import PAPERS
from effrepro.report import Claim, Fact, read_claims, validate_claims, write_claims
from effrepro.reproduce import ClaimSpec, FactSpec, Plan, Reproduction, Results
from effrepro.reproduce import summary as summary_mod
from effrepro.reproduce.summary import BEGIN, END, compare, promote, readme_updates

REPO = Path(__file__).resolve().parents[2]


# ---- intervals and verdicts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ci", "expect", "verdict"),
    [((1.1, 1.3), ">= 1.0", "holds"), ((0.8, 0.95), ">= 1.0", "fails"), ((0.9, 1.2), ">= 1.0", "inconclusive"),
     ((-3, -1), "< 0", "holds"), ((0.1, 0.2), "<= 0", "fails"), ((0.95, 1.05), "between 0.9 1.1", "holds"),
     ((1.2, 1.3), "between 0.9 1.1", "fails"), ((1.0, 1.2), "between 0.9 1.1", "inconclusive"),
     ((math.nan, math.nan), ">= 0", "inconclusive"), ((1.0, 1.0), "> 1.0", "fails"),
     # a smallest effect of interest: the claim also fails when an effect that large is excluded
     ((-4.8, 2.6), "> 0, fails below 9.5", "fails"), ((-4.8, 12.0), "> 0, fails below 9.5", "inconclusive"),
     # above 0 but excluding the smallest effect: a gain far smaller than the paper's fails
     ((0.1, 3.0), "> 0, fails below 9.5", "fails"), ((0.1, 12.0), "> 0, fails below 9.5", "holds"),
     ((0.98, 1.01), "> 1.0, fails below 1.02", "fails"), ((1.01, 1.015), "> 1.0, fails below 1.02", "fails"),
     ((0.985, 1.03), "< 1.0, fails above 0.98", "fails"), ((0.9, 0.99), "< 1.0, fails above 0.98", "holds")],
)
def test_verdict_of_an_interval(ci, expect, verdict):
    assert stats.verdict(ci, expect) == verdict


@pytest.mark.parametrize("expect", ["> 1, fails above 2", "> 1, fails below 0.5", "< 1, fails above 2",
                                    "between 1 2, fails below 3", "== 1, fails below 2"])
def test_smallest_effect_must_lie_on_the_claimed_side(expect):
    with pytest.raises(ValueError, match="fails below|one-sided"):
        stats.Expectation.parse(expect)


def test_n_to_decide_with_a_smallest_effect_uses_the_farther_boundary():
    # 0.5 above the direction threshold, 1.0 below the smallest effect: deciding needs a half-width under 1.0
    est = stats.Estimate(value=0.5, n=16, ci=(-1.5, 2.5), method="t")
    assert stats.n_to_decide(est, "> 0, fails below 1.5") == 16 * (2 / 1) ** 2
    assert stats.n_to_decide(est, "> 0") == 16 * (2 / 0.5) ** 2


def test_exact_comparisons_are_not_claims():
    with pytest.raises(ValueError, match="exact values"):
        stats.verdict((1, 1), "== 1")
    with pytest.raises(ValueError, match="cannot parse"):
        stats.verdict((1, 1), "at least 1")


def test_t_interval_known_value():
    est = stats.mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert est.value == 2.0 and est.n == 3
    assert est.ci == pytest.approx((2.0 - half, 2.0 + half))


def test_single_value_is_undecidable():
    est = stats.mean_ci([1.0])
    assert est.n == 1 and all(math.isnan(v) for v in est.ci)
    assert stats.verdict(est.ci, ">= 0") == "inconclusive"


def test_paired_diff_uses_pairs_not_arms():
    # a large seed effect shared by both arms: unpaired it would swamp the 1-point gain, paired it does not
    base = np.array([60.0, 70.0, 80.0, 65.0, 75.0])
    est = stats.paired_diff(base + 1.0 + np.array([0.1, -0.1, 0.05, -0.05, 0.0]), base)
    assert est.value == pytest.approx(1.0)
    assert est.ci[0] > 0.8 and est.ci[1] < 1.2


def test_bootstrap_ratio_is_seeded_and_brackets_the_value():
    rng = np.random.default_rng(1)
    a, b = rng.normal(2.0, 0.1, 30), rng.normal(1.0, 0.1, 30)
    first, second = stats.paired_ratio(a, b), stats.paired_ratio(a, b)
    assert first.ci == second.ci
    assert first.ci[0] < first.value < first.ci[1] and first.ci[0] > 1.7


def test_n_to_decide_grows_when_the_effect_is_near_the_threshold():
    est = stats.mean_ci([0.5, -0.2, 0.9, 0.1])
    needed = stats.n_to_decide(est, ">= 0")
    assert needed is not None and needed > est.n
    assert stats.min_detectable_effect(est) > 0


# ---- claims schema -------------------------------------------------------------------------------------------
def _claim(**kw):
    base = dict(id="tau_ratio", description="d", paper=1.1, measured=1.2, unit="x", baseline="eagle2",
                expect=">= 1", n=8, ci=(1.1, 1.3))
    base.update(kw)
    return Claim(**base)


def test_claim_verdict_is_computed_and_file_round_trips(tmp_path):
    claims = [_claim(), _claim(id="b", measured=0.5, ci=(0.4, 0.6), details={"seeds": [0, 1]}),
              _claim(id="c", ci=(0.9, 1.4), headline=True)]
    assert [c.verdict for c in claims] == ["holds", "fails", "inconclusive"]
    assert [c.holds for c in claims] == [True, False, False]
    facts = [Fact(id="params", description="p", value=12, unit="M")]
    path = write_claims(tmp_path, claims, facts)
    document = read_claims(path)
    assert document["claims"][1]["details"] == {"seeds": [0, 1]} and document["facts"][0]["value"] == 12


def _valid_document():
    return {"claims": [_claim().as_dict()], "facts": [Fact(id="f", description="d", value=1).as_dict()]}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["claims"][0].pop("unit"), "missing keys"),
        (lambda d: d["claims"][0].update(extra=1), "unknown keys"),
        (lambda d: d["claims"][0].update(measured="1"), "'measured' must be a number"),
        (lambda d: d["claims"][0].update(n=0), "'n' must be a positive integer"),
        (lambda d: d["claims"][0].update(ci=[1.3, 1.1]), "lower bound"),
        (lambda d: d["claims"][0].update(ci=[1]), "'ci' must be"),
        (lambda d: d["claims"][0].update(verdict="fails"), "disagrees"),
        (lambda d: d["claims"][0].update(verdict="maybe"), "'verdict' must be one of"),
        (lambda d: d["claims"][0].update(holds=False), "'holds' must be true exactly"),
        (lambda d: d["claims"][0].update(expect="=> 1"), "cannot parse"),
        (lambda d: d["facts"][0].update(id="tau_ratio"), "duplicate id"),
        (lambda d: d["facts"][0].update(value=None), "'value' must be"),
        (lambda d: d.pop("facts"), 'exactly the keys "claims" and "facts"'),
        (lambda d: d.update(claims=[]), "non-empty list"),
    ],
)
def test_malformed_claims_files_give_a_clear_error(tmp_path, mutate, message):
    document = _valid_document()
    mutate(document)
    with pytest.raises(ValueError, match=message):
        validate_claims(document)
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(document))
    with pytest.raises(UsageError, match="not a valid claims file"):
        read_claims(path)


def test_old_list_format_is_rejected(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text(json.dumps([_claim().as_dict()]))
    with pytest.raises(UsageError, match="claims"):
        read_claims(path)


# ---- the skeleton, on a toy paper ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ToyPlan(Plan):
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7)
    effect: float = 1.0


CLAIMS = [
    ClaimSpec(id="gain", description="method minus baseline, paired by seed", paper=1.3, unit="points",
              baseline="baseline", expect="> 0", headline=True),
    ClaimSpec(id="ratio", description="method / baseline", paper=None, unit="ratio", baseline="baseline",
              expect=">= 1.0"),
]
FACTS = [FactSpec(id="params", description="parameters", unit="M"),
         FactSpec(id="wall", description="wall time", unit="s", exact=False)]


def toy_run(plan: ToyPlan, ctx) -> Results:
    rng = np.random.default_rng(0)
    with ctx.stage("train"):
        rows = ctx.cached("arms", lambda: [[70 + s + plan.effect + rng.normal(0, 0.1), 70 + s] for s in plan.seeds],
                          key={"seeds": plan.seeds, "effect": plan.effect})
    method, base = [r[0] for r in rows], [r[1] for r in rows]
    return Results(estimates={"gain": stats.paired_diff(method, base), "ratio": stats.paired_ratio(method, base)},
                   facts={"params": 1.5, "wall": (3.0, {"note": "toy"})}, notes_md="toy notes")


TOY = Reproduction(paper="toy", title="Toy", paper_table="| a |\n|---|\n| 1 |", claims=CLAIMS, facts=FACTS,
                   plans={"smoke": ToyPlan(), "tiny": ToyPlan(name="tiny", seeds=(0, 1, 2))}, run=toy_run,
                   stages=("main",))


def test_skeleton_writes_claims_report_env_and_resumes(tmp_path, capsys):
    out = tmp_path / "toy"
    assert TOY.main(["--out", str(out), "--threads", "1"]) == 0
    document = read_claims(out / "claims.json")
    gain = document["claims"][0]
    assert gain["verdict"] == "holds" and gain["n"] == 8 and gain["headline"]
    assert "t (paired differences)" in gain["details"]["interval"]
    assert [f["id"] for f in document["facts"]] == ["params", "wall"]
    env = json.loads((out / "env.json").read_text())
    assert env["torch_threads"] == 1 and "train" in env["stage_seconds"]
    assert env["plan_fields"]["seeds"] == list(range(8))
    report = (out / "report.md").read_text()
    assert "Headline claims" in report and "toy notes" in report and "Facts" in report
    capsys.readouterr()
    TOY.main(["--out", str(out), "--threads", "1"])
    assert "reusing" in capsys.readouterr().out
    assert "arms" in json.loads((out / "env.json").read_text())["reused_cache_seconds"]
    # an override changes the cache key: recomputed, and the claim can come out false
    TOY.main(["--out", str(out), "--threads", "1", "--set", "effect=-1.0"])
    assert read_claims(out / "claims.json")["claims"][0]["verdict"] == "fails"


def test_env_records_cpu_time_and_stages_announce_the_reference_time(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = tmp_path / "results" / "reference" / "toy" / "smoke"
    reference.mkdir(parents=True)
    (reference / "env.json").write_text(json.dumps({"stage_seconds": {"train": 1234.0}}))
    out = tmp_path / "run"
    assert TOY.main(["--out", str(out), "--threads", "1"]) == 0
    assert "the reference run took 1234 s" in capsys.readouterr().out
    env = json.loads((out / "env.json").read_text())
    assert 0 <= env["cpu_seconds"] <= env["wall_seconds"] * 2 + 1


def test_skeleton_rejects_bad_arguments_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [["--scale", "huge"], ["--set", "nope=1"], ["--set", "effect=abc"], ["--out", str(tmp_path / "file" / "o")],
             ["--stages", "det"], ["--tiny", "--scale", "full"], ["--scale", "full"]]
    for argv in cases:
        with pytest.raises(UsageError):
            TOY.main(argv)
    assert not (tmp_path / "file").is_dir()


def test_run_ids_must_be_declared():
    bad = Reproduction(paper="toy", title="T", paper_table="", claims=CLAIMS, plans={"smoke": ToyPlan()},
                       run=lambda plan, ctx: Results(estimates={"undeclared": stats.exact(1.0)}))
    with pytest.raises(ValueError, match="missing from the claims/facts tables"):
        bad.assemble(bad.run(ToyPlan(), None))


# ---- reference results: compare, promote, README blocks ------------------------------------------------------
def _toy_document(tmp_path):
    out = tmp_path / "run"
    TOY.main(["--out", str(out), "--threads", "1"])
    return out, read_claims(out / "claims.json")


def test_compare_identical_runs_is_clean(tmp_path):
    _, document = _toy_document(tmp_path)
    _, problems = compare(document, document)
    assert problems == []


@pytest.mark.parametrize(
    ("doctor", "reason"),
    [
        (lambda d: d["claims"][0].update(verdict="fails", holds=False), "headline verdict holds -> fails"),
        (lambda d: d["claims"][1].update(measured=5.0), "outside"),
        (lambda d: d["claims"].pop(1), "missing from your run"),
        (lambda d: d["facts"][0].update(value=2.5), "exact fact changed"),
        (lambda d: d["facts"].pop(0), "fact params: missing"),
    ],
)
def test_strict_compare_names_the_difference(tmp_path, doctor, reason):
    _, reference = _toy_document(tmp_path)
    run = json.loads(json.dumps(reference))
    doctor(run)
    _, problems = compare(run, reference)
    assert any(reason in p for p in problems), problems


def test_timing_claimspec_marks_its_claims():
    spec = ClaimSpec(id="speedup", description="tokens/s method / baseline", paper=2.0, unit="ratio",
                     baseline="baseline", expect="> 1.0", timing=True)
    claim = spec.claim(stats.paired_ratio([2.0, 2.2, 1.9, 2.1], [1.0, 1.1, 1.0, 1.0]))
    assert claim.details["timing"] is True and summary_mod.is_timing(claim.as_dict())
    assert not summary_mod.is_timing(CLAIMS[1].claim(stats.paired_ratio([2.0, 2.2], [1.0, 1.1])).as_dict())
    validate_claims({"claims": [claim.as_dict()], "facts": []})


def _timing(document, index, factor=1.0, flip=False):
    claim = document["claims"][index]
    claim["details"]["timing"] = True
    claim["measured"] *= factor
    if flip:
        claim.update(verdict="fails", holds=False)


@pytest.mark.parametrize(
    ("doctor_ref", "doctor_run", "reason"),
    [
        # 10 % slower: far outside the tight within-run interval, inside the timing tolerance
        (lambda d: _timing(d, 1), lambda d: _timing(d, 1, 1.10), None),
        (lambda d: None, lambda d: _timing(d, 1, 0.85), None),  # marked in the run only (an older reference)
        (lambda d: _timing(d, 1), lambda d: _timing(d, 1, 1.40), "beyond ±25%"),
        (lambda d: _timing(d, 1), lambda d: _timing(d, 1, 0.60), "-40.0% from the reference"),
        (lambda d: _timing(d, 0), lambda d: _timing(d, 0, 1.0, flip=True), "headline verdict holds -> fails"),
    ],
)
def test_strict_compare_of_timing_claims(tmp_path, doctor_ref, doctor_run, reason):
    _, reference = _toy_document(tmp_path)
    run = json.loads(json.dumps(reference))
    doctor_ref(reference)
    doctor_run(run)
    lines, problems = compare(run, reference)
    if reason is None:
        assert problems == [] and any("(timing)" in line and line.endswith("| ok |") for line in lines), lines
    else:
        assert len(problems) == 1 and reason in problems[0], problems
    plain = json.loads(json.dumps(reference))
    plain["claims"][1]["details"].pop("timing", None)
    plain["claims"][1]["measured"] *= 1.10
    clean = json.loads(json.dumps(reference))
    clean["claims"][1]["details"].pop("timing", None)
    assert any("outside" in p for p in compare(plain, clean)[1])  # an accuracy-style claim keeps the interval check


def test_compare_cli_prints_the_rules_and_fails_on_one_line(tmp_path, monkeypatch):
    out, reference = _toy_document(tmp_path)
    folder = tmp_path / "results" / "reference" / "deepkd" / "smoke"
    folder.mkdir(parents=True)
    flipped = json.loads(json.dumps(reference))
    flipped["claims"][0].update(expect="<= 0", verdict="fails", holds=False)  # a valid file whose verdict differs
    (folder / "claims.json").write_text(json.dumps(flipped))
    cmd = [sys.executable, "-m", "effrepro.reproduce", "compare", "deepkd", "--run", str(out)]
    loose = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert loose.returncode == 0 and "±25%" in loose.stdout and "headline verdict fails -> holds" in loose.stdout
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, cwd=tmp_path)
    assert strict.returncode == 1
    assert strict.stderr == "error: deepkd: claim gain: headline verdict fails -> holds\n"


def test_informative_facts_may_change(tmp_path):
    _, reference = _toy_document(tmp_path)
    run = json.loads(json.dumps(reference))
    run["facts"][1]["value"] = 99.0
    assert compare(run, reference)[1] == []


def test_promote_and_readme_blocks(tmp_path, monkeypatch):
    out, _ = _toy_document(tmp_path)
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setattr(summary_mod, "PAPERS", ("toy",))
    (root / "README.md").write_text(f"intro\n{BEGIN}\nold\n{END}\nrest\n")
    (root / "toy").mkdir()
    (root / "toy" / "README.md").write_text(f"# toy\n{BEGIN}\n{END}\n")
    target = promote("toy", out, root=root)
    assert sorted(p.name for p in target.iterdir()) == ["claims.json", "env.json", "report.md"]
    changed = readme_updates(root)
    assert set(changed) == {root / "README.md", root / "toy" / "README.md"}
    assert "`gain`" in changed[root / "README.md"] and "rest" in changed[root / "README.md"]
    summary_mod.write_summary(root)
    assert readme_updates(root) == {}


def test_promote_refuses_an_unfinished_run(tmp_path):
    with pytest.raises(UsageError, match="no claims file"):
        promote("toy", tmp_path)


# ---- the repository's own reference results and README tables ------------------------------------------------
def test_committed_reference_results_are_valid_and_the_readmes_are_generated_from_them():
    for path in sorted((REPO / "results" / "reference").glob("*/*/claims.json")):
        read_claims(path)
        assert (path.parent / "env.json").is_file() and (path.parent / "report.md").is_file()
    stale = readme_updates(REPO)
    assert stale == {}, f"run `make summary`: {sorted(map(str, stale))}"


def test_dispatcher_reads_the_one_paper_list_and_checks_scale():
    assert PAPERS == tuple((REPO / "shared/src/effrepro/papers.txt").read_text().split())
    make_papers = subprocess.run(["make", "-s", "-C", str(REPO), "help"], capture_output=True, text=True).stdout
    assert " ".join(PAPERS) in make_papers
    for argv in (["run", "deepkd", "--scale", "huge"], ["run", "all", "--scale", "Full"], ["compare", "all"]):
        proc = subprocess.run([sys.executable, "-m", "effrepro.reproduce", *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


# ---- the reproduce CI workflow -------------------------------------------------------------------------------
def test_affected_papers():
    from effrepro.papers import affected_papers

    assert affected_papers(["shared/src/effrepro/stats.py"]) == list(PAPERS)
    assert affected_papers(["deepkd/README.md", "results/reference/gumiho/smoke/claims.json"]) == ["deepkd", "gumiho"]
    assert affected_papers(["docs/x.md"]) == []


def test_reproduce_workflow_is_valid_and_covers_the_papers():
    import yaml

    workflow = yaml.safe_load((REPO / ".github/workflows/reproduce.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"workflow_dispatch", "schedule", "push"} <= set(triggers)
    pushed = set(triggers["push"]["paths"])
    assert {f"{paper}/**" for paper in PAPERS} | {"shared/**"} <= pushed
    job = workflow["jobs"]["reproduce"]
    assert job["timeout-minutes"] == 45
    assert any("make ci-reproduce PAPER=${{ matrix.paper }}" == step.get("run") for step in job["steps"])
    all_papers = subprocess.run([sys.executable, "-m", "effrepro.papers", "all"], capture_output=True, text=True)
    assert json.loads(all_papers.stdout) == list(PAPERS)
    assert workflow["jobs"]["gpu-check"]["runs-on"] == ["self-hosted", "gpu"]


def test_cache_entries_know_their_key_and_record_given_seconds(tmp_path):
    from effrepro.reproduce import Context

    ctx = Context("toy", Plan(name="smoke"), tmp_path / "out")
    assert not ctx.is_cached("arm", {"seed": 1})
    assert ctx.cached("arm", lambda: [1, 2], key={"seed": 1}, seconds=42.0) == [1, 2]  # computed in a worker
    assert ctx.is_cached("arm", {"seed": 1}) and not ctx.is_cached("arm", {"seed": 2})
    resumed = Context("toy", Plan(name="smoke"), tmp_path / "out")
    assert resumed.cached("arm", lambda: pytest.fail("recomputed"), key={"seed": 1}) == [1, 2]
    assert resumed.reused == {"arm": 42.0}
    (tmp_path / "out" / "runs" / "arm.json").write_text("{not json")
    assert not resumed.is_cached("arm", {"seed": 1})
    assert Context("toy", Plan(name="smoke"), tmp_path / "out", resume=False).is_cached("arm", {"seed": 1}) is False


def test_cached_jobs_runs_only_what_is_missing_and_stores_each_job(tmp_path):
    from effrepro.reproduce import Context

    calls = []

    def cube(x):
        calls.append(x)
        return x**3

    names, keys = {k: f"job{k}" for k in range(4)}, {k: {"k": k} for k in range(4)}
    ctx = Context("toy", Plan(name="smoke"), tmp_path / "out")
    ctx.cached("job2", lambda: 8, key={"k": 2}, seconds=5.0)  # an earlier run left job 2
    got = list(ctx.cached_jobs(cube, {k: (k,) for k in range(4)}, names, keys))
    assert [k for k, _, _ in got] == [0, 1, 3, 2]  # the missing ones first, as they finish, then the cached
    assert got[-1][2] == 5.0  # a reused entry reports the seconds it cost when it was made, not the read
    assert {k: v for k, v, _ in got} == {k: k**3 for k in range(4)} and calls == [0, 1, 3]
    resumed = Context("toy", Plan(name="smoke"), tmp_path / "out")
    keys[1] = {"k": 1, "changed": True}
    again = {k: v for k, v, _ in resumed.cached_jobs(cube, {k: (k,) for k in range(4)}, names, keys, workers=1)}
    assert again == {k: k**3 for k in range(4)} and calls == [0, 1, 3, 1]  # only the job whose key changed
    assert set(resumed.reused) == {"job0", "job2", "job3"} and resumed.reused["job2"] == 5.0


def test_run_jobs_in_one_thread_processes_gives_the_serial_results():
    import torch
    from effrepro.reproduce import run_jobs

    jobs = {k: (k, 3) for k in range(4)}
    serial = list(run_jobs(pow, jobs))
    assert [k for k, _, _ in serial] == list(jobs) and all(s >= 0 for _, _, s in serial)  # here, in order
    parallel = {k: r for k, r, _ in run_jobs(pow, jobs, workers=2)}
    assert parallel == {k: r for k, r, _ in serial} == {k: k**3 for k in jobs}
    threads = {k: r for k, r, _ in run_jobs(torch.get_num_threads, {"a": (), "b": ()}, workers=2)}
    assert threads == {"a": 1, "b": 1}
    assert list(run_jobs(pow, {}, workers=2)) == []


def test_run_jobs_stops_starting_jobs_after_one_fails(tmp_path):
    from effrepro.reproduce import run_jobs

    # the first job fails at once; each other one sleeps, then leaves a folder: without cancelling, all 12 would run
    jobs = {"bad": (["sh", "-c", "exit 3"],)}
    jobs |= {k: (["sh", "-c", f"sleep 2; mkdir {tmp_path / str(k)}"],) for k in range(12)}
    with pytest.raises(subprocess.CalledProcessError):
        list(run_jobs(subprocess.check_call, jobs, workers=2))
    started = len(list(tmp_path.iterdir()))
    # still run: the one beside it, the one the freed worker takes, and the pool's call queue (workers + 1 items)
    assert 1 <= started <= 5


def test_seed_span_names_a_contiguous_run_by_its_ends_and_lists_the_rest():
    from effrepro.report import seed_span

    assert seed_span(range(60, 210)) == "60-209"
    assert seed_span((7, 5, 6)) == "5-7"
    assert seed_span((2, 3)) == "2, 3"
    assert seed_span((0, 2, 3)) == "0, 2, 3"
    assert seed_span(()) == "none"
