"""The two-stage compression recipe: fine-tune a teacher, train a compressed student from it, export, measure.

``agent-lightning compress`` (``python train.py compress``) runs, in one command:

1. **Teacher**: ``fit`` with the given config (skipped when ``--teacher CKPT`` names a fine-tuned agent checkpoint);
   its best checkpoint by ``val/acc`` is the teacher.
2. **Student**: ``fit`` again with the same config, the student made of some of the teacher's blocks
   (``--student-layers``, initialised from the fine-tuned teacher's weights) and the compression short flags:
   ``--distill TEACHER`` (every step), ``--prune`` (half of each block's FFN neurons, ``--prune.method
   structured``, ramped by 60 % of training, then cut out of the layers: fewer multiply-adds, unlike unstructured
   zeros), ``--qat`` (from 80 % of training, on the pruned weights, converted at fit end) and ``--embeddings``
   (the vocabulary training used plus the tokenizer's 4,000 most frequent tokens, ``--embeddings.frequent_tokens``,
   as int4 rows: on small training sets most test requests hold a word training never saw). What each default
   bought is measured in ``benchmarks/pipeline/versus_onnxruntime.py``. Its ``config.yaml`` spells all of it out.
   A generative agent (``configs/llm.yaml``) gets other defaults: the student keeps half of the teacher's blocks,
   all but the contiguous span that changes the hidden states least (``--student-layers auto:N``), distils token by
   token on the answers (``--distill.divergence``, temperature 1), is not pruned within its blocks (``--prune none``:
   unstructured zeros save no CPU time) and trains for int8 from half-way (``--qat.start 0.5``) except SwiGLU's down
   projections (``--qat.exclude``: their inputs hold activation outliers no int8 range per tensor can hold), at 3x the
   teacher's learning rate (``--student-lr``); its tied embedding table is trimmed once to the training vocabulary
   and the tokenizer's 16,000 most frequent tokens, as int8 rows: a request's words that training never saw read
   their own rows, and the output softmax scores the training vocabulary only.
   ``--student-from CKPT`` starts the student from another agent checkpoint of the same teacher's task instead of
   the teacher's weights (``--student-layers`` then counts that agent's blocks): depth pruning in steps, one
   ``compress`` per step, each step distilled from the original ``--teacher``; start a step from the previous
   step's best checkpoint (the one it prints as "Best checkpoint"; its ``last.ckpt`` is what that step exports).
   ``--depth-steps 20`` does the steps in one ``compress``: a student of 20 blocks (``auto:20``, logged as
   ``student-20``), then the ``--student-layers`` student from its best checkpoint, which alone is exported.
   With ``--labels-per-class N`` both stages
   train on N labelled examples per label, and ``--unlabeled FILE|rest`` gives the student (only) texts without
   labels to distil on, with mostly soft labels (``--distill.temperature 1 --distill.alpha 0.1`` unless given: the
   setting that paid in ``benchmarks/distillation/few_labels_banking77.py``). Detail flags of the compression
   (``--distill.temperature``, ``--prune.end``, ...) apply to the student only.
3. **Export**: the student's last checkpoint becomes the int8 ONNX model for ONNX Runtime (``--format onnx``, the
   default; QAT then trains with ONNX Runtime's activation scheme, ``--qat.kernel onnxruntime``) or the int8
   TorchScript program (``--format int8``), verified by reloading (``agent-lightning export``); a generative agent's
   is a decoding step with a key/value cache.
4. **Measure**: the export, the fp32 teacher and the teacher's ONNX Runtime peers (fp32, and ``quantize_dynamic``
   int8: what one would run without training) side by side on the test split (the validation split if there is
   none): accuracy, bytes on disk (zipped), CPU latency at batch 1 and 32 on real requests (round-robin; for a
   generative agent the time to answer a request, decoding included, and answer tokens per second), and the
   student's abstention threshold chosen on validation (``--abstain-precision``) with its coverage and precision
   on test. Written as ``summary.md``/``summary.json`` beside the student's logs and printed.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from agent_lightning.agent import Agent
from agent_lightning.cli.lightning_cli import AgentLightningCLI
from agent_lightning.cli.short_flags import CHOICES, expand_short_flags, student_layers_argument
from agent_lightning.deployment.compare import RecipeSummary, compare_with_teacher
from agent_lightning.deployment.export import describe, export_agent, load_agent_checkpoint
from agent_lightning.io import atomic_write_text, check_writable_directory
from agent_lightning.pruning.depth import auto_layers
from agent_lightning.quantization.recipe import DECODER_FLOAT_LAYERS
from agent_lightning.targets import block_list
from agent_lightning.validation import check_number, preview

__all__ = [
    "CLASSIFIER_FREQUENT_TOKENS",
    "GENERATIVE_FREQUENT_TOKENS",
    "GENERATIVE_STUDENT_LR_FACTOR",
    "compress_parser",
    "run_recipe",
]

#: a classifier student's input table keeps this many of the tokenizer's most frequent tokens besides the training
#: ones (the built-in data's test requests hold many words its 1,330 training requests lack; benchmarks/quantization)
CLASSIFIER_FREQUENT_TOKENS = 4000
#: a generative student's tied table keeps this many for reading requests (its output softmax scores the training
#: tokens only, so they cost bytes, not time; benchmarks/llm)
GENERATIVE_FREQUENT_TOKENS = 16000
#: a generative student (half the teacher's blocks) trains at this multiple of the teacher's learning rate unless
#: ``--student-lr`` says otherwise: at the teacher's own rate it recovers too slowly (benchmarks/llm)
GENERATIVE_STUDENT_LR_FACTOR = 3.0


def compress_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-lightning compress",
        description="Fine-tune a teacher (or reuse --teacher), train a distilled, pruned, int8 student from it, "
        "export the int8 program and measure it against the teacher. Other arguments (-c CONFIG, --data.*, "
        "--trainer.*, --model.*) go to both fits.",
    )
    parser.add_argument("--teacher", help="a fine-tuned agent checkpoint to use as the teacher (skips stage 1)")
    parser.add_argument(
        "--student-layers",
        help="teacher blocks the student keeps: indices, or auto:N (all but the contiguous span of blocks that "
        "changes the hidden states least on training batches; influence:N: the N of highest block influence); default "
        "0,2,4, or auto:(half the teacher's blocks) for a generative agent",
    )
    parser.add_argument(
        "--student-from",
        help="an agent checkpoint the student starts from instead of the teacher's weights, e.g. the student of an "
        "earlier compress run of the same --teacher (depth pruning in steps); --student-layers counts its blocks",
    )
    parser.add_argument(
        "--depth-steps",
        help="depth pruning in steps: first train students of these many blocks in turn, e.g. 25,20 (then the "
        "--student-layers one), each keeping auto:N of the previous one's blocks, starting from its best checkpoint "
        "and distilled from the teacher with the same flags; only the last student is exported (--student-layers then "
        "numbers the last step's blocks)",
    )
    parser.add_argument(
        "--prune",
        help="pruning of the student's blocks, or none; default 0.5: half of each block's FFN neurons removed "
        "(--prune.method structured; --prune.method magnitude for unstructured zeros), none for a generative agent",
    )
    parser.add_argument("--qat", default="int8", choices=CHOICES["qat"], help="default int8")
    parser.add_argument(
        "--embeddings",
        choices=CHOICES["embeddings"],
        help="the student's input table cut to its vocabulary and the tokenizer's most frequent tokens "
        f"(--embeddings.frequent_tokens, default {CLASSIFIER_FREQUENT_TOKENS}, {GENERATIVE_FREQUENT_TOKENS} for a "
        "generative agent), with these rows; default int4, int8 for a generative agent",
    )
    parser.add_argument(
        "--labels-per-class", help="few labels: keep this many labelled training examples per label (both stages)"
    )
    parser.add_argument(
        "--unlabeled",
        help="texts without labels the student learns from through distillation (stage 2): a file, or 'rest' (the "
        "training texts --labels-per-class left out)",
    )
    parser.add_argument("--student-epochs", type=int, help="epochs of stage 2 (default: the config's max_epochs)")
    parser.add_argument(
        "--student-lr",
        type=float,
        help="peak learning rate of stage 2 (default: the teacher's; for a generative agent "
        f"{GENERATIVE_STUDENT_LR_FACTOR:g}x the teacher's, as half its blocks are gone)",
    )
    parser.add_argument(
        "--abstain-precision",
        type=float,
        default=0.95,
        help="the summary reports the student's abstention threshold chosen on the validation split for this "
        "precision, with its coverage and precision on the test split (default 0.95; serve --abstain-precision)",
    )
    parser.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "int8"],
        help="the export: int8 ONNX model for ONNX Runtime (default, the faster) or int8 TorchScript program",
    )
    parser.add_argument("--output", help="export folder (default: export-FORMAT beside the student's logs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    return parser


_DETAIL = ("--distill.", "--prune.", "--qat.", "--embeddings.")


def _student_details(args: list[str]) -> tuple[list[str], list[str]]:
    """``(the rest, the compression detail flags)``: ``--distill.temperature 1`` and the like, as ``flag=value``, go
    to the student's fit only (the teacher has no compression callbacks to set)."""
    rest, details = [], []
    words = iter(args)
    for word in words:
        if word.startswith(_DETAIL):
            details.append(word if "=" in word else f"{word}={next(words, '')}")
        else:
            rest.append(word)
    return rest, details


def _compression(
    options: argparse.Namespace, details: list[str], generative: bool, blocks: int
) -> tuple[list[str], list[str]]:
    """The student's compression flags and detail flags, the defaults depending on the kind of agent (a teacher of
    ``blocks`` blocks)."""
    details = list(details)
    given = {detail.split("=")[0] for detail in details}

    def default(flag: str, value: str) -> None:
        if flag not in given:
            details.append(f"{flag}={value}")

    layers = options.student_layers or (f"auto:{max(1, blocks // 2)}" if generative else "0,2,4")
    prune = options.prune or ("none" if generative else "0.5")
    embeddings = options.embeddings or ("int8" if generative else "int4")
    compression = ["--student-layers", layers]
    if prune != "none":
        compression += ["--prune", prune, "--prune.end", "0.6"]
        if not generative:  # whole FFN neurons cut out: the speed-up unstructured zeros do not give
            default("--prune.method", "structured")
    compression += ["--qat", options.qat, "--embeddings", embeddings]
    if embeddings != "none":  # words training never saw keep their own rows
        frequent = GENERATIVE_FREQUENT_TOKENS if generative else CLASSIFIER_FREQUENT_TOKENS
        default("--embeddings.frequent_tokens", str(frequent))
    if options.qat == "int8" and options.format == "onnx":
        default("--qat.kernel", "onnxruntime")  # train with the activation scheme ONNX Runtime runs
    if generative:  # token-level KD on the answers, the setting that paid on SmolLM2 (benchmarks/llm)
        default("--distill.temperature", "1.0")
        if options.qat != "none" and prune == "none":
            default("--qat.start", "0.5")
        if options.qat == "int8":  # SwiGLU's products have outliers no int8 activation range holds: kept float
            default("--qat.exclude", json.dumps(list(DECODER_FLOAT_LAYERS)))
    if options.unlabeled is not None:  # mostly soft labels on the unlabelled rows, unless the user chose
        default("--distill.temperature", "1.0")
        default("--distill.alpha", "0.1")
    return compression, details


def _student_start(checkpoint: str | Path, teacher: Agent) -> tuple[Path, int]:
    """``--student-from`` (and each ``--depth-steps`` step): the agent in ``checkpoint`` saved as a Hugging Face
    folder beside its run (the student's ``--model.model``), once it is known to answer the teacher's task with the
    teacher's labels and vocabulary; and its number of blocks.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: it is not an agent checkpoint, or its task, labels or vocabulary differ from the teacher's.
    """
    agent, _ = load_agent_checkpoint(checkpoint)
    mine = (agent.hparams.task, agent.labels, agent.tokenizer.get_vocab())
    if mine != (teacher.hparams.task, teacher.labels, teacher.tokenizer.get_vocab()):
        raise ValueError(
            f"--student-from {checkpoint!r} is a task={agent.hparams.task!r} agent with {len(agent.labels)} labels "
            f"({preview(agent.labels)}) and {len(agent.tokenizer)} tokens; the teacher is a "
            f"task={teacher.hparams.task!r} agent with {len(teacher.labels)} labels ({preview(teacher.labels)}) and "
            f"{len(teacher.tokenizer)} tokens. Start from a student of this teacher (its compress run's "
            "best checkpoint, or its checkpoints/last.ckpt)."
        )
    folder = Path(checkpoint).parent.parent / "student-hf"
    agent.save_pretrained(folder, overwrite=True)
    return folder, len(block_list(agent.model)[1])


def _check_depth_steps(value: str | None, layers: str | None, start_blocks: int | None = None) -> list[int]:
    """``--depth-steps``' block counts: positive, each smaller than the one before, fewer than the start's
    ``start_blocks`` (when known) and more than the final student keeps (when ``layers`` says how many).

    Raises:
        ValueError: any of these does not hold.
    """
    if value is None:
        return []
    words = value.split(",")
    steps = [int(word) for word in words if word.strip().isdigit()]
    if len(steps) != len(words) or min(steps) < 1 or any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(
            f"--depth-steps {value!r} must be comma-separated block counts, each smaller than the one before, e.g. "
            "--depth-steps 25,20 (then the --student-layers student)."
        )
    if start_blocks is not None and steps[0] >= start_blocks:
        raise ValueError(
            f"--depth-steps {value!r} starts at {steps[0]} blocks, but the student starts from {start_blocks}: give "
            f"counts below {start_blocks}, e.g. --depth-steps {max(1, (start_blocks * 2) // 3)}."
        )
    auto = auto_layers(layers)
    indices = [] if layers is None or auto is not None else json.loads(student_layers_argument(layers))
    needed = auto[1] + 1 if auto is not None else max(len(indices) + 1, max(indices, default=-1) + 1)
    if needed > steps[-1]:
        raise ValueError(
            f"--depth-steps {value!r} ends at {steps[-1]} blocks, too few for --student-layers {layers!r} (a student "
            f"of fewer blocks, of the last step's): end the steps at {needed} blocks or more."
        )
    return steps


def run_recipe(args: Sequence[str]) -> RecipeSummary:
    """``agent-lightning compress [OPTIONS] [LightningCLI arguments]``: the four stages above.

    Returns:
        The measured :class:`RecipeSummary` (also written to ``summary.md``/``summary.json``).

    Raises:
        ValueError: bad options (the short flags' own checks), before anything trains; ``--depth-steps`` that do not
            fit the start's blocks, once the teacher (or ``--student-from``) is known, before any student trains.
        FileExistsError: ``--output`` exists and is not empty, without ``--overwrite`` (checked first).

    Example:
        >>> run_recipe(["-c", "configs/default.yaml", "--prune", "1.5"])  # checked before anything trains
        Traceback (most recent call last):
        ValueError: --prune '1.5' must be a sparsity in [0, 1) (the fraction of weights set to zero), e.g. --prune 0.5.
    """
    options, common = compress_parser().parse_known_args(list(args))
    common, details = _student_details(common)
    few_labels = [] if options.labels_per_class is None else ["--labels-per-class", options.labels_per_class]
    unlabeled = [] if options.unlabeled is None else ["--unlabeled", options.unlabeled]
    common = expand_short_flags(["fit", *few_labels, *common])[1:]  # bad values fail now, before the teacher trains
    for generative in (False, True):  # the flags of either kind of student are checked now
        compression, student_details = _compression(options, details, generative, blocks=2)
        if "--prune" not in compression:  # a generative student prunes only when asked: its --prune.* wait for that
            student_details = [d for d in student_details if not d.startswith("--prune.")]
        expand_short_flags(["fit", "--distill", "teacher", *compression, *student_details, *unlabeled])
    check_number("--abstain-precision", options.abstain_precision, minimum=0, maximum=1, strict_minimum=True)
    tail = ", e.g. --student-lr 3e-4"
    check_number("--student-lr", options.student_lr, minimum=0, strict_minimum=True, optional=True, tail=tail)
    if options.output:
        check_writable_directory(Path(options.output), options.overwrite, argument="--output")
    _check_depth_steps(options.depth_steps, options.student_layers)
    if options.student_from is not None and options.teacher is None:
        raise ValueError(
            f"--student-from {options.student_from!r} continues from a student of a fine-tuned teacher: give that "
            "teacher as well (--teacher CKPT), the one the student is distilled from."
        )
    console = Console(soft_wrap=True)
    teacher_ckpt = options.teacher
    if teacher_ckpt is None:
        console.rule("[bold]Stage 1: fine-tune the teacher")
        teacher_cli = AgentLightningCLI.create(["fit", *common, "--trainer.logger.init_args.name=teacher"])
        teacher_ckpt = teacher_cli.trainer.checkpoint_callback.best_model_path
    teacher = Agent.load_from_checkpoint(teacher_ckpt, map_location="cpu").eval()
    generative = teacher.hparams.task == "generation"
    teacher_blocks = len(block_list(teacher.model)[1])
    compression, details = _compression(options, details, generative, blocks=teacher_blocks)
    if options.student_from is None:  # the student starts from the teacher's weights, as a Hugging Face folder
        start, start_blocks = Path(teacher_ckpt).parent.parent / "teacher-hf", teacher_blocks
    else:
        start, start_blocks = _student_start(options.student_from, teacher)
    at = compression.index("--student-layers") + 1  # its value, the one flag each depth step changes
    layers = compression[at]
    steps = _check_depth_steps(options.depth_steps, layers, start_blocks)  # the start's blocks are known now
    if options.student_from is None:
        teacher.save_pretrained(start, overwrite=True)

    rest = ["--distill", str(teacher_ckpt), *details, *unlabeled]
    if options.student_epochs is not None:
        rest += [f"--trainer.max_epochs={options.student_epochs}"]
    student_lr = options.student_lr
    if student_lr is None and generative:
        student_lr = GENERATIVE_STUDENT_LR_FACTOR * teacher.hparams.learning_rate
    if student_lr is not None:
        rest += [f"--model.learning_rate={student_lr:g}"]

    def fit_student(name: str, start: Path, layers: str) -> AgentLightningCLI:
        student_compression = [*compression[:at], layers, *compression[at + 1 :]]
        args = ["fit", *common, f"--trainer.logger.init_args.name={name}", f"--model.model={start}"]
        return AgentLightningCLI.create([*args, *student_compression, *rest])

    criterion = "influence" if layers.startswith("influence:") else "auto"
    for number, blocks in enumerate(steps, 1):
        console.rule(f"[bold]Stage 2, depth step {number} of {len(steps) + 1}: a student of {blocks} blocks")
        step_cli = fit_student(f"student-{blocks}", start, f"{criterion}:{blocks}")
        step_dir = Path(step_cli.trainer.logger.log_dir)
        best = step_cli.trainer.checkpoint_callback.best_model_path or step_dir / "checkpoints" / "last.ckpt"
        start, _ = _student_start(best, teacher)

    console.rule("[bold]Stage 2: distil, prune and quantize the student")
    student_cli = fit_student("student", start, layers)
    run_dir = Path(student_cli.trainer.logger.log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"

    console.rule(f"[bold]Stage 3: export the int8 student ({options.format})")
    output = Path(options.output) if options.output else run_dir / f"export-{options.format}"
    console.print(describe(export_agent(last, output, options.format, overwrite=options.overwrite)))

    console.rule("[bold]Stage 4: measure the export against the teacher and its ONNX Runtime peers")
    datamodule = student_cli.datamodule
    split = "test" if "test" in datamodule.splits else "val"
    data = datamodule.splits[split]
    val = datamodule.splits["val"]  # the abstention threshold is chosen on validation, measured on test
    abstain = (val.texts, val.labels, options.abstain_precision) if split == "test" else None
    summary = compare_with_teacher(teacher, output, data.texts, data.labels, split, abstain=abstain)
    lines = [
        "# Compressed agent vs its teacher and what runs without training",
        "",
        f"Teacher: `{teacher_ckpt}`. Student run: `{run_dir}`. Export: `{output}`.",
        "",
        *summary.markdown(),
    ]
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")
    atomic_write_text(run_dir / "summary.json", json.dumps(asdict(summary), indent=2))
    console.print("\n".join(summary.markdown()))
    console.print(f"[bold]Summary:[/bold] {os.path.relpath(run_dir / 'summary.md')}")
    return summary
