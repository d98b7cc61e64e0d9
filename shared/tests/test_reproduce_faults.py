"""Fault tests of the reproduce contract: a run killed mid-stage (SIGINT, SIGTERM or SIGKILL) resumes from its last
finished stage and ends with the same claims as an uninterrupted run; a corrupted or truncated stage cache is
detected and rebuilt; a killed run leaves no half-written result file behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from effrepro.report import read_claims

# A two-stage toy paper on the skeleton. Each stage's compute appends its name to COUNTS (how often it ran);
# with BLOCK set, stage "b" announces itself in BLOCK and then waits to be killed.
SCRIPT = textwrap.dedent('''
    import os, sys, time
    from dataclasses import dataclass
    from pathlib import Path

    import numpy as np
    from effrepro import stats
    from effrepro.errors import run_cli
    from effrepro.reproduce import ClaimSpec, Plan, Reproduction, Results, run_stages

    @dataclass(frozen=True, kw_only=True)
    class FaultPlan(Plan):
        seeds: tuple = (0, 1, 2, 3, 4, 5)
        stages: tuple = ("a", "b")

    def compute(name, plan):
        with open(os.environ["COUNTS"], "a") as handle:
            handle.write(name + "\\n")
        if name == "b" and os.environ.get("BLOCK"):
            Path(os.environ["BLOCK"]).write_text("started")
            time.sleep(600)
        rng = np.random.default_rng({"a": 1, "b": 2}[name])
        return [float(70 + s + rng.normal(1.0, 0.3)) for s in plan.seeds]

    def stage(name):
        def step(plan, ctx, results):
            with ctx.stage(name):
                values = ctx.cached(name, lambda: compute(name, plan), key={"seeds": plan.seeds})
            base = [70.0 + s for s in plan.seeds]
            results.estimates[f"{name}_gain"] = stats.paired_diff(values, base)
        return step

    CLAIMS = [ClaimSpec(id=f"{n}_gain", description=f"stage {n} gain", paper=1.0, unit="points", baseline="base",
                        expect="> 0", headline=n == "a") for n in ("a", "b")]
    TOY = Reproduction(paper="faulty", title="Faults", paper_table="", claims=CLAIMS, stages=("a", "b"),
                       plans={"smoke": FaultPlan(), "tiny": FaultPlan(name="tiny")},
                       run=run_stages({"a": stage("a"), "b": stage("b")}))
    if __name__ == "__main__":
        run_cli(TOY.main, sys.argv[1:])
''')


def _ctrl_c_as_a_terminal_gives_it() -> None:
    """A shell's background job (``make test &``, nohup, some CI runners) starts with SIGINT ignored, and Python
    then keeps it ignored: restore the default so the child gets Ctrl-C as it would in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(tmp_path: Path, out: Path, block: Path | None) -> subprocess.Popen:
    script = tmp_path / "faulty.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, COUNTS=str(tmp_path / "counts.txt"), EFFREPRO_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("BLOCK", None)
    if block is not None:
        env["BLOCK"] = str(block)
    return subprocess.Popen([sys.executable, str(script), "--out", str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_ctrl_c_as_a_terminal_gives_it)


def _finish(tmp_path: Path, out: Path) -> tuple[str, dict]:
    proc = _start(tmp_path, out, None)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, read_claims(out / "claims.json")


def _counts(tmp_path: Path) -> list[str]:
    path = tmp_path / "counts.txt"
    return path.read_text().split() if path.exists() else []


def _claims(document: dict) -> list[dict]:
    return [{k: c[k] for k in ("id", "measured", "ci", "n", "verdict")} for c in document["claims"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The claims of an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _, document = _finish(tmp, tmp / "out")
    assert _counts(tmp) == ["a", "b"]
    return _claims(document)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_run_killed_mid_stage_resumes_from_the_last_finished_stage(tmp_path, reference, sig):
    out, block = tmp_path / "out", tmp_path / "b-started"
    proc = _start(tmp_path, out, block)
    deadline = time.monotonic() + 120
    while not block.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "stage b never started"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
    assert proc.returncode == expected, stderr[-3000:]
    assert "Traceback" not in stderr
    assert (out / "runs" / "a.json").is_file() and not (out / "runs" / "b.json").exists()
    assert not (out / "claims.json").exists()  # no result from a half-done run
    assert not [p.name for p in out.rglob(".*")], "temporary files left behind"
    stdout, document = _finish(tmp_path, out)
    assert "a: reusing" in stdout
    assert _counts(tmp_path) == ["a", "b", "b"]  # stage a ran once; b again after the kill
    assert _claims(document) == reference


def _in_process(tmp_path: Path, monkeypatch, capsys):
    """The toy paper's ``main``, imported (fast), counting into ``tmp_path``."""
    import importlib.util

    script = tmp_path / "faulty_module.py"
    script.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("faulty_module", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setenv("COUNTS", str(tmp_path / "counts.txt"))
    monkeypatch.delenv("BLOCK", raising=False)

    def finish(out: Path) -> tuple[str, dict]:
        capsys.readouterr()
        assert module.TOY.main(["--out", str(out), "--threads", "1"]) == 0
        return capsys.readouterr().out, read_claims(out / "claims.json")

    return finish


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "no-value", "foreign-key"])
def test_a_damaged_stage_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    finish = _in_process(tmp_path, monkeypatch, capsys)
    out = tmp_path / "out"
    _, first = finish(out)
    cache = out / "runs" / "a.json"
    text = cache.read_text()
    damaged = {"garbage": "\x00\x01 not json", "truncated": text[: len(text) // 2], "empty": "",
               "no-value": json.dumps({"key": json.loads(text)["key"]}),
               "foreign-key": json.dumps({**json.loads(text), "key": {"seeds": [9]}, "value": [0.0]})}[damage]
    cache.write_text(damaged)
    stdout, document = finish(out)
    assert "a: reusing" not in stdout and "b: reusing" in stdout
    assert _counts(tmp_path) == ["a", "b", "a"]
    assert _claims(document) == _claims(first)
    assert json.loads(cache.read_text())["value"] == json.loads(text)["value"]  # rebuilt in place


# ---- temporary cache folders and torn metrics lines ------------------------------------------------------------
HOLDER = textwrap.dedent('''
    import sys, time
    from pathlib import Path

    from effrepro.errors import run_cli
    from effrepro.outputs import temporary_folder

    def main(argv):
        with temporary_folder(argv[0], "draft-data") as tmp:
            (tmp / "0000000.pt").write_bytes(b"x" * 1000)
            Path(argv[1]).write_text(str(tmp))
            time.sleep(600)
        return 0

    run_cli(main, sys.argv[1:])
''')


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_temporary_cache_folders_never_outlive_their_run(tmp_path, sig):
    """Ctrl-C and SIGTERM remove the folder at once; after SIGKILL the next run's folder removes the stale one."""
    from effrepro.outputs import make_temporary_folder

    cache, started = tmp_path / "cache", tmp_path / "started"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(cache), str(started)], stderr=subprocess.PIPE,
                            text=True, preexec_fn=_ctrl_c_as_a_terminal_gives_it)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    held = Path(started.read_text())
    assert held.is_dir() and held.name.startswith(f".draft-data-{proc.pid}-")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
    assert held.exists() == (sig == signal.SIGKILL)
    fresh = make_temporary_folder(cache, "draft-data")
    assert not held.exists() and [p.name for p in cache.iterdir()] == [fresh.name]


def test_stale_folders_of_live_processes_and_other_names_are_kept(tmp_path):
    from effrepro.outputs import remove_stale

    live = tmp_path / f".draft-data-{os.getpid()}-abc"
    legacy, other = tmp_path / ".draft-data-k2j3h4", tmp_path / ".mnist-123-abc"
    dead = tmp_path / ".draft-data-999999999-abc"  # above any pid_max
    for folder in (live, legacy, other, dead):
        folder.mkdir()
    assert sorted(p.name for p in remove_stale(tmp_path, "draft-data")) == sorted([legacy.name, dead.name])
    assert live.is_dir() and other.is_dir()


def test_a_torn_metrics_line_is_skipped_and_the_next_row_starts_its_own_line(tmp_path):
    from effrepro.train import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')  # killed mid-write
    log = MetricsLogger(path)
    log.log(step=3)
    assert [row["step"] for row in log.read()] == [1, 3]
