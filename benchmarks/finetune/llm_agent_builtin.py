"""A decoder LLM agent on the built-in assistant-actions data: SmolLM2-135M-Instruct zero-shot and fine-tuned,
beside the fine-tuned MiniLM classifier.

Side by side in one process, same threads, the same splits (the stratified validation split carved with seed 0;
the 314 test requests):

- **SmolLM2 zero-shot**: the actions listed in the prompt (``list_actions=True``); answers decoded within the action
  set (constrained) and freely (unconstrained: the share that is exactly the right action, and the share that is no
  action at all);
- **SmolLM2 fine-tuned** (``task="generation"``, loss on the answer's tokens only, no action list in the prompt);
- **MiniLM fine-tuned** (the classifier of ``configs/default.yaml``).

Speed: ms per request is ``act([text])`` on one request at a time (tokenization and decoding included), median
over ``--timed`` test requests; answer tokens/s is the answer's tokens (end token included) divided by that time.

    python -m benchmarks.finetune.llm_agent_builtin                  # the table in results/
    python -m benchmarks.finetune.llm_agent_builtin --epochs 1 --timed 3 --limit-batches 2 --output /tmp/look

Writes benchmarks/finetune/results/llm_agent_builtin.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from benchmarks.common import command_line, quiet_trainer, write_results  # noqa: E402
from benchmarks.timing import StepTimer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMOLLM2 = "smollm2-135m-instruct"


def _data(task: str, **kwargs) -> TextClassificationDataModule:
    tokenizer = SMOLLM2 if task == "generation" else None  # the agent's own tokenizer, as the CLI links it
    return TextClassificationDataModule(dataset="assistant-actions", task=task, tokenizer=tokenizer, **kwargs)


def _per_request(agent: Agent, texts: list[str]) -> tuple[float, float]:
    """Median ms of ``act([text])`` and the mean answer length in tokens (end token included)."""
    agent.act(texts[:1])  # warm-up
    seconds, tokens = [], []
    for text in texts:
        started = time.perf_counter()
        ((answer, _),) = agent.act([text])
        seconds.append(time.perf_counter() - started)
        if agent.hparams.task == "generation":
            tokens.append(len(agent.chat_prompt.response_ids(answer)))
    return 1000 * statistics.median(seconds), statistics.mean(tokens) if tokens else 0.0


def _row(name: str, metrics: dict, timing: tuple[float, float], train_seconds: list[float] | None) -> dict:
    ms, tokens = timing
    return {
        "model": name,
        "action_acc": metrics.get("test/action_acc", metrics.get("test/acc")),
        "free_action_acc": metrics.get("test/free_action_acc"),
        "invalid_rate": metrics.get("test/invalid_rate"),
        "ms_per_request": ms,
        "answer_tokens_per_s": tokens / ms * 1000 if tokens else None,
        "train_s_per_epoch": statistics.mean(train_seconds) if train_seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="SmolLM2 fine-tuning epochs")
    parser.add_argument("--lr", type=float, default=1e-4, help="SmolLM2 fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=80)
    parser.add_argument("--classifier-epochs", type=int, default=6)
    parser.add_argument("--timed", type=int, default=30, help="test requests timed one at a time")
    parser.add_argument("--limit-batches", type=int, default=None, help="a quick look: batches per fit and test")
    parser.add_argument("--output", type=Path, default=RESULTS / "llm_agent_builtin")
    args = parser.parse_args()
    limit = {} if args.limit_batches is None else {"limit_train_batches": args.limit_batches}
    test_limit = {} if args.limit_batches is None else {"limit_test_batches": args.limit_batches}
    rows = []
    texts = _data("classification").splits["test"].texts[: args.timed]

    # SmolLM2 zero-shot: the actions listed in the prompt
    zero_dm = _data("generation", list_actions=True, max_length=256, eval_batch_size=16)
    zero = Agent(model=SMOLLM2, task="generation", labels=zero_dm.label_names, list_actions=True, max_length=256)
    metrics = quiet_trainer(**test_limit).test(zero, datamodule=zero_dm, verbose=False)[0]
    rows.append(_row("SmolLM2-135M-Instruct, zero-shot (actions listed)", metrics, _per_request(zero, texts), None))
    print(rows[-1], flush=True)
    del zero

    # SmolLM2 fine-tuned
    seed_everything(42)
    dm = _data("generation", max_length=args.max_length, batch_size=args.batch_size, eval_batch_size=32)
    agent = Agent(
        model=SMOLLM2,
        task="generation",
        labels=dm.label_names,
        learning_rate=args.lr,
        max_length=args.max_length,
        warmup_fraction=0.1,
    )
    timer = StepTimer()
    trainer = quiet_trainer([timer], max_epochs=args.epochs, limit_val_batches=0, **limit)
    trainer.fit(agent, datamodule=dm)
    metrics = quiet_trainer(**test_limit).test(agent, datamodule=dm, verbose=False)[0]
    rows.append(
        _row(
            f"SmolLM2-135M-Instruct, fine-tuned ({args.epochs} epochs)",
            metrics,
            _per_request(agent, texts),
            timer.epoch_seconds,
        )
    )
    print(rows[-1], flush=True)
    del agent

    # MiniLM classifier fine-tuned (configs/default.yaml)
    seed_everything(42)
    dm = _data("classification", batch_size=32)
    classifier = Agent(labels=dm.label_names, learning_rate=2e-4, warmup_fraction=0.1)
    timer = StepTimer()
    quiet_trainer([timer], max_epochs=args.classifier_epochs, limit_val_batches=0, **limit).fit(
        classifier, datamodule=dm
    )
    metrics = quiet_trainer(**test_limit).test(classifier, datamodule=dm, verbose=False)[0]
    rows.append(
        _row(
            f"all-MiniLM-L6-v2 classifier, fine-tuned ({args.classifier_epochs} epochs)",
            metrics,
            _per_request(classifier, texts),
            timer.epoch_seconds,
        )
    )
    print(rows[-1], flush=True)

    def pct(value):
        return "" if value is None else f"{100 * float(value):.2f} %"

    lines = [
        "# A decoder LLM agent on the built-in assistant-actions data",
        "",
        f"Command: `{command_line()}`. {torch.get_num_threads()} CPU thread(s). Test split: 314 requests, 24 actions. "
        "Action accuracy: constrained decoding for SmolLM2 (every answer is an action), argmax for the classifier; "
        "free decoding: the share of unconstrained answers that are exactly the right action, and the share that "
        f"is no action. ms per request: `act([text])` one request at a time, median over {args.timed} test requests. "
        f"SmolLM2 fine-tuned with lr {args.lr}, batch {args.batch_size}; MiniLM with lr 2e-4, batch 32.",
        "",
        "| model | action accuracy | free decoding: right / not an action | ms per request | answer tokens/s "
        "| training s/epoch |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        free = "" if row["free_action_acc"] is None else f"{pct(row['free_action_acc'])} / {pct(row['invalid_rate'])}"
        speed = "" if row["answer_tokens_per_s"] is None else f"{row['answer_tokens_per_s']:.1f}"
        train = "" if row["train_s_per_epoch"] is None else f"{row['train_s_per_epoch']:.0f}"
        lines.append(
            f"| {row['model']} | {pct(row['action_acc'])} | {free} | {row['ms_per_request']:.1f} | {speed} | {train} |"
        )
    write_results(args.output, lines, {"command": command_line(), "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
