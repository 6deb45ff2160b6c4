"""Distillation on BANKING77 over longer training: test accuracy of a small student after every epoch.

``distill_banking77.py`` compares students at one epoch budget; this script answers "does KD pull ahead if the
student trains longer, or if the student starts without the task in its weights?". One run per invocation, so
several runs can share a machine as separate processes (e.g. ``OMP_NUM_THREADS=1`` each, two at a time on 2 cores);
each appends one JSON line per epoch to ``--log`` and the markdown table is rebuilt from every line in it.

- ``--init teacher``: the student is blocks ``[0, 2, 4]`` of the fine-tuned teacher, with its classification head
  (DistilBERT-style initialisation from the fine-tuned weights; the setting of ``distill_banking77.py``);
- ``--init pretrained``: the same blocks of the pretrained backbone the teacher was fine-tuned from, with a new head;
- ``--layers 0 3`` (or ``--layers 0``): a smaller student, further below its teacher, where KD has room to help.

    OMP_NUM_THREADS=1 python -m benchmarks.distillation.distill_curves_banking77 --teacher CKPT --run "no KD" --epochs 6
    OMP_NUM_THREADS=1 python -m benchmarks.distillation.distill_curves_banking77 --teacher CKPT --run "logit KD" \\
        --epochs 6 --temperature 4 --alpha 0.1

Writes benchmarks/distillation/results/distill_curves_banking77.{md,jsonl}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import Distillation  # noqa: E402
from agent_lightning.evaluation import accuracy  # noqa: E402
from agent_lightning.io import atomic_write_text  # noqa: E402
from benchmarks.common import DEFAULT_DATA, banking77, command_line, quiet_trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

RUNS = ("no KD", "logit KD", "logit + hidden KD")


class TestAccuracyEachEpoch(Callback):
    """Append the test accuracy after every training epoch to a JSON-lines file (and print it)."""

    def __init__(self, loader, log: Path, fields: dict) -> None:
        self.loader, self.log_file, self.fields = loader, log, fields

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with torch.no_grad():  # accuracy() evaluates in eval mode and puts the module back in training mode
            test_acc = accuracy(trainer.strategy, pl_module, self.loader)
        line = json.dumps({**self.fields, "epoch": trainer.current_epoch + 1, "test_acc": test_acc})
        print(line, flush=True)
        with self.log_file.open("a") as handle:
            handle.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned 6-layer agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--run", choices=RUNS, required=True)
    parser.add_argument("--init", choices=("teacher", "pretrained"), default="teacher")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4], help="teacher blocks the student keeps")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log", type=Path, default=RESULTS / "distill_curves_banking77.jsonl")
    args = parser.parse_args()

    dm = banking77(args.data_dir)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    callbacks = {
        "no KD": [],
        "logit KD": [Distillation(str(args.teacher), **kd)],
        "logit + hidden KD": [Distillation(str(args.teacher), **kd, hidden_weight=args.hidden_weight)],
    }[args.run]
    settings = {"run": args.run, "init": args.init, "epochs": args.epochs, "lr": args.lr, "seed": args.seed}
    if args.layers != [0, 2, 4]:  # older lines of the log have no "layers": they are the default
        settings["layers"] = args.layers
    if callbacks:
        settings.update(temperature=args.temperature, alpha=args.alpha)
    settings["command"] = command_line()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        teacher_dir = Agent.load_from_checkpoint(args.teacher).save_pretrained(Path(folder) / "teacher")
        seed_everything(args.seed)  # then the student's new weights (if any) and the data order
        if args.init == "teacher":
            student = Agent(model=str(teacher_dir), student_layers=args.layers, learning_rate=args.lr)
        else:
            student = Agent(labels=dm.label_names, student_layers=args.layers, learning_rate=args.lr)
        probe = TestAccuracyEachEpoch(dm.test_dataloader(), args.log, settings)
        quiet_trainer([probe, *callbacks], max_epochs=args.epochs, limit_val_batches=0).fit(student, datamodule=dm)
    _write(args.log)


def _write(log: Path) -> None:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    runs: dict[tuple, dict[int, float]] = {}
    for line in lines:
        key = tuple((k, str(v)) for k, v in line.items() if k not in ("epoch", "test_acc", "command"))
        runs.setdefault(key, {})[line["epoch"]] = line["test_acc"]
    epochs = max((e for curve in runs.values() for e in curve), default=0)
    header = "| run | student blocks | init | epochs | lr | T | alpha | seed | " + " | ".join(
        f"ep {e}" for e in range(1, epochs + 1)
    )
    table = [header + " |", "|" + "---|" * (8 + epochs)]
    for key, curve in runs.items():
        s = dict(key)
        cells = [f"{100 * curve[e]:.2f}" if e in curve else "" for e in range(1, epochs + 1)]
        table.append(
            f"| {s['run']} | {s.get('layers', '[0, 2, 4]')} | {s['init']} | {s['epochs']} | {s['lr']} | "
            f"{s.get('temperature', '')} | {s.get('alpha', '')} | {s['seed']} | " + " | ".join(cells) + " |"
        )
    commands = sorted({line["command"] for line in lines})
    text = [
        "# Students of the fine-tuned MiniLM agent on BANKING77: test accuracy (%) after every epoch",
        "",
        "Each run's learning rate decays linearly to zero over its own `epochs`, so a curve's middle is not a "
        "shorter run's end. Batch 32; test split of 3,080 requests.",
        "",
        *table,
        "",
        "Commands:",
        "",
        *[f"- `{c}`" for c in commands],
    ]
    atomic_write_text(log.with_suffix(".md"), "\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
