"""Every benchmark script runs from the repository root as its README documents (``python -m benchmarks...``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*/*.py") if p.name != "__init__.py")


def test_every_benchmark_folder_has_a_readme_that_names_its_scripts():
    folders = {p.parent for p in SCRIPTS}
    assert len(folders) >= 5
    for folder in folders:
        readme = (folder / "README.md").read_text(encoding="utf-8")
        for script in folder.glob("*.py"):
            if script.name != "__init__.py":
                assert f"python -m benchmarks.{folder.name}.{script.stem}" in readme, (folder.name, script.name)


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{p.parent.name}.{p.stem}" for p in SCRIPTS])
def test_every_benchmark_runs_as_a_module(script):
    module = f"benchmarks.{script.parent.name}.{script.stem}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
