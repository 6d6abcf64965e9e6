"""The `openai` describe provider: concept descriptions from any OpenAI-compatible chat server.

Works with the OpenAI API and with local servers that speak its chat-completions protocol
(vLLM, Ollama, llama.cpp server, LM Studio, ...): set describe.openai.base_url. The official
`openai` client does the HTTP work, including retries with backoff on 429/5xx/timeouts
(describe.openai.max_retries); this module adds the DRM prompt, structured output with
fallbacks, defensive parsing, a request cache (drm.describe.cache), bounded concurrency,
and provenance. See docs/describe-openai.md.

The API key is read from the environment variable named by describe.openai.api_key_env and
handed to the client only: it is never stored in params, the cache, the descriptions file,
provenance, log lines or error messages.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

from drm.describe import DescribeResult, clean_descriptions
from drm.describe.cache import RequestCache, request_key
from drm.describe.openai_config import OpenAIConfig, format_prompt
from drm.errors import DescriptionsError

log = logging.getLogger(__name__)

PROVIDER_NAME = "openai"
# Local OpenAI-compatible servers ignore the key, but the client insists on one.
PLACEHOLDER_KEY = "sk-no-key-required"
OPENAI_API_URL = "https://api.openai.com/v1"
MODE_ORDER = ("json_schema", "json_object", "text")
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {"descriptions": {"type": "array", "items": {"type": "string"}}},
    "required": ["descriptions"],
    "additionalProperties": False,
}
# Errors that will not go away for other classes: stop sending at once.
FATAL_STATUSES = {401, 403, 404}
# Rough token arithmetic for dry runs (no tokenizer needed): ~4 characters a token.
_CHARS_PER_TOKEN = 4
_MESSAGE_OVERHEAD_TOKENS = 12


# ---------------------------------------------------------------------------------------------
# Parsing untrusted answers
# ---------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)(?:```|\Z)", re.S)
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u2013]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_NOTHING = object()


def parse_answer(text: str | None) -> tuple[list[str], str | None]:
    """Pull candidate descriptions out of a model's answer text.

    Accepts a JSON object {"descriptions": [...]}, a bare JSON list of strings, either of those
    inside a ``` code fence or after a line of prose, or plain text with one description per
    (bulleted or numbered) line. Returns (items, problem): items are raw strings (clean them
    with clean_descriptions); problem says why nothing usable was found, else None.
    """
    if text is None or not text.strip():
        return [], "empty answer"
    body = text.strip()
    fence = _FENCE.search(body)
    if fence:
        body = fence.group(2).strip()
        if not body:
            return [], "empty code block"
    if body[0] in "{[" or (fence and fence.group(1).lower() == "json"):
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = _first_json(body, strict=False)
            if data is _NOTHING:
                return [], "malformed JSON"
        return _from_json(data)
    data = _first_json(body, strict=True)  # JSON after a line of prose: "Sure! {...}"
    if data is not _NOTHING:
        return _from_json(data)
    return _from_lines(body)


def _first_json(body: str, strict: bool):
    """The first JSON object/list embedded in `body` (a few candidate starts only). With
    strict, only something that looks like our answer counts."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[{\[]", body)][:20]
    for i in starts:
        try:
            data, _ = decoder.raw_decode(body, i)
        except json.JSONDecodeError:
            continue
        if not strict:
            return data
        if isinstance(data, dict) and any(str(k).lower() == "descriptions" for k in data):
            return data
        if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
            return data
    return _NOTHING


def _from_json(data: Any) -> tuple[list[str], str | None]:
    if isinstance(data, dict):
        value = next((v for k, v in data.items() if str(k).lower() == "descriptions"), _NOTHING)
        if value is _NOTHING:
            return [], f"JSON object without a \"descriptions\" key (keys: {sorted(map(str, data))[:5]})"
        data = value
    if isinstance(data, str):
        return ([data], None) if data.strip() else ([], "empty description")
    if isinstance(data, list):
        items = [x for x in data if isinstance(x, str)]
        if not items:
            return [], "JSON list without strings" if data else "empty JSON list"
        return items, None
    return [], f"unexpected JSON {type(data).__name__}"


def _from_lines(body: str) -> tuple[list[str], str | None]:
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    bullets = [line for line in lines if _BULLET.match(line)]
    chosen = bullets if bullets else [line for line in lines if not line.endswith(":")]
    items = [_BOLD.sub(r"\1", _BULLET.sub("", line, count=1)).strip() for line in chosen]
    items = [i for i in items if i and not i.startswith("```")]
    return (items, None) if items else ([], "no descriptions in the answer")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def safe_url(url: str | None) -> str | None:
    """`url` without user info, query or fragment (which might carry credentials)."""
    if url is None:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]  # drop user:password@
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def prompt_sha256(cfg: OpenAIConfig) -> str:
    """Hash of the prompt design (system prompt + template + domain hint)."""
    blob = "\x00".join([cfg.system_prompt, cfg.prompt, cfg.domain_hint or ""])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN)


class _RequestFailed(Exception):
    """A request that failed for good (after the client's own retries)."""

    def __init__(self, reason: str, status: int | None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


class _Rejected(Exception):
    """The server refused a structured-output mode (HTTP 400/422) while auto mode probes."""

    def __init__(self, err):
        super().__init__(str(err))
        self.err = err


class _NotSent(Exception):
    """The run was stopped (earlier fatal failures) before this request was sent."""


@dataclass
class _Outcome:
    name: str
    descriptions: list[str] = field(default_factory=list)
    calls: int = 0  # chat calls made (each may involve client retries)
    cache_hits: int = 0
    received: int = 0  # answers received this run
    cached_now: int = 0  # answers committed to the cache this run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    failure: str | None = None
    status: int | None = None
    hard: bool = False  # failed after the client's retries (HTTP error, timeout, connection)
    not_sent: bool = False  # the run stopped before this class's request was sent


@dataclass
class DryRunPlan:
    """What `describe` would do, from the request cache alone (nothing is sent)."""

    classes: int
    overridden: list[str]
    cached: list[str]  # complete from the cache
    cached_short: dict[str, int]  # cache exhausted the attempts with fewer than per_class
    to_request: dict[str, int]  # class -> index of its first uncached attempt
    requests_min: int
    requests_max: int
    prompt_tokens: int  # estimate for requests_min requests
    completion_tokens: int


# ---------------------------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------------------------
class OpenAIProvider:
    """Describe classes with an OpenAI-compatible chat model (see the module docstring)."""

    name = PROVIDER_NAME

    def __init__(self, config: OpenAIConfig, per_class: int = 5, base_dir=Path("."),
                 skip: Iterable[str] = ()):
        self.config = config
        self.per_class = int(per_class)
        self.base_dir = Path(base_dir)
        self.skip = frozenset(skip)  # classes an override replaces anyway: never requested
        self._mode = "json_schema" if config.output_mode == "auto" else config.output_mode
        self._mode_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._mode_known = threading.Event()  # auto mode: a request succeeded in self._mode
        self._probe_failed = threading.Event()  # auto mode: a probe failed for another reason
        self._abort = threading.Event()
        self._http_lock = threading.Lock()
        self._http_requests = 0
        self._hard_failures = 0
        self._secret: str | None = None  # only to scrub it from messages; never logged

    def __repr__(self) -> str:  # never show the key
        return (f"OpenAIProvider(model={self.config.model!r}, base_url={self.base_url!r}, "
                f"per_class={self.per_class})")

    @classmethod
    def from_config(cls, cfg, ctx) -> "OpenAIProvider":
        """cfg: drm.config.DescribeConfig (uses .openai, .per_class, .overrides)."""
        skip: list[str] = []
        if getattr(cfg, "overrides", None):
            from drm.describe import read_overrides

            skip = list(read_overrides(Path(ctx.base_dir) / cfg.overrides, ctx.classnames))
        return cls(cfg.openai, per_class=cfg.per_class, base_dir=ctx.base_dir, skip=skip)

    # -- server, key, cache -------------------------------------------------------------------
    @property
    def base_url(self) -> str | None:
        """The server (None: the OpenAI API), without credentials. OPENAI_BASE_URL counts when
        base_url is unset, as it does for the client."""
        return safe_url(self.config.base_url or os.environ.get("OPENAI_BASE_URL") or None)

    @property
    def is_openai(self) -> bool:
        url = self.base_url
        return url is None or (urlsplit(url).hostname or "").endswith("api.openai.com")

    def _server_id(self) -> str:
        return self.base_url or OPENAI_API_URL

    def _key_state(self) -> str:
        """'set', 'placeholder' (keyless local server) or 'missing' (describe would fail)."""
        if os.environ.get(self.config.api_key_env, "").strip():
            return "set"
        return "missing" if self.is_openai else "placeholder"

    def _api_key(self) -> str:
        env = self.config.api_key_env
        key = os.environ.get(env, "").strip()
        if key:
            return key
        if self.is_openai:
            raise DescriptionsError(
                f"describe.openai: the environment variable {env} is not set, and the OpenAI API "
                f"needs a key. Export it first (export {env}=...; never put the key in "
                "params.yaml), or set describe.openai.base_url to a local OpenAI-compatible "
                "server (Ollama, vLLM, llama.cpp), which needs no key.")
        return PLACEHOLDER_KEY

    def _make_client(self):
        from openai import DefaultHttpxClient, OpenAI

        key = self._api_key()
        self._secret = key if key != PLACEHOLDER_KEY else None
        c = self.config

        def count(request):  # every HTTP attempt, the client's retries included
            with self._http_lock:
                self._http_requests += 1

        http = DefaultHttpxClient(timeout=c.timeout, event_hooks={"request": [count]})
        url = c.base_url or os.environ.get("OPENAI_BASE_URL") or None
        return OpenAI(base_url=url, api_key=key, timeout=c.timeout, max_retries=c.max_retries,
                      http_client=http)

    @property
    def cache_path(self) -> Path | None:
        if self.config.cache_path is None:
            return None
        p = Path(self.config.cache_path)
        return p if p.is_absolute() else self.base_dir / p

    def _redact(self, text: str) -> str:
        text = str(text)
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "<redacted>")
        return text

    # -- requests -----------------------------------------------------------------------------
    def _prompt(self, classname: str) -> str:
        return format_prompt(self.config.prompt, self.per_class, classname, self.config.domain_hint)

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        msgs = []
        if self.config.system_prompt.strip():
            msgs.append({"role": "system", "content": self.config.system_prompt})
        msgs.append({"role": "user", "content": prompt})
        return msgs

    def _key(self, classname: str, prompt: str, attempt: int, mode: str) -> str:
        c = self.config
        return request_key(
            provider=PROVIDER_NAME, model=c.model, base_url=self._server_id(),
            system_prompt=c.system_prompt, prompt=prompt, domain_hint=c.domain_hint,
            classname=classname, n=self.per_class, temperature=c.temperature, top_p=c.top_p,
            seed=c.seed, max_tokens=c.max_tokens, mode=mode, attempt=attempt,
            schema=RESPONSE_SCHEMA if mode == "json_schema" else None)

    def _current_mode(self) -> str:
        with self._mode_lock:
            return self._mode

    def _lookup_modes(self) -> list[str]:
        """Modes whose cached answers count: in auto mode any (the current one first), so a
        rerun against a server that needed a fallback makes no probing requests."""
        if self.config.output_mode != "auto":
            return [self.config.output_mode]
        cur = self._current_mode()
        return [cur] + [m for m in MODE_ORDER if m != cur]

    def _downgrade(self, mode: str, err) -> None:
        with self._mode_lock:
            if self._mode != mode:
                return  # another thread already moved on
            self._mode = MODE_ORDER[MODE_ORDER.index(mode) + 1]
            log.warning("describe[openai]: the server rejected output mode %s (HTTP %s: %s); "
                        "using %s from now on", mode, getattr(err, "status_code", "?"),
                        self._redact(_short(_error_message(err))), self._mode)

    def _create(self, client, messages, mode: str):
        c = self.config
        kwargs: dict[str, Any] = {"model": c.model, "messages": messages,
                                  "temperature": c.temperature}
        if c.top_p is not None:
            kwargs["top_p"] = c.top_p
        if c.seed is not None:
            kwargs["seed"] = c.seed
        if c.max_tokens is not None:
            kwargs["max_tokens"] = c.max_tokens
        if mode == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "descriptions", "strict": True, "schema": RESPONSE_SCHEMA}}
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        try:
            resp = raw.parse()
            choices = getattr(resp, "choices", None) or []
        except Exception:  # a 200 whose body is not a chat completion
            return None, "the reply is not a chat completion", None, None
        usage = getattr(resp, "usage", None)
        pt = getattr(usage, "prompt_tokens", None) if usage is not None else None
        ct = getattr(usage, "completion_tokens", None) if usage is not None else None
        if not choices:
            return None, "no choices in the reply", pt, ct
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not content and getattr(message, "refusal", None):
            return None, "the model refused", pt, ct
        if not isinstance(content, str):
            return None, "empty answer", pt, ct
        return content, None, pt, ct

    def _ask(self, client, cache, classname: str, prompt: str, attempt: int,
             out: _Outcome) -> tuple[list[str], str | None]:
        """One attempt for one class: from the cache, else one chat call (with output-mode
        fallback in auto mode). Usable answers are committed to the cache at once."""
        if cache is not None:
            for mode in self._lookup_modes():
                hit = cache.get(self._key(classname, prompt, attempt, mode))
                if hit is None:
                    continue
                items = self._clean(parse_answer(hit.text)[0])
                if items:
                    out.cache_hits += 1
                    out.modes[mode] = out.modes.get(mode, 0) + 1
                    return items, None
        messages = self._messages(prompt)
        while True:
            if self._abort.is_set():
                raise _NotSent()
            mode = self._current_mode()
            try:
                if self._probing() and not self._probe_failed.is_set():
                    # auto mode, working mode unknown: one request at a time finds it, the
                    # other threads wait here instead of each probing the server
                    with self._probe_lock:
                        if not self._probing() or self._probe_failed.is_set():
                            continue  # another thread found the mode (or gave up) meanwhile
                        mode = self._current_mode()
                        try:
                            text, problem, pt, ct = self._send(client, messages, mode, out)
                        except _RequestFailed:
                            self._probe_failed.set()  # server trouble: stop serialising
                            raise
                        self._mode_known.set()
                else:
                    text, problem, pt, ct = self._send(client, messages, mode, out)
            except _Rejected as e:
                self._downgrade(mode, e.err)
                continue
            out.received += 1
            out.prompt_tokens += pt or 0
            out.completion_tokens += ct or 0
            if text is None:
                return [], problem
            raw_items, problem = parse_answer(text)
            items = self._clean(raw_items)
            if not items:
                return [], problem or "no usable descriptions"
            out.modes[mode] = out.modes.get(mode, 0) + 1
            if cache is not None:
                cache.put(self._key(classname, prompt, attempt, mode), text,
                          provider=PROVIDER_NAME, model=self.config.model, classname=classname,
                          attempt=attempt, mode=mode, prompt_tokens=pt, completion_tokens=ct)
                out.cached_now += 1
            return items, None

    def _probing(self) -> bool:
        return self.config.output_mode == "auto" and not self._mode_known.is_set()

    def _send(self, client, messages, mode: str, out: _Outcome):
        """One chat call; openai errors become _Rejected (a structured-output mode refused
        while probing in auto mode) or _RequestFailed (for good, after the client's retries)."""
        import openai

        if client is None:  # only when the cache was expected to answer everything
            raise _RequestFailed(f"${self.config.api_key_env} is not set", None)
        out.calls += 1
        try:
            return self._create(client, messages, mode)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            if self._probing() and mode != "text":
                raise _Rejected(e) from None
            raise _RequestFailed(self._status_reason(e), e.status_code) from None
        except openai.APIStatusError as e:
            raise _RequestFailed(self._status_reason(e), e.status_code) from None
        except openai.APITimeoutError:
            raise _RequestFailed(
                f"timed out after {self.config.timeout:g} s "
                f"(max_retries={self.config.max_retries})", None) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _RequestFailed(self._redact(
                f"cannot connect to {self._server_id()} ({type(cause).__name__}: "
                f"{_short(str(cause))})"), None) from None

    def _status_reason(self, err) -> str:
        return self._redact(f"HTTP {err.status_code}: {_short(_error_message(err))}")

    def _clean(self, items: list[str]) -> list[str]:
        return clean_descriptions(items, self.config.max_chars)

    def _describe_one(self, client, cache, classname: str) -> _Outcome:
        out = _Outcome(classname)
        prompt = self._prompt(classname)
        collected: list[str] = []
        try:
            for attempt in range(self.config.max_attempts):
                if len(collected) >= self.per_class:
                    break
                items, problem = self._ask(client, cache, classname, prompt, attempt, out)
                if items:
                    collected = self._clean(collected + items)
                else:
                    out.problems.append(problem or "no usable descriptions")
        except _RequestFailed as e:
            out.failure, out.status, out.hard = e.reason, e.status, True
            with self._http_lock:
                self._hard_failures += 1
                if e.status in FATAL_STATUSES or self._hard_failures >= self.config.max_failures:
                    self._abort.set()  # no new requests; in-flight ones finish and are committed
        except _NotSent:
            out.not_sent = True
            out.failure = "not requested: the run stopped after earlier failures"
        out.descriptions = collected[: self.per_class]
        if not out.descriptions and out.failure is None:
            distinct = list(dict.fromkeys(out.problems))
            out.failure = (f"{distinct[0]}, {len(out.problems)} time(s)" if len(distinct) == 1
                           else "; ".join(f"attempt {i + 1}: {p}" for i, p in enumerate(out.problems)))
        return out

    # -- the provider API ---------------------------------------------------------------------
    def describe(self, classnames: list[str]) -> DescribeResult:
        c = self.config
        start = time.monotonic()
        names = list(dict.fromkeys(classnames))
        todo = [n for n in names if n not in self.skip]
        client = None
        if self.plan(names).to_request:
            client = self._make_client()  # raises (before any request) if the key is missing
        # else the request cache answers everything: no client, no key needed
        try:
            cache = RequestCache(self.cache_path) if self.cache_path is not None else None
        except BaseException:
            if client is not None:
                client.close()
            raise
        self._abort.clear()
        with self._http_lock:
            self._http_requests = 0
            self._hard_failures = 0
        outcomes: dict[str, _Outcome] = {}
        bar = None
        if c.progress and todo and os.environ.get("DRM_NO_PROGRESS", "") != "1":
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="describe[openai]", unit="class", file=sys.stderr,
                       dynamic_ncols=True, mininterval=0.5)
        pool = ThreadPoolExecutor(max_workers=max(1, min(c.concurrency, len(todo))),
                                  thread_name_prefix="describe-openai")
        try:
            futures = [pool.submit(self._describe_one, client, cache, n) for n in todo]
            for fut in as_completed(futures):
                o = fut.result()
                outcomes[o.name] = o
                if bar is not None:
                    bar.update(1)
        except BaseException:
            self._abort.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            if bar is not None:
                bar.close()
            if cache is not None:
                cache.close()
            if client is not None:
                client.close()

        provenance = self._provenance(names, outcomes, time.monotonic() - start)
        self._report(provenance, outcomes)
        failed = {n: outcomes[n] for n in todo if outcomes[n].failure is not None}
        if failed:
            raise self._failure_error(failed, outcomes, provenance)
        return DescribeResult(
            descriptions={n: outcomes[n].descriptions for n in todo}, provenance=provenance)

    def _provenance(self, names, outcomes: dict[str, _Outcome], seconds: float) -> dict:
        c = self.config
        modes: dict[str, int] = {}
        for o in outcomes.values():
            for m, k in o.modes.items():
                modes[m] = modes.get(m, 0) + k
        with self._http_lock:
            http = self._http_requests
        done = [(n, outcomes[n]) for n in names if n in outcomes]  # in class order
        return {
            "provider": PROVIDER_NAME,
            "model": c.model,
            "base_url": self.base_url,
            "prompt_sha256": prompt_sha256(c),
            "domain_hint": c.domain_hint,
            "output_mode": c.output_mode,
            "output_mode_used": max(modes, key=modes.get) if modes else self._current_mode(),
            "answers_by_mode": dict(sorted(modes.items())),
            "per_class": self.per_class,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "seed": c.seed,
            "max_tokens": c.max_tokens,
            "max_attempts": c.max_attempts,
            "counts": {n: len(outcomes[n].descriptions) for n in names if n in outcomes},
            "shortfalls": {n: self.per_class - len(o.descriptions) for n, o in done
                           if o.descriptions and len(o.descriptions) < self.per_class},
            "failures": {n: o.failure for n, o in done if o.failure is not None},
            "overridden": sorted(n for n in names if n in self.skip),
            "requests": http,
            "calls": sum(o.calls for o in outcomes.values()),
            "cache_hits": sum(o.cache_hits for o in outcomes.values()),
            "tokens": {"prompt": sum(o.prompt_tokens for o in outcomes.values()),
                       "completion": sum(o.completion_tokens for o in outcomes.values())},
            "seconds": round(seconds, 3),
        }

    def _report(self, prov: dict, outcomes: dict[str, _Outcome]) -> None:
        line = (f"describe[openai]: {len(outcomes)} class(es), {prov['requests']} request(s) sent, "
                f"{prov['cache_hits']} cache hit(s), tokens {prov['tokens']['prompt']} prompt + "
                f"{prov['tokens']['completion']} completion, {len(prov['failures'])} failure(s), "
                f"{len(prov['shortfalls'])} shortfall(s), output mode {prov['output_mode_used']}, "
                f"{prov['seconds']:.1f} s")
        line = self._redact(line)
        print(line, file=sys.stderr)
        log.debug(line)

    def _failure_error(self, failed: dict[str, _Outcome], outcomes, provenance) -> DescriptionsError:
        c = self.config
        hard = {n: o for n, o in failed.items() if o.hard}
        soft = {n: o for n, o in failed.items() if not o.hard and not o.not_sent}
        unsent = [n for n, o in failed.items() if o.not_sent]
        parts = []
        if hard:
            parts.append(f"{len(hard)} class(es) failed after the openai client's retries "
                         f"(max_retries={c.max_retries}): " + _listing(
                             {n: o.failure for n, o in hard.items()}))
        if soft:
            parts.append(f"{len(soft)} class(es) got no valid descriptions after "
                         f"{c.max_attempts} attempt(s): " + _listing(
                             {n: o.failure for n, o in soft.items()}))
        if unsent:
            parts.append(f"{len(unsent)} class(es) were not requested because the run stopped "
                         f"early: {unsent[:10]}" + (" ..." if len(unsent) > 10 else ""))
        statuses = {o.status for o in hard.values()}
        hints = []
        if statuses & {401, 403}:
            hints.append(f"check the API key in ${c.api_key_env} and its permissions")
        if 404 in statuses:
            hints.append("check describe.openai.model and describe.openai.base_url "
                         "(it usually ends in /v1)")
        if hard and not statuses & {401, 403, 404}:
            hints.append("check that the server is up; raise describe.openai.timeout or "
                         "max_retries for a slow or busy server")
        if soft:
            hints.append("check the model and prompt (or try describe.openai.output_mode), or "
                         "give these classes descriptions in describe.overrides")
        committed = sum(o.cached_now for o in outcomes.values())
        where = (f"the request cache {self.cache_path}" if self.cache_path is not None
                 else "no request cache (describe.openai.cache_path is null)")
        msg = ("describe.openai: " + "; ".join(parts) + ". "
               f"{committed} answer(s) received this run are committed to {where}; a rerun "
               "requests only what is missing. " + _sentence("; ".join(hints)))
        err = DescriptionsError(self._redact(msg))
        err.provenance = provenance
        err.failures = dict(provenance["failures"])
        return err

    # -- dry run ------------------------------------------------------------------------------
    def plan(self, classnames: list[str]) -> DryRunPlan:
        """What describe(classnames) would request, from the request cache alone."""
        c = self.config
        names = list(dict.fromkeys(classnames))
        todo = [n for n in names if n not in self.skip]
        cache = None
        if self.cache_path is not None and self.cache_path.exists():
            cache = RequestCache(self.cache_path)
        cached, short, to_request = [], {}, {}
        try:
            for name in todo:
                prompt = self._prompt(name)
                collected: list[str] = []
                pending = None
                for attempt in range(c.max_attempts):
                    if len(collected) >= self.per_class:
                        break
                    items = None
                    for mode in (self._lookup_modes() if cache is not None else []):
                        hit = cache.get(self._key(name, prompt, attempt, mode))
                        if hit is not None:
                            items = self._clean(parse_answer(hit.text)[0]) or None
                            if items:
                                break
                    if items is None:
                        pending = attempt
                        break
                    collected = self._clean(collected + items)
                if pending is not None:
                    to_request[name] = pending
                elif len(collected) >= self.per_class:
                    cached.append(name)
                else:
                    short[name] = self.per_class - len(collected)
        finally:
            if cache is not None:
                cache.close()
        req_min = len(to_request)
        req_max = sum(c.max_attempts - a for a in to_request.values())
        system = c.system_prompt if c.system_prompt.strip() else ""
        prompt_tokens = sum(_estimate_tokens(system + self._prompt(n)) + _MESSAGE_OVERHEAD_TOKENS
                            for n in to_request)
        per_description = _estimate_tokens("x" * min(c.max_chars, 120))
        completion_tokens = req_min * (self.per_class * (per_description + 4) + 8)
        return DryRunPlan(classes=len(names), overridden=sorted(n for n in names if n in self.skip),
                          cached=cached, cached_short=short, to_request=to_request,
                          requests_min=req_min, requests_max=req_max,
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    def dry_run(self, classnames: list[str]) -> str:
        """A printable plan of what describe(classnames) would send. Sends nothing."""
        c = self.config
        p = self.plan(classnames)
        key = self._key_state()
        key_line = {
            "set": f"${c.api_key_env} is set",
            "placeholder": f"${c.api_key_env} is not set: a placeholder key is sent "
                           "(fine for keyless local servers)",
            "missing": f"${c.api_key_env} is NOT set: describe would fail; export it first",
        }[key]
        if self.cache_path is None:
            cache_line = "none (describe.openai.cache_path is null)"
        elif self.cache_path.exists():
            cache_line = f"{self.cache_path}"
        else:
            cache_line = f"{self.cache_path} (does not exist yet)"
        lines = [
            "describe[openai] dry run: nothing is sent",
            f"  server:        {self.base_url or OPENAI_API_URL + ' (OpenAI)'}",
            f"  model:         {c.model}   output_mode: {c.output_mode}   per_class: {self.per_class}"
            f"   max_attempts: {c.max_attempts}   concurrency: {c.concurrency}",
            f"  prompt sha256: {prompt_sha256(c)[:16]}   domain hint: {c.domain_hint!r}",
            f"  API key:       {key_line}",
            f"  request cache: {cache_line}",
            f"  classes:       {p.classes}"
            + (f" ({len(p.overridden)} covered by describe.overrides, not requested)"
               if p.overridden else ""),
            f"  cached:        {len(p.cached)} class(es) complete in the cache"
            + (f"; {len(p.cached_short)} cached but short (no more attempts): "
               f"{_names(list(p.cached_short))}" if p.cached_short else ""),
        ]
        if p.to_request:
            extra = (" (+2 if the server rejects json_schema and json_object)"
                     if c.output_mode == "auto" else "")
            lines += [
                f"  to request:    {len(p.to_request)} class(es) -> {p.requests_min} request(s), "
                f"up to {p.requests_max} if answers fall short{extra}",
                f"                 {_names(list(p.to_request))}",
                f"  tokens (est.): ~{p.prompt_tokens:,} prompt + ~{p.completion_tokens:,} "
                f"completion for {p.requests_min} request(s) (about 4 characters a token)",
            ]
        else:
            lines.append("  to request:    nothing: every class is answered by the cache (0 requests)")
        return "\n".join(lines)


def _error_message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(err, "message", "") or err)


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:] + ".") if text else ""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(reasons: dict[str, str], limit: int = 10) -> str:
    items = [f"{n!r} ({r})" for n, r in list(reasons.items())[:limit]]
    return ", ".join(items) + (f", ... ({len(reasons) - limit} more)" if len(reasons) > limit else "")


def _names(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
