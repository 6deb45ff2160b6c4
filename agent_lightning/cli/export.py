"""``agent-lightning export CKPT --format onnx|int8|hf --output DIR [--overwrite]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from agent_lightning.deployment.export import EXPORT_FORMATS, ExportResult, describe, export_agent

__all__ = ["export_command", "export_parser"]


def export_parser() -> argparse.ArgumentParser:
    """The options of ``agent-lightning export``."""
    parser = argparse.ArgumentParser(
        prog="agent-lightning export",
        description="Export an agent checkpoint as a deployable folder, verified by reloading it: 'onnx' is the "
        "int8 model for ONNX Runtime (the int8 weights and scales QAT trained; the fastest on CPU), 'int8' the int8 "
        "model as a TorchScript program (both run with agent_lightning.deployment.ExportedAgent and serve), 'hf' a "
        "Hugging Face folder. Written atomically: a failure leaves nothing behind.",
    )
    parser.add_argument("checkpoint", help="the agent's .ckpt (a QAT run's checkpoint keeps its trained ranges)")
    parser.add_argument("--format", choices=list(EXPORT_FORMATS), default="onnx", help="default: onnx")
    parser.add_argument("--output", required=True, help="folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser


def export_command(args: Sequence[str]) -> ExportResult:
    """Parse ``args`` (without the command name), export, and print what was written."""
    options = export_parser().parse_args(list(args))
    result = export_agent(options.checkpoint, options.output, options.format, options.overwrite)
    Console(soft_wrap=True).print(describe(result))
    return result
