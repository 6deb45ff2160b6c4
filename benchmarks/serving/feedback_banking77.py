"""Learning from feedback on BANKING77, with a compressed student served: a teacher fine-tuned on part of the
training data is compressed by the recipe (``compress --teacher``: 3 of 6 blocks, distilled, 50 % sparse, int8) and
its export is served; a stream of held-back training requests is replayed through ``POST /predict`` by users who
correct every wrong answer (``POST /feedback``); ``learn --compress`` fine-tunes the teacher on the original rows
plus the corrections, re-runs the recipe (the served requests nobody corrected as unlabelled text) and the next
round serves the new export. Test accuracy of the served student on the 3,080 test requests before and after each
round.

The control arm spends the same compute without the corrections: each round it fine-tunes its teacher for the
same epochs on the original rows only and re-runs the same recipe with every served request as unlabelled text.
The gap between the arms is what the feedback bought, not the extra epochs.

Everything goes through the real server on loopback and the real store; the store accumulates over the rounds, so
each ``learn`` sees all corrections so far (and always the original training rows).

    python -m benchmarks.serving.feedback_banking77                    # the table in results/
    python -m benchmarks.serving.feedback_banking77 --stream 300 --rounds 1 --epochs 1 --learn-epochs 1 \\
        --student-epochs 1 --no-control

Writes benchmarks/serving/results/feedback_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.cli.learn import learn_command  # noqa: E402
from agent_lightning.cli.recipes import run_recipe  # noqa: E402
from agent_lightning.datamodules.sources import read_labelled_file  # noqa: E402
from agent_lightning.deployment.compare import RecipeSummary  # noqa: E402
from agent_lightning.io import atomic_write_csv  # noqa: E402
from agent_lightning.serving import RequestStore  # noqa: E402
from benchmarks.common import DEFAULT_DATA, command_line, quiet_trainer, write_results  # noqa: E402
from benchmarks.serving.load import _serve  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LEARNING_RATE = 2e-4


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    atomic_write_csv(path, rows)
    return path


def _post(url: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def _save(agent: Agent, path: Path) -> Path:
    trainer = quiet_trainer()
    trainer.strategy.connect(agent)
    trainer.save_checkpoint(path)
    return path


def _compress(config: Path, teacher: Path, folder: Path, student_epochs: int, unlabeled: Path | None) -> RecipeSummary:
    """The recipe on the teacher checkpoint, the data of ``config``; the export lands in ``folder/export-onnx``."""
    args = ["-c", str(config), "--teacher", str(teacher), "--student-epochs", str(student_epochs)]
    args += [f"--trainer.default_root_dir={folder}", "--output", str(folder / "export-onnx")]
    return run_recipe(args + (["--unlabeled", str(unlabeled)] if unlabeled else []))


def _replay(export: Path, store: Path, stream: list[tuple[str, str]]) -> tuple[int, float]:
    """Every request of ``stream`` through the served export, 32 per ``POST``; every wrong answer corrected.
    Returns (corrections, seconds)."""
    process, url = _serve(export, store, max_batch_size=8, threads=2)
    corrections, started = 0, time.perf_counter()
    try:
        for chunk_start in range(0, len(stream), 32):
            chunk = stream[chunk_start : chunk_start + 32]
            answers = _post(f"{url}/predict", {"text": [text for text, _ in chunk]})["answers"]
            for answer, (_, label) in zip(answers, chunk):
                if answer["action"] != label:  # the user corrects every wrong answer
                    _post(f"{url}/feedback", {"id": answer["id"], "action": label})
                    corrections += 1
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return corrections, time.perf_counter() - started


def _control_round(checkpoint: Path, data: dict, epochs: int, seed: int, path: Path) -> Path:
    """What ``learn`` does, on the original rows only: the same epochs, batch, seed and learning rate."""
    agent = Agent.load_from_checkpoint(checkpoint, map_location="cpu")
    seed_everything(seed)
    agent.train()
    quiet_trainer(max_epochs=epochs, limit_val_batches=0).fit(agent, datamodule=TextClassificationDataModule(**data))
    return _save(agent, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--train-rows", type=int, default=2000, help="training rows the first teacher learns from (stratified)"
    )
    parser.add_argument("--stream", type=int, default=2000, help="held-back requests replayed per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the first teacher")
    parser.add_argument("--learn-epochs", type=int, default=2, help="learn --epochs (and the control's)")
    parser.add_argument("--student-epochs", type=int, default=3, help="the recipe's student epochs")
    parser.add_argument("--feedback-repeats", type=int, default=1, help="learn --feedback-repeats")
    parser.add_argument("--no-control", action="store_true", help="skip the control arm")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", type=Path, default=RESULTS / "feedback_banking77")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="feedback-"))
    train = read_labelled_file(args.data_dir / "train.csv", "text", "category", "train")
    test = read_labelled_file(args.data_dir / "test.csv", "text", "category", "test")
    rows = list(zip(train.texts, train.labels))
    random.Random(args.seed).shuffle(rows)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    per_label = max(1, args.train_rows // len(by_label))  # stratified: every intent in every split
    validation = [row for group in by_label.values() for row in group[:6]]
    start = [row for group in by_label.values() for row in group[6 : 6 + per_label]]
    taken = set(validation) | set(start)
    rest = [row for row in rows if row not in taken]
    data = {
        "train_file": str(_write(work / "train.csv", start)),
        "val_file": str(_write(work / "val.csv", validation)),
        "test_file": str(_write(work / "test.csv", list(zip(test.texts, test.labels)))),
        "batch_size": 32,
    }
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "seed_everything": args.seed,
                "trainer": {"max_epochs": args.student_epochs, "log_every_n_steps": 10},
                "model": {"learning_rate": LEARNING_RATE, "warmup_fraction": 0.1},
                "data": {**data, "max_length": 64},
            }
        ),
        encoding="utf-8",
    )
    seed_everything(args.seed)
    dm = TextClassificationDataModule(**data)
    agent = Agent(labels=dm.label_names, learning_rate=LEARNING_RATE, warmup_fraction=0.1)
    quiet_trainer(max_epochs=args.epochs, limit_val_batches=0).fit(agent, datamodule=dm)
    teacher = control = _save(agent, work / "round0.ckpt")
    first = _compress(config, teacher, work / "round0", args.student_epochs, None)
    export = work / "round0" / "export-onnx"
    store = work / "requests.db"
    results = []
    served = [first.student_acc, first.student_acc]  # (feedback arm, control arm) before the round
    for round_index in range(args.rounds):
        stream = rest[round_index * args.stream : (round_index + 1) * args.stream]
        corrections, served_s = _replay(export, store, stream)
        learned = work / f"round{round_index + 1}"
        learn_args = ["--feedback", str(store), "--ckpt", str(teacher), "-c", str(config), "--output", str(learned)]
        learn_args += ["--epochs", str(args.learn_epochs), "--feedback-repeats", str(args.feedback_repeats)]
        learn_args += ["--compress", "--student-epochs", str(args.student_epochs)]
        learning = learn_command(learn_args)
        teacher = Path(learning.checkpoint)
        export = learned / "compress" / "student" / "version_0" / "export-onnx"
        after = json.loads((export.parent / "summary.json").read_text())
        row = {
            "round": round_index + 1,
            "replayed": len(stream),
            "stream_acc": 1 - corrections / len(stream),
            "corrections": corrections,
            "feedback_so_far": RequestStore(store).stats()["feedback"],
            "serve_s": served_s,
            "student_acc_before": served[0],
            "student_acc_after": after["student_acc"],
            "teacher_acc_before": learning.test_acc_before,
            "teacher_acc_after": learning.test_acc_after,
            "student_zipped": after["student_zipped"],
        }
        if not args.no_control:
            control_folder = work / f"control{round_index + 1}"
            control_folder.mkdir()
            control = _control_round(control, data, args.learn_epochs, args.seed, control_folder / "teacher.ckpt")
            everything = rest[: (round_index + 1) * args.stream]
            unlabeled = _write(control_folder / "unlabeled.csv", [(text, "") for text, _ in everything])
            controlled = _compress(config, control, control_folder, args.student_epochs, unlabeled)
            row.update(
                control_student_before=served[1],
                control_student_after=controlled.student_acc,
                control_teacher_after=controlled.teacher_acc,
            )
            served[1] = controlled.student_acc
        served[0] = after["student_acc"]
        results.append(row)
        print(row, flush=True)
    pct = "{:.2f} %".format
    lines = [
        "# Learning from feedback (BANKING77), a compressed student served",
        "",
        f"Command: `{command_line()}`. A MiniLM teacher fine-tuned on {len(start)} training rows (stratified, "
        f"{args.epochs} epochs) is compressed by `compress --teacher` (blocks 0,2,4 of 6, distilled, 50 % sparse, "
        f"int8, ONNX export, {args.student_epochs} student epochs; test accuracy {pct(100 * first.student_acc)}, "
        f"teacher "
        f"{pct(100 * first.teacher_acc)}) and the export is served by `agent-lightning serve`. Each round replays "
        f"{args.stream} other training requests (lists of 32 per request), corrects every wrong answer through "
        f"`POST /feedback`, then `learn --compress` ({args.learn_epochs} teacher epochs on the original rows plus "
        f"the corrections (each {args.feedback_repeats} time(s)); the recipe again, the uncorrected served requests "
        "as unlabelled text) "
        "and the next round serves the new export. The control arm does the same without the corrections (its "
        "teacher fine-tuned for the same epochs on the original rows, the same recipe, every served request as "
        "unlabelled text). Test accuracy on the 3,080 test requests.",
        "",
        "| round | requests replayed | served student answered right | corrections | served student: test "
        "accuracy before | after | teacher after | control arm: student after | control teacher after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['round']} | {r['replayed']} | {pct(100 * r['stream_acc'])} | {r['corrections']} | "
        f"{pct(100 * r['student_acc_before'])} | **{pct(100 * r['student_acc_after'])}** | "
        f"{pct(100 * r['teacher_acc_after'])} | "
        + (
            f"{pct(100 * r['control_student_after'])} | {pct(100 * r['control_teacher_after'])} |"
            if "control_student_after" in r
            else " | |"
        )
        for r in results
    ]
    summary = {"command": command_line(), "first_student_acc": first.student_acc}
    summary["first_teacher_acc"] = first.teacher_acc
    write_results(args.output, lines, {**summary, "rounds": results})


if __name__ == "__main__":
    main()
