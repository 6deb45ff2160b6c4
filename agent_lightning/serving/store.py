"""The served agent's memory: every answered request and every piece of feedback, in SQLite.

One file, written in WAL mode with ``synchronous=FULL``: a row is on disk before the server acknowledges it, so a
server killed right after answering loses nothing it acknowledged, and several server processes (LitServe workers)
can write to the same file. The store is what ``learn`` reads.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Feedback", "RequestStore", "UnknownRequest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    text TEXT NOT NULL,
    action TEXT,
    confidence REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests(id),
    created REAL NOT NULL,
    correct_action TEXT,
    thumbs_up INTEGER
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
"""


class UnknownRequest(KeyError):
    """Feedback names a request id the store never answered."""


@dataclass(frozen=True)
class Feedback:
    """What a user said about one answer: the action it should have been, or a thumb up/down."""

    request_id: str
    text: str
    answered: str | None
    correct_action: str | None
    thumbs_up: bool | None


class RequestStore:
    """Answered requests and their feedback in one SQLite file.

    Args:
        path: the database file (created with its tables when missing).

    Example:
        >>> store = RequestStore(getfixture("tmp_path") / "agent.db")
        >>> [request_id] = store.record_answers([("wake me at 7", "set_alarm", 0.97)])
        >>> store.record_feedback(request_id, correct_action="set_reminder")
        1
        >>> store.stats()["feedback"], store.feedback()[0].correct_action
        (1, 'set_reminder')
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as connection:
            connection.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # committed = on disk, before the client hears of it
            connection.execute("PRAGMA foreign_keys=ON")
            yield connection
        finally:
            connection.close()

    def record_answers(self, answers: Sequence[tuple[str, str | None, float]]) -> list[str]:
        """Store ``(text, action, confidence)`` answers (``action`` ``None``: abstained) in one transaction.

        Returns:
            The new request ids, in order.
        """
        ids = [uuid.uuid4().hex for _ in answers]
        now = time.time()
        rows = [(i, now, text, action, float(confidence)) for i, (text, action, confidence) in zip(ids, answers)]
        with self._connection() as connection:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?)", rows)
        return ids

    def record_feedback(self, request_id: str, correct_action: str | None = None, thumbs_up: bool | None = None) -> int:
        """Store feedback on an answered request: the correct action, or a thumb up/down.

        Returns:
            The feedback row's id.

        Raises:
            UnknownRequest: no request has this id.
            ValueError: neither or both of ``correct_action`` and ``thumbs_up`` were given.
        """
        if (correct_action is None) == (thumbs_up is None):
            raise ValueError("feedback needs either the correct action ('action') or a thumb up/down ('thumbs').")
        with self._connection() as connection:
            with connection:
                connection.execute("BEGIN IMMEDIATE")
                known = connection.execute("SELECT 1 FROM requests WHERE id = ?", (request_id,)).fetchone()
                if known is None:
                    raise UnknownRequest(request_id)
                thumbs = None if thumbs_up is None else int(bool(thumbs_up))
                cursor = connection.execute(
                    "INSERT INTO feedback (request_id, created, correct_action, thumbs_up) VALUES (?, ?, ?, ?)",
                    (request_id, time.time(), correct_action, thumbs),
                )
                return int(cursor.lastrowid)

    def feedback(self) -> list[Feedback]:
        """Every feedback row with its request, oldest first."""
        query = (
            "SELECT f.request_id, r.text, r.action, f.correct_action, f.thumbs_up FROM feedback f "
            "JOIN requests r ON r.id = f.request_id ORDER BY f.id"
        )
        with self._connection() as connection:
            rows = connection.execute(query).fetchall()
        return [
            Feedback(i, text, answered, correct, None if up is None else bool(up))
            for i, text, answered, correct, up in rows
        ]

    def unlabelled_texts(self) -> list[str]:
        """Texts of answered requests that got no feedback (a transfer set for distillation)."""
        query = "SELECT text FROM requests WHERE id NOT IN (SELECT request_id FROM feedback) ORDER BY created"
        with self._connection() as connection:
            return [text for (text,) in connection.execute(query).fetchall()]

    def stats(self) -> dict[str, Any]:
        """Requests, feedback, and per answered action: feedback count and the share found wrong (a correction to
        another action, or a thumb down)."""
        with self._connection() as connection:
            requests = connection.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            abstained = connection.execute("SELECT COUNT(*) FROM requests WHERE action IS NULL").fetchone()[0]
            rows = connection.execute(
                "SELECT r.action, COUNT(*), SUM(CASE WHEN (f.correct_action IS NOT NULL AND "
                "f.correct_action IS NOT r.action) OR f.thumbs_up = 0 THEN 1 ELSE 0 END) "
                "FROM feedback f JOIN requests r ON r.id = f.request_id GROUP BY r.action ORDER BY r.action"
            ).fetchall()
        by_action = {str(action): {"feedback": n, "error_rate": wrong / n} for action, n, wrong in rows}
        return {
            "requests": requests,
            "abstained": abstained,
            "feedback": sum(n for _, n, _ in rows),
            "by_action": by_action,
        }
