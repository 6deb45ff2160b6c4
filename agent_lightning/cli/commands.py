"""The table of ``agent-lightning`` commands: name -> what it does and the function that runs it.

``train.py``, ``python -m agent_lightning`` and the ``agent-lightning`` console script all call :func:`main`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent_lightning.cli.export import export_command
from agent_lightning.cli.learn import learn_command
from agent_lightning.cli.lightning_cli import AgentLightningCLI
from agent_lightning.cli.recipes import run_recipe
from agent_lightning.cli.serve import serve_command
from agent_lightning.quiet import silence_command_line_noise

__all__ = ["COMMANDS", "Command", "help_text", "main"]

PROG = "agent-lightning"
DESCRIPTION = (
    "Train LLM-based agents with PyTorch Lightning and make them small and fast while they train: pruning, "
    "quantization-aware training and distillation as Lightning callbacks, logged to TensorBoard, then an exported, "
    "measured int8 agent."
)


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line summary and the function that runs it on the arguments after its name (the
    LightningCLI ones get the whole command line, their name included)."""

    summary: str
    run: Callable[[list[str]], object]
    takes_name: bool = False


def _lightning(args: list[str]) -> AgentLightningCLI:
    return AgentLightningCLI.create(args)


COMMANDS: dict[str, Command] = {
    "fit": Command(
        "train an agent: -c CONFIG, --model.*, --data.*, --trainer.*, and --prune/--qat/--distill/--embeddings",
        _lightning,
        takes_name=True,
    ),
    "validate": Command("evaluate a checkpoint on the validation split (--ckpt_path)", _lightning, takes_name=True),
    "test": Command("evaluate a checkpoint on the test split (--ckpt_path)", _lightning, takes_name=True),
    "predict": Command("answer the requests of --data.predict_file, written to predictions.jsonl", _lightning, True),
    "compress": Command(
        "the main job: fine-tune a teacher, train a distilled, pruned, int8 student, export and measure it",
        run_recipe,
    ),
    "export": Command("export a checkpoint as a verified int8 program or Hugging Face folder", export_command),
    "learn": Command("fine-tune a served agent on its data plus the feedback its server stored", learn_command),
    "serve": Command(
        "serve an export or checkpoint on LitServe: /predict, /feedback, /stats (SQLite store)", serve_command
    ),
}


def help_text() -> str:
    """What ``agent-lightning --help`` prints."""
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: {PROG} COMMAND [OPTIONS]", "", DESCRIPTION, "", "commands:"]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    lines += [
        "",
        f"Run '{PROG} COMMAND --help' for the options of a command, e.g. '{PROG} fit --help'.",
        f"Start with '{PROG} compress -c configs/default.yaml': the main job on the built-in data set.",
    ]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> None:
    """Run the command named first in ``args`` (default ``sys.argv[1:]``).

    Raises:
        SystemExit: with status 0 after printing the help (``--help``, or no arguments), with status 2 for an unknown
            command.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    silence_command_line_noise()
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(help_text())
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(
            f"{PROG}: {args[0]!r} is not a command; use one of {', '.join(COMMANDS)} ({PROG} --help).", file=sys.stderr
        )
        raise SystemExit(2)
    command.run(args if command.takes_name else args[1:])
