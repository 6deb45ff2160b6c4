"""The agent on LitServe: ``POST /predict`` answers requests (dynamically batched), ``POST /feedback`` records what
users say about an answer, ``GET /stats`` summarises the store, ``GET /health`` says whether the workers are up.

Request bodies are validated by pydantic models before anything runs, so a malformed body, a wrong type, an empty
text or an over-long one gets a 422 naming the field, and the server keeps serving.
"""

# No ``from __future__ import annotations`` here: LitServe and FastAPI read decode_request's annotations at run time
# to validate request bodies with the pydantic models.
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import litserve as ls
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from typing_extensions import Self

from agent_lightning.agent import Agent
from agent_lightning.deployment.abstention import Abstention, calibrate_abstention
from agent_lightning.deployment.runtime import MANIFEST, ExportedAgent
from agent_lightning.serving.store import RequestStore, UnknownRequest

__all__ = [
    "MAX_REQUESTS",
    "MAX_TEXT_CHARS",
    "AnswerAPI",
    "FeedbackAPI",
    "FeedbackRequest",
    "PredictRequest",
    "build_server",
    "load_actor",
]

#: the longest request text accepted (characters); longer ones are refused with a 422
MAX_TEXT_CHARS = 10_000
#: the most texts one ``POST /predict`` may carry
MAX_REQUESTS = 256
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]


class PredictRequest(BaseModel):
    """``{"text": "wake me at 7"}`` or ``{"text": ["wake me at 7", "play jazz"]}``."""

    model_config = ConfigDict(extra="forbid")
    text: Text | Annotated[list[Text], Field(min_length=1, max_length=MAX_REQUESTS)]


class FeedbackRequest(BaseModel):
    """``{"id": REQUEST_ID, "action": "set_alarm"}`` (the correct action) or ``{"id": REQUEST_ID, "thumbs": "up"}``."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    action: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    thumbs: Literal["up", "down"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.action is None) == (self.thumbs is None):
            raise ValueError("give either 'action' (the correct action) or 'thumbs' ('up' or 'down'), not both")
        return self


def load_actor(model: str | os.PathLike) -> Agent | ExportedAgent:
    """What ``serve`` answers with: an int8 export folder (:class:`ExportedAgent`) or a Lightning checkpoint of an
    :class:`Agent` (``.ckpt``), on the CPU.

    Raises:
        ValueError: ``model`` is neither.
    """
    path = Path(model)
    if path.is_dir() and (path / MANIFEST).is_file():
        return ExportedAgent(path)
    if path.is_file() and path.suffix == ".ckpt":
        agent = Agent.load_from_checkpoint(path, map_location="cpu")
        agent.eval()
        return agent
    raise ValueError(
        f"model={str(model)!r} is neither an export folder (with {MANIFEST}) nor a checkpoint file (.ckpt). Pass "
        "a folder written by `agent-lightning export` or a checkpoint from runs/.../checkpoints/."
    )


class AnswerAPI(ls.LitAPI):
    """``POST /predict``: the agent's action and confidence for each text, with the request id feedback refers to.

    Args:
        model: an export folder or a checkpoint (:func:`load_actor`).
        store: the SQLite file every answer is written to before it is returned (a batch's answers in one
            transaction).
        max_batch_size: requests LitServe batches into one ``act`` call.
        batch_timeout: seconds LitServe waits to fill a batch.
        abstention: a confidence threshold below which the answer is ``"action": null``.
    """

    def __init__(
        self,
        model: str,
        store: str,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
        abstention: Abstention | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model, self.store_path, self.abstention = str(model), str(store), abstention

    def setup(self, device: str) -> None:
        self.actor = load_actor(self.model)
        self.store = RequestStore(self.store_path)

    def decode_request(self, request: PredictRequest) -> tuple[list[str], bool]:
        texts = request.text if isinstance(request.text, list) else [request.text]
        return texts, isinstance(request.text, list)

    def batch(self, inputs: list[tuple[list[str], bool]]) -> list[tuple[list[str], bool]]:
        return inputs  # requests of different lengths: predict flattens them into one act call

    def predict(self, requests: Any) -> list[tuple[list[str], list[tuple[str, float]], bool]]:
        batched = isinstance(requests, list)
        requests = requests if batched else [requests]
        texts = [text for request_texts, _ in requests for text in request_texts]
        decisions = self.actor.act(texts)
        if self.abstention is not None:  # below the threshold: "action": null rather than a confident guess
            decisions = self.abstention.apply(decisions)
        # the whole batch in one durable transaction (one fsync), before any of its replies
        ids = self.store.record_answers([(t, a, c) for t, (a, c) in zip(texts, decisions)])
        answers, start = [], 0
        for request_texts, many in requests:
            end = start + len(request_texts)
            answers.append((ids[start:end], decisions[start:end], many))
            start = end
        return answers if batched else answers[0]

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[list[str], list[tuple[str, float]], bool]) -> dict[str, Any]:
        ids, decisions, many = output
        answers = [{"id": i, "action": a, "confidence": c} for i, (a, c) in zip(ids, decisions)]
        return {"answers": answers} if many else answers[0]


class FeedbackAPI(ls.LitAPI):
    """``POST /feedback``: the correct action (one of the agent's) or a thumb up/down for an answered request.

    Args:
        store: the SQLite file of the answers.
        actions: the agent's actions (a correction must be one of them).
    """

    def __init__(self, store: str, actions: list[str]) -> None:
        super().__init__(api_path="/feedback")
        self.store_path, self.actions = str(store), list(actions)

    def setup(self, device: str) -> None:
        self.store = RequestStore(self.store_path)

    def decode_request(self, request: FeedbackRequest) -> FeedbackRequest:
        if request.action is not None and request.action not in self.actions:
            shown = ", ".join(self.actions[:8]) + (", ..." if len(self.actions) > 8 else "")
            raise HTTPException(422, f"action={request.action!r} is not one of the agent's actions ({shown}).")
        return request

    def predict(self, request: FeedbackRequest) -> dict[str, Any]:
        thumbs = None if request.thumbs is None else request.thumbs == "up"
        try:
            row = self.store.record_feedback(request.id, correct_action=request.action, thumbs_up=thumbs)
        except UnknownRequest:
            raise HTTPException(404, f"id={request.id!r} is not a request this server answered.") from None
        return {"feedback_id": row, "id": request.id}

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def build_server(
    model: str | os.PathLike,
    store: str | os.PathLike,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    workers: int = 1,
    abstain: tuple[Sequence[str], Sequence[str], float] | None = None,
) -> ls.LitServer:
    """A LitServer for ``model`` (:func:`load_actor`) that writes to ``store``, with ``/predict``, ``/feedback``,
    ``/stats`` and ``/health``.

    Args:
        abstain: ``(texts, labels, precision)``: held-out requests (e.g. the validation split) on which the
            confidence threshold that keeps ``precision`` is chosen; answers below it are ``"action": null``.
            ``/stats`` reports the threshold with its coverage and precision there.
    """
    actor = load_actor(model)
    actions = list(actor.labels)
    abstention = calibrate_abstention(actor, *abstain) if abstain is not None else None
    answer = AnswerAPI(str(model), str(store), max_batch_size, batch_timeout, abstention)
    server = ls.LitServer(
        [answer, FeedbackAPI(str(store), actions)], accelerator="cpu", workers_per_device=workers, timeout=60
    )
    reader = RequestStore(store)

    def stats() -> dict[str, Any]:
        return {**reader.stats(), "abstention": None if abstention is None else asdict(abstention)}

    server.app.add_api_route("/stats", stats, methods=["GET"])
    return server
