"""QAT on BANKING77: fp32 versus post-training int8 versus our QAT int8, side by side in one process.

Every model starts from the same fine-tuned fp32 MiniLM agent (a checkpoint of ``finetune_banking77.py``):

- fp32: the checkpoint as is;
- PTQ int8 (ours): ``convert`` without training, same scheme and kernel as QAT (int8 per-channel weights, int8
  dynamic activations, fbgemm ``torch.ao.nn.quantized.dynamic.Linear``);
- PTQ int8 (torch.ao): ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (the classic eager path);
- fp32 control: the same extra fine-tuning as QAT, without QAT (separates "more training" from "QAT");
- QAT int8: ``QuantizationAwareTraining(freeze=...)`` during that fine-tuning, then converted; the fake-quantized
  model and the converted model are both tested.

Latency (seq 64, batch 1 and 32) is measured round-robin on the same inputs; the int8 model runs eagerly (fbgemm's
kernel needs no compiler), and fp32 is also measured under ``torch.compile`` (compile time reported separately) so
the speed-up is not against a handicapped baseline. Sizes: bytes of the quantized linear
weights (data + scales) and of the whole ``state_dict`` saved with ``torch.save``.

    python -m benchmarks.quantization.qat_banking77 --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt

Writes benchmarks/quantization/results/qat_banking77.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from lightning.pytorch import seed_everything  # noqa: E402
from torch import nn  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.callbacks import QuantizationAwareTraining  # noqa: E402
from agent_lightning.deployment.measure import compare_latency, token_inputs  # noqa: E402
from agent_lightning.quantization import convert, quantized_linear_bytes  # noqa: E402
from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA,
    accuracy_on_test,
    banking77,
    command_line,
    quiet_trainer,
    write_results,
)
from benchmarks.timing import StepTimer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _test_acc(args, agent: Agent, dm) -> float:
    return accuracy_on_test(agent, dm, args.limit_batches)


def _fine_tune(args, dm, qat: QuantizationAwareTraining | None) -> tuple[Agent, StepTimer]:
    seed_everything(args.seed)
    agent = Agent.load_from_checkpoint(args.teacher, learning_rate=args.lr, warmup_fraction=0.0)
    timer = StepTimer()
    callbacks = [timer] + ([qat] if qat else [])
    limit = {} if args.limit_batches is None else {"limit_train_batches": args.limit_batches}
    quiet_trainer(callbacks, max_epochs=args.epochs, limit_val_batches=0, **limit).fit(agent, datamodule=dm)
    return agent, timer


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _compiled(model: nn.Module, batch_sizes: list[int]) -> tuple[nn.Module, float]:
    """``torch.compile`` the model and run it once per measured shape; returns the seconds that took."""
    compiled = torch.compile(model)
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batch_sizes:
            token_inputs(batch)(compiled)
    return compiled, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned fp32 agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--freeze", type=float, default=0.8, help="fraction of the QAT run after which ranges freeze")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=20, help="round-robin latency rounds")
    parser.add_argument("--limit-batches", type=int, default=None, help="smoke test: batches per epoch and test")
    parser.add_argument("--output", type=Path, default=RESULTS / "qat_banking77.md")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    dm = banking77(args.data_dir)
    rows: dict[str, dict] = {}

    fp32 = Agent.load_from_checkpoint(args.teacher)
    rows["fp32"] = {"test_acc": _test_acc(args, fp32, dm), "state_bytes": _state_bytes(fp32)}
    ptq = convert(copy.deepcopy(fp32))
    rows["PTQ int8 (ours, same scheme as QAT)"] = {
        "test_acc": _test_acc(args, ptq, dm),
        "state_bytes": _state_bytes(ptq),
    }
    ptq_ao = copy.deepcopy(fp32)
    ptq_ao.model = torch.ao.quantization.quantize_dynamic(ptq_ao.model, {nn.Linear}, dtype=torch.qint8)
    rows["PTQ int8 (torch.ao quantize_dynamic)"] = {"test_acc": _test_acc(args, ptq_ao, dm)}

    control, control_timer = _fine_tune(args, dm, None)
    rows["fp32 + same fine-tuning (control)"] = {"test_acc": _test_acc(args, control, dm)}
    qat_callback = QuantizationAwareTraining(freeze=args.freeze, convert_on_fit_end=False)
    qat, qat_timer = _fine_tune(args, dm, qat_callback)
    fake_quant_acc = _test_acc(args, qat, dm)
    convert(qat)
    rows["QAT int8 converted"] = {"test_acc": _test_acc(args, qat, dm), "state_bytes": _state_bytes(qat)}
    rows["QAT int8 converted"]["fake_quant_acc"] = fake_quant_acc
    layer_bytes = list(quantized_linear_bytes(qat))
    fp32_linear = sum(b for _, b, _ in layer_bytes)
    int8_linear = sum(b for _, _, b in layer_bytes)
    step_ratio = qat_timer.median_step_seconds / control_timer.median_step_seconds

    print(json.dumps({"rows": rows, "step_ratio": step_ratio}), flush=True)  # kept in the log if timing fails
    latency: dict[int, dict[str, float]] = {}
    compile_seconds = {}
    fp32_compiled, compile_seconds["fp32"] = _compiled(fp32.model, [1, 32])
    models = {
        "fp32 eager": fp32.model,
        "fp32 compiled": fp32_compiled,
        "torch.ao quantize_dynamic int8 eager": ptq_ao.model,
        "QAT int8 converted, eager": qat.model,
    }
    for batch in (1, 32):
        latency[batch] = compare_latency(models, token_inputs(batch), rounds=args.rounds)

    result = {
        "rows": rows,
        "linear_bytes": {"fp32": fp32_linear, "int8": int8_linear},
        "step_seconds": {
            "fp32": control_timer.median_step_seconds,
            "qat": qat_timer.median_step_seconds,
        },
        "step_ratio": step_ratio,
        "latency": latency,
        "compile_seconds": compile_seconds,
        "threads": torch.get_num_threads(),
    }
    _write(args, result)


def _write(args, result: dict) -> None:
    rows, latency = result["rows"], result["latency"]
    base = rows["fp32"]["test_acc"]
    lines = [
        "# QAT int8 on BANKING77 with all-MiniLM-L6-v2 (CPU)",
        "",
        f"From the fine-tuned fp32 checkpoint; fine-tuning runs: {args.epochs} epoch(s), lr {args.lr}, batch 32, "
        f"seed {args.seed}; QAT ranges frozen after {args.freeze:.0%} of the run. {os.cpu_count()} CPU cores, "
        f"{result['threads']} threads, torch {torch.__version__}.",
        f"Command: `{command_line()}`.",
        "",
        "| model | test accuracy | Δ vs fp32 | state_dict bytes |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        size = f"{row['state_bytes'] / 1e6:.1f} MB" if "state_bytes" in row else ""
        lines.append(f"| {name} | {100 * row['test_acc']:.2f} % | {100 * (row['test_acc'] - base):+.2f} pt | {size} |")
    qat = rows["QAT int8 converted"]
    linear = result["linear_bytes"]
    lines += [
        "",
        f"- QAT fake-quantized model: {100 * qat['fake_quant_acc']:.2f} %; converted: {100 * qat['test_acc']:.2f} % "
        f"(gap {100 * (qat['fake_quant_acc'] - qat['test_acc']):+.2f} pt).",
        f"- Quantized linear weights: {linear['fp32'] / 1e6:.1f} MB fp32 -> {linear['int8'] / 1e6:.1f} MB int8 "
        f"(data + scales): **{linear['fp32'] / linear['int8']:.2f}x smaller**. The word embeddings (11.7 M "
        "parameters) stay float, which is why the whole state_dict shrinks less.",
        f"- Training step with QAT on vs off (median of each run's steps): {result['step_seconds']['qat']:.3f} s vs "
        f"{result['step_seconds']['fp32']:.3f} s = **{result['step_ratio']:.2f}x**.",
        "",
        "CPU latency, median forward seconds at sequence length 64, measured round-robin; ratio vs fp32 eager:",
        "",
        "| model | batch 1 | ratio | batch 32 | ratio |",
        "|---|---|---|---|---|",
    ]
    for name in latency[1]:
        b1, b32 = latency[1][name], latency[32][name]
        lines.append(
            f"| {name} | {1000 * b1:.1f} ms | {b1 / latency[1]['fp32 eager']:.2f}x | {1000 * b32:.0f} ms | "
            f"{b32 / latency[32]['fp32 eager']:.2f}x |"
        )
    int8 = "QAT int8 converted, eager"
    lines += [
        "",
        f"Speed-up of the converted int8 model (eager, as users run it) over fp32 eager: batch 1 "
        f"**{latency[1]['fp32 eager'] / latency[1][int8]:.2f}x**, batch 32 "
        f"**{latency[32]['fp32 eager'] / latency[32][int8]:.2f}x**; over fp32 under torch.compile: batch 1 "
        f"{latency[1]['fp32 compiled'] / latency[1][int8]:.2f}x, batch 32 "
        f"{latency[32]['fp32 compiled'] / latency[32][int8]:.2f}x (fp32 compile time "
        f"{result['compile_seconds']['fp32']:.1f} s, not counted in its latency).",
    ]
    write_results(args.output, lines, result)


if __name__ == "__main__":
    main()
