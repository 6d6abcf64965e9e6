"""Talking to the server: what is sent for a class, the API key, one chat call, cached answers.

The API key is read from the environment variable named by describe.openai.api_key_env and
handed to the openai client only. `ChatClient` redacts it from every reason it reports (a
careless server may echo it back in an error), so it never reaches messages, provenance or
the cache, which stores raw answer text only.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from drm.base.errors import DescriptionsError
from drm.describe.cache import RequestCache, request_key
from drm.describe.config import OpenAIConfig, format_prompt
from drm.describe.openai.parse import Reading, read_answer
from drm.describe.text import printable

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
# How servers refuse a response_format they do not support.
MODE_REJECTED_STATUSES = {400, 422}


class RequestFailed(Exception):
    """A request that failed for good (after the client's own retries); `reason` is redacted
    and printable."""

    def __init__(self, reason: str, status: int | None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


# -- the server and the key ---------------------------------------------------------------------
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


def client_url(config: OpenAIConfig) -> str | None:
    """The URL handed to the client: base_url, else OPENAI_BASE_URL as the client itself would
    read it; None is the OpenAI API. It may hold credentials: record only `server_url`."""
    return config.base_url or os.environ.get("OPENAI_BASE_URL") or None


def server_url(config: OpenAIConfig) -> str | None:
    return safe_url(client_url(config))


def is_openai_api(url: str | None) -> bool:
    return url is None or (urlsplit(url).hostname or "").endswith("api.openai.com")


def key_state(config: OpenAIConfig) -> str:
    """'set', 'placeholder' (keyless local server) or 'missing' (describe would fail)."""
    if os.environ.get(config.api_key_env, "").strip():
        return "set"
    return "missing" if is_openai_api(server_url(config)) else "placeholder"


def read_api_key(config: OpenAIConfig) -> str:
    env = config.api_key_env
    key = os.environ.get(env, "").strip()
    if key:
        return key
    if is_openai_api(server_url(config)):
        raise DescriptionsError(
            f"describe.openai: the environment variable {env} is not set, and the OpenAI API "
            f"needs a key. Export it first (export {env}=...; never put the key in "
            "params.yaml), or set describe.openai.base_url to a local OpenAI-compatible "
            "server (Ollama, vLLM, llama.cpp), which needs no key.")
    return PLACEHOLDER_KEY


def prompt_sha256(config: OpenAIConfig) -> str:
    """Hash of the prompt design (system prompt + template + domain hint)."""
    blob = "\x00".join([config.system_prompt, config.prompt, config.domain_hint or ""])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# -- what is sent ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestBuilder:
    """What is sent for a class, and the request-cache key of each answer."""

    config: OpenAIConfig
    per_class: int
    base_url: str | None  # credential-free (server_url); None: the OpenAI API

    @classmethod
    def for_config(cls, config: OpenAIConfig, *, per_class: int) -> "RequestBuilder":
        return cls(config, int(per_class), server_url(config))

    @property
    def server(self) -> str:
        return self.base_url or OPENAI_API_URL

    def prompt(self, classname: str) -> str:
        c = self.config
        return format_prompt(c.prompt, self.per_class, classname, c.domain_hint)

    def messages(self, classname: str) -> list[dict[str, str]]:
        msgs = []
        if self.config.system_prompt.strip():
            msgs.append({"role": "system", "content": self.config.system_prompt})
        msgs.append({"role": "user", "content": self.prompt(classname)})
        return msgs

    def create_kwargs(self, classname: str, mode: str) -> dict[str, Any]:
        """Keyword arguments of chat.completions.create. No `n`: many servers ignore it, so
        one answer carries the whole list."""
        c = self.config
        kwargs: dict[str, Any] = {"model": c.model, "messages": self.messages(classname),
                                  "temperature": c.temperature}
        optional = {"top_p": c.top_p, "seed": c.seed, "max_tokens": c.max_tokens}
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if mode == "json_schema":
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "descriptions", "strict": True, "schema": RESPONSE_SCHEMA}}
        elif mode == "json_object":
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    def cache_key(self, classname: str, *, attempt: int, mode: str) -> str:
        """Everything that shapes an answer (keep it stable: existing caches depend on it)."""
        c = self.config
        return request_key(
            provider=PROVIDER_NAME, model=c.model, base_url=self.server,
            system_prompt=c.system_prompt, prompt=self.prompt(classname), domain_hint=c.domain_hint,
            classname=classname, n=self.per_class, temperature=c.temperature, top_p=c.top_p,
            seed=c.seed, max_tokens=c.max_tokens, mode=mode, attempt=attempt,
            schema=RESPONSE_SCHEMA if mode == "json_schema" else None)


def lookup_modes(output_mode: str, current: str) -> list[str]:
    """Modes whose cached answers count: in auto mode any (the current one first), so a rerun
    against a server that needed a fallback makes no probing requests."""
    if output_mode != "auto":
        return [output_mode]
    return [current] + [m for m in MODE_ORDER if m != current]


# -- the request cache ---------------------------------------------------------------------------
def cached_answer(cache: RequestCache | None, builder: RequestBuilder, classname: str, *,
                  attempt: int, modes: list[str]) -> tuple[Reading, str] | None:
    """The usable cached answer of one attempt, and its mode. An entry that today's screening
    rejects entirely counts as missing, so it is asked again."""
    if cache is None:
        return None
    for mode in modes:
        hit = cache.get(builder.cache_key(classname, attempt=attempt, mode=mode))
        if hit is not None:
            reading = read_answer(hit.text, builder.config.max_chars)
            if reading.items:
                return reading, mode
    return None


@dataclass(frozen=True)
class Reply:
    """One chat call's answer text (None with a problem when there is none) and token usage."""

    text: str | None
    problem: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def commit_answer(cache: RequestCache, builder: RequestBuilder, classname: str, *,
                  attempt: int, mode: str, reply: Reply) -> None:
    cache.put(builder.cache_key(classname, attempt=attempt, mode=mode), reply.text,
              provider=PROVIDER_NAME, model=builder.config.model, classname=classname,
              attempt=attempt, mode=mode, prompt_tokens=reply.prompt_tokens,
              completion_tokens=reply.completion_tokens)


# -- one chat call ------------------------------------------------------------------------------
class ChatClient:
    """The openai client of one run: sends chat calls, counts HTTP requests (the client's
    retries included), and turns failures into redacted RequestFailed reasons."""

    def __init__(self, config: OpenAIConfig):
        from openai import DefaultHttpxClient, OpenAI

        key = read_api_key(config)  # raises (before anything is sent) if the key is missing
        self._secret = key if key != PLACEHOLDER_KEY else None  # only to redact it; never logged
        self._timeout = config.timeout
        self._max_retries = config.max_retries
        self._server = server_url(config) or OPENAI_API_URL
        self._lock = threading.Lock()  # the counter is bumped from every worker thread
        self._requests = 0
        http = DefaultHttpxClient(timeout=config.timeout, event_hooks={"request": [self._count]})
        self._client = OpenAI(base_url=client_url(config), api_key=key, timeout=config.timeout,
                              max_retries=config.max_retries, http_client=http)

    def __repr__(self) -> str:  # never show the key
        return f"ChatClient(server={self._server!r})"

    def _count(self, request) -> None:
        with self._lock:
            self._requests += 1

    @property
    def requests_sent(self) -> int:
        with self._lock:
            return self._requests

    def redact(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            return text.replace(self._secret, "<redacted>")
        return text

    def send(self, kwargs: dict[str, Any]) -> Reply:
        """One chat call; a failure (after the client's retries) raises RequestFailed."""
        import openai

        try:
            raw = self._client.chat.completions.with_raw_response.create(**kwargs)
        except openai.APIStatusError as e:
            raise RequestFailed(self._reason(f"HTTP {e.status_code}: {_error_message(e)}"),
                                e.status_code) from None
        except openai.APITimeoutError:  # before APIConnectionError: it is a subclass
            raise RequestFailed(f"timed out after {self._timeout:g} s "
                                f"(max_retries={self._max_retries})", None) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise RequestFailed(self._reason(
                f"cannot connect to {self._server} ({type(cause).__name__}: {cause})"), None) from None
        return _reply(raw)

    def _reason(self, text: str) -> str:
        return printable(self.redact(str(text)))  # redact first: truncation could split the key

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reply(raw) -> Reply:
    try:
        resp = raw.parse()
        choices = getattr(resp, "choices", None) or []
    except Exception:  # a 200 whose body is not a chat completion: an unusable answer
        return Reply(None, "the reply is not a chat completion")
    usage = getattr(resp, "usage", None)
    tokens = {"prompt_tokens": getattr(usage, "prompt_tokens", None),
              "completion_tokens": getattr(usage, "completion_tokens", None)}
    if not choices:
        return Reply(None, "no choices in the reply", **tokens)
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if not content and getattr(message, "refusal", None):
        return Reply(None, "the model refused", **tokens)
    if not isinstance(content, str):
        return Reply(None, "empty answer", **tokens)
    return Reply(content, None, **tokens)


def _error_message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(err, "message", "") or err)
