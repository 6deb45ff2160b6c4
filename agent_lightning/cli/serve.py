"""``agent-lightning serve MODEL [--store DB] [--host H] [--port P] [--max-batch-size N] [--batch-timeout S]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from agent_lightning.cli.learn import read_data_section
from agent_lightning.datamodules import TextClassificationDataModule
from agent_lightning.serving.api import build_server
from agent_lightning.validation import check_count, check_number

__all__ = ["serve_command", "serve_parser"]


def serve_parser() -> argparse.ArgumentParser:
    """The options of ``agent-lightning serve``."""
    parser = argparse.ArgumentParser(
        prog="agent-lightning serve",
        description="Serve an agent on LitServe: POST /predict {'text': TEXT or [TEXTS]} -> action, confidence and "
        "request id of each; POST /feedback {'id': ID, 'action': CORRECT} or {'id': ID, 'thumbs': 'up'|'down'}; "
        "GET /stats; GET /health. Every answer and feedback row is written to an SQLite store (WAL, synchronous) "
        "before the reply.",
    )
    parser.add_argument("model", help="an export folder (agent-lightning export) or an agent checkpoint (.ckpt)")
    parser.add_argument(
        "--store", help="the SQLite file of requests and feedback (default: MODEL's folder/requests.db)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests batched into one forward pass")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="seconds to wait to fill a batch")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes")
    parser.add_argument(
        "--abstain-precision",
        type=float,
        help="answer 'action': null below the confidence threshold that keeps this precision on the validation "
        "split of -c CONFIG's data (e.g. 0.95)",
    )
    parser.add_argument("-c", "--config", help="the training config whose data: section names the validation data")
    return parser


def serve_command(args: Sequence[str]) -> None:
    """Parse ``args`` (without the command name), check them, and serve until interrupted."""
    options = serve_parser().parse_args(list(args))
    check_count("--port", options.port)
    check_count("--max-batch-size", options.max_batch_size)
    check_count("--workers", options.workers)
    check_number("--batch-timeout", options.batch_timeout, minimum=0)
    abstain = None
    if options.abstain_precision is not None:
        check_number("--abstain-precision", options.abstain_precision, minimum=0, maximum=1, strict_minimum=True)
        val = TextClassificationDataModule(**read_data_section(options.config, "--config")).splits["val"]
        abstain = (val.texts, val.labels, options.abstain_precision)
    model = Path(options.model)
    store = Path(options.store) if options.store else (model if model.is_dir() else model.parent) / "requests.db"
    server = build_server(model, store, options.max_batch_size, options.batch_timeout, options.workers, abstain)
    Console(soft_wrap=True).print(
        f"[bold]Serving[/bold] {model} on http://{options.host}:{options.port}  store: {store}"
    )
    server.run(host=options.host, port=options.port, generate_client_file=False, log_level="warning")
