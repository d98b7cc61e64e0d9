"""A regular (non-editable) install carries what a user needs: the console script and the shipped configs.

The project is built into a wheel from a copy of its folder (offline: the venv's setuptools, no build isolation)
and installed with ``pip install --target``; the checks then run with that folder first on ``sys.path``, so the
package comes from the wheel, not from the editable source checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG_LOAD = """
import sys
from pathlib import Path
from effrepro.config import find_config, load_config, package_configs
import {package}
from {package}.config import {config_class}

site = Path(sys.argv[1]).resolve()
assert Path({package}.__file__).resolve().is_relative_to(site), {package}.__file__
configs = package_configs("{package}")
assert configs.resolve().is_relative_to(site) and not configs.is_symlink(), configs
cfg = load_config(find_config("{config}", "{package}"), {config_class})
print(type(cfg).__name__, sorted(p.name for p in configs.iterdir()))
"""


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(("package", "config_class", "config"), [
    ("gumiho", "GumihoRunConfig", "smoke.yaml"),
    ("double_rounding", "Config", "smoke_mnist.yaml"),
])
def test_wheel_install_has_console_script_and_configs(package: str, config_class: str, config: str,
                                                      tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT / package, source, symlinks=True,
                    ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__", "tests"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), ".",
         cwd=source)
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheels[0]), cwd=tmp_path)

    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = site / "bin" / package
    assert script.is_file(), sorted(p.name for p in (site / "bin").iterdir())
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stderr[-2000:]

    code = CONFIG_LOAD.format(package=package, config_class=config_class, config=config)
    proc = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert config in proc.stdout and config_class in proc.stdout, proc.stdout


PAPERS = tuple(line.strip() for line in (ROOT / "shared/src/effrepro/papers.txt").read_text().splitlines()
               if line.strip())
WITH_CONFIGS = [p for p in PAPERS if list((ROOT / p).glob("configs/*"))]  # jakiro has none (a clean clone lacks it)


@pytest.mark.parametrize("package", WITH_CONFIGS)
def test_configs_are_package_data(package: str) -> None:
    """Every project with configs ships them the same way: ``src/<pkg>/configs`` is the project's ``configs/``
    (so the source checkout, an editable and a regular install read the same files) and is package data."""
    from effrepro.config import package_configs

    assert package_configs(package).resolve() == (ROOT / package / "configs").resolve()
    assert f'"{package}" = ["configs/**/*.yaml", "configs/**/*.py"]' in (ROOT / package / "pyproject.toml").read_text()
    sources = "\n".join(p.read_text() for p in (ROOT / package / "src" / package).rglob("*.py"))
    assert "parents[2]" not in sources, "find configs with effrepro.config.package_configs / find_config"
