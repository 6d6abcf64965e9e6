"""Collecting descriptions: per class, attempts (the request cache first, else one chat call)
until it has per_class descriptions or has made max_attempts; classes run in a thread pool.

In auto output mode the working mode (json_schema -> json_object -> text) is settled before
the pool starts: the classes that need requests go one at a time until a reply shows which
mode the server accepts, and only then do the workers start, all in that mode. No worker
ever changes the mode, so nothing guards it.

After max_failures classes failed for good, or at once on 401/403/404, no new request is
sent (requests in flight finish and are committed); the classes left are 'not sent'.
"""
from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Callable, Iterator

from drm.describe.cache import RequestCache
from drm.describe.openai.client import (FATAL_STATUSES, MODE_ORDER, MODE_REJECTED_STATUSES,
                                        ChatClient, Reply, RequestBuilder, RequestFailed,
                                        cached_answer, commit_answer, lookup_modes)
from drm.describe.openai.parse import Reading, read_answer
from drm.describe.openai.results import Outcome, failure_reason
from drm.describe.text import clean_descriptions

log = logging.getLogger(__name__)


class _NotSent(Exception):
    """The run was stopped (earlier fatal failures) before this request was sent."""


class Collector:
    """One run's collection. `mode`/`mode_known`: the output mode to use, and whether a reply
    has shown the server accepts it (always true for an explicit output_mode)."""

    def __init__(self, *, builder: RequestBuilder, client: ChatClient | None,
                 cache: RequestCache | None, mode: str, mode_known: bool, progress: bool):
        self.builder = builder
        self.config = builder.config
        self.client = client  # None: the plan found every answer in the cache
        self.cache = cache
        self.mode = mode
        self.mode_known = mode_known
        self.progress = progress
        self._abort = threading.Event()
        self._failures_lock = threading.Lock()
        self._hard_failures = 0

    def run(self, todo: list[str], *, to_request: list[str]) -> list[Outcome]:
        """Outcomes of `todo`, in its order. `to_request`: the classes the cache cannot answer
        (from the plan); they go first, one at a time, while the output mode is unknown."""
        outcomes: dict[str, Outcome] = {}
        with _progress_bar(len(todo), enabled=self.progress) as done:
            for name in to_request:
                if self.mode_known or self._abort.is_set():
                    break
                outcomes[name] = self._describe_one(name, probing=True)
                done()
            rest = [n for n in todo if n not in outcomes]
            for o in self._in_pool(rest, done=done):
                outcomes[o.name] = o
        return [outcomes[n] for n in todo]

    def _in_pool(self, names: list[str], *, done: Callable[[], None]) -> list[Outcome]:
        if not names:
            return []
        workers = max(1, min(self.config.concurrency, len(names)))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="describe-openai")
        results = []
        try:
            futures = [pool.submit(self._describe_one, n, probing=False) for n in names]
            for fut in as_completed(futures):
                results.append(fut.result())
                done()
        except BaseException:  # e.g. Ctrl-C: send nothing new, keep what is in flight
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
        return results

    def _describe_one(self, classname: str, *, probing: bool) -> Outcome:
        """All attempts for one class. probing: a refused output mode may move to the next."""
        out = Outcome(classname)
        per_class, max_chars = self.builder.per_class, self.config.max_chars
        collected: list[str] = []
        try:
            for attempt in range(self.config.max_attempts):
                if len(collected) >= per_class:
                    break
                reading = self._attempt(classname, attempt=attempt, out=out, probing=probing)
                if reading.items:
                    collected = clean_descriptions(collected + reading.items, max_chars)
                    out.rejected.extend(reading.rejected)
                else:
                    out.problems.append(reading.problem or "no usable descriptions")
        except RequestFailed as e:
            out.failure, out.status, out.hard = e.reason, e.status, True
            self._count_failure(e.status)
        except _NotSent:
            out.not_sent = True
            out.failure = "not requested: the run stopped after earlier failures"
        out.descriptions = collected[:per_class]
        out.rejected = list(dict.fromkeys(out.rejected))
        if not out.descriptions and out.failure is None:
            out.failure = failure_reason(out.problems)
        return out

    def _attempt(self, classname: str, *, attempt: int, out: Outcome, probing: bool) -> Reading:
        """One attempt: the cached answer, else one chat call. A usable answer is committed at
        once (a killed run loses nothing); an unusable one is not, so a rerun asks again."""
        modes = lookup_modes(self.config.output_mode, self.mode)
        hit = cached_answer(self.cache, self.builder, classname, attempt=attempt, modes=modes)
        if hit is not None:
            reading, mode = hit
            out.cache_hits += 1
            out.used(mode)
            return reading
        reply, mode = self._send(classname, out=out, probing=probing)
        out.received += 1
        out.prompt_tokens += reply.prompt_tokens or 0
        out.completion_tokens += reply.completion_tokens or 0
        if reply.text is None:
            return Reading(problem=reply.problem)
        reading = read_answer(reply.text, self.config.max_chars)
        if reading.items:
            out.used(mode)
            if self.cache is not None:
                commit_answer(self.cache, self.builder, classname, attempt=attempt, mode=mode,
                              reply=reply)
                out.cached_now += 1
        return reading

    def _send(self, classname: str, *, out: Outcome, probing: bool) -> tuple[Reply, str]:
        """One chat call in the working mode, and that mode."""
        while True:
            if self._abort.is_set():
                raise _NotSent()
            if self.client is None:  # the cache changed since the plan said it answers all
                raise RequestFailed(f"${self.config.api_key_env} is not set", None)
            mode = self.mode
            out.calls += 1
            try:
                reply = self.client.send(self.builder.create_kwargs(classname, mode))
            except RequestFailed as e:
                if probing and self._fall_back(e):
                    continue
                raise
            if probing:
                self.mode_known = True  # the server accepted this mode (whatever it answered)
            return reply, mode

    def _fall_back(self, err: RequestFailed) -> bool:
        """While the mode is unknown, a refused output mode moves to the next one."""
        if (self.mode_known or err.status not in MODE_REJECTED_STATUSES
                or self.mode == MODE_ORDER[-1]):
            return False
        refused, self.mode = self.mode, MODE_ORDER[MODE_ORDER.index(self.mode) + 1]
        log.warning("describe[openai]: the server rejected output mode %s (%s); using %s from "
                    "now on", refused, err.reason, self.mode)
        return True

    def _count_failure(self, status: int | None) -> None:
        with self._failures_lock:  # workers fail concurrently
            self._hard_failures += 1
            if status in FATAL_STATUSES or self._hard_failures >= self.config.max_failures:
                self._abort.set()  # no new requests; in-flight ones finish and are committed


@contextmanager
def _progress_bar(total: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A tqdm bar on stderr (classes done), as a function to call per class."""
    if not (enabled and total):
        yield lambda: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="describe[openai]", unit="class", file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    try:
        yield lambda: bar.update(1)
    finally:
        bar.close()
