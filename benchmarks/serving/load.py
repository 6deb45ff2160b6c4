"""Load on the served agent: requests/s and p50/p95 latency at several client concurrencies, for the compressed
student's ONNX export beside what a user would serve instead — the fp32 teacher checkpoint (PyTorch eager), the
teacher under ONNX Runtime in fp32, and ONNX Runtime's ``quantize_dynamic`` int8 of it (no training) — with
LitServe's dynamic batching on and off.

Loopback only, bounded: each setting starts ``agent-lightning serve`` in its own process, waits for ``/health``,
sends ``--requests`` single-text ``POST /predict`` requests from ``C`` client threads (each waits for its answer
before the next), then kills the server. Latency is the client's wall time per request (HTTP, queueing, batching,
tokenization and the model included). The teacher is ``--ckpt`` (default: the MiniLM classifier fine-tuned on the
built-in data for ``--epochs`` epochs); the student is ``--student``, an export folder (after ``make demo``:
``runs/student/version_0/export-onnx``; default: the teacher's own ONNX export, quantized after training).

    python -m benchmarks.serving.load --ckpt runs/teacher/version_0/checkpoints/last.ckpt \
        --student runs/student/version_0/export-onnx            # the table in results/
    python -m benchmarks.serving.load --requests 60 --concurrency 1 8

Writes benchmarks/serving/results/load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning.pytorch import seed_everything  # noqa: E402

from agent_lightning import Agent, TextClassificationDataModule  # noqa: E402
from agent_lightning.deployment.export import export_agent, load_agent_checkpoint  # noqa: E402
from agent_lightning.deployment.peers import PEERS, onnx_runtime_peers  # noqa: E402
from benchmarks.common import command_line, quiet_trainer, write_results  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, text: str) -> float:
    data = json.dumps({"text": text}).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def _serve(model: Path, store: Path, max_batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "agent_lightning", "serve", str(model), "--port", str(port), "--store", str(store)]
    command += ["--max-batch-size", str(max_batch_size), "--batch-timeout", "0.01" if max_batch_size > 1 else "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError(f"the server for {model} did not become healthy")


def _load(url: str, texts: list[str], requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        for i in counter:
            seconds = _post(f"{url}/predict", texts[i % len(texts)])
            with lock:
                latencies.append(seconds)

    _post(f"{url}/predict", texts[0])  # warm-up
    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="an agent checkpoint; default: fine-tune one on the built-in data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--student", type=Path, help="the compressed student's export folder; default: the teacher's ONNX export"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per setting and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-batch-size", type=int, default=8, help="the batching setting's LitServe batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--output", type=Path, default=RESULTS / "load")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    dm = TextClassificationDataModule(dataset="assistant-actions")
    checkpoint = args.ckpt
    if checkpoint is None:
        seed_everything(42)
        agent = Agent(labels=dm.label_names, learning_rate=2e-4)
        trainer = quiet_trainer(max_epochs=args.epochs, limit_val_batches=0)
        trainer.fit(agent, datamodule=dm)
        checkpoint = work / "agent.ckpt"
        trainer.save_checkpoint(checkpoint)
    student, student_name = args.student, "exported int8 student (ONNX Runtime)"
    if student is None:
        student, student_name = work / "onnx", "int8 ONNX export of the teacher (quantized after training)"
        export_agent(checkpoint, student, "onnx")
    onnx_runtime_peers(load_agent_checkpoint(checkpoint)[0], work)  # work/ort_fp32, work/ort_int8
    models = {
        "fp32 teacher, PyTorch eager (checkpoint)": checkpoint,
        PEERS["ort_fp32"]: work / "ort_fp32",
        PEERS["ort_int8"]: work / "ort_int8",
        student_name: student,
    }
    texts = dm.splits["test"].texts
    rows = []
    for name, model in models.items():
        for batch in (args.max_batch_size, 1):
            process, url = _serve(model, work / f"{name}-{batch}.db", batch, args.threads)
            try:
                for concurrency in args.concurrency:
                    row = {"model": name, "max_batch_size": batch, "concurrency": concurrency}
                    row.update(_load(url, texts, args.requests, concurrency))
                    rows.append(row)
                    print(row, flush=True)
            finally:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    lines = [
        "# Load on the served agent (loopback)",
        "",
        f"Command: `{command_line()}`. The MiniLM classifier on the built-in data (teacher `{checkpoint}`"
        + (f", student `{student}`" if args.student else "")
        + "); one server process per setting "
        f"with {args.threads} torch thread(s) and one inference worker; {args.requests} single-text requests per "
        "row from the given number of client threads on the same machine (which share its CPU cores with the "
        "server). Latency: client wall time per request.",
        "",
        "| model | LitServe max_batch_size | concurrency | requests/s | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['max_batch_size']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} "
        f"| {r['p95_ms']:.1f} |"
        for r in rows
    ]
    write_results(args.output, lines, {"command": command_line(), "rows": rows})


if __name__ == "__main__":
    main()
