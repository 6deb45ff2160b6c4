"""Short compression flags for ``train.py fit``, rewritten into LightningCLI's own syntax before it parses them.

- ``--prune 0.5`` becomes ``--trainer.callbacks+=agent_lightning.callbacks.Pruning --trainer.callbacks.sparsity=0.5``;
  ``--prune.end 0.6`` (any Pruning argument) becomes ``--trainer.callbacks.end=0.6`` right after it.
- ``--qat int8|int4|none`` becomes ``--trainer.callbacks+=agent_lightning.callbacks.QuantizationAwareTraining
  --trainer.callbacks.weights=int8`` (``none``: no QAT); ``--qat.start 0.8`` etc. for its other arguments.
- ``--distill PATH_OR_NAME`` becomes ``--trainer.callbacks+=agent_lightning.callbacks.Distillation
  --trainer.callbacks.teacher=PATH_OR_NAME``; ``--distill.temperature 4`` etc.
- ``--embeddings int8|int4|float|none`` becomes ``--trainer.callbacks+=agent_lightning.callbacks.EmbeddingCompression
  --trainer.callbacks.weights=int8`` (the input embeddings cut to the tokens training saw, int8 rows, at fit end);
  ``--embeddings.vocabulary full`` etc.
- ``--student-layers 0,2,4`` becomes ``--model.student_layers=[0,2,4]``; ``--student-layers auto:15`` becomes
  ``--model.student_layers=auto:15`` (15 blocks picked on training batches before training starts: all but the
  contiguous span that changes the hidden states least; ``influence:15``: the 15 of highest block influence).
- ``--labels-per-class 10`` becomes ``--data.labels_per_class=10`` (the few-label setting) and ``--unlabeled FILE``
  ``--data.unlabeled_file=FILE`` (texts without labels, learnt from through distillation; ``rest``: the training
  texts ``--labels-per-class`` left out).

Because the result is ordinary LightningCLI arguments, the run's saved ``config.yaml`` lists the callbacks with
all their arguments and reproduces the run without the short flags.

Order of effects in one run (whatever the order of the flags): distillation acts on every step; pruning ramps its
sparsity up to ``--prune.end`` (default 70 % of training) and then holds its masks; QAT starts last, from the pruned
weights: at ``--qat.start``, by default 0.8 of training when ``--prune`` is also given (0 otherwise). At fit end
pruning makes its masks permanent first, then QAT converts to int8, then the embeddings are compacted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent_lightning.quantization.embedding import EMBEDDING_WEIGHTS

__all__ = ["SHORT_FLAGS", "expand_short_flags"]

#: short flag -> (callback class path, argument its value sets), in the order the callbacks are appended
SHORT_FLAGS = {
    "distill": ("agent_lightning.callbacks.Distillation", "teacher"),
    "prune": ("agent_lightning.callbacks.Pruning", "sparsity"),
    "qat": ("agent_lightning.callbacks.QuantizationAwareTraining", "weights"),
    "embeddings": ("agent_lightning.callbacks.EmbeddingCompression", "weights"),
}
#: short flags whose value is a choice, ``none`` meaning "not attached"
CHOICES = {"qat": ("int8", "int4", "none"), "embeddings": (*EMBEDDING_WEIGHTS, "none")}
QAT_START_AFTER_PRUNING = 0.8
#: short flags that set a datamodule argument
DATA_FLAGS = {"labels-per-class": "labels_per_class", "unlabeled": "unlabeled_file"}


def expand_short_flags(args: Sequence[str]) -> list[str]:
    """Rewrite the short compression flags of a ``fit`` command line; other arguments pass through unchanged.

    Args:
        args: the command line without the program name, e.g. ``["fit", "-c", "cfg.yaml", "--prune", "0.5"]``.

    Returns:
        The command line in LightningCLI syntax, the callbacks appended in the order distillation, pruning, QAT,
        embeddings.

    Raises:
        ValueError: a short flag without its value, a detail flag (``--prune.end``) without its main flag, a
            ``--prune`` value outside [0, 1), a ``--qat``/``--embeddings`` choice that does not exist,
            ``--student-layers`` that are not integers, or short flags on a subcommand other than ``fit``.

    Example:
        >>> expand_short_flags(["fit", "--prune", "0.5", "--prune.end=0.6"])
        ['fit', '--trainer.callbacks+=agent_lightning.callbacks.Pruning', '--trainer.callbacks.sparsity=0.5', \
'--trainer.callbacks.end=0.6']
    """
    rest: list[str] = []
    main: dict[str, str] = {}
    details: dict[str, list[tuple[str, str]]] = {name: [] for name in SHORT_FLAGS}
    student_layers: str | None = None
    data: dict[str, str] = {}  # --labels-per-class, --unlabeled
    items = list(args)
    index = 0
    while index < len(items):
        item = items[index]
        match = re.fullmatch(
            r"--(prune|qat|distill|embeddings|student-layers|labels-per-class|unlabeled)(?:\.([A-Za-z_][\w.]*))?(?:=(.*))?",
            item,
        )
        if match is None:
            rest.append(item)
            index += 1
            continue
        flag, detail, value = match.groups()
        if value is None:
            if index + 1 >= len(items) or items[index + 1].startswith("--"):
                raise ValueError(f"--{flag}{'.' + detail if detail else ''} needs a value, e.g. {_example(flag)}.")
            value = items[index + 1]
            index += 1
        index += 1
        if flag == "student-layers":
            student_layers = value
        elif flag in DATA_FLAGS:
            data[flag] = value
        elif detail:
            details[flag].append((detail, value))
        else:
            main[flag] = value
    if not main and not any(details.values()) and student_layers is None and not data:
        return rest
    if not rest or rest[0] != "fit":
        raise ValueError(
            "--prune, --qat, --distill, --embeddings, --student-layers, --labels-per-class and --unlabeled are options "
            "of `train.py fit`; put them after `fit`."
        )
    for flag, given in details.items():
        if given and flag not in main:
            raise ValueError(
                f"--{flag}.{given[0][0]} was given without --{flag}; add it, e.g. {_example(flag)} "
                f"--{flag}.{given[0][0]} {given[0][1]}."
            )
    if "prune" in main and not _is_fraction(main["prune"]):
        raise ValueError(
            f"--prune {main['prune']!r} must be a sparsity in [0, 1) (the fraction of weights set to zero), e.g. "
            "--prune 0.5."
        )
    for flag, choices in CHOICES.items():
        if main.get(flag) is not None and main[flag] not in choices:
            raise ValueError(
                f"--{flag} {main[flag]!r} is not a choice; use one of {', '.join(choices)} (e.g. {_example(flag)}), "
                f"or set any {SHORT_FLAGS[flag][0].rsplit('.', 1)[1]} argument with --{flag}.NAME VALUE."
            )
        if main.get(flag) == "none":
            if details[flag]:
                raise ValueError(f"--{flag} none turns it off; drop the --{flag}.* options or choose {_example(flag)}.")
            del main[flag]
    if "qat" in main and "prune" in main and not any(name == "start" for name, _ in details["qat"]):
        details["qat"].append(("start", str(QAT_START_AFTER_PRUNING)))
    if "labels-per-class" in data and not re.fullmatch(r"[1-9]\d*", data["labels-per-class"]):
        raise ValueError(
            f"--labels-per-class {data['labels-per-class']!r} must be a positive integer (labelled examples kept per "
            "label), e.g. --labels-per-class 10."
        )
    expanded = list(rest)
    expanded += [f"--data.{DATA_FLAGS[flag]}={value}" for flag, value in data.items()]
    if student_layers is not None:
        expanded.append(f"--model.student_layers={student_layers_argument(student_layers)}")
    for flag in SHORT_FLAGS:  # distillation, pruning, QAT, embeddings: the documented order
        if flag not in main:
            continue
        class_path, argument = SHORT_FLAGS[flag]
        expanded += [f"--trainer.callbacks+={class_path}", f"--trainer.callbacks.{argument}={main[flag]}"]
        expanded += [f"--trainer.callbacks.{name}={value}" for name, value in details[flag]]
    return expanded


def _is_fraction(value: str) -> bool:
    try:
        return 0.0 <= float(value) < 1.0
    except ValueError:
        return False


def student_layers_argument(value: str) -> str:
    """``--student-layers``' value as the Agent's argument: ``[0,2,4]``, or ``auto:N`` (``span:N``,
    ``influence:N``) as it is."""
    if re.fullmatch(r"(auto|span|influence):[1-9]\d*", value.strip()):
        return value.strip()
    parts = [part.strip() for part in value.strip("[]").split(",") if part.strip()]
    if not parts or not all(re.fullmatch(r"\d+", part) for part in parts):
        raise ValueError(
            f"--student-layers {value!r} must be comma-separated block indices of the teacher, e.g. --student-layers "
            "0,2,4, or auto:N (N blocks picked on training batches; also span:N, influence:N), e.g. --student-layers "
            "auto:3."
        )
    return f"[{','.join(parts)}]"


def _example(flag: str) -> str:
    return {
        "prune": "--prune 0.5",
        "qat": "--qat int8",
        "distill": "--distill runs/teacher/checkpoints/last.ckpt",
        "embeddings": "--embeddings int8",
        "student-layers": "--student-layers 0,2,4",
        "labels-per-class": "--labels-per-class 10",
        "unlabeled": "--unlabeled requests.csv",
    }[flag]
