"""Distillation where it pays: few labels per intent plus the unlabelled rest of BANKING77's training texts.

For each number of labels per intent ``N`` and each seed, side by side in one process:

- the teacher: the 6-layer MiniLM agent fine-tuned on the ``N`` labels per intent only (``labels_per_class=N``, a
  stratified subsample drawn with the seed);
- students of 3 of its blocks (``--layers``, initialised from the fine-tuned teacher), trained on the same labels:
  **no KD**; **KD on the labelled rows only**; **KD on labelled + unlabelled rows** (``unlabeled_file="rest"``: the
  training texts the subsample left out, marked ``-100`` so the task loss skips them); and, with ``--composition``,
  the full composition (KD with the unlabelled rows + ``Pruning(0.5)`` + int8 QAT + int8 embeddings).

No checkpoint is picked on validation data (every model is tested as its fit ends), so the held-out labels of the
validation split never inform a model. Test accuracy on the 3,080 test requests. Each invocation appends one JSON
line per trained model to ``--log`` and rebuilds the markdown table from every line in it, so seeds and settings
can run as separate processes (``OMP_NUM_THREADS=1``, two at a time on 2 cores):

    python -m benchmarks.distillation.few_labels_banking77 --labels-per-class 10 30 --seeds 42 1 2 --composition

Writes benchmarks/distillation/results/few_labels_banking77.{md,jsonl}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import (  # noqa: E402
    Distillation,
    EmbeddingCompression,
    Pruning,
    QuantizationAwareTraining,
)
from agent_lightning.io import atomic_write_text  # noqa: E402
from benchmarks.common import DEFAULT_DATA, accuracy_on_test, banking77, command_line, quiet_trainer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("teacher", "no KD", "KD, labelled rows", "KD, labelled + unlabelled rows", "composition + unlabelled rows")


def _fit(agent: Agent, dm, epochs: int, callbacks=()) -> dict:
    started = time.perf_counter()
    trainer = quiet_trainer(list(callbacks), max_epochs=epochs, limit_val_batches=0)
    trainer.fit(agent, datamodule=dm)
    return {"steps": trainer.global_step, "seconds": time.perf_counter() - started}


def _record(args: argparse.Namespace, row: dict) -> None:
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({**row, "command": command_line()}) + "\n")
    print(f"N={row['labels_per_class']} seed={row['seed']} {row['arm']}: {100 * row['test_acc']:.2f} %", flush=True)


def run(args: argparse.Namespace, per_class: int, seed: int) -> None:
    """One setting: the teacher and the student arms, each tested on the test split and recorded."""
    labelled = banking77(args.data_dir, labels_per_class=per_class, split_seed=seed)
    with_unlabeled = banking77(args.data_dir, labels_per_class=per_class, split_seed=seed, unlabeled_file="rest")
    setting = {"labels_per_class": per_class, "seed": seed, "temperature": args.temperature, "alpha": args.alpha}
    setting["epochs"] = {"teacher": args.teacher_epochs, "labelled": args.epochs, "unlabelled": args.unlabeled_epochs}
    seed_everything(seed)
    teacher = Agent(labels=labelled.label_names, learning_rate=args.teacher_lr)
    fit = _fit(teacher, labelled, args.teacher_epochs)
    _record(args, {**setting, "arm": "teacher", **fit, "test_acc": accuracy_on_test(teacher, labelled)})
    with tempfile.TemporaryDirectory() as folder:
        teacher_dir = teacher.save_pretrained(Path(folder) / "teacher")
        kd = {"temperature": args.temperature, "alpha": args.alpha}
        arms = {
            "no KD": (labelled, args.epochs, []),
            "KD, labelled rows": (labelled, args.epochs, [Distillation(teacher, **kd)]),
            "KD, labelled + unlabelled rows": (with_unlabeled, args.unlabeled_epochs, [Distillation(teacher, **kd)]),
        }
        if ARMS[4] in args.arms:  # --composition, or the arm named in --arms
            compression = [
                Distillation(teacher, **kd),
                Pruning(0.5, end=0.6),
                QuantizationAwareTraining(start=0.8),
                EmbeddingCompression(),
            ]
            arms["composition + unlabelled rows"] = (with_unlabeled, args.unlabeled_epochs, compression)
        for name, (dm, epochs, callbacks) in arms.items():
            if name not in args.arms:
                continue
            seed_everything(seed)
            student = Agent(model=str(teacher_dir), student_layers=args.layers, learning_rate=args.lr)
            fit = _fit(student, dm, epochs, callbacks)
            _record(args, {**setting, "arm": name, **fit, "test_acc": accuracy_on_test(student, labelled)})


def _label(row: dict) -> str:
    """The table row a result belongs to: its arm, with the KD settings and epochs where not the defaults."""
    arm = row["arm"]
    if arm in ("teacher", "no KD"):
        return arm
    notes = []
    kd = (row.get("temperature", 2.0), row.get("alpha", 0.5))
    if kd != (2.0, 0.5):
        notes.append(f"T={kd[0]:g}, alpha={kd[1]:g}")
    epochs = row.get("epochs", {}).get("unlabelled", 3)
    if "unlabelled" in arm and epochs != 3:
        notes.append(f"{epochs} epochs")
    return f"{arm} ({', '.join(notes)})" if notes else arm


def table(rows: list[dict]) -> list[str]:
    """Rows: arms (and KD settings); columns: each N: mean ± sd over seeds, and each seed's value."""
    latest = {(_label(r), r["labels_per_class"], r["seed"]): r for r in rows}  # a rerun replaces its row
    rows = list(latest.values())
    settings = sorted({row["labels_per_class"] for row in rows})
    labels = sorted({_label(row) for row in rows}, key=lambda label: (ARMS.index(label.split(" (")[0]), label))
    lines = ["| arm | " + " | ".join(f"N = {n} per intent" for n in settings) + " |"]
    lines.append("|---|" + "---|" * len(settings))
    for label in labels:
        cells = []
        for n in settings:
            chosen = [r for r in rows if _label(r) == label and r["labels_per_class"] == n]
            found = sorted((r["seed"], 100 * r["test_acc"]) for r in chosen)
            values = [v for _, v in found]
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f} % (seed {found[0][0]})")
            else:
                seeds = ", ".join(str(seed) for seed, _ in found)
                each = ", ".join(f"{v:.2f}" for v in values)
                spread = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} %"
                cells.append(f"{spread} (seeds {seeds}: {each})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--labels-per-class", type=int, nargs="+", default=[10], help="labelled examples per intent")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4], help="teacher blocks the student keeps")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--teacher-lr", type=float, default=2e-4)
    parser.add_argument("--epochs", type=int, default=15, help="epochs of the students trained on the labels alone")
    parser.add_argument("--unlabeled-epochs", type=int, default=3, help="epochs of the students with unlabelled rows")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--composition", action="store_true", help="also train the full compression composition")
    parser.add_argument("--arms", nargs="+", choices=ARMS[1:], default=list(ARMS[1:4]), help="student arms to train")
    parser.add_argument("--log", type=Path, default=RESULTS / "few_labels_banking77.jsonl")
    parser.add_argument("--render", action="store_true", help="train nothing: rebuild the table from --log")
    args = parser.parse_args()
    if args.composition and ARMS[4] not in args.arms:
        args.arms.append(ARMS[4])
    for n in [] if args.render else args.labels_per_class:
        for seed in args.seeds:
            run(args, n, seed)
    rows = [json.loads(line) for line in args.log.read_text(encoding="utf-8").splitlines() if line.strip()]
    commands = "; ".join(sorted({f"`{row['command']}`" for row in rows}))
    lines = [
        "# Distillation with few labels and unlabelled text (BANKING77)",
        "",
        f"Commands: {commands}. Teacher: 6-layer MiniLM fine-tuned on N labelled requests per intent "
        f"({args.teacher_epochs} epochs, lr {args.teacher_lr}); students: teacher blocks {args.layers}, lr {args.lr}, "
        f"{args.epochs} epochs on the labels alone, 3 epochs with the unlabelled rest of the training texts and KD "
        "T=2, alpha=0.5 unless the row says otherwise. Test accuracy on the 3,080 test requests, every model as its "
        "fit ends.",
        "",
        *table(rows),
        "",
        f"Optimizer steps and seconds of each fit are in `{args.log.name}` beside this file.",
    ]
    atomic_write_text(args.log.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
