"""The real server on a loopback port: answers equal the export's, bad requests get a 422 naming the field and the
server keeps answering, feedback lands in the store, and acknowledged rows survive a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from agent_lightning.deployment.export import export_agent
from agent_lightning.deployment.runtime import ExportedAgent
from agent_lightning.serving import PredictRequest, RequestStore
from tests.conftest import REPO, TINY_EXAMPLES, trained_tiny_agent

TEXTS = ["wake me at seven", "play some jazz", "will it rain today", "call mom", "alarm at five tomorrow"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _parsed(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:  # /health answers plain text
        return raw.decode()


def _call(url: str, body: bytes | dict | None = None, timeout: float = 60) -> tuple[int, object]:
    """``(status, body)`` of a GET (no body) or POST; JSON bodies parsed."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _parsed(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read())


class Server:
    """``agent-lightning serve`` in its own process group, stopped (SIGKILL to the group) whatever happens."""

    def __init__(self, model: Path, store: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "agent_lightning", "serve", str(model), "--port", str(self.port)]
        command += ["--store", str(store), "--max-batch-size", "4", "--batch-timeout", "0.05"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read().decode()[-3000:]}")
            try:
                if _call(f"{self.url}/health", timeout=2)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError("the server did not become healthy within 180 s")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def export(tiny_bert, shared_tiny_data_dir, tmp_path_factory) -> Path:
    """An int8 export of a tiny agent trained on the four tiny actions."""
    folder = tmp_path_factory.mktemp("served")
    trained_tiny_agent(tiny_bert, shared_tiny_data_dir, folder / "agent.ckpt", epochs=15)
    export_agent(folder / "agent.ckpt", folder / "int8")
    return folder / "int8"


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    running = Server(export, tmp_path_factory.mktemp("store") / "requests.db")
    yield running
    running.kill()


def test_answers_equal_the_export_and_lists_are_answered_in_one_request(server, export):
    # Activations are quantized per batch (one int8 range per tensor), so a text is compared with the export answering
    # the same batch; the server's ONNX Runtime threads may sum in another order (a few 1e-5 after quantization).
    single, expected = ExportedAgent(export).act(TEXTS[:1]), ExportedAgent(export).act(TEXTS)
    status, body = _call(f"{server.url}/predict", {"text": TEXTS[0]})
    assert status == 200 and body["action"] == single[0][0]
    assert body["confidence"] == pytest.approx(single[0][1], abs=1e-4) and len(body["id"]) == 32
    status, body = _call(f"{server.url}/predict", {"text": TEXTS})
    assert status == 200 and [a["action"] for a in body["answers"]] == [a for a, _ in expected]
    assert [a["confidence"] for a in body["answers"]] == pytest.approx([c for _, c in expected], abs=1e-4)
    assert len({a["id"] for a in body["answers"]}) == len(TEXTS)
    assert {a for a, _ in expected} > {expected[0][0]}  # the tiny agent tells the actions apart


@pytest.mark.parametrize(
    "body, field",
    [
        (b'{"text": "wake me"', "body"),  # malformed JSON
        ({"text": 7}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 1_000_000}, "text"),
        ({"text": []}, "text"),
        ({"texts": "wake me"}, "text"),
    ],
    ids=["malformed-json", "wrong-type", "empty", "1MB", "empty-list", "wrong-field"],
)
def test_bad_requests_get_a_422_naming_the_field_and_the_server_keeps_answering(server, body, field):
    status, answer = _call(f"{server.url}/predict", body)
    assert status == 422
    assert any(field in [str(part) for part in detail["loc"]] for detail in answer["detail"]), answer
    assert _call(f"{server.url}/predict", {"text": "call mom"})[0] == 200


def test_feedback_is_stored_and_an_unknown_id_is_refused(server):
    _, answer = _call(f"{server.url}/predict", {"text": "play some jazz"})
    status, body = _call(f"{server.url}/feedback", {"id": answer["id"], "action": "call"})
    assert status == 200 and body["id"] == answer["id"]
    assert _call(f"{server.url}/feedback", {"id": answer["id"], "thumbs": "down"})[0] == 200
    status, body = _call(f"{server.url}/feedback", {"id": "0" * 32, "thumbs": "up"})
    assert status == 404 and "is not a request this server answered" in body["detail"]
    status, body = _call(f"{server.url}/feedback", {"id": answer["id"], "action": "fly"})
    assert status == 422 and "action='fly' is not one of the agent's actions" in body["detail"]
    assert _call(f"{server.url}/feedback", {"id": answer["id"]})[0] == 422  # neither a correction nor a thumb
    status, stats = _call(f"{server.url}/stats")
    assert status == 200 and stats["feedback"] >= 2 and stats["requests"] >= 1
    assert stats["by_action"][answer["action"]]["error_rate"] > 0


def test_acknowledged_rows_survive_a_sigkill(export, tmp_path):
    store = tmp_path / "requests.db"
    server = Server(export, store)
    try:
        acknowledged = []
        for text in TEXTS:
            _, answer = _call(f"{server.url}/predict", {"text": text})
            status, body = _call(f"{server.url}/feedback", {"id": answer["id"], "thumbs": "up"})
            assert status == 200
            acknowledged.append(answer["id"])
    finally:
        server.kill()  # SIGKILL right after the last acknowledgement: no shutdown, no flush
    kept = RequestStore(store).feedback()
    assert [row.request_id for row in kept] == acknowledged and all(row.thumbs_up for row in kept)
    assert [row.text for row in kept] == TEXTS and all(row.answered in TINY_EXAMPLES for row in kept)


def test_abstention_answers_null_below_the_threshold_chosen_on_held_out_data(export, tmp_path):
    from agent_lightning.deployment.abstention import calibrate_abstention
    from agent_lightning.serving import AnswerAPI

    exported = ExportedAgent(export)
    texts = [text for examples in TINY_EXAMPLES.values() for text in examples]
    labels = [label for label, examples in TINY_EXAMPLES.items() for _ in examples]
    abstention = calibrate_abstention(exported, texts, labels, precision=1.0)
    decisions = exported.act(texts)
    kept = [(a, label) for (a, c), label in zip(decisions, labels) if c >= abstention.threshold]
    assert all(a == label for a, label in kept) and abstention.coverage == len(kept) / len(texts)
    median = sorted(c for _, c in decisions)[len(decisions) // 2]  # a threshold that surely abstains on some
    abstention = replace(abstention, threshold=median)
    api = AnswerAPI(str(export), str(tmp_path / "requests.db"), abstention=abstention)
    api.setup("cpu")
    answers = api.encode_response(api.predict(api.decode_request(PredictRequest(text=texts))))["answers"]
    assert [a["action"] for a in answers] == [a if c >= abstention.threshold else None for a, c in decisions]
    abstained = sum(a["action"] is None for a in answers)
    assert 0 < abstained < len(texts) and RequestStore(tmp_path / "requests.db").stats()["abstained"] == abstained


def test_a_batch_of_requests_is_stored_in_one_transaction_before_any_reply(export, tmp_path):
    from agent_lightning.serving import AnswerAPI

    api = AnswerAPI(str(export), str(tmp_path / "requests.db"))
    api.setup("cpu")
    transactions = []
    record = api.store.record_answers
    api.store.record_answers = lambda answers: transactions.append(len(answers)) or record(answers)
    requests = [api.decode_request(PredictRequest(text=text)) for text in (TEXTS[0], TEXTS[1:3], TEXTS[3])]
    outputs = api.predict(api.batch(requests))
    assert transactions == [4]  # one fsynced write for the batch's four texts, already done
    replies = [api.encode_response(output) for output in api.unbatch(outputs)]
    assert transactions == [4]  # replying writes nothing more
    ids = [replies[0]["id"], *(a["id"] for a in replies[1]["answers"]), replies[2]["id"]]
    actions = [replies[0]["action"], *(a["action"] for a in replies[1]["answers"]), replies[2]["action"]]
    assert [a for a, _ in ExportedAgent(export).act(TEXTS[:4])] == actions
    store = RequestStore(tmp_path / "requests.db")
    assert len(set(ids)) == 4 and store.stats()["requests"] == 4
    for request_id in ids:  # each reply's id names its own text
        store.record_feedback(request_id, thumbs_up=True)
    assert {f.request_id: f.text for f in store.feedback()} == dict(zip(ids, TEXTS[:4]))
