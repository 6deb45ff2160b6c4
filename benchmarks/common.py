"""What every BANKING77 benchmark shares: where the data is, a quiet CPU trainer, and test accuracy."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch import Trainer  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.io import atomic_write_text  # noqa: E402

__all__ = ["DEFAULT_DATA", "accuracy_on_test", "banking77", "command_line", "quiet_trainer", "write_results"]

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "banking77"


def banking77(data_dir: Path = DEFAULT_DATA, batch_size: int = 32, **kwargs) -> TextClassificationDataModule:
    """The BANKING77 CSV folder (``text,category``) as a datamodule, 64 tokens at most."""
    return TextClassificationDataModule(
        dataset=str(data_dir), label_column="category", batch_size=batch_size, max_length=64, **kwargs
    )


def quiet_trainer(callbacks=(), **kwargs) -> Trainer:
    """A one-process CPU trainer without logger, checkpoints, progress bar, summary or sanity check."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return Trainer(callbacks=list(callbacks), **{**defaults, **kwargs})


def accuracy_on_test(agent: Agent, dm: TextClassificationDataModule, limit_batches: int | None = None) -> float:
    """``test/acc`` of ``agent`` on the test split (the first ``limit_batches`` batches when given)."""
    limit = {} if limit_batches is None else {"limit_test_batches": limit_batches}
    return quiet_trainer(**limit).test(agent, datamodule=dm, verbose=False)[0]["test/acc"]


def command_line() -> str:
    """The command that runs this script (``python -m benchmarks.FOLDER.SCRIPT``, from the repository root) with
    the arguments it was given, for the results file."""
    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(HERE.parent).with_suffix("").parts)
    except ValueError:  # run from elsewhere: name the file
        return "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])
    return "python -m " + shlex.join([module, *sys.argv[1:]])


def write_results(output: Path, lines: list[str], data: Any) -> None:
    """Write the markdown ``lines`` to ``output.md`` and ``data`` to ``output.json`` (atomically), and print the
    markdown."""
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write_text(output.with_suffix(".json"), json.dumps(data, indent=2, default=float))
    print("\n".join(lines))
