"""The compressed SmolLM2 agent against its teacher and what LLM people run instead, on the built-in data.

From the fine-tuned SmolLM2-135M-Instruct agent (``python train.py fit -c configs/llm.yaml``), ``train.py compress``
builds a student per KD divergence (``--divergences``): half the teacher's blocks (``--student-layers``, default
``auto:15``: all but the contiguous span that changes the hidden states least), token-level distillation on the answers
(forward KL, reverse KL, DistiLLM's skew KL; ``sft``: the same run with ``--distill.alpha 1``, the answers'
cross-entropy alone), int8 QAT in ONNX Runtime's scheme from half-way, the tied embedding table trimmed to the training
vocabulary and the tokenizer's 16,000 most frequent tokens as int8 (the output softmax: the training vocabulary),
exported as an int8 ONNX decoding step with a key/value cache. Each run's own summary (``summary.md`` beside its logs)
measures the export against the teacher and its ONNX Runtime peers.

Then one side-by-side table (one process, round-robin, the same requests, ``torch.get_num_threads()`` threads for
every runtime): the fp32 teacher in PyTorch eager (Hugging Face), the teacher as the same ONNX decoding step (fp32)
and ONNX Runtime's ``quantize_dynamic`` int8 of it (no training), the most accurate student's export, and, where
``llama-cpp-python`` is installed, the original SmolLM2-135M-Instruct GGUF (Q4_1, not fine-tuned: speed only) under
llama.cpp. ms per request: one request answered alone, prompt and decoding included (llama.cpp: from token ids, the
same prompt and as many greedy tokens as the student's answer); answer tokens/s: the answers' tokens over that time;
decode tokens/s: 32 greedy tokens after a request's prompt, prefill included.

    python -m benchmarks.llm.compress_smollm2 --teacher runs/agent/version_0/checkpoints/last.ckpt
    python -m benchmarks.llm.compress_smollm2 --teacher CKPT --divergences skew --student-epochs 1 \\
        --limit-batches 2 --output /tmp/look

Writes benchmarks/llm/results/compress_smollm2.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.backbone import load_tokenizer, packaged_gguf, resolve_backbone  # noqa: E402
from agent_lightning.cli.recipes import run_recipe  # noqa: E402
from agent_lightning.deployment.compare import compare_with_teacher  # noqa: E402
from agent_lightning.deployment.export import export_agent  # noqa: E402
from agent_lightning.deployment.measure import file_bytes, saved_bytes  # noqa: E402
from agent_lightning.deployment.peers import decoder_peers  # noqa: E402
from agent_lightning.deployment.runtime import MANIFEST, ExportedAgent, model_file  # noqa: E402
from agent_lightning.distillation.synthetic import RequestGenerationConfig, generate_requests  # noqa: E402
from agent_lightning.evaluation import action_accuracy  # noqa: E402
from agent_lightning.generation import free_greedy  # noqa: E402
from agent_lightning.io import atomic_write_csv, atomic_write_text  # noqa: E402
from agent_lightning.quantization.checkpoint import callback_state  # noqa: E402
from benchmarks.common import command_line, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIVERGENCES = ("forward", "reverse", "skew", "sft")
STUDENT_EPOCHS, STUDENT_LR = 3, 3e-4  # the recipe's (configs/llm.yaml's teacher trains at 1e-4)
SPLITS = ("train", "val", "test")


def _distill_settings(pairs: list[str]) -> dict[str, str]:
    """``--distill KEY=VALUE ...`` as a dict."""
    return dict(pair.split("=", 1) for pair in pairs)


def _run_name(
    divergence: str,
    settings: dict[str, str],
    seed: int | None = None,
    generated: int | None = None,
    start: list[int] | None = None,
    steps: str | None = None,
    ema: float | None = None,
    epochs: int = STUDENT_EPOCHS,
    lr: float = STUDENT_LR,
) -> str:
    """A student's folder under ``--runs`` and its key in the results: the divergence, then the ``--distill``
    settings (``forward-prompt_weight1``; ``sft`` takes none), ``generatedN``, ``fromN`` (``--student-from`` a
    student of N blocks), ``stepsN-M`` (``--depth-steps N,M``), ``emaD`` (``--ema D``), ``epochsN`` and ``lrX``
    (``--student-epochs`` and ``--student-lr`` other than the recipe's) and the seed when they are given."""
    parts = [divergence] + ([] if divergence == "sft" else [f"{k}{v}" for k, v in sorted(settings.items())])
    parts += [] if generated is None else [f"generated{generated}"]
    parts += [] if start is None else [f"from{len(start)}"]
    parts += [] if steps is None else ["steps" + steps.replace(",", "-")]
    parts += [] if ema is None else [f"ema{ema:g}"]
    parts += [] if epochs == STUDENT_EPOCHS else [f"epochs{epochs}"]
    parts += [] if lr == STUDENT_LR else [f"lr{lr:g}"]
    return "-".join(parts + ([] if seed is None else [f"seed{seed}"]))


def _args_run_name(args: argparse.Namespace, divergence: str, start: list[int] | None) -> str:
    """:func:`_run_name` of this command line's student for ``divergence`` (``start``: the teacher blocks
    ``--student-from``'s student kept)."""
    return _run_name(
        divergence,
        _distill_settings(args.distill),
        args.seed,
        args.generated,
        start,
        args.depth_steps,
        args.ema,
        args.student_epochs,
        args.student_lr,
    )


def _generated_data(per_label: int, teacher: Agent, data: TextClassificationDataModule, root: Path) -> Path:
    """``--generated N``: a data folder whose ``train.csv`` holds the training split and N new requests per action
    written by SmolLM2-135M-Instruct itself (few-shot lists of training requests, :func:`generate_requests`) with the
    teacher's answers as their labels; ``val.csv`` and ``test.csv`` are the built-in splits unchanged (no generated
    request repeats one of them). Made once (``generated.csv``: each request, the action whose examples prompted it,
    the teacher's answer and confidence); later runs reuse it."""
    folder = root / f"data-generated{per_label}"
    if (folder / "train.csv").is_file():
        return folder
    train, val, test = (data.splits[split] for split in SPLITS)
    examples: dict[str, list[str]] = {}
    for text, label in zip(train.texts, train.labels):
        examples.setdefault(label, []).append(text)
    source = resolve_backbone(teacher.hparams.model)  # the pretrained base, not the fine-tuned teacher
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    started = time.perf_counter()
    generated = generate_requests(
        model, load_tokenizer(source), examples, RequestGenerationConfig(per_label=per_label), [*val.texts, *test.texts]
    )
    texts = [text for requests in generated.values() for text in requests]
    prompted = [label for label, requests in generated.items() for _ in requests]
    with torch.no_grad():
        answers = teacher.act(texts, batch_size=32)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(t, a, p, f"{c:.4f}") for t, (a, c), p in zip(texts, answers, prompted)]
    atomic_write_csv(folder / "generated.csv", rows, ("text", "label", "prompted_by", "confidence"))
    for name, split in (("val", val), ("test", test)):
        atomic_write_csv(folder / f"{name}.csv", zip(split.texts, split.labels))
    stats = {
        "requests": len(texts),
        "teacher_agrees_with_prompt": sum(a == p for (a, _), p in zip(answers, prompted)) / max(len(texts), 1),
        "seconds": seconds,
    }
    atomic_write_text(folder / "generated.json", json.dumps(stats, indent=2))
    train_rows = list(zip(train.texts, train.labels)) + [(t, a) for t, (a, _) in zip(texts, answers)]
    atomic_write_csv(folder / "train.csv", train_rows)  # last: marks the folder complete
    print(json.dumps({"generated": str(folder), **stats}), flush=True)
    return folder


def _newest_version(folder: Path) -> Path:
    """The logger's newest ``version_N`` folder under ``folder`` (by number: ``version_10`` after ``version_9``)."""
    return max(folder.glob("version_*"), key=lambda run: int(run.name.removeprefix("version_")))


def _kept_blocks(checkpoint: Path) -> list[int]:
    """The blocks a student checkpoint kept (its ``student_layers`` as picked: ``hparams.yaml`` holds ``auto:N``)."""
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["hyper_parameters"]
    return list(hparams["student_layers"])


def _teacher_blocks(run_dir: Path, start: list[int] | None, steps: str | None) -> list[int]:
    """The teacher's numbers of the blocks the student of ``run_dir`` kept: through ``--student-from``'s ``start``
    (the teacher blocks it kept) and each ``--depth-steps`` step's student (``student-N`` beside ``student``)."""
    numbers = start
    step_runs = [] if steps is None else [f"student-{blocks}" for blocks in steps.split(",")]
    for folder in [*step_runs, "student"]:
        step = run_dir if folder == "student" else _newest_version(run_dir.parent.parent / folder)
        kept = _kept_blocks(step / "checkpoints" / "last.ckpt")
        numbers = kept if numbers is None else [numbers[index] for index in kept]
    return numbers


def _student(
    args: argparse.Namespace,
    divergence: str,
    root: Path,
    data: Path | None,
    start: list[int] | None,
    data_module: TextClassificationDataModule,
) -> tuple[dict, Path]:
    """Run ``compress`` for one divergence (on ``data``'s files when given; from ``--student-from``, whose kept
    teacher blocks are ``start``, when given); its summary and run folder. ``data_module``: the built-in splits, whose
    test split measures ``--ema``'s raw weights."""
    flags = ["--distill.alpha=1.0"] if divergence == "sft" else [f"--distill.divergence={divergence}"]
    settings = {} if divergence == "sft" else _distill_settings(args.distill)
    flags += [f"--distill.{key}={value}" for key, value in sorted(settings.items())]
    if data is not None:
        flags += ["--data.dataset=null"] + [f"--data.{split}_file={data / f'{split}.csv'}" for split in SPLITS]
    name = _args_run_name(args, divergence, start)
    command = ["-c", "configs/llm.yaml", "--teacher", str(args.teacher), "--student-layers", args.student_layers]
    command += [] if args.student_from is None else ["--student-from", str(args.student_from)]
    command += [] if args.depth_steps is None else ["--depth-steps", args.depth_steps]
    command += ["--student-epochs", str(args.student_epochs), "--student-lr", str(args.student_lr), *flags]
    command += [f"--trainer.logger.init_args.save_dir={root / name}", "--trainer.enable_progress_bar=false"]
    command += [] if args.seed is None else [f"--seed_everything={args.seed}"]
    if args.ema is not None:  # Lightning's own callback: checkpoints hold the average, the raw weights beside it
        command += ["--trainer.callbacks+=EMAWeightAveraging", f"--trainer.callbacks.decay={args.ema}"]
    if args.limit_batches is not None:
        command += [f"--trainer.limit_train_batches={args.limit_batches}", "--trainer.limit_val_batches=1"]
        command += ["--trainer.limit_test_batches=1"]
    started = time.perf_counter()
    summary = run_recipe(command)
    seconds = time.perf_counter() - started
    run_dir = _newest_version(root / name / "student")
    recorded = {"seconds": seconds}
    if args.ema is not None:
        recorded["raw_acc"] = _raw_accuracy(run_dir, data_module)
    atomic_write_text(run_dir / "benchmark.json", json.dumps(recorded))  # for --measure-only
    return {"divergence": divergence, "name": name, **recorded, **summary.__dict__}, run_dir


def _without_average(checkpoint: Path, folder: str) -> Path:
    """A copy of ``checkpoint`` in ``folder`` holding the run's raw weights instead of their average: Lightning's
    ``EMAWeightAveraging`` saves the average as ``state_dict`` and the weights as trained as ``current_model_state``."""
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "current_model_state" not in raw:
        raise ValueError(f"--ema: {checkpoint} holds no current_model_state; was it saved with EMAWeightAveraging?")
    raw["state_dict"] = raw.pop("current_model_state")
    raw.pop("averaging_state", None)
    copy = Path(folder) / f"{checkpoint.stem}-raw.ckpt"
    torch.save(raw, copy)
    return copy


def _raw_accuracy(run_dir: Path, data: TextClassificationDataModule) -> float:
    """``--ema``: the test action accuracy of the run's last weights without the average, exported as the run's
    student was: the same training, with and without averaging."""
    with tempfile.TemporaryDirectory(prefix="raw-", dir=run_dir) as folder:  # checkpoint- and export-sized, removed
        export_agent(_without_average(run_dir / "checkpoints" / "last.ckpt", folder), Path(folder) / "export-onnx")
        test = data.splits["test"]
        return action_accuracy(ExportedAgent(Path(folder) / "export-onnx"), test.texts, test.labels)


def _with_frequent_tokens(checkpoint: Path, frequent: int, folder: str) -> Path:
    """A copy of ``checkpoint`` in ``folder`` whose ``EmbeddingCompression`` state keeps ``frequent`` of the
    tokenizer's most frequent tokens: the setting acts when the table is compacted after training (training only
    counts tokens), so the copy exports as a run with that setting would have."""
    raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = callback_state(raw, "EmbeddingCompression")
    if state is None:
        raise ValueError(f"--frequent-tokens: {checkpoint} has no EmbeddingCompression state to change.")
    state["frequent_tokens"] = frequent
    copy = Path(folder) / f"{checkpoint.stem}-frequent{frequent}.ckpt"
    torch.save(raw, copy)
    return copy


def _measured_again(
    divergence: str,
    name: str,
    run_dir: Path,
    teacher: Agent,
    data: TextClassificationDataModule,
    export_again: bool,
    frequent: int | None = None,
) -> dict:
    """``--measure-only``: a trained student's summary as its ``compress`` run wrote it or, with ``export_again``, its
    last checkpoint exported again (with this code; with ``frequent``, keeping that many frequent tokens in its table)
    and measured against the teacher as ``compress`` does; the training time is the one its first run recorded."""
    recorded = json.loads((run_dir / "benchmark.json").read_text())  # seconds, and raw_acc for --ema
    if not export_again:
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"divergence": divergence, "name": name, **recorded, **summary}
    export = run_dir / "export-onnx"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    with tempfile.TemporaryDirectory(prefix="frequent-", dir=run_dir) as folder:  # a checkpoint-sized copy, removed
        copy = checkpoint if frequent is None else _with_frequent_tokens(checkpoint, frequent, folder)
        export_agent(copy, export, overwrite=True)
    if frequent is not None:  # the manifest names the run's checkpoint, not the removed copy, and the change
        manifest = json.loads((export / MANIFEST).read_text())
        manifest.update(source=str(checkpoint), source_frequent_tokens=frequent)
        atomic_write_text(export / MANIFEST, json.dumps(manifest, indent=1))
    test, val = data.splits["test"], data.splits["val"]
    summary = compare_with_teacher(
        teacher, export, test.texts, test.labels, "test", abstain=(val.texts, val.labels, 0.95)
    )
    atomic_write_text(run_dir / "summary.json", json.dumps(dataclasses.asdict(summary), indent=2))
    return {"divergence": divergence, "name": name, **recorded, **summary.__dict__}


class _Llama:
    """The original GGUF under llama.cpp, answering from token ids: the prompt, then ``k`` greedy tokens."""

    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama  # optional: only where llama-cpp-python installs

        self.model = Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(self, prompt: list[int], new_tokens: int) -> None:
        self.model.reset()
        self.model.eval(prompt)
        for _ in range(new_tokens):
            token = self.model.sample(temp=0.0)
            self.model.eval([token])


def _median_ms(function, rounds: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _speed_table(teacher: Agent, student: ExportedAgent, texts: list[str], rounds: int) -> list[dict]:
    """Every runtime on the same requests, round-robin per request."""
    threads = torch.get_num_threads()
    prompts = student.prompts(texts)
    rows_ids = [
        ids[mask.bool()].tolist() for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"])
    ]  # each request's prompt ids, unpadded
    answers = [answer for answer, _ in student.act(texts)]
    lengths = [len(student.chat.response_ids(answer)) for answer in answers]
    with tempfile.TemporaryDirectory(prefix="peers-") as folder:
        peers = decoder_peers(teacher, folder, threads)
        systems: dict[str, dict] = {
            "fp32 teacher, PyTorch eager": {"act": teacher, "step": teacher.model, "bytes": saved_bytes(teacher.model)},
            "fp32 teacher, ONNX Runtime": {"act": peers["ort_fp32"], "step": peers["ort_fp32"].program},
            "int8 teacher, ONNX Runtime `quantize_dynamic` (no training)": {
                "act": peers["ort_int8"],
                "step": peers["ort_int8"].program,
            },
            "**our compressed student** (ONNX Runtime)": {"act": student, "step": student.program},
        }
        for system in systems.values():
            if "bytes" not in system:
                system["bytes"] = file_bytes(model_file(system["act"].folder))
        llama = None
        if importlib.util.find_spec("llama_cpp") is not None:
            gguf = packaged_gguf()
            llama = _Llama(gguf, threads)
            systems["SmolLM2-135M-Instruct Q4_1 GGUF, llama.cpp (original, not fine-tuned)"] = {
                "llama": llama,
                "bytes": file_bytes(gguf),
            }
        per_request = {name: [] for name in systems}
        decode = {name: [] for name in systems}
        for index, text in enumerate(texts):
            for name, system in systems.items():
                if "llama" in system:
                    per_request[name].append(_median_ms(lambda: llama.run(rows_ids[index], lengths[index]), rounds))
                else:
                    per_request[name].append(_median_ms(lambda: system["act"].act([text]), rounds))
            if index < 3:  # decoding speed: 32 tokens after this request's prompt
                for name, system in systems.items():
                    if "llama" in system:
                        decode[name].append(_median_ms(lambda: llama.run(rows_ids[index], 32), rounds))
                        continue
                    ids = torch.tensor([rows_ids[index]])
                    mask = torch.ones_like(ids)
                    pad = student.tokenizer.pad_token_id
                    step = system["step"]
                    decode[name].append(_median_ms(lambda: free_greedy(step, ids, mask, 32, -1, pad), rounds))
        table = []
        for name, system in systems.items():
            ms = statistics.mean(per_request[name])
            accuracy = None if "llama" in system else system.get("acc")
            table.append(
                {
                    "model": name,
                    "accuracy": accuracy,
                    "bytes": system["bytes"][0],
                    "zipped": system["bytes"][1],
                    "ms_per_request": ms,
                    "answer_tokens_per_s": 1000 * statistics.mean(lengths) / ms,
                    "decode_tokens_per_s": 1000 * 32 / statistics.mean(decode[name]),
                }
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the fine-tuned SmolLM2 agent checkpoint")
    parser.add_argument("--divergences", nargs="+", default=list(DIVERGENCES), choices=DIVERGENCES)
    parser.add_argument(
        "--student-layers",
        default="auto:15",
        help="the teacher blocks the students keep, as train.py compress takes them (indices, auto:N, span:N, "
        "influence:N); default auto:15",
    )
    parser.add_argument(
        "--student-from",
        type=Path,
        default=None,
        help="start the students from this student checkpoint of the same teacher (depth pruning in steps; "
        "--student-layers then counts its blocks; the table numbers the blocks as the teacher's, which holds for a "
        "student made from the teacher in one step); those runs go to DIVERGENCE-...-fromN under --runs",
    )
    parser.add_argument(
        "--depth-steps",
        default=None,
        help="train.py compress --depth-steps: first students of these many blocks in turn, e.g. 20 (each from the "
        "previous one's best checkpoint; --student-layers then counts the last one's blocks); those runs go to "
        "DIVERGENCE-...-stepsN-M",
    )
    parser.add_argument(
        "--student-epochs",
        type=int,
        default=STUDENT_EPOCHS,
        help=f"the students' epochs (default {STUDENT_EPOCHS}); other counts go to DIVERGENCE-...-epochsN",
    )
    parser.add_argument(
        "--student-lr",
        type=float,
        default=STUDENT_LR,
        help=f"the students' peak learning rate (default {STUDENT_LR:g}; the teacher's config: 1e-4); other rates go "
        "to DIVERGENCE-...-lrX",
    )
    parser.add_argument("--timed", type=int, default=20, help="test requests in the speed table")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per request and runtime (median)")
    parser.add_argument("--limit-batches", type=int, default=None, help="a quick look: batches per fit")
    parser.add_argument("--runs", type=Path, default=Path("runs/compress_smollm2"), help="where the runs go")
    parser.add_argument("--output", type=Path, default=RESULTS / "compress_smollm2")
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="train nothing: read the students' summaries in --runs and time them side by side again",
    )
    parser.add_argument(
        "--export-again",
        action="store_true",
        help="with --measure-only: export each student's last checkpoint again with this code and measure it against "
        "the teacher again (after a change of the export or the runtime)",
    )
    parser.add_argument(
        "--frequent-tokens",
        type=int,
        default=None,
        help="with --export-again: the tokenizer's most frequent tokens the exported table keeps (the runs' recorded "
        "setting otherwise), e.g. after a change of the recipe's default",
    )
    parser.add_argument(
        "--distill",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="Distillation settings for every student but sft, e.g. prompt_weight=1 temperature=2 augment=0.2 (the "
        "recipe's otherwise); those runs go to DIVERGENCE-KEYVALUE... under --runs",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the students' seed (the training order; configs/llm.yaml's 42 otherwise); those runs go to "
        "DIVERGENCE-...-seedN under --runs",
    )
    parser.add_argument(
        "--generated",
        type=int,
        default=None,
        metavar="N",
        help="add N requests per action written by SmolLM2-135M-Instruct (few-shot lists of training requests) to the "
        "students' training data, labelled by the teacher's answers (made once under --runs); those runs go to "
        "DIVERGENCE-...-generatedN",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="average the students' weights as they train (Lightning's EMAWeightAveraging, this decay per step, e.g. "
        "0.98): the checkpoints, hence the exports, hold the average; each run's raw last weights are exported and "
        "measured too (the same training without the average); those runs go to DIVERGENCE-...-emaD",
    )
    args = parser.parse_args()
    if args.ema is not None and not 0 < args.ema < 1:
        parser.error(f"--ema {args.ema}: give the average's decay per step in (0, 1), e.g. --ema 0.98.")
    if args.generated is not None and args.generated < 1:
        parser.error(f"--generated {args.generated}: give the requests per action to write, e.g. --generated 50.")
    if any("=" not in pair or pair.startswith("divergence=") for pair in args.distill):
        parser.error(
            f"--distill {' '.join(args.distill)}: give KEY=VALUE pairs of Distillation settings other than the "
            "divergence (that is --divergences), e.g. --distill prompt_weight=1."
        )
    if args.frequent_tokens is not None and not args.export_again:
        parser.error("--frequent-tokens N re-exports the students: give it with --measure-only --export-again.")

    teacher = Agent.load_from_checkpoint(args.teacher, map_location="cpu").eval()
    hp = teacher.hparams
    dm = TextClassificationDataModule(
        dataset="assistant-actions", task="generation", tokenizer=hp.model, max_length=hp.max_length
    )
    students, runs = [], {}
    start = None if args.student_from is None else _kept_blocks(args.student_from)
    generated = None
    if args.generated is not None and not args.measure_only:
        generated = _generated_data(args.generated, teacher, dm, args.runs)
    for divergence in args.divergences:
        name = _args_run_name(args, divergence, start)
        if args.measure_only:
            run_dir = _newest_version(args.runs / name / "student")
            row = _measured_again(divergence, name, run_dir, teacher, dm, args.export_again, args.frequent_tokens)
        else:
            row, run_dir = _student(args, divergence, args.runs, generated, start, dm)
        students.append(row)
        runs[name] = run_dir
        print(json.dumps({k: row[k] for k in ("name", "student_acc", "teacher_acc", "seconds")}), flush=True)
    best = max(students, key=lambda row: row["student_acc"])
    export = ExportedAgent(runs[best["name"]] / "export-onnx")
    test = dm.splits["test"]
    speed = _speed_table(teacher, export, list(test.texts[: args.timed]), args.rounds)
    speed[0]["accuracy"], speed[3]["accuracy"] = best["teacher_acc"], best["student_acc"]
    speed[1]["accuracy"] = best["peers"].get("ort_fp32", {}).get("acc")
    speed[2]["accuracy"] = best["peers"].get("ort_int8", {}).get("acc")

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f} %"

    teacher_zipped = speed[0]["zipped"]
    teacher_ms = speed[0]["ms_per_request"]
    of = "the 30 blocks" if start is None else f"the {len(start)} blocks {start} of `{args.student_from}`"
    of += "" if args.depth_steps is None else f" after depth steps of {args.depth_steps} blocks"
    lines = [
        "# The compressed SmolLM2 agent against its teacher and what runs without training",
        "",
        f"Command: `{command_line()}`. {torch.get_num_threads()} CPU threads. Built-in data, 314 test requests, 24 "
        f"actions; teacher: `{args.teacher}` ({pct(best['teacher_acc'])} action accuracy).",
        "",
        f"## Students (`--student-layers {args.student_layers}` of {of}, {args.student_epochs} epochs at "
        f"peak lr {args.student_lr:g}, int8 QAT, trimmed int8 tied table, ONNX export)",
        "",
        "| KD | kept blocks | table rows (read / scored) | exported student's action accuracy | vs teacher | zipped "
        "| ms per request | vs teacher | training s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in students:
        name = "none (answers' cross-entropy only)" if row["divergence"] == "sft" else f"{row['divergence']} KL"
        if row["divergence"] != "sft" and args.distill:
            name += " (" + ", ".join(f"`{pair}`" for pair in args.distill) + ")"
        name += "" if args.generated is None else f", + {args.generated} generated requests per action"
        name += "" if args.seed is None else f", seed {args.seed}"
        name += "" if args.ema is None else f", EMA {args.ema:g} (raw weights: {pct(row['raw_acc'])})"
        kept = _teacher_blocks(runs[row["name"]], start, args.depth_steps)
        manifest = json.loads((runs[row["name"]] / "export-onnx" / MANIFEST).read_text())
        table = manifest.get("embeddings", {})
        rows = f"{table.get('kept_tokens', 'all')} / {table.get('scored_tokens', table.get('kept_tokens', 'all'))}"
        lines.append(
            f"| {name} | {kept} | {rows} | {pct(row['student_acc'])} | "
            f"{100 * (row['student_acc'] - row['teacher_acc']):+.2f} pt | "
            f"{row['student_zipped'] / 1e6:.1f} MB | {row['latency_ms']['student_b1']:.1f} | "
            f"{row['latency_ms']['teacher_b1'] / row['latency_ms']['student_b1']:.2f}x faster | {row['seconds']:.0f} |"
        )
    lines += [
        "",
        f"## Side by side (the `{best['name']}` student; {args.timed} test requests, median of {args.rounds} "
        "passes each)",
        "",
        "| model | action accuracy | zipped | ms per request | answer tokens/s | decode tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for row in speed:
        lines.append(
            f"| {row['model']} | {pct(row['accuracy'])} | {row['zipped'] / 1e6:.1f} MB "
            f"({teacher_zipped / row['zipped']:.1f}x smaller) | {row['ms_per_request']:.1f} "
            f"({teacher_ms / row['ms_per_request']:.2f}x faster) | {row['answer_tokens_per_s']:.1f} | "
            f"{row['decode_tokens_per_s']:.1f} |"
        )
    data = {
        "command": command_line(),
        "students": students,
        "speed": speed,
        "runs": {k: str(v) for k, v in runs.items()},
    }
    write_results(args.output, lines, data)


if __name__ == "__main__":
    main()
