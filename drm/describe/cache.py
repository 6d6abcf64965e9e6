"""The request cache of LLM describe providers: one SQLite row per answered request.

This is the second cache layer (the first is the descriptions file, the describe stage's DVC
output). It makes reruns free and resumable: every answer is committed the moment it arrives,
so a run that is killed or fails part-way loses nothing, and the next run sends requests only
for what is missing.

Rows are keyed by `request_key(...)`: a sha256 over everything that shapes an answer (model,
server, prompts, class, count, sampling settings, output mode, attempt index). The raw answer
text is stored, never the API key or request headers. SQLite in WAL mode with a busy timeout
is safe for concurrent writers (threads of one run share a connection under a lock; other
processes have their own connections).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drm.base.errors import DescriptionsError

CACHE_SCHEMA = 1

_DDL = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    created REAL NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    classname TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    mode TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def request_key(**parts: Any) -> str:
    """sha256 (hex) of the canonical JSON of `parts` (sorted keys): equal inputs, equal keys."""
    blob = json.dumps({"cache_schema": CACHE_SCHEMA, **parts}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    mode: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class RequestCache:
    """A thread-safe SQLite key -> answer store (WAL, autocommit: each `put` is durable at once)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: autocommit, every INSERT is its own committed transaction
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_DDL)
            self._conn.execute("INSERT OR IGNORE INTO meta(name, value) VALUES ('schema', ?)",
                               (str(CACHE_SCHEMA),))
        except sqlite3.DatabaseError as e:
            raise DescriptionsError(
                f"request cache {self.path} is not a usable SQLite database ({e}); delete it "
                "(it only saves requests) or set describe.openai.cache_path elsewhere") from None

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT text, mode, prompt_tokens, completion_tokens FROM answers WHERE key = ?",
                (key,)).fetchone()
        return CachedAnswer(*row) if row else None

    def put(self, key: str, text: str, *, provider: str, model: str, classname: str,
            attempt: int, mode: str, prompt_tokens: int | None = None,
            completion_tokens: int | None = None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO answers(key, created, provider, model, classname, attempt,"
                " mode, text, prompt_tokens, completion_tokens) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (key, time.time(), provider, model, classname, attempt, mode, text,
                 prompt_tokens, completion_tokens))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
