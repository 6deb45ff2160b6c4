"""Which half of SmolLM2's blocks a student should keep: span distance against block influence, and fixed patterns.

Starts from the fine-tuned SmolLM2-135M-Instruct agent (``python train.py fit -c configs/llm.yaml``) and builds
students of ``--keep`` of its 30 blocks, initialised from its weights (``agent_lightning.pruning.depth``):

- **span** (``--student-layers auto:N``, the default): all but the contiguous span of blocks whose input and output
  hidden states are closest (angular distance on 8 training batches; Gromov et al. 2024);
- **influence** (``influence:N``): the ``N`` blocks of highest block influence (ShortGPT's ``1 - cos`` of each block
  alone);
- **every other block** (DistilBERT's choice), and **block 0 then every other from block 1**.

Each student is validated as it starts (no training: action accuracy with decoding constrained to the actions,
perplexity of the answers) and, for ``--fine-tune`` (default: span and influence), again after one epoch of
fine-tuning on the answers alone (no distillation, no quantization) at peak lr ``--lr``: how fast each start recovers
at the same budget. Validation split (142 requests), so the choice is not made on the test requests.

    python -m benchmarks.llm.depth_smollm2 --teacher runs/agent/version_0/checkpoints/last.ckpt

Writes benchmarks/llm/results/depth_smollm2.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.distillation.students import keep_layers  # noqa: E402
from agent_lightning.pruning.depth import choose_blocks  # noqa: E402
from agent_lightning.targets import block_list  # noqa: E402
from benchmarks.common import command_line, quiet_trainer, write_results  # noqa: E402
from benchmarks.llm.pruning_smollm2 import _data  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHOICES = ("span", "influence", "every other", "0 then every other")


def _validate(agent: Agent, dm) -> dict[str, float]:
    metrics = quiet_trainer().validate(agent, datamodule=dm, verbose=False)[0]
    return {key.removeprefix("val/"): float(value) for key, value in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned SmolLM2 agent checkpoint")
    parser.add_argument("--keep", type=int, default=15, help="blocks each student keeps")
    parser.add_argument("--fine-tune", nargs="*", default=["span", "influence"], choices=CHOICES)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the one-epoch fine-tuning")
    parser.add_argument("--output", type=Path, default=RESULTS / "depth_smollm2")
    args = parser.parse_args()

    seed_everything(42)
    teacher = Agent.load_from_checkpoint(args.teacher, map_location="cpu").eval()
    dm = _data(teacher, 16)
    dm.setup("fit")
    calibration = list(dm.train_dataloader())[:8]
    count = len(block_list(teacher.model)[1])
    span = choose_blocks(teacher, calibration, args.keep, "span")
    influence = choose_blocks(teacher, calibration, args.keep, "influence")
    layers = {
        "span": span.kept,
        "influence": influence.kept,
        "every other": list(range(0, count, 2))[: args.keep],
        "0 then every other": [0, *range(1, count, 2)][: args.keep],
    }
    rows = []
    for name, kept in layers.items():
        student = copy.deepcopy(teacher)
        keep_layers(student.model, kept)
        student.hparams["student_layers"] = kept
        row = {"choice": name, "kept": kept, "start": _validate(student, dm)}
        if name in args.fine_tune:
            seed_everything(42)
            student.hparams.learning_rate = args.lr
            started = time.perf_counter()
            quiet_trainer(max_epochs=1, limit_val_batches=0).fit(student, datamodule=dm)
            row["seconds"] = time.perf_counter() - started
            row["tuned"] = _validate(student, dm)
        rows.append(row)
        print(row, flush=True)
        del student

    def cells(metrics: dict[str, float] | None) -> str:
        if metrics is None:
            return " | |"
        return f"{100 * metrics['action_acc']:.2f} % | {metrics['perplexity']:.4g} |"

    lines = [
        "# Which blocks a half-depth SmolLM2 student keeps",
        "",
        f"Command: `{command_line()}`. {torch.get_num_threads()} CPU threads. Built-in data, validation split (142 "
        f"requests); {args.keep} of {count} blocks, initialised from the teacher; fine-tuned: one epoch on the "
        f"answers alone at peak lr {args.lr:g} (no distillation, no quantization).",
        "",
        "Span distances (first block of the dropped span: angular distance): "
        + ", ".join(f"{first}: {score:.4f}" for first, score in enumerate(span.scores)),
        "",
        "Block influence: " + ", ".join(f"{block}: {score:.4f}" for block, score in enumerate(influence.scores)),
        "",
        "| choice | kept blocks | action accuracy, as built | perplexity, as built | action accuracy, fine-tuned "
        "| perplexity, fine-tuned |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['choice']} | {row['kept']} | {cells(row['start'])} {cells(row.get('tuned'))}")
    write_results(args.output, lines, {"command": command_line(), "rows": rows})


if __name__ == "__main__":
    main()
