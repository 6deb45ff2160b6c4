"""The whole pipeline on BANKING77: each compression alone and all composed, against the fp32 teacher.

Side by side in one process, on the same test split (3,080 requests), from the same fine-tuned 6-layer MiniLM agent
(the teacher, a checkpoint of ``finetune_banking77.py``):

- the fp32 teacher;
- what runs without training: the teacher under ONNX Runtime in fp32, and ONNX Runtime's ``quantize_dynamic`` int8
  of it (:mod:`agent_lightning.deployment.peers`); PTQ in PyTorch: ``torch.ao.quantization.quantize_dynamic`` int8;
- Lightning ``ModelPruning`` 50 % (its defaults, on the block linears; amount compounding per epoch end);
- ours alone: ``Pruning(0.5)``; ``QuantizationAwareTraining()`` (converted to int8); ``Distillation`` into a
  3-layer student (teacher blocks 0, 2, 4);
- the full composition: the 3-layer distilled student + ``Pruning(0.5, end=0.6)`` + ``QuantizationAwareTraining(
  start=0.8, kernel="onnxruntime")`` + ``EmbeddingCompression()`` (the vocabulary training used, int8 rows),
  exported as the int8 ONNX model and as the int8 TorchScript program (``agent_lightning.deployment.export``) and
  measured as exported.

Columns: test accuracy; bytes on disk (``torch.save`` of the state dict; the exported ``model.pt`` for the
composition) plain and zipped (deflate, as a standard ``.zip``: sparse zeros compress); parameters and nonzeros;
CPU latency at batch 1 and 32 on real test requests (padded to the longest, as served) as ratios of the eager
teacher's and of the ONNX Runtime int8 teacher's, all models timed round-robin in one loop; training-step time as a
ratio of plain fp32 fine-tuning of the teacher.

    python -m benchmarks.pipeline.compress_banking77 --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt

Writes benchmarks/pipeline/results/compress_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch import nn  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import (  # noqa: E402
    Distillation,
    EmbeddingCompression,
    Pruning,
    QuantizationAwareTraining,
)
from agent_lightning.deployment.export import LogitsProgram, export_agent  # noqa: E402
from agent_lightning.deployment.measure import ModelInputs, compare_latency, file_bytes, parameter_counts, saved_bytes  # noqa: E402
from agent_lightning.deployment.peers import PEERS, onnx_runtime_peers  # noqa: E402
from agent_lightning.deployment.runtime import ExportedAgent, model_file  # noqa: E402
from agent_lightning.evaluation import action_accuracy  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    accuracy_on_test,
    banking77,
    command_line,
    quiet_trainer,
    write_results,
)
from benchmarks.pruning.prune_banking77 import lightning_model_pruning  # noqa: E402
from benchmarks.timing import StepTimer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

TEACHER = "fp32 teacher (6 layers)"
FULL = "full composition: 3-layer distilled student + 50 % sparsity + int8 QAT + int8 task vocabulary"
#: The composition's rows: its exports by format.
FULL_ROWS = {"onnx": f"{FULL} (ONNX export)", "int8": f"{FULL} (TorchScript export)"}
PEER = PEERS["ort_int8"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned 6-layer agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the 6-layer runs (from the teacher)")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of the 6-layer runs")
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--student-lr", type=float, default=1e-4)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--runs", nargs="*", default=None, help="subset of run names (default: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke test: batches per epoch and test")
    parser.add_argument("--output", type=Path, default=RESULTS / "compress_banking77.md")
    args = parser.parse_args()
    dm = banking77(args.data_dir)
    dm.setup("fit")
    limit = {} if args.limit_batches is None else {"limit_train_batches": args.limit_batches}
    teacher = Agent.load_from_checkpoint(args.teacher, map_location="cpu").eval()
    test = dm.splits["test"]
    texts, labels = test.texts, test.labels
    if args.limit_batches is not None:
        texts, labels = texts[: 32 * args.limit_batches], labels[: 32 * args.limit_batches]

    rows: dict[str, dict] = {}
    failures: dict[str, str] = {}  # exports refused by their parity check
    shipped: dict[str, nn.Module] = {}  # what each row ships: (input_ids, attention_mask) -> logits
    rows[TEACHER] = _measure_eager(teacher, dm, args)
    rows[TEACHER]["step_seconds"] = _dense_step_seconds(args, dm, limit)
    shipped[TEACHER] = LogitsProgram(teacher.model).eval()

    work = Path(tempfile.mkdtemp(prefix="compress-banking77-"))
    params, nonzero = parameter_counts(teacher.model)
    for key, peer in onnx_runtime_peers(teacher, work).items():  # what runs without training
        size, zipped = file_bytes(model_file(peer.folder))
        rows[PEERS[key]] = {"test_acc": action_accuracy(peer, texts, labels), "bytes": size, "zipped": zipped}
        rows[PEERS[key]].update(params=params, nonzero=nonzero)
        shipped[PEERS[key]] = peer.program

    ptq = copy.deepcopy(teacher)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        ptq.model = torch.ao.quantization.quantize_dynamic(ptq.model, {nn.Linear}, dtype=torch.qint8)
    rows["PTQ dynamic int8 (torch quantize_dynamic)"] = _measure_eager(ptq, dm, args)
    shipped["PTQ dynamic int8 (torch quantize_dynamic)"] = LogitsProgram(ptq.model).eval()

    six_layer_runs = {
        "Lightning ModelPruning 50 %": lambda agent: [lightning_model_pruning(agent, 0.5, args.epochs)],
        "ours: Pruning 50 %": lambda agent: [Pruning(sparsity=0.5)],
        "ours: QAT int8 (converted)": lambda agent: [QuantizationAwareTraining()],
    }
    for name, make in six_layer_runs.items():
        if args.runs is not None and name not in args.runs:
            continue
        seed_everything(args.seed)
        agent = Agent.load_from_checkpoint(args.teacher, learning_rate=args.lr, warmup_fraction=0.0)
        timer = StepTimer()
        quiet_trainer([timer, *make(agent)], max_epochs=args.epochs, limit_val_batches=0, **limit).fit(agent, dm)
        rows[name] = {**_measure_eager(agent.eval(), dm, args), "step_seconds": timer.median_step_seconds}
        shipped[name] = LogitsProgram(agent.model).eval()
        print(json.dumps({name: rows[name]}), flush=True)

    with tempfile.TemporaryDirectory() as folder:
        teacher_dir = teacher.save_pretrained(Path(folder) / "teacher")
        kd = Distillation(str(args.teacher))
        students = {
            "ours: Distillation into 3 layers": [kd],
            FULL: [
                Distillation(str(args.teacher)),
                Pruning(sparsity=0.5, end=0.6),
                QuantizationAwareTraining(start=0.8, kernel="onnxruntime"),  # the scheme both exports run
                EmbeddingCompression(),
            ],
        }
        for name, callbacks in students.items():
            if args.runs is not None and name not in args.runs:
                continue
            seed_everything(args.seed)
            student = Agent(model=str(teacher_dir), student_layers=args.layers, learning_rate=args.student_lr)
            timer = StepTimer()
            checkpoints = Path(folder) / name.split(":")[0].replace(" ", "-")
            last = ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None)  # before fit end's convert
            trainer = quiet_trainer(
                [timer, last, *callbacks],
                max_epochs=args.student_epochs,
                limit_val_batches=0,
                enable_checkpointing=True,
                **limit,
            )
            trainer.fit(student, datamodule=dm)
            step = timer.median_step_seconds
            if name != FULL:
                rows[name] = {**_measure_eager(student.eval(), dm, args), "step_seconds": step}
                shipped[name] = LogitsProgram(student.model).eval()
            else:
                params, nonzero = parameter_counts(student.model)
                in_memory = accuracy_on_test(student.eval(), dm, args.limit_batches)
                for kind, row_name in FULL_ROWS.items():
                    export = Path(folder) / f"export-{kind}"
                    try:
                        parity = export_agent(checkpoints / "last.ckpt", export, kind)
                    except ValueError as error:  # a parity check failed: say so in the results, measure the rest
                        failures[row_name] = str(error)
                        print(json.dumps({row_name: str(error)}), flush=True)
                        continue
                    program = ExportedAgent(export)
                    size, zipped = file_bytes(model_file(export))
                    rows[row_name] = {
                        "test_acc": action_accuracy(program, texts, labels),
                        "in_memory_test_acc": in_memory,
                        "bytes": size,
                        "zipped": zipped,
                        "params": params,
                        "nonzero": nonzero,
                        "step_seconds": step,
                        "export_parity": {
                            "top1": parity.top1_agreement,
                            "max_abs_logit_diff": parity.max_abs_logit_diff,
                        },
                        "kept_tokens": program.manifest["embeddings"]["kept_tokens"],
                    }
                    shipped[row_name] = program.program
                    print(json.dumps({row_name: rows[row_name]}), flush=True)
                continue
            print(json.dumps({name: rows[name]}), flush=True)

        latency = {}
        for batch in (1, 32):
            encoded = teacher.tokenizer(
                texts[:batch], padding=True, truncation=True, max_length=teacher.hparams.max_length, return_tensors="pt"
            )
            inputs = ModelInputs((encoded["input_ids"], encoded["attention_mask"]))
            latency[batch] = compare_latency(shipped, inputs, rounds=20, warmup=2, budget_s=120.0)
            print(json.dumps({"latency": batch, **latency[batch]}), flush=True)
    for name, row in rows.items():
        for batch in (1, 32):
            row[f"latency_b{batch}_ms"] = 1000 * latency[batch][name]
    _write(args, rows, failures)


def _measure_eager(agent: Agent, dm, args) -> dict:
    size, zipped = saved_bytes(agent.model)
    params, nonzero = parameter_counts(agent.model)
    return {
        "test_acc": accuracy_on_test(agent, dm, args.limit_batches),
        "bytes": size,
        "zipped": zipped,
        "params": params,
        "nonzero": nonzero,
    }


def _dense_step_seconds(args, dm, limit: dict) -> float:
    """Median training-step seconds of plain fp32 fine-tuning of the teacher (the step-time reference)."""
    seed_everything(args.seed)
    agent = Agent.load_from_checkpoint(args.teacher, learning_rate=args.lr, warmup_fraction=0.0)
    timer = StepTimer()
    quiet_trainer([timer], max_steps=40 if not limit else 6, limit_val_batches=0).fit(agent, dm)
    return timer.median_step_seconds


def _write(args, rows: dict[str, dict], failures: dict[str, str]) -> None:
    base = rows[TEACHER]
    lines = [
        "# The whole pipeline on BANKING77: each compression alone and composed, vs the fp32 teacher (CPU)",
        "",
        f"Teacher: the fine-tuned 6-layer all-MiniLM-L6-v2 agent. 6-layer runs: {args.epochs} epoch(s) from it, lr "
        f"{args.lr}. Students: teacher blocks {args.layers}, {args.student_epochs} epochs, lr {args.student_lr}, "
        f"logit KD (T=2, alpha=0.5). Batch 32, seed {args.seed}; {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}.",
        f"Command: `{command_line()}`.",
        "",
        "| model | test accuracy | Δ vs teacher | bytes | zipped | zipped ratio | parameters | nonzero | "
        "latency b1 | latency b32 | vs ORT int8 teacher, b1 / b32 | train step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peer = rows.get(PEER)
    for name, row in rows.items():
        step = f"{row['step_seconds'] / base['step_seconds']:.2f}x" if "step_seconds" in row else ""
        lines.append(
            f"| {name} | {100 * row['test_acc']:.2f} % | {100 * (row['test_acc'] - base['test_acc']):+.2f} pt | "
            f"{row['bytes'] / 1e6:.1f} MB | {row['zipped'] / 1e6:.1f} MB | {base['zipped'] / row['zipped']:.1f}x "
            f"smaller | {row['params'] / 1e6:.2f} M | {row['nonzero'] / 1e6:.2f} M | "
            f"{base['latency_b1_ms'] / row['latency_b1_ms']:.2f}x faster ({row['latency_b1_ms']:.1f} ms) | "
            f"{base['latency_b32_ms'] / row['latency_b32_ms']:.2f}x faster ({row['latency_b32_ms']:.0f} ms) | "
            + (_versus(peer, row) if peer else "")
            + f" | {step} |"
        )
    lines += [
        "",
        "Latency: median forward time on real test requests padded to the longest of the batch (tokenization "
        "excluded), every model timed round-robin in one loop with the order shuffled each round; eager PyTorch for "
        "the trained rows but the composition, which is timed as exported (its ONNX model under ONNX Runtime, its "
        "TorchScript program in PyTorch); the ONNX Runtime rows with the same threads, spinning off. Train step: "
        "median training-step time relative to plain fp32 fine-tuning of the teacher (students are faster per step; "
        "QAT and the teacher forward of distillation cost extra).",
    ]
    exported = [name for name in FULL_ROWS.values() if name in rows]
    if exported:
        full = rows[exported[0]]
        parity = ", ".join(
            f"{rows[name]['export_parity']['top1']:.3f} ({name.split('(')[-1][:-1]})" for name in exported
        )
        lines += [
            "",
            f"Composition, as exported: {full['kept_tokens']} token rows kept of 30,522; the in-memory model before "
            f"export scored {100 * full['in_memory_test_acc']:.2f} %; reload parity top-1 {parity}.",
        ]
    lines += [f"\n{name}: not written, {error}" for name, error in failures.items()]
    write_results(args.output, lines, {**rows, "failed_exports": failures})


def _versus(peer: dict, row: dict) -> str:
    """How many times faster than the ONNX Runtime int8 teacher ``row`` is, at batch 1 and 32."""
    return " / ".join(f"{peer[f'latency_b{b}_ms'] / row[f'latency_b{b}_ms']:.2f}x" for b in (1, 32))


if __name__ == "__main__":
    main()
