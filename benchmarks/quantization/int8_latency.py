"""CPU latency of the int8 model that QAT converts to, versus fp32, measured several times over.

Latency does not depend on the trained values, only on the kernels and shapes, so the int8 model here is the fp32
checkpoint converted with the same recipe QAT uses (``convert``: fbgemm dynamic int8 linears). Four models, all
called as ``(input_ids, attention_mask) -> logits``: fp32 eager, fp32 TorchScript (traced the same way as the
export, so the int8 program is not compared with a handicapped baseline), int8 eager, and the int8 TorchScript
program that ``agent-lightning export --format int8`` writes (the artefact users deploy). Each repeat is an
independent round-robin measurement (``agent_lightning.deployment.measure.compare_latency``) at sequence length 64;
the table gives every repeat's ratio and their median, because single measurements on a shared 2-core machine vary by
+-15 %. Also measured: one pass over the BANKING77 test set with its real, dynamically padded batches.

    python -m benchmarks.quantization.int8_latency --teacher runs/finetune_banking77/version_0/checkpoints/best.ckpt

Writes benchmarks/quantization/results/int8_latency.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from agent_lightning import Agent  # noqa: E402
from agent_lightning.deployment.export import LogitsProgram, trace  # noqa: E402
from agent_lightning.deployment.measure import ModelInputs, compare_latency, token_inputs  # noqa: E402
from agent_lightning.quantization import convert  # noqa: E402
from benchmarks.common import DEFAULT_DATA, banking77, command_line, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="fine-tuned fp32 agent checkpoint")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5, help="independent measurements per batch size")
    parser.add_argument("--rounds", type=int, default=20, help="round-robin rounds per measurement")
    parser.add_argument("--output", type=Path, default=RESULTS / "int8_latency.md")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    fp32 = LogitsProgram(Agent.load_from_checkpoint(args.teacher).model).eval()
    int8 = convert(copy.deepcopy(fp32))
    example = token_inputs(2, 16).kwargs
    models = {
        "fp32 eager": fp32,
        "fp32 TorchScript": trace(fp32, example),
        "int8 eager": int8,
        "int8 TorchScript (export)": trace(int8, example),
    }
    ratios: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    seconds: dict[int, list[dict[str, float]]] = {}
    for batch in (1, 32):
        seconds[batch] = []
        for repeat in range(args.repeats):
            tokens = token_inputs(batch, seed=repeat).kwargs
            inputs = ModelInputs((tokens["input_ids"], tokens["attention_mask"]))
            seconds[batch].append(compare_latency(models, inputs, rounds=args.rounds))
        for name in models:
            ratios[name][batch] = [m[name] / m["fp32 eager"] for m in seconds[batch]]
        print(batch, {name: f"{statistics.median(r[batch]):.2f}" for name, r in ratios.items()}, flush=True)
    test_pass = _test_set_pass({"fp32": fp32, "int8": models["int8 TorchScript (export)"]}, args.data_dir)
    result = {"ratios": ratios, "seconds": seconds, "test_pass_seconds": test_pass, "threads": torch.get_num_threads()}
    lines = [
        "# int8 (fbgemm dynamic, as QAT converts and export writes) vs fp32: CPU latency of MiniLM, 77 labels",
        "",
        f"{os.cpu_count()} CPU cores (AVX2, no AVX-512/VNNI), {result['threads']} threads, torch {torch.__version__}; "
        f"{args.repeats} independent round-robin measurements of {args.rounds} rounds each, sequence length 64.",
        f"Command: `{command_line()}`.",
        "",
        "Latency relative to fp32 eager (lower is faster): every repeat, then the median and the median speed-up.",
        "",
        "| model | batch | each repeat | median | median speed-up |",
        "|---|---|---|---|---|",
    ]
    for name, by_batch in ratios.items():
        for batch, values in by_batch.items():
            median = statistics.median(values)
            each = ", ".join(f"{v:.2f}x" for v in values)
            lines.append(f"| {name} | {batch} | {each} | {median:.2f}x | **{1 / median:.2f}x** |")
    fp32_s, int8_s = (statistics.median(test_pass[name]) for name in ("fp32", "int8"))
    lines += [
        "",
        f"BANKING77 test set (3,080 requests, real dynamically padded batches of the test loader), one pass, median of "
        f"{len(test_pass['fp32'])} alternating passes: fp32 eager {fp32_s:.1f} s, int8 TorchScript (export) "
        f"{int8_s:.1f} s = **{fp32_s / int8_s:.2f}x** faster.",
    ]
    write_results(args.output, lines, result)


def _test_set_pass(models: dict[str, torch.nn.Module], data_dir: Path, passes: int = 3) -> dict[str, list[float]]:
    dm = banking77(data_dir)
    dm.setup("test")
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in dm.test_dataloader()]
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(passes):
            for name, model in models.items():
                started = time.perf_counter()
                for batch in batches:
                    model(batch["input_ids"], batch["attention_mask"])
                times[name].append(time.perf_counter() - started)
    return times


if __name__ == "__main__":
    main()
