"""Serving an agent and remembering what users say about its answers: the LitServe API and the SQLite store."""

from agent_lightning.serving.api import (
    MAX_REQUESTS,
    MAX_TEXT_CHARS,
    AnswerAPI,
    FeedbackAPI,
    FeedbackRequest,
    PredictRequest,
    build_server,
    load_actor,
)
from agent_lightning.serving.store import Feedback, RequestStore, UnknownRequest

__all__ = [
    "MAX_REQUESTS",
    "MAX_TEXT_CHARS",
    "AnswerAPI",
    "Feedback",
    "FeedbackAPI",
    "FeedbackRequest",
    "PredictRequest",
    "RequestStore",
    "UnknownRequest",
    "build_server",
    "load_actor",
]
