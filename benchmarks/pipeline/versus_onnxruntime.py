"""The compressed agent against what a practitioner runs without training: the fp32 teacher under ONNX Runtime and
ONNX Runtime's ``quantize_dynamic`` int8 of it, beside eager PyTorch; our student both as the ONNX export (the
default) and as the TorchScript export, to pick the default format by measurement.

Runs ``agent-lightning compress`` on a config (the teacher, then the student: blocks 0,2,4, distilled, half the FFN
neurons removed, int8 QAT with ONNX Runtime's activation scheme, int4 task vocabulary plus frequent tokens), exports the
same student checkpoint as TorchScript too, then times every model round-robin in one loop on the test requests
(tokenization excluded for all, ``torch.get_num_threads()`` threads for all, ONNX Runtime thread spinning off).

    python -m benchmarks.pipeline.versus_onnxruntime                                   # built-in data (make demo)
    python -m benchmarks.pipeline.versus_onnxruntime --config configs/banking77.yaml --name banking77 \\
        --teacher-epochs 3 --student-epochs 4

Writes benchmarks/pipeline/results/versus_onnxruntime_NAME.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.cli.recipes import run_recipe  # noqa: E402
from agent_lightning.deployment import (  # noqa: E402
    ExportedAgent,
    ModelInputs,
    compare_latency,
    compare_with_teacher,
    export_agent,
    file_bytes,
)
from agent_lightning.deployment.export import LogitsProgram  # noqa: E402
from agent_lightning.deployment.peers import PEERS, onnx_runtime_peers  # noqa: E402
from agent_lightning.deployment.runtime import model_file  # noqa: E402
from agent_lightning.evaluation import action_accuracy  # noqa: E402
from benchmarks.common import command_line, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "default.yaml"))
    parser.add_argument("--name", default="builtin", help="results file suffix")
    parser.add_argument("--teacher", help="a fine-tuned teacher checkpoint (skips the recipe's stage 1)")
    parser.add_argument("--teacher-epochs", type=int, help="stage 1 epochs (default: the config's)")
    parser.add_argument("--student-epochs", type=int, help="stage 2 epochs (default: the config's)")
    parser.add_argument(
        "--student-checkpoint",
        type=Path,
        help="a student the recipe trained (its run's checkpoints/last.ckpt; needs --teacher): export and measure "
        "it without training",
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per batch size")
    args = parser.parse_args()
    if args.student_checkpoint and not args.teacher:
        parser.error("--student-checkpoint needs --teacher (the checkpoint it was distilled from)")
    work = Path(tempfile.mkdtemp(prefix="versus-ort-"))
    if args.student_checkpoint:
        student_run = args.student_checkpoint.parent.parent
        teacher = Agent.load_from_checkpoint(args.teacher, map_location="cpu").eval()
        export_agent(args.student_checkpoint, work / "export-onnx", "onnx")
        test, val = _split(student_run, "test"), _split(student_run, "val")
        summary = compare_with_teacher(teacher, work / "export-onnx", *test, "test", abstain=(*val, 0.95))
    else:
        recipe = ["-c", args.config, f"--trainer.default_root_dir={work}", "--output", str(work / "export-onnx")]
        recipe += ["--teacher", args.teacher] if args.teacher else []
        recipe += [f"--trainer.max_epochs={args.teacher_epochs}"] if args.teacher_epochs else []
        recipe += ["--student-epochs", str(args.student_epochs)] if args.student_epochs else []
        summary = run_recipe(recipe)
        student_run = work / "student" / "version_0"
        teacher_ckpt = args.teacher or next((work / "teacher" / "version_0" / "checkpoints").glob("epoch*.ckpt"))
        teacher = Agent.load_from_checkpoint(teacher_ckpt, map_location="cpu").eval()
    export_agent(student_run / "checkpoints" / "last.ckpt", work / "export-int8", "int8")
    students = {"onnx": ExportedAgent(work / "export-onnx"), "torchscript": ExportedAgent(work / "export-int8")}
    data = _split(student_run, summary.split)
    peers = onnx_runtime_peers(teacher, work)
    programs = {"eager": LogitsProgram(teacher.model).eval(), **{key: peer.program for key, peer in peers.items()}}
    programs.update({f"student_{kind}": student.program for kind, student in students.items()})
    # each runtime's programs once more in a loop of their own: torch's OpenMP workers keep spinning for a while after
    # each call and take a core from an ONNX Runtime call that follows (a server runs one model)
    onnxruntime = [*peers, "student_onnx"]
    runtimes = [onnxruntime, [name for name in programs if name not in onnxruntime]]
    latency: dict[str, dict[int, float]] = {name: {} for name in programs}
    latency_alone: dict[str, dict[int, float]] = {name: {} for names in runtimes for name in names}
    for batch in (1, 32):
        encoded = students["onnx"].encode([data[0][i % len(data[0])] for i in range(batch)])
        inputs = ModelInputs((encoded["input_ids"], encoded["attention_mask"]))
        for name, seconds in compare_latency(programs, inputs, args.rounds, 3).items():
            latency[name][batch] = 1000 * seconds
        for names in runtimes:
            loop = {name: programs[name] for name in names}
            for name, seconds in compare_latency(loop, inputs, args.rounds, 3).items():
                latency_alone[name][batch] = 1000 * seconds
    labels = {"eager": "fp32 teacher, PyTorch eager", **{key: PEERS[key] for key in peers}}
    labels.update({f"student_{kind}": f"our student, {kind} export" for kind in students})
    measured = {  # (test accuracy, zipped bytes) of each program
        "eager": (summary.teacher_acc, summary.teacher_zipped),
        **{key: (summary.peers[key]["acc"], summary.peers[key]["zipped"]) for key in peers},
        **{
            f"student_{kind}": (action_accuracy(student, *data), file_bytes(model_file(student.folder))[1])
            for kind, student in students.items()
        },
    }
    rows = {
        labels[name]: {"acc": acc, "zipped": zipped, "latency": latency[name]}
        for name, (acc, zipped) in measured.items()
    }
    base, peer = rows[labels["eager"]], rows[labels["ort_int8"]]
    lines = [
        f"# The compressed agent vs ONNX Runtime ({args.name})",
        "",
        f"Command: `{command_line()}`. {summary.split} split, {summary.examples} requests; "
        f"{torch.get_num_threads()} threads for every model, ONNX Runtime thread spinning off, tokenization excluded "
        f"for all, median of {args.rounds} round-robin rounds (order shuffled each round) on the first test requests "
        "(padded to the longest). "
        "The student (the recipe's defaults): teacher blocks 0, 2, 4, distilled, half of each block's FFN neurons "
        "removed (structured pruning), int8 QAT (ONNX Runtime's activation scheme), input table cut to the training "
        "tokens plus the tokenizer's 4,000 most frequent as int4 rows; one checkpoint, exported twice.",
        "",
        "| model | test accuracy | zipped | batch 1 | batch 32 | ORT int8 zipped / this | ORT int8 batch 1 / this | "
        "ORT int8 batch 32 / this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        ratios = [f"{base['latency'][b] / row['latency'][b]:.2f}x ({row['latency'][b]:.1f} ms)" for b in (1, 32)]
        versus = [f"{peer['zipped'] / row['zipped']:.2f}x"]
        versus += [f"{peer['latency'][b] / row['latency'][b]:.2f}x" for b in (1, 32)]
        lines.append(
            f"| {name} | {100 * row['acc']:.2f} % ({100 * (row['acc'] - base['acc']):+.2f} pt) | "
            f"{row['zipped'] / 1e6:.2f} MB | {' | '.join(ratios)} | {' | '.join(versus)} |"
        )
    lines += [
        "",
        "Batch columns: speed-up over the eager fp32 teacher (median milliseconds per forward). Targets (issue 17): "
        "student at least 2x faster than the ONNX Runtime int8 teacher at batch 1 and 32, at least 3x fewer zipped "
        "bytes, test accuracy within 1.0 pt of the fp32 teacher.",
        "",
        "Each runtime timed again in a loop of its own, the ONNX Runtime sessions together and the PyTorch programs "
        "together (after a PyTorch call its OpenMP workers spin for a while and take a core from an ONNX Runtime "
        "call that follows; a server runs one model):",
        "",
        "| model | batch 1 | batch 32 | ORT int8 batch 1 / this | ORT int8 batch 32 / this |",
        "|---|---|---|---|---|",
        *(
            f"| {labels[name]} | {ms[1]:.2f} ms | {ms[32]:.1f} ms | {latency_alone['ort_int8'][1] / ms[1]:.2f}x | "
            f"{latency_alone['ort_int8'][32] / ms[32]:.2f}x |"
            for name, ms in latency_alone.items()
        ),
        "",
        "The recipe's own summary (its timing loop):",
        "",
        *summary.markdown(),
    ]
    write_results(
        RESULTS / f"versus_onnxruntime_{args.name}",
        lines,
        {"command": command_line(), "rows": rows, "alone_ms": latency_alone},
    )


def _split(run: Path, split: str) -> tuple[list[str], list[str]]:
    """The texts and labels of ``split`` as the student's datamodule read them (its saved config)."""
    dm = TextClassificationDataModule(**yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"])
    return dm.splits[split].texts, dm.splits[split].labels


if __name__ == "__main__":
    main()
