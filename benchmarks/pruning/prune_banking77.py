"""Pruning on BANKING77: our gradual callback versus Lightning's ModelPruning, N:M, and structured removal.

Every run starts from the same fine-tuned dense MiniLM agent (a checkpoint of ``finetune_banking77.py``) and trains
the same number of epochs with the same optimizer, side by side in one process:

- dense (no pruning): the reference;
- ``Pruning(sparsity=s)`` for s in 50 % and 80 % (cubic schedule over the first 70 % of steps, layer-wise);
- Lightning ``ModelPruning("l1_unstructured")`` on the same layers, pruning at each epoch end with the per-epoch
  amount that compounds to the same final sparsity (its defaults otherwise);
- ``Pruning(method="n:m", pattern="2:4")``;
- ``Pruning(method="structured", sparsity=0.3, head_sparsity=0.25)``: 30 % of FFN neurons and 25 % of heads
  physically removed at the end, with CPU latency at batch 1 and 32 versus dense.

    python -m benchmarks.pruning.prune_banking77 --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt

Writes benchmarks/pruning/results/prune_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelPruning  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import Distillation, Pruning  # noqa: E402
from agent_lightning.deployment.measure import compare_latency, token_inputs  # noqa: E402
from agent_lightning.targets import select_modules  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    accuracy_on_test,
    banking77,
    command_line,
    quiet_trainer,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"


def _sparsity(agent: Agent) -> float:
    modules = select_modules(agent).values()
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    return zeros / sum(m.weight.numel() for m in modules)


def lightning_model_pruning(agent: Agent, final: float, epochs: int) -> ModelPruning:
    """Lightning's ``ModelPruning`` (its defaults) on the block linears our callback targets, with the per-epoch
    amount that compounds to ``final`` sparsity over ``epochs`` (it prunes at every epoch end)."""
    per_epoch = 1 - (1 - final) ** (1 / epochs)
    targets = [(m, "weight") for m in select_modules(agent).values()]
    return ModelPruning("l1_unstructured", parameters_to_prune=targets, amount=per_epoch, verbose=0)


def freeze_block_linears(agent: Agent) -> list:
    """Control run: the block linears (the layers pruning targets) keep their fine-tuned weights; everything else
    trains. What Lightning ``ModelPruning``'s lottery-ticket reset leaves in those layers, without a mask."""
    for module in select_modules(agent).values():
        module.weight.requires_grad_(False)
    return []


def _run(name: str, args, dm, callbacks_fn, seed: int) -> dict:
    seed_everything(seed)
    agent = Agent.load_from_checkpoint(args.teacher, learning_rate=args.lr, warmup_fraction=0.0)
    callbacks = callbacks_fn(agent)
    trainer = quiet_trainer(callbacks, max_epochs=args.epochs, limit_val_batches=0)
    started = time.perf_counter()
    trainer.fit(agent, datamodule=dm)
    seconds = time.perf_counter() - started

    row = {
        "run": name,
        "seed": seed,
        "test_acc": accuracy_on_test(agent, dm),
        "sparsity": _sparsity(agent),
        "params": sum(p.numel() for p in agent.parameters()),
        "nonzero": sum(int((p != 0).sum()) for p in agent.parameters()),
        "fit_seconds": seconds,
    }
    if args.latency:
        for batch in (1, 32):
            row[f"latency_b{batch}"] = compare_latency({"model": agent.model}, token_inputs(batch), 30, 5, 60.0)[
                "model"
            ]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned dense agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--runs", nargs="*", default=None, help="subset of run names")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one row per run and seed")
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--output", type=Path, default=RESULTS / "prune_banking77.md")
    args = parser.parse_args()
    dm = banking77(args.data_dir)

    def lightning_pruning(final: float):
        return lambda agent: [lightning_model_pruning(agent, final, args.epochs)]

    runs = {
        "dense": lambda agent: [],
        "dense, block linears frozen (control)": freeze_block_linears,
        "ours 50% (cubic, layer-wise)": lambda agent: [Pruning(sparsity=0.5)],
        "ours 50% (cubic, global)": lambda agent: [Pruning(sparsity=0.5, scope="global")],
        "ours 50% (cubic, global, rewind)": lambda agent: [Pruning(sparsity=0.5, scope="global", rewind=True)],
        "ours 80% (cubic, global, rewind)": lambda agent: [Pruning(sparsity=0.8, scope="global", rewind=True)],
        "ours 50% (cubic, global) + self-distillation": lambda agent: [
            Pruning(sparsity=0.5, scope="global"),
            Distillation(str(args.teacher)),
        ],
        "Lightning ModelPruning 50%": lightning_pruning(0.5),
        "ours 80% (cubic, layer-wise)": lambda agent: [Pruning(sparsity=0.8)],
        "Lightning ModelPruning 80%": lightning_pruning(0.8),
        "ours 2:4": lambda agent: [Pruning(sparsity=0.5, method="n:m", pattern="2:4")],
        "ours structured 30% FFN + 25% heads": lambda agent: [
            Pruning(method="structured", sparsity=0.3, head_sparsity=0.25)
        ],
    }
    selected = {k: v for k, v in runs.items() if args.runs is None or k in args.runs}
    rows = [_run(name, args, dm, make, seed) for seed in args.seeds for name, make in selected.items()]
    _write(args, rows)


def _write(args, rows: list[dict]) -> None:
    dense = {r["seed"]: r for r in rows if r["run"] == "dense"}
    seeds = " ".join(str(s) for s in args.seeds)
    lines = [
        "# Pruning all-MiniLM-L6-v2 on BANKING77 (CPU)",
        "",
        f"Each run: {args.epochs} epochs from the same fine-tuned dense checkpoint, lr {args.lr}, batch 32, "
        f"seed(s) {seeds}; {os.cpu_count()} CPU cores, torch {torch.__version__}. Sparsity is over the targeted "
        "block linears.",
        f"Command: `{command_line()}`.",
        "",
        "| run | seed | test accuracy | Δ vs dense | sparsity | parameters | nonzero | latency b1 | latency b32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = dense.get(row["seed"])
        delta = "" if ref is None else f"{100 * (row['test_acc'] - ref['test_acc']):+.2f} pt"
        lat1 = lat32 = ""
        if "latency_b1" in row and ref is not None:
            lat1 = f"{row['latency_b1'] / ref['latency_b1']:.2f}x"
            lat32 = f"{row['latency_b32'] / ref['latency_b32']:.2f}x"
        lines.append(
            f"| {row['run']} | {row['seed']} | {100 * row['test_acc']:.2f} % | {delta} | "
            f"{100 * row['sparsity']:.1f} % | {row['params'] / 1e6:.2f} M | "
            f"{row['nonzero'] / 1e6:.2f} M | {lat1} | {lat32} |"
        )
    if len(args.seeds) > 1:
        lines += ["", "Mean over seeds (population standard deviation):", "", "| run | test accuracy |", "|---|---|"]
        for name in dict.fromkeys(r["run"] for r in rows):
            accs = torch.tensor([100 * r["test_acc"] for r in rows if r["run"] == name], dtype=torch.float64)
            lines.append(f"| {name} | {accs.mean():.2f} ± {accs.std(unbiased=False):.2f} % (n={len(accs)}) |")
    lines += [
        "",
        "Latency: median forward time at sequence length 64 relative to the dense model (lower is faster). "
        "Unstructured and 2:4 sparsity run on dense kernels, so only structured removal changes CPU latency.",
    ]
    write_results(args.output, lines, rows)


if __name__ == "__main__":
    main()
