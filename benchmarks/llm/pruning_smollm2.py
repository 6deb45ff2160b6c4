"""Pruning the SmolLM2 agent: the one-shot methods LLM people use against our gradual pruning, at the same sparsity.

Starts from the fine-tuned SmolLM2-135M-Instruct agent (``python train.py fit -c configs/llm.yaml``) and prunes the
linear layers of its 30 blocks (``q/k/v/o_proj``, ``gate/up/down_proj``; embeddings and the tied head stay), on the
built-in data's splits:

- **one shot, no training**: magnitude (``|W|``, per layer) and Wanda (``|W| * ||X||`` per output row, Sun et al.
  2023; input norms from ``--calibration`` training batches), at 50 % unstructured and at 2:4;
- **gradual** (``Pruning`` during ``--epochs`` of fine-tuning from the same checkpoint, cubic schedule to the target
  at 70 % of training): magnitude at 50 % and 2:4, and Wanda at 50 % (input norms observed during training).

Each model is tested like the agent (``Trainer.test``): action accuracy of the answers decoded within the action set,
perplexity of the test answers (their tokens only), and the share of free answers that are no action.

    python -m benchmarks.llm.pruning_smollm2 --teacher runs/agent/version_0/checkpoints/last.ckpt
    python -m benchmarks.llm.pruning_smollm2 --teacher CKPT --epochs 1 --limit-batches 2 --output /tmp/look
    python -m benchmarks.llm.pruning_smollm2 --teacher CKPT --rows gradual-wanda-50 gradual-magnitude-2:4 \
        --output benchmarks/llm/results/pruning_smollm2_gradual        # some rows only (the teacher's always)

Writes benchmarks/llm/results/pruning_smollm2.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.callbacks import Pruning  # noqa: E402
from agent_lightning.pruning import PruningConfig, prune  # noqa: E402
from agent_lightning.targets import select_modules  # noqa: E402
from benchmarks.common import command_line, quiet_trainer, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: (name, PruningConfig arguments)
TARGETS = {"50 %": {"sparsity": 0.5}, "2:4": {"sparsity": 0.5, "method": "n:m", "pattern": "2:4"}}
ONE_SHOT = [(criterion, target) for target in TARGETS for criterion in ("magnitude", "wanda")]
GRADUAL = [("magnitude", "50 %"), ("magnitude", "2:4"), ("wanda", "50 %")]


def _row_id(kind: str, criterion: str, target: str) -> str:
    return f"{kind}-{criterion}-{target.replace(' %', '')}"


ROWS = [_row_id("one-shot", *row) for row in ONE_SHOT] + [_row_id("gradual", *row) for row in GRADUAL]


def _data(teacher: Agent, batch_size: int) -> TextClassificationDataModule:
    hp = teacher.hparams
    return TextClassificationDataModule(
        dataset="assistant-actions",
        task="generation",
        tokenizer=hp.model,
        max_length=hp.max_length,
        system_prompt=hp.system_prompt,
        list_actions=hp.list_actions,
        batch_size=batch_size,
        eval_batch_size=32,
    )


def _test(agent: Agent, dm: TextClassificationDataModule, limit: int | None) -> dict[str, float]:
    extra = {} if limit is None else {"limit_test_batches": limit}
    metrics = quiet_trainer(**extra).test(agent, datamodule=dm, verbose=False)[0]
    return {key.removeprefix("test/"): float(value) for key, value in metrics.items()}


def _zeros(agent: Agent) -> float:
    """The share of zeros in the block linears' weights."""
    layers = select_modules(agent).values()
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned SmolLM2 agent checkpoint")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of gradual pruning")
    parser.add_argument("--calibration", type=int, default=16, help="training batches Wanda's one shot reads")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of gradual pruning's fine-tuning")
    parser.add_argument("--limit-batches", type=int, default=None, help="a quick look: batches per fit and test")
    parser.add_argument("--output", type=Path, default=RESULTS / "pruning_smollm2")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS, help="which rows to measure (default: all)")
    args = parser.parse_args()
    limit = args.limit_batches

    def load() -> Agent:
        return Agent.load_from_checkpoint(args.teacher, map_location="cpu")

    teacher = load()
    dm = _data(teacher, args.batch_size)
    rows = [{"model": "fine-tuned teacher (dense)", "sparsity": 0.0, "seconds": 0.0, **_test(teacher, dm, limit)}]
    print(rows[-1], flush=True)
    del teacher

    for criterion, target in ONE_SHOT:
        if _row_id("one-shot", criterion, target) not in args.rows:
            continue
        agent = load()
        started = time.perf_counter()
        calibration = {}
        if criterion == "wanda":
            dm.setup("fit")
            calibration = {"calibration": dm.train_dataloader(), "max_batches": args.calibration}
        prune(agent, PruningConfig(criterion=criterion, **TARGETS[target]), **calibration)
        seconds = time.perf_counter() - started
        name = f"one shot, {criterion}, {target}"
        rows.append({"model": name, "sparsity": _zeros(agent), "seconds": seconds, **_test(agent, dm, limit)})
        print(rows[-1], flush=True)
        del agent

    for criterion, target in GRADUAL:
        if _row_id("gradual", criterion, target) not in args.rows:
            continue
        seed_everything(42)
        agent = load()
        agent.hparams.learning_rate = args.lr
        pruning = Pruning(criterion=criterion, start=0.0, end=0.7, frequency=5, log_per_layer=False, **TARGETS[target])
        extra = {} if limit is None else {"limit_train_batches": limit}
        started = time.perf_counter()
        quiet_trainer([pruning], max_epochs=args.epochs, limit_val_batches=0, **extra).fit(agent, datamodule=dm)
        seconds = time.perf_counter() - started
        name = f"gradual ({args.epochs} epoch{'s' if args.epochs > 1 else ''}), {criterion}, {target}"
        rows.append({"model": name, "sparsity": _zeros(agent), "seconds": seconds, **_test(agent, dm, limit)})
        print(rows[-1], flush=True)
        del agent

    def pct(value: float) -> str:
        return f"{100 * value:.2f} %"

    lines = [
        "# Pruning the SmolLM2 agent: one shot against gradual, at the same sparsity",
        "",
        f"Command: `{command_line()}`. {torch.get_num_threads()} CPU threads. Built-in data: 314 test requests, 24 "
        "actions. The pruned weights are the linear layers of the 30 blocks (embeddings and the tied head stay "
        "dense). Action accuracy: answers decoded within the action set; perplexity: of the test answers' tokens; "
        f"not an action: free answers that are no action. Wanda's one shot reads {args.calibration} training "
        f"batches of {args.batch_size}; gradual pruning fine-tunes for {args.epochs} epoch(s) at lr {args.lr} "
        "(cubic schedule, target at 70 % of training). Seconds: the pruning (one shot) or the fine-tuning (gradual).",
        "",
        "| model | sparsity | action accuracy | perplexity | not an action | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {pct(row['sparsity'])} | {pct(row['action_acc'])} | {row['perplexity']:.3f} | "
            f"{pct(row['invalid_rate'])} | {row['seconds']:.0f} |"
        )
    write_results(args.output, lines, {"command": command_line(), "rows": rows})


if __name__ == "__main__":
    main()
