"""Distillation on BANKING77: a 3-layer student of the fine-tuned 6-layer MiniLM agent, with and without KD.

Teacher: the fine-tuned agent checkpoint (``finetune_banking77.py``). Student: blocks ``[0, 2, 4]`` of the teacher
(DistilBERT-style initialisation from the fine-tuned weights). Side by side in one process, same epochs, optimizer
and seed:

- student without KD (its own cross-entropy only);
- student with logit KD (``Distillation(teacher=..., temperature, alpha)``, teacher-logit cache on);
- student with logit + hidden-state KD (``hidden_weight``; student block i against teacher block 2i+1).

Also measured: training-step time of each run (KD's first epoch fills the cache, later epochs reuse it) and CPU
inference latency of student versus teacher (round-robin, batch 1 and 32).

    python -m benchmarks.distillation.distill_banking77 \\
        --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt

Writes benchmarks/distillation/results/distill_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import Distillation  # noqa: E402
from agent_lightning.deployment.measure import compare_latency, token_inputs  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    accuracy_on_test,
    banking77,
    command_line,
    quiet_trainer,
    write_results,
)
from benchmarks.timing import StepTimer  # noqa: E402

RUNS = (
    "student, no KD",
    "student + logit KD",
    "student + logit + hidden KD",
    "student + logit + attention KD",
    "student + logit KD on augmented copies",
)

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS = RUNS[:3]


def _per_epoch_steps(timer: StepTimer, steps_per_epoch: int) -> list[float]:
    """Median step seconds of each epoch (the timer skips its first few steps)."""
    seconds = [0.0] * timer.skip + timer.step_seconds
    return [
        statistics.median(seconds[max(timer.skip, e * steps_per_epoch) : (e + 1) * steps_per_epoch])
        for e in range(len(seconds) // steps_per_epoch)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned 6-layer agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4], help="teacher blocks the student keeps")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--hidden-weight", type=float, default=1.0)
    parser.add_argument("--attention-weight", type=float, default=1.0)
    parser.add_argument("--augment", type=float, default=0.2, help="token fraction replaced in the augmented copies")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=DEFAULT_RUNS, help="student runs to train")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke test: batches per epoch and test")
    parser.add_argument("--output", type=Path, default=RESULTS / "distill_banking77.md")
    args = parser.parse_args()
    dm = banking77(args.data_dir)
    teacher = Agent.load_from_checkpoint(args.teacher)
    limit = {} if args.limit_batches is None else {"limit_train_batches": args.limit_batches}
    test_limit = args.limit_batches
    rows: dict[str, dict] = {
        "teacher (6 layers)": {"test_acc": accuracy_on_test(teacher, dm, test_limit), "params": _params(teacher)}
    }
    with tempfile.TemporaryDirectory() as folder:
        teacher_dir = teacher.save_pretrained(Path(folder) / "teacher")
        kd = {"temperature": args.temperature, "alpha": args.alpha}
        runs = {
            "student, no KD": [],
            "student + logit KD": [Distillation(str(args.teacher), **kd)],
            "student + logit + hidden KD": [Distillation(str(args.teacher), **kd, hidden_weight=args.hidden_weight)],
            "student + logit + attention KD": [
                Distillation(str(args.teacher), **kd, attention_weight=args.attention_weight)
            ],
            "student + logit KD on augmented copies": [Distillation(str(args.teacher), **kd, augment=args.augment)],
        }
        runs = {name: callbacks for name, callbacks in runs.items() if name in args.runs}
        students = {}
        for name, callbacks in runs.items():
            seed_everything(args.seed)
            student = Agent(model=str(teacher_dir), student_layers=args.layers, learning_rate=args.lr)
            timer = StepTimer()
            trainer = quiet_trainer([timer, *callbacks], max_epochs=args.epochs, limit_val_batches=0, **limit)
            trainer.fit(student, datamodule=dm)
            steps_per_epoch = trainer.num_training_batches
            rows[name] = {
                "test_acc": accuracy_on_test(student, dm, test_limit),
                "params": _params(student),
                "epoch_step_seconds": _per_epoch_steps(timer, steps_per_epoch),
                "epoch_seconds": timer.epoch_seconds,
            }
            if callbacks and callbacks[0].cache is not None:
                rows[name]["cache"] = {"hits": callbacks[0].cache.hits, "misses": callbacks[0].cache.misses}
            print(json.dumps({name: rows[name]}), flush=True)
            students[name] = student
    latency = {
        batch: compare_latency(
            {"teacher": teacher.model, "student": next(iter(students.values())).model}, token_inputs(batch)
        )
        for batch in (1, 32)
    }
    _write(args, {"rows": rows, "latency": latency, "threads": torch.get_num_threads()})


def _params(agent: Agent) -> int:
    return sum(p.numel() for p in agent.parameters())


def _write(args, result: dict) -> None:
    rows, latency = result["rows"], result["latency"]
    teacher = rows["teacher (6 layers)"]["test_acc"]
    lines = [
        "# Distilling the 6-layer MiniLM agent into 3 of its layers on BANKING77 (CPU)",
        "",
        f"Student: teacher blocks {args.layers}; {args.epochs} epochs, lr {args.lr}, batch 32, seed {args.seed}; "
        f"KD: T={args.temperature}, alpha={args.alpha}, hidden_weight={args.hidden_weight} (student block i vs "
        f"teacher block 2i+1), augment={args.augment}. {os.cpu_count()} CPU cores, torch {torch.__version__}.",
        f"Command: `{command_line()}`.",
        "",
        "| model | test accuracy | Δ vs teacher | parameters | step time, epoch 1 | step time, later epochs |",
        "|---|---|---|---|---|---|",
    ]
    base_steps = rows.get("student, no KD", {}).get("epoch_step_seconds")
    for name, row in rows.items():
        steps = row.get("epoch_step_seconds")
        first = later = ""
        if steps and base_steps:
            first = f"{steps[0]:.3f} s ({steps[0] / base_steps[0]:.2f}x)"
            if len(steps) > 1:
                rest, base_rest = statistics.mean(steps[1:]), statistics.mean(base_steps[1:])
                later = f"{rest:.3f} s ({rest / base_rest:.2f}x)"
        lines.append(
            f"| {name} | {100 * row['test_acc']:.2f} % | {100 * (row['test_acc'] - teacher):+.2f} pt | "
            f"{row['params'] / 1e6:.2f} M | {first} | {later} |"
        )
    lines += [
        "",
        "Step-time ratios are against the student without KD in the same epoch. Logit KD fills the teacher-logit "
        "cache in epoch 1 and reuses it afterwards; hidden-state KD runs the teacher every step.",
        "",
        "CPU inference latency (median, sequence length 64, round-robin): student vs teacher "
        f"batch 1 {latency[1]['student'] / latency[1]['teacher']:.2f}x "
        f"({1000 * latency[1]['student']:.1f} vs {1000 * latency[1]['teacher']:.1f} ms), batch 32 "
        f"{latency[32]['student'] / latency[32]['teacher']:.2f}x "
        f"({1000 * latency[32]['student']:.0f} vs {1000 * latency[32]['teacher']:.0f} ms).",
    ]
    write_results(args.output, lines, result)


if __name__ == "__main__":
    main()
