"""A fake OpenAI-compatible chat server for tests and benchmarks (no network: 127.0.0.1, port 0).

    with FakeLLMServer(style="json_schema") as srv:
        OpenAI(base_url=srv.url, api_key="x").chat.completions.create(...)
        srv.count   # chat requests received (every HTTP attempt, retries included)

`style` says how the server answers a well-formed request:
  json_schema  accepts every response_format; answers {"descriptions": [...]} as JSON
  json_object  answers like json_schema but rejects response_format json_schema with 400
  text_only    rejects any response_format with 400; answers a plain bullet list
  fenced       ignores response_format; answers JSON inside a ```json code fence
  bullets      ignores response_format; answers a numbered/bulleted plain-text list

`content_fn(classname, n, body, index) -> str` overrides the answer text; `statuses` is a list
of HTTP statuses to return (one per request, in order) before answering normally;
`always_status` fails every request; `status_fn(classname, body, index) -> int | None` picks a
status per request (None or 200: answer normally); `hang` makes every request wait (until
`stop`); `echo_auth` copies the Authorization header into error messages (a careless server);
`error_text` is appended to every error message (e.g. terminal escapes: untrusted text).
`max_in_flight` is the most requests the server was handling at once.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

_CLASS_RE = re.compile(r"describing core visual features of an? (.+?) that distinguish", re.S)
_N_RE = re.compile(r"\bList (\d+)\b")


def classname_of(body: dict) -> str:
    """The class name a request asks about (default prompt template), else the whole message."""
    text = user_message(body)
    m = _CLASS_RE.search(text)
    return m.group(1) if m else text


def count_of(body: dict) -> int:
    m = _N_RE.search(user_message(body))
    return int(m.group(1)) if m else 3


def user_message(body: dict) -> str:
    for msg in body.get("messages", []):
        if msg.get("role") == "user":
            return str(msg.get("content", ""))
    return ""


def default_sentences(classname: str, n: int) -> list[str]:
    return [f"A {classname} has visual trait number {i + 1}." for i in range(n)]


class FakeLLMServer:
    def __init__(self, style: str = "json_schema", *, latency: float = 0.0,
                 content_fn: Callable[[str, int, dict, int], str] | None = None,
                 statuses: list[int] | None = None, always_status: int | None = None,
                 status_fn: Callable[[str, dict, int], int | None] | None = None,
                 hang: bool = False, usage: bool = True, echo_auth: bool = False,
                 error_text: str = ""):
        if style not in ("json_schema", "json_object", "text_only", "fenced", "bullets"):
            raise ValueError(f"unknown style {style!r}")
        self.style = style
        self.latency = latency
        self.content_fn = content_fn
        self.statuses = list(statuses or [])
        self.always_status = always_status
        self.hang = hang
        self.usage = usage
        self.status_fn = status_fn
        self.echo_auth = echo_auth
        self.error_text = error_text
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []  # {"body", "headers", "status"}
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "FakeLLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else ~40 ms per keep-alive request (delayed ACK)

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # GET /_stats: counters, for a server in another process
                if self.path != "/_stats":
                    self.send_error(404)
                    return
                with server.lock:
                    stats = {"count": len(server.requests), "max_in_flight": server.max_in_flight}
                data = json.dumps(stats).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload = server._respond(
                    self.path, raw, {k.lower(): v for k, v in self.headers.items()})
                if status is None:  # hang: the client gives up; answer nothing
                    self.close_connection = True
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if status >= 400:
                        self.send_header("Retry-After-Ms", "10")  # keep client backoff short
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def classes_requested(self) -> list[str]:
        with self.lock:
            return [classname_of(r["body"]) for r in self.requests if r["body"] is not None]

    # -- behaviour ---------------------------------------------------------------------------
    def _respond(self, path: str, raw: bytes, headers: dict) -> tuple[int | None, Any]:
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        with self.lock:
            index = len(self.requests)
            record = {"body": body, "headers": headers, "status": None}
            self.requests.append(record)
            planned = self.statuses.pop(0) if self.statuses else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)
            if self.hang:
                self._stop.wait(30)
                return None, None
            if planned is None and self.status_fn is not None and body is not None:
                planned = self.status_fn(classname_of(body), body, index)
            status, payload = self._answer(path, body, planned, index)
            if status >= 400 and isinstance(payload, dict):
                if self.echo_auth:
                    payload["error"]["message"] += f" (you sent {headers.get('authorization')})"
                payload["error"]["message"] += self.error_text
            record["status"] = status
            return status, payload
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, path: str, body: dict | None, planned: int | None, index: int):
        if not path.rstrip("/").endswith("/chat/completions"):
            return 404, _error(f"no route {path}", "not_found")
        if body is None:
            return 400, _error("request body is not JSON", "invalid_request_error")
        if self.always_status is not None:
            return self.always_status, _error(f"simulated HTTP {self.always_status}", "server_error")
        if planned is not None and planned != 200:
            return planned, _error(f"simulated HTTP {planned}", "rate_limit" if planned == 429 else "server_error")
        fmt = (body.get("response_format") or {}).get("type")
        if self.style == "json_object" and fmt == "json_schema":
            return 400, _error("response_format json_schema is not supported", "invalid_request_error")
        if self.style == "text_only" and fmt in ("json_schema", "json_object"):
            return 400, _error(f"response_format {fmt} is not supported", "invalid_request_error")
        classname, n = classname_of(body), count_of(body)
        if self.content_fn is not None:
            content = self.content_fn(classname, n, body, index)
        else:
            sentences = default_sentences(classname, n)
            if self.style in ("json_schema", "json_object"):
                content = json.dumps({"descriptions": sentences})
            elif self.style == "fenced":
                content = "Sure! Here you go:\n```json\n" + json.dumps({"descriptions": sentences}, indent=2) + "\n```"
            else:
                content = "Here are the descriptions:\n" + "\n".join(
                    f"{i + 1}. {s}" if i % 2 else f"- {s}" for i, s in enumerate(sentences))
        if isinstance(content, bytes):  # raw body override (e.g. not even JSON)
            return 200, content
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        out = {
            "id": f"chatcmpl-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
        }
        if self.usage:
            p, c = prompt_chars // 4, len(content or "") // 4
            out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        return 200, out


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def main() -> None:
    """Serve until killed, in its own process: prints the base URL on the first line."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="fake OpenAI-compatible chat server (127.0.0.1)")
    ap.add_argument("--style", default="json_schema")
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    srv = FakeLLMServer(style=args.style, latency=args.latency).start()
    print(srv.url, flush=True)
    try:
        sys.stdin.read()  # until stdin closes (the parent exits or closes it)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
