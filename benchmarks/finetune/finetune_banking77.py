"""Fine-tune the packaged MiniLM agent on BANKING77 and measure what dynamic padding buys.

Side by side in one process, same threads:
1. training throughput with (a) dynamic padding + length-grouped batches, (b) dynamic padding with random batches,
   (c) fixed padding to 64 tokens — the same number of steps each, from the same starting weights;
2. a full fine-tune with (a): seconds per epoch, validation curve, and test accuracy/macro-F1 of the best checkpoint.

    python -m benchmarks.finetune.finetune_banking77                      # the numbers quoted in README.md
    python -m benchmarks.finetune.finetune_banking77 --epochs 1 --throughput-steps 10   # a quick look

Writes benchmarks/finetune/results/finetune_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from benchmarks.common import DEFAULT_DATA, banking77, command_line, quiet_trainer, write_results  # noqa: E402
from benchmarks.timing import StepTimer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

PADDING_MODES = {
    "dynamic + length-grouped": {"padding": "dynamic", "group_by_length": True},
    "dynamic, random batches": {"padding": "dynamic", "group_by_length": False},
    "fixed to 64 tokens": {"padding": "max_length", "group_by_length": False},
}


def _datamodule(args, **kwargs) -> TextClassificationDataModule:
    return banking77(args.data_dir, args.batch_size, **kwargs)


def measure_throughput(args) -> dict[str, dict[str, float]]:
    results = {}
    for name, options in PADDING_MODES.items():
        seed_everything(0)
        dm = _datamodule(args, **options)
        agent = Agent(labels=dm.label_names, learning_rate=args.lr)
        timer = StepTimer(skip=3)
        quiet_trainer(max_steps=args.throughput_steps + 3, limit_val_batches=0, callbacks=[timer]).fit(agent, dm)
        results[name] = {
            "seconds_per_step": sum(timer.step_seconds) / len(timer.step_seconds),
            "samples_per_second": timer.samples_per_second,
            "padded_tokens_per_sample": timer.tokens / timer.samples,
        }
        print(f"{name:28s} {results[name]}", flush=True)
    return results


def fine_tune(args) -> dict[str, object]:
    seed_everything(42)
    dm = _datamodule(args)
    agent = Agent(labels=dm.label_names, learning_rate=args.lr, warmup_fraction=0.06)
    timer = StepTimer(skip=0)
    checkpoint = ModelCheckpoint(monitor="val/acc", mode="max", filename="best", auto_insert_metric_name=False)
    logger = TensorBoardLogger(args.log_dir, name="finetune_banking77", default_hp_metric=False)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[timer, checkpoint],
        enable_progress_bar=False,
        log_every_n_steps=50,
    )
    start = time.perf_counter()
    trainer.fit(agent, dm)
    fit_seconds = time.perf_counter() - start
    val_curve = [float(v) for v in trainer.callback_metrics.get("val/acc", torch.tensor([])).reshape(-1)]
    test = trainer.test(agent, dm, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
    return {
        "epochs": args.epochs,
        "learning_rate": args.lr,
        "batch_size": args.batch_size,
        "fit_seconds": fit_seconds,
        "seconds_per_epoch": timer.epoch_seconds,
        "best_val_acc": float(checkpoint.best_model_score),
        "last_val_acc": val_curve[-1] if val_curve else None,
        "test_acc": test["test/acc"],
        "test_f1": test["test/f1"],
        "best_checkpoint": checkpoint.best_model_path,
        "log_dir": logger.log_dir,
    }


def write_report(args, throughput, result) -> None:
    base = throughput["dynamic + length-grouped"]["samples_per_second"]
    fixed = throughput["fixed to 64 tokens"]["samples_per_second"]
    lines = [
        "# Fine-tuning all-MiniLM-L6-v2 on BANKING77 (CPU)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Command: `{command_line()}`.",
        "",
        f"## Training throughput ({args.throughput_steps} steps each, batch {args.batch_size}, same process)",
        "",
        "| batching | s/step | samples/s | padded tokens/sample | speed vs fixed-64 |",
        "|---|---|---|---|---|",
    ]
    for name, row in throughput.items():
        lines.append(
            f"| {name} | {row['seconds_per_step']:.3f} | {row['samples_per_second']:.1f} | "
            f"{row['padded_tokens_per_sample']:.1f} | {row['samples_per_second'] / fixed:.2f}x |"
        )
    if result is not None:
        epochs = result["seconds_per_epoch"]
        lines += [
            "",
            f"## Fine-tune ({result['epochs']} epochs, lr {result['learning_rate']}, dynamic + length-grouped)",
            "",
            "| test accuracy | test macro-F1 | best val accuracy | s/epoch (mean) | fit time |",
            "|---|---|---|---|---|",
            f"| {100 * result['test_acc']:.2f} % | {100 * result['test_f1']:.2f} % | "
            f"{100 * result['best_val_acc']:.2f} % | {sum(epochs) / len(epochs):.0f} s | "
            f"{result['fit_seconds'] / 60:.1f} min |",
            "",
            "Published BERT-base on BANKING77: about 93 % test accuracy (Casanueva et al., 2020).",
        ]
    lines += ["", f"Dynamic + length-grouped batches train {base / fixed:.2f}x as many samples per second as fixed-64."]
    write_results(args.output, lines, {"throughput": throughput, "fit": result})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--throughput-steps", type=int, default=30)
    parser.add_argument("--skip-fit", action="store_true", help="only measure throughput")
    parser.add_argument("--log-dir", type=Path, default=Path("runs"))
    parser.add_argument("--output", type=Path, default=RESULTS / "finetune_banking77.md")
    args = parser.parse_args()
    if not (args.data_dir / "train.csv").is_file():
        parser.error(f"--data-dir {args.data_dir} holds no train.csv; point it at the BANKING77 folder.")
    throughput = measure_throughput(args)
    result = None if args.skip_fit else fine_tune(args)
    write_report(args, throughput, result)


if __name__ == "__main__":
    main()
