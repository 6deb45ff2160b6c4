"""Learning from feedback on BANKING77: an agent trained on part of the training data is served; a stream of the
held-back training requests is replayed through ``POST /predict`` by users who correct every wrong answer
(``POST /feedback``); ``learn`` folds the corrections in; the next round serves the learned agent. Test accuracy on
the 3,080 test requests before and after each round.

Everything goes through the real server on loopback and the real store; the store accumulates over the rounds, so
each ``learn`` sees all corrections so far (and always the original training rows).

    python -m benchmarks.serving.feedback_banking77                    # the table in results/
    python -m benchmarks.serving.feedback_banking77 --stream 300 --rounds 1 --epochs 1 --learn-epochs 1

Writes benchmarks/serving/results/feedback_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import csv
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

from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.datamodules.sources import read_labelled_file  # noqa: E402
from agent_lightning.serving import RequestStore  # noqa: E402
from agent_lightning.serving.learn import learn_from_feedback  # noqa: E402
from benchmarks.common import DEFAULT_DATA, accuracy_on_test, command_line, quiet_trainer, write_results  # noqa: E402
from benchmarks.serving.load import _serve  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows(rows)
    return path


def _post(url: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--train-rows", type=int, default=2000, help="training rows the served agent starts from (stratified)"
    )
    parser.add_argument("--stream", type=int, default=2000, help="held-back requests replayed per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the first training")
    parser.add_argument("--learn-epochs", type=int, default=2)
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
    seed_everything(args.seed)
    dm = TextClassificationDataModule(**data)
    agent = Agent(labels=dm.label_names, learning_rate=2e-4, warmup_fraction=0.1)
    quiet_trainer(max_epochs=args.epochs, limit_val_batches=0).fit(agent, datamodule=dm)
    checkpoint = work / "round0.ckpt"
    trainer = quiet_trainer()
    trainer.strategy.connect(agent)
    trainer.save_checkpoint(checkpoint)
    before = accuracy_on_test(agent, dm)
    store = work / "requests.db"
    results = []
    for round_index in range(args.rounds):
        stream = rest[round_index * args.stream : (round_index + 1) * args.stream]
        process, url = _serve(checkpoint, store, max_batch_size=8, threads=2)
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
        served_s = time.perf_counter() - started
        summary = learn_from_feedback(
            checkpoint, store, work / f"round{round_index + 1}", data=data, epochs=args.learn_epochs
        )
        checkpoint = Path(summary.checkpoint)
        row = {
            "round": round_index + 1,
            "replayed": len(stream),
            "stream_acc": 1 - corrections / len(stream),
            "corrections": corrections,
            "feedback_so_far": RequestStore(store).stats()["feedback"],
            "serve_s": served_s,
            "test_acc_before": summary.test_acc_before,
            "test_acc_after": summary.test_acc_after,
        }
        results.append(row)
        print(row, flush=True)
    lines = [
        "# Learning from feedback (BANKING77)",
        "",
        f"Command: `{command_line()}`. The MiniLM agent trained on {len(start)} training rows (stratified) "
        f"({args.epochs} epochs; test accuracy {100 * before:.2f} %), served by `agent-lightning serve`; each round "
        f"replays {args.stream} other training requests (lists of 32 per request) and corrects every wrong answer "
        f"through `POST /feedback`, then `learn` ({args.learn_epochs} epochs, corrections repeated 4 times, the "
        "original rows replayed) and the next round serves the result. Test accuracy on the 3,080 test requests.",
        "",
        "| round | requests replayed | answered right | corrections | test accuracy before | after |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['round']} | {r['replayed']} | {100 * r['stream_acc']:.2f} % | {r['corrections']} | "
        f"{100 * r['test_acc_before']:.2f} % | {100 * r['test_acc_after']:.2f} % |"
        for r in results
    ]
    write_results(args.output, lines, {"command": command_line(), "initial_test_acc": before, "rounds": results})


if __name__ == "__main__":
    main()
