"""Every benchmark script runs from the repository root as its README documents (``python -m benchmarks...``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _dict_batches_model():
    from lightning.pytorch.demos.boring_classes import BoringModel

    model = BoringModel()  # batches as the agents' data modules give them: dicts with input_ids
    rows = [{"input_ids": torch.ones(32)} for _ in range(24)]
    model.train_dataloader = lambda: torch.utils.data.DataLoader(rows, batch_size=4)
    model.training_step = lambda batch, batch_idx: model.layer(batch["input_ids"]).sum()
    return model


def test_step_timer_reports_a_smoke_run_shorter_than_its_warm_up(tmp_path):
    from benchmarks.timing import StepTimer
    from tests.conftest import quiet_trainer

    short, long = StepTimer(skip=3), StepTimer(skip=3)
    quiet_trainer(tmp_path, [short], max_steps=2, limit_val_batches=0).fit(_dict_batches_model())
    assert short.step_seconds == [] and len(short.warmup_seconds) == 2
    assert short.median_step_seconds > 0  # a smoke run (--limit-batches 2) still gets a figure, not an error
    quiet_trainer(tmp_path, [long], max_steps=6, limit_val_batches=0).fit(_dict_batches_model())
    assert len(long.step_seconds) == 3 and long.median_step_seconds in long.step_seconds  # warm-up left out
    assert long.samples == 12


def test_compress_smollm2_names_each_student_run_by_what_differs():
    from benchmarks.llm.compress_smollm2 import _run_name

    assert _run_name("forward", {}) == "forward"
    assert _run_name("sft", {"temperature": "2"}, seed=43) == "sft-seed43"  # sft distils nothing: no settings
    settings = {"temperature": "2", "prompt_weight": "1"}
    assert (
        _run_name("skew", settings, 43, 50, list(range(20)))
        == "skew-prompt_weight1-temperature2-generated50-from20-seed43"
    )
    assert _run_name("forward", {}, steps="25,20") == "forward-steps25-20"
    assert _run_name("forward", {}, 43, start=list(range(20)), ema=0.98) == "forward-from20-ema0.98-seed43"
    # another budget or rate is another run: --measure-only must not read the recipe's run under the same name
    assert _run_name("forward", {}, epochs=3, lr=3e-4) == "forward"
    assert _run_name("forward", {}, epochs=5, lr=1e-4) == "forward-epochs5-lr0.0001"


def test_compress_smollm2_numbers_the_kept_blocks_as_the_teachers(tmp_path):
    """Through a depth step (student-20 beside student) and a --student-from start, the table's block numbers are
    the teacher's; a step run again is read from its newest version (version_10 after version_9)."""
    from benchmarks.llm.compress_smollm2 import _teacher_blocks

    def run(folder: str, kept: list[int], version: int = 0) -> Path:
        checkpoints = tmp_path / "forward-steps20" / folder / f"version_{version}" / "checkpoints"
        checkpoints.mkdir(parents=True)
        torch.save({"hyper_parameters": {"student_layers": kept}}, checkpoints / "last.ckpt")
        return checkpoints.parent

    run("student-20", list(range(20)), version=9)  # an older run of the step
    run("student-20", [*range(9), *range(19, 30)], version=10)  # of the teacher's 30
    final = run("student", [0, 1, 2, 8, *range(9, 20)])  # of the step's 20
    assert _teacher_blocks(final, None, None) == [0, 1, 2, 8, *range(9, 20)]
    assert _teacher_blocks(final, None, "20") == [0, 1, 2, 8, *range(19, 30)]
    start = [2 * block for block in range(30)]  # a --student-from start: teacher blocks 0, 2, 4, ...
    assert _teacher_blocks(final, start, "20") == [0, 2, 4, 16, *range(38, 60, 2)]


def test_compress_smollm2_reads_the_raw_weights_an_ema_checkpoint_keeps_beside_the_average(tmp_path):
    from benchmarks.llm.compress_smollm2 import _without_average

    checkpoint = tmp_path / "last.ckpt"
    average, raw = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.save({"state_dict": average, "current_model_state": raw, "averaging_state": {"n_averaged": 3}}, checkpoint)
    copy = torch.load(_without_average(checkpoint, str(tmp_path)), weights_only=False)
    assert copy["state_dict"]["w"].equal(raw["w"]) and set(copy) == {"state_dict"}
    torch.save({"state_dict": average}, checkpoint)  # saved without the callback
    with pytest.raises(ValueError, match=r"holds no current_model_state; was it saved with EMAWeightAveraging"):
        _without_average(checkpoint, str(tmp_path))
