"""The `openai` describe provider against a real local HTTP server (tests/fake_llm_server.py).

No network: every server listens on 127.0.0.1, port 0. Timeouts and retries are capped so the
whole file runs in seconds.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_llm_server import FakeLLMServer  # noqa: E402

from drm.base.errors import DescriptionsError  # noqa: E402
from drm.describe import DescribeContext, load_descriptions, run_describe  # noqa: E402
from drm.describe.cache import RequestCache, request_key  # noqa: E402
from drm.describe.config import DescribeConfig, OpenAIConfig, format_prompt  # noqa: E402
from drm.describe.openai import OpenAIProvider  # noqa: E402
from drm.describe.openai.client import PLACEHOLDER_KEY, safe_url  # noqa: E402
from drm.describe.openai.parse import parse_answer  # noqa: E402
from drm.describe.openai.results import Provenance, RunStats  # noqa: E402

CLASSES = ["cat", "red fox", "oak tree", "fire truck"]
SECRET = "sk-test-DRM-leakcheck-7f3a9c1e5b2d4f60a8e1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_LOG", "DRM_TEST_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve():
    servers = []

    def start(**kwargs) -> FakeLLMServer:
        srv = FakeLLMServer(**kwargs).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def make_cfg(srv, tmp_path, **kw) -> OpenAIConfig:
    base = dict(base_url=srv.url if srv is not None else None, model="fake-model",
                cache_path=str(tmp_path / "cache" / "describe.sqlite"), timeout=3.0,
                max_retries=0, concurrency=4)
    base.update(kw)
    return OpenAIConfig(**base)


def provider(srv, tmp_path, per_class=3, progress=False, **kw) -> OpenAIProvider:
    return OpenAIProvider(make_cfg(srv, tmp_path, **kw), per_class=per_class, base_dir=tmp_path,
                          progress=progress)


def context(names, tmp_path) -> DescribeContext:
    return DescribeContext(classnames=names, base_dir=tmp_path, progress=False)


def is_plain(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


def expected(name, n=3):
    return [f"A {name} has visual trait number {i + 1}." for i in range(n)]


# ------------------------------------------------------------------------------------------
# happy paths and server styles
# ------------------------------------------------------------------------------------------
def test_happy_path_json_schema(serve, tmp_path):
    srv = serve(style="json_schema")
    res = provider(srv, tmp_path, domain_hint="The images are sketches.").describe(CLASSES)
    assert res.descriptions == {c: expected(c) for c in CLASSES}
    assert srv.count == len(CLASSES)
    assert sorted(srv.classes_requested()) == sorted(CLASSES)
    body = srv.requests[0]["body"]
    assert body["model"] == "fake-model"
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["descriptions"] == {"type": "array", "items": {"type": "string"}}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]
    assert "background" in body["messages"][0]["content"]
    assert "The images are sketches." in body["messages"][1]["content"]
    assert "List 3 " in body["messages"][1]["content"]
    assert "n" not in body  # many servers ignore n: one answer carries the whole list
    prov = res.provenance
    assert prov["provider"] == "openai" and prov["model"] == "fake-model"
    assert prov["base_url"] == srv.url
    assert len(prov["prompt_sha256"]) == 64
    assert prov["output_mode"] == "auto" and prov["output_mode_used"] == "json_schema"
    assert prov["per_class"] == 3 and prov["shortfalls"] == {}
    stats = res.stats
    assert stats["requests"] == len(CLASSES) and stats["cache_hits"] == 0
    assert stats["tokens"]["prompt"] > 0 and stats["tokens"]["completion"] > 0
    assert stats["failures"] == {} and res.rejected == {}
    # what a run did never lands in the provenance (the descriptions file)
    assert not set(prov) & set(RunStats.__dataclass_fields__)
    assert set(prov) == set(Provenance.__dataclass_fields__)


@pytest.mark.parametrize("style,mode,probes", [
    ("json_object", "json_object", 1),  # json_schema refused once, then json_object
    ("text_only", "text", 2),           # both JSON modes refused once, then plain text
    ("fenced", "json_schema", 0),       # server ignores response_format, answers in ```json
    ("bullets", "json_schema", 0),      # server ignores response_format, answers a list
])
def test_server_styles(serve, tmp_path, style, mode, probes):
    srv = serve(style=style)
    p = provider(srv, tmp_path)
    res = p.describe(CLASSES)
    assert res.descriptions == {c: expected(c) for c in CLASSES}
    # the working mode is found once per provider, not once per class
    assert srv.count == len(CLASSES) + probes
    assert res.provenance["output_mode_used"] == mode
    assert res.stats["requests"] == srv.count
    srv.reset()
    res2 = p.describe(CLASSES + ["owl"])  # the same provider remembers the working mode
    assert srv.count == 1 and srv.classes_requested() == ["owl"]
    assert res2.descriptions["owl"] == expected("owl")


def test_explicit_mode_uses_only_that_mode(serve, tmp_path):
    srv = serve(style="json_object")
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, output_mode="json_schema", concurrency=1).describe(["cat"])
    assert "'cat'" in str(ei.value) and "HTTP 400" in str(ei.value)
    assert srv.count == 1
    assert all(r["body"]["response_format"]["type"] == "json_schema" for r in srv.requests)

    srv2 = serve(style="bullets")
    res = provider(srv2, tmp_path / "t", output_mode="text").describe(["cat"])
    assert res.descriptions["cat"] == expected("cat")
    assert "response_format" not in srv2.requests[0]["body"]
    assert res.provenance["output_mode_used"] == "text"


def test_output_mode_is_settled_before_the_pool_starts(serve, tmp_path):
    """auto: the first class's request goes alone (json_schema refused, json_object accepted);
    only then do the workers start, every one in json_object."""
    srv = serve(style="json_object", latency=0.02)
    names = [f"class {i}" for i in range(12)]
    res = provider(srv, tmp_path, concurrency=6).describe(names)
    assert res.descriptions == {n: expected(n) for n in names}
    formats = [r["body"]["response_format"]["type"] for r in srv.requests]
    assert formats == ["json_schema"] + ["json_object"] * len(names)
    assert srv.classes_requested()[:2] == ["class 0", "class 0"]
    assert srv.max_in_flight > 1  # the rest did run in parallel


def test_a_probe_that_fails_otherwise_moves_on_to_the_next_class(serve, tmp_path):
    """A server error on the first class says nothing about the output mode: the next class
    probes, and the failure is reported for the first."""
    srv = serve(style="json_object", status_fn=lambda name, body, i: 500 if name == "cat" else None)
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, concurrency=4).describe(CLASSES)
    assert set(ei.value.failures) == {"cat"} and "HTTP 500" in str(ei.value)
    formats = [r["body"]["response_format"]["type"] for r in srv.requests]
    assert formats[:3] == ["json_schema", "json_schema", "json_object"]  # cat, then red fox
    assert formats[3:] == ["json_object"] * (len(CLASSES) - 2)


# ------------------------------------------------------------------------------------------
# HTTP failures: the client's own retries, then a clear error
# ------------------------------------------------------------------------------------------
def test_429_then_success(serve, tmp_path):
    srv = serve(statuses=[429])
    res = provider(srv, tmp_path, max_retries=2, concurrency=1).describe(["cat"])
    assert res.descriptions["cat"] == expected("cat")
    assert [r["status"] for r in srv.requests] == [429, 200]
    assert res.stats["requests"] == 2 and res.stats["failures"] == {}


def test_500_on_every_try_names_class_and_keeps_received_answers(serve, tmp_path):
    srv = serve(status_fn=lambda name, body, i: 500 if name == "red fox" else None)
    p = provider(srv, tmp_path, max_retries=1, concurrency=2)
    with pytest.raises(DescriptionsError) as ei:
        p.describe(CLASSES)
    msg = str(ei.value)
    assert "'red fox'" in msg and "HTTP 500" in msg and "max_retries=1" in msg
    assert "cat" not in ei.value.failures
    assert set(ei.value.failures) == {"red fox"}
    fox = [r for r in srv.requests if "red fox" in r["body"]["messages"][1]["content"]]
    assert len(fox) == 2  # one try + one client retry
    # every answer received was committed: a rerun (server healthy) asks only for the fox
    with RequestCache(p.cache_path) as cache:
        assert len(cache) == 3
    # rerun once the server is healthy again
    srv.status_fn = None
    srv.reset()
    res = provider(srv, tmp_path).describe(CLASSES)
    assert srv.classes_requested() == ["red fox"]
    assert res.descriptions == {c: expected(c) for c in CLASSES}


def test_500_server_wide_stops_after_max_failures(serve, tmp_path):
    srv = serve(always_status=503)
    names = [f"class {i}" for i in range(20)]
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, concurrency=1, max_failures=3).describe(names)
    assert "HTTP 503" in str(ei.value) and "were not requested" in str(ei.value)
    assert srv.count == 3


def test_401_stops_at_once_with_a_key_hint(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    srv = serve(always_status=401)
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, concurrency=1).describe(CLASSES)
    assert srv.count == 1
    assert "HTTP 401" in str(ei.value) and "$OPENAI_API_KEY" in str(ei.value)


def test_hanging_server_times_out_quickly(serve, tmp_path):
    srv = serve(hang=True)
    t0 = time.monotonic()
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, timeout=0.5, max_retries=1, concurrency=1).describe(["cat"])
    took = time.monotonic() - t0
    assert took < 6, took
    assert "'cat'" in str(ei.value) and "timed out after 0.5 s" in str(ei.value)
    assert srv.count == 2  # one try + one retry


def test_unreachable_server(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_cfg(None, tmp_path, base_url=f"http://127.0.0.1:{port}/v1", timeout=1.0)
    with pytest.raises(DescriptionsError) as ei:
        OpenAIProvider(cfg, per_class=2, base_dir=tmp_path, progress=False).describe(["cat"])
    assert "'cat'" in str(ei.value) and "cannot connect" in str(ei.value)


# ------------------------------------------------------------------------------------------
# untrusted answers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content,problem", [
    ('{"descriptions": ["A cat has', "malformed JSON"),
    ("", "empty answer"),
    ('{"answer": 42}', "without a \"descriptions\" key"),
    ('{"descriptions": [1, 2, {"x": 3}]}', "JSON list without strings"),
    ("```json\n```", "empty code block"),
    ('{"descriptions": ["   ", "\\u0000\\u0001"]}', "no usable descriptions"),
    ('{"descriptions": ["<script>alert(1)</script>", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa"]}',
     "every description was rejected: '<script>alert(1)</script>' (markup tag), 'aaaa"),
    ('{"\\u001b[2J": 1}', "keys: '\\x1b[2J'"),
    (b"this is not a chat completion", "not a chat completion"),
])
def test_bad_answers_fail_after_bounded_attempts(serve, tmp_path, content, problem):
    srv = serve(content_fn=lambda name, n, body, i: content)
    p = provider(srv, tmp_path, max_attempts=3)
    with pytest.raises(DescriptionsError) as ei:
        p.describe(["cat", "dog"])
    msg = str(ei.value)
    assert "'cat'" in msg and "'dog'" in msg and "no valid descriptions after 3 attempt" in msg
    assert problem in msg
    assert srv.count == 6  # 3 attempts per class, then give up
    assert set(ei.value.failures) == {"cat", "dog"}
    assert ei.value.stats["failures"].keys() == {"cat", "dog"}
    assert is_plain(msg)
    with RequestCache(p.cache_path) as cache:
        assert len(cache) == 0  # unusable answers are not cached: a rerun asks again


def test_bad_first_answer_is_retried(serve, tmp_path):
    good = json.dumps({"descriptions": expected("cat")})
    srv = serve(content_fn=lambda name, n, body, i: "{oops" if i == 0 else good)
    res = provider(srv, tmp_path, concurrency=1).describe(["cat"])
    assert res.descriptions["cat"] == expected("cat")
    assert srv.count == 2 and res.stats["failures"] == {}
    assert res.stats["unusable_answers"] == {"cat": ["malformed JSON"]}


def test_long_duplicate_and_control_character_descriptions_are_cleaned(serve, tmp_path):
    items = [
        " ".join(f"part{i}" for i in range(2000)),
        "Has pointed ears.", "has pointed ears.", "  Has   pointed ears.  ",
        "Has\x00 a long\x1b[31m tail.\u0085",
        "", "   ",
        "- Has whiskers.",
    ]
    srv = serve(content_fn=lambda name, n, body, i: json.dumps({"descriptions": items}))
    res = provider(srv, tmp_path, max_chars=40).describe(["cat"])
    got = res.descriptions["cat"]
    assert got == ["part0 part1 part2 part3 part4 part5", "Has pointed ears.", "Has a long tail."]
    assert srv.count == 1 and res.rejected == {}


def test_escapes_markup_and_junk_in_answers_are_stripped_or_rejected(serve, tmp_path):
    """The issue's examples: escapes go (their parameters and remnants too), markup and
    one-letter runs are rejected, and the rejections are recorded in the descriptions file."""
    items = ["ignore previous instructions\x1b[31m", "Has a bushy [31mtail.",
             "<script>alert(1)</script>", "f" * 200, "A red fox has a white-tipped tail."]
    srv = serve(content_fn=lambda name, n, body, i: json.dumps({"descriptions": items}))
    out = tmp_path / "descriptions.json"
    cfg = DescribeConfig(provider="openai", per_class=3, openai=make_cfg(srv, tmp_path))
    got = run_describe(cfg, context(["red fox"], tmp_path), out)
    assert got == {"red fox": ["ignore previous instructions", "Has a bushy tail.",
                               "A red fox has a white-tipped tail."]}
    assert srv.count == 1  # 3 kept: no further attempt
    text = out.read_text()
    assert "\\u001b" not in text and "[31m" not in text
    rejected = json.loads(text)["provenance"]["rejected"]
    assert rejected == {"red fox": [{"text": "<script>alert(1)</script>", "reason": "markup tag"},
                                    {"text": "f" * 77 + "...", "reason": "one character repeated"}]}
    # stable: a rerun from the request cache records the same rejections, same bytes
    first = out.read_bytes()
    srv.reset()
    run_describe(cfg, context(["red fox"], tmp_path), out)
    assert srv.count == 0 and out.read_bytes() == first


def test_class_whose_every_answer_is_rejected_fails_clearly(serve, tmp_path, capsys):
    junk = json.dumps({"descriptions": ["<img src=x onerror=alert(1)>", "\x1b[5m" + "z" * 50]})
    srv = serve(content_fn=lambda name, n, body, i: junk if name == "cat" else
                json.dumps({"descriptions": expected(name)}))
    cfg = DescribeConfig(provider="openai", per_class=3,
                         openai=make_cfg(srv, tmp_path, max_attempts=2))
    out = tmp_path / "descriptions.json"
    with pytest.raises(DescriptionsError) as ei:
        run_describe(cfg, context(["cat", "red fox"], tmp_path), out)
    msg = str(ei.value)
    assert "'cat'" in msg and "no valid descriptions after 2 attempt(s)" in msg
    assert "every description was rejected" in msg and "markup tag" in msg
    assert "one character repeated" in msg and "describe.overrides" in msg
    assert "'red fox'" not in msg and is_plain(msg) and "\x1b" not in msg
    assert not out.exists()  # no silently incomplete file
    assert is_plain(capsys.readouterr().err.replace("\r", ""))


def test_server_error_text_is_shown_as_plain_text(serve, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    nasty = " \x1b[2J\x1b]0;pwned\x07\u202e"
    srv = serve(style="json_object", error_text=nasty,
                status_fn=lambda name, body, i: 500 if name == "dog" else None)
    with pytest.raises(DescriptionsError) as ei:
        provider(srv, tmp_path, concurrency=1).describe(["cat", "dog"])
    msg = str(ei.value)
    assert "HTTP 500" in msg and "\\x1b[2J" in msg and is_plain(msg)
    warning = next(r.getMessage() for r in caplog.records if "rejected output mode" in r.getMessage())
    assert "\\x1b[2J" in warning and is_plain(warning)


def test_shortfall_repeats_bounded_and_is_recorded(serve, tmp_path):
    # one (the same) description per answer: 3 attempts, still 1 -> shortfall of 2
    same = serve(content_fn=lambda name, n, body, i: json.dumps({"descriptions": ["It is round."]}))
    res = provider(same, tmp_path, max_attempts=3).describe(["ball"])
    assert res.descriptions["ball"] == ["It is round."]
    assert same.count == 3
    assert res.provenance["shortfalls"] == {"ball": 2} and res.stats["failures"] == {}
    # a different description per answer: repeats fill the quota
    varied = serve(content_fn=lambda name, n, body, i: f"- Trait {i}.")
    res = provider(varied, tmp_path / "v", max_attempts=3, concurrency=1).describe(["ball"])
    assert res.descriptions["ball"] == ["Trait 0.", "Trait 1.", "Trait 2."]
    assert varied.count == 3 and res.provenance["shortfalls"] == {}
    # the repeats are distinct cache entries: a rerun sends nothing and gets the same
    varied.reset()
    res2 = provider(varied, tmp_path / "v").describe(["ball"])
    assert varied.count == 0 and res2.descriptions == res.descriptions


@pytest.mark.parametrize("text,items", [
    ('{"descriptions": ["a", "b"]}', ["a", "b"]),
    ('{"Descriptions": "just one"}', ["just one"]),
    ('["a", "b"]', ["a", "b"]),
    ('Sure!\n```json\n{"descriptions": ["a", "b"]}\n```\nHope it helps.', ["a", "b"]),
    ('```\n["a", "b"]\n```', ["a", "b"]),
    ('Here you go: {"descriptions": ["a"]} done', ["a"]),
    ('{"descriptions": ["a"]} trailing words', ["a"]),
    ("Here are three:\n1. Alpha.\n2) Beta.\n- Gamma.\n* Delta.\n\u2022 Eps.", ["Alpha.", "Beta.", "Gamma.", "Delta.", "Eps."]),
    ("**Bold** preamble\n- **Second** one", ["Second one"]),  # bullets only, bold unwrapped
    ("Line one.\nLine two.", ["Line one.", "Line two."]),
    ("Descriptions:\nLine one.", ["Line one."]),
])
def test_parse_answer_formats(text, items):
    got, problem = parse_answer(text)
    assert got == items and problem is None


# ------------------------------------------------------------------------------------------
# the request cache
# ------------------------------------------------------------------------------------------
def test_second_run_sends_nothing_and_a_new_class_only_its_request(serve, tmp_path):
    srv = serve()
    first = provider(srv, tmp_path).describe(CLASSES)
    assert srv.count == len(CLASSES)
    srv.reset()
    second = provider(srv, tmp_path).describe(CLASSES)
    assert srv.count == 0
    assert second.descriptions == first.descriptions
    assert second.stats["requests"] == 0 and second.stats["cache_hits"] == len(CLASSES)
    assert second.provenance == first.provenance
    third = provider(srv, tmp_path).describe(CLASSES + ["owl"])
    assert srv.count == 1 and srv.classes_requested() == ["owl"]
    assert third.stats["cache_hits"] == len(CLASSES)


def test_cache_key_covers_what_shapes_an_answer(serve, tmp_path):
    srv = serve()
    provider(srv, tmp_path).describe(["cat"])
    for change in (dict(temperature=0.1), dict(model="other"), dict(domain_hint="Sketches."),
                   dict(system_prompt="Be brief."), dict(seed=1), dict(top_p=0.5),
                   dict(output_mode="json_object")):
        srv.reset()
        provider(srv, tmp_path, **change).describe(["cat"])
        assert srv.count == 1, change
    srv.reset()
    provider(srv, tmp_path, per_class=4).describe(["cat"])  # count requested
    assert srv.count == 1
    srv.reset()
    provider(srv, tmp_path).describe(["cat"])  # the original settings: still cached
    assert srv.count == 0
    assert request_key(a=1, attempt=0) != request_key(a=1, attempt=1)
    assert request_key(a=1, b=2) == request_key(b=2, a=1)


def test_cache_is_wal_and_safe_under_concurrent_writes(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = RequestCache(path)

    def work(t):
        for i in range(50):
            cache.put(f"k{t}-{i}", f"text {t} {i}", provider="openai", model="m",
                      classname=f"c{i}", attempt=0, mode="text")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other = RequestCache(path)  # a second connection (another process would do the same)
    other.put("x", "y", provider="openai", model="m", classname="c", attempt=0, mode="text")
    assert len(cache) == 401 and cache.get("k3-7").text == "text 3 7"
    cache.close()
    other.close()
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_killed_run_resumes_from_the_cache(serve, tmp_path):
    srv = serve(latency=0.05)
    names = [f"class {i}" for i in range(40)]
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from drm.describe.config import OpenAIConfig
        from drm.describe.openai import OpenAIProvider
        cfg = OpenAIConfig(base_url={srv.url!r}, model="fake-model",
                           cache_path={str(tmp_path / 'c.sqlite')!r},
                           concurrency=2, max_retries=0)
        OpenAIProvider(cfg, per_class=3, progress=False).describe({names!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while srv.count < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait()
    sent_before = srv.count
    assert 10 <= sent_before < len(names)
    with RequestCache(tmp_path / "c.sqlite") as cache:
        committed = len(cache)
    assert committed >= sent_before - 2  # at most the in-flight answers are lost
    srv.reset()
    p = OpenAIProvider(make_cfg(srv, tmp_path, cache_path=str(tmp_path / "c.sqlite")), per_class=3,
                       progress=False)
    res = p.describe(names)
    assert srv.count == len(names) - committed
    assert res.descriptions == {n: expected(n) for n in names}


def test_concurrency_is_bounded(serve, tmp_path):
    srv = serve(latency=0.05)
    names = [f"class {i}" for i in range(24)]
    t0 = time.monotonic()
    provider(srv, tmp_path, concurrency=4).describe(names)
    took = time.monotonic() - t0
    assert srv.max_in_flight <= 4
    assert srv.max_in_flight >= 2
    assert took < 24 * 0.05  # faster than one at a time


def test_progress_bar_follows_the_context_and_summary_on_stderr(serve, tmp_path, capsys):
    srv = serve()
    cfg = DescribeConfig(provider="openai", per_class=3, openai=make_cfg(srv, tmp_path))
    on = DescribeContext(classnames=CLASSES, base_dir=tmp_path, progress=True)
    OpenAIProvider.from_config(cfg, on).describe(CLASSES)
    err = capsys.readouterr().err
    assert "4/4" in err  # the tqdm bar
    OpenAIProvider.from_config(cfg, context(CLASSES, tmp_path / "b")).describe(["owl"])
    err = capsys.readouterr().err
    assert "1/1" not in err
    assert "1 request(s) sent, 0 cache hit(s)" in err and "0 failure(s)" in err


# ------------------------------------------------------------------------------------------
# the API key
# ------------------------------------------------------------------------------------------
def test_missing_key_for_openai_is_an_actionable_error(tmp_path):
    cfg = make_cfg(None, tmp_path, api_key_env="DRM_TEST_KEY")
    p = OpenAIProvider(cfg, per_class=2, base_dir=tmp_path, progress=False)
    with pytest.raises(DescriptionsError) as ei:
        p.describe(["cat"])
    assert "DRM_TEST_KEY" in str(ei.value) and "export" in str(ei.value)
    assert not (tmp_path / "cache").exists()  # failed before anything happened


def test_rerun_from_the_cache_needs_no_key(tmp_path):
    # the OpenAI API (base_url null), no key: fine as long as the cache answers everything
    p = OpenAIProvider(make_cfg(None, tmp_path), per_class=3, base_dir=tmp_path, progress=False)
    answer = json.dumps({"descriptions": expected("cat")})
    with RequestCache(p.cache_path) as cache:  # as a committed cache from an earlier run
        cache.put(p.requests.cache_key("cat", attempt=0, mode="json_schema"), answer,
                  provider="openai", model="fake-model", classname="cat", attempt=0,
                  mode="json_schema")
    res = p.describe(["cat"])
    assert res.descriptions == {"cat": expected("cat")} and res.stats["requests"] == 0
    assert res.provenance["base_url"] is None
    with pytest.raises(DescriptionsError, match="OPENAI_API_KEY is not set"):
        p.describe(["cat", "dog"])  # a request is needed, so is the key


def test_keyless_local_server_gets_a_placeholder(serve, tmp_path):
    srv = serve()
    provider(srv, tmp_path).describe(["cat"])
    assert srv.requests[0]["headers"]["authorization"] == f"Bearer {PLACEHOLDER_KEY}"


def test_api_key_never_leaks(serve, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # the openai/httpx loggers included
    srv = serve(style="json_object", echo_auth=True,  # echoes the key in error messages
                status_fn=lambda name, body, i: 500 if name == "dog" else None)
    names = ["cat", "red fox"]
    cfg = make_cfg(srv, tmp_path, max_retries=1)
    dcfg = DescribeConfig(provider="openai", per_class=3, openai=cfg)
    out = tmp_path / "descriptions.json"
    ctx = context(names, tmp_path)
    run_describe(dcfg, ctx, out)
    # the key was really used, and the fallback error (which echoed it) was logged
    assert srv.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert any("rejected output mode json_schema" in r.getMessage() for r in caplog.records)
    # a failing run: the server echoes the key in its 500 error body
    with pytest.raises(DescriptionsError) as ei:
        run_describe(dcfg, context(names + ["dog"], tmp_path), out)
    assert "HTTP 500" in str(ei.value) and "<redacted>" in str(ei.value)
    assert SECRET not in str(ei.value) and SECRET not in repr(ei.value.stats)
    p = OpenAIProvider.from_config(dcfg, ctx)
    assert SECRET not in repr(p) and SECRET not in p.dry_run(names)
    # nowhere on disk
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert out in written and any(f.name.startswith("describe.sqlite") for f in written)
    for f in written:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in json.dumps(json.loads(out.read_text()))
    # no log line, no output
    assert caplog.records
    for rec in caplog.records:
        assert SECRET not in rec.getMessage(), rec.name
        assert SECRET not in str(rec.args) and SECRET not in str(rec.__dict__), rec.name
    assert SECRET not in caplog.text
    captured = capsys.readouterr()
    assert SECRET not in captured.out and SECRET not in captured.err
    assert "request(s) sent" in captured.err


def test_safe_url_drops_credentials():
    assert safe_url("http://user:pw@host:8000/v1?key=abc#x") == "http://host:8000/v1"
    assert safe_url(None) is None


# ------------------------------------------------------------------------------------------
# dry run
# ------------------------------------------------------------------------------------------
def test_dry_run_sends_nothing_and_counts_requests(serve, tmp_path):
    srv = serve()
    p = provider(srv, tmp_path)
    text = p.dry_run(CLASSES)
    assert srv.count == 0
    assert not p.cache_path.exists()  # a dry run creates nothing
    assert "nothing is sent" in text
    assert f"{len(CLASSES)} class(es) -> {len(CLASSES)} request(s)" in text
    assert "fire truck" in text and "tokens (est.)" in text
    provider(srv, tmp_path).describe(CLASSES[:3])
    srv.reset()
    plan = p.plan(CLASSES)
    assert plan.requests_min == 1 and list(plan.to_request) == ["fire truck"]
    assert plan.requests_max == 3 and len(plan.cached) == 3
    assert plan.prompt_tokens > 0 and plan.completion_tokens > 0
    text = p.dry_run(CLASSES)
    assert "1 class(es) -> 1 request(s)" in text
    assert srv.count == 0
    provider(srv, tmp_path).describe(CLASSES)
    assert "0 requests" in p.dry_run(CLASSES)


def test_dry_run_reports_a_missing_key_without_failing(tmp_path):
    p = OpenAIProvider(make_cfg(None, tmp_path), per_class=2, base_dir=tmp_path, progress=False)
    text = p.dry_run(["cat"])
    assert "$OPENAI_API_KEY is NOT set" in text and "api.openai.com" in text


# ------------------------------------------------------------------------------------------
# the describe stage
# ------------------------------------------------------------------------------------------
def test_run_describe_end_to_end(serve, tmp_path):
    srv = serve()
    cfg = DescribeConfig(provider="openai", per_class=3, openai=OpenAIConfig(
        base_url=srv.url, model="fake-model", cache_path="cache/describe.sqlite",
        max_retries=0, timeout=3))
    out = tmp_path / "descriptions.json"
    ctx = context(CLASSES, tmp_path)
    got = run_describe(cfg, ctx, out)
    assert got == {c: expected(c) for c in CLASSES}
    assert (tmp_path / "cache" / "describe.sqlite").exists()  # relative to base_dir
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["classnames"] == CLASSES
    prov = doc["provenance"]
    assert prov["provider"] == "openai" and prov["model"] == "fake-model"
    assert prov["base_url"] == srv.url and prov["output_mode_used"] == "json_schema"
    assert prov["counts"] == {c: 3 for c in CLASSES}
    assert load_descriptions(out, CLASSES) == got
    srv.reset()
    run_describe(cfg, ctx, out)
    assert srv.count == 0


def test_rerun_from_the_request_cache_leaves_the_descriptions_file_untouched(serve, tmp_path):
    """Issue "Reproduction": a rerun answered wholly from the request cache gives the same
    descriptions, so data/descriptions.json keeps its bytes and its mtime; what the run did
    (0 requests, all cache hits) is in the sidecar only."""
    srv = serve(style="json_object")  # a mode fallback too: answers_by_mode must be stable
    cfg = DescribeConfig(provider="openai", per_class=3, openai=make_cfg(srv, tmp_path))
    out = tmp_path / "descriptions.json"
    sidecar = tmp_path / "descriptions.run.json"
    run_describe(cfg, context(CLASSES, tmp_path), out)
    first = json.loads(sidecar.read_text())
    assert first["requests"] == len(CLASSES) + 1 and first["cache_hits"] == 0
    assert first["descriptions_file"] == "written"
    before = out.read_bytes()
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))  # an old mtime: any rewrite would show
    srv.reset()
    run_describe(cfg, context(CLASSES, tmp_path), out)  # a new provider, as a new process
    assert srv.count == 0
    assert out.read_bytes() == before and out.stat().st_mtime_ns == 1_000_000_000
    second = json.loads(sidecar.read_text())
    assert second["requests"] == 0 and second["calls"] == 0
    assert second["cache_hits"] == len(CLASSES) and second["descriptions_file"] == "unchanged"
    assert second["provider"] == "openai" and "finished" in second
    prov = json.loads(before)["provenance"]
    assert not set(prov) & set(RunStats.__dataclass_fields__)
    assert prov["output_mode_used"] == "json_object" and prov["counts"] == {c: 3 for c in CLASSES}


def test_overridden_classes_are_not_requested(serve, tmp_path):
    srv = serve()
    (tmp_path / "over.json").write_text(json.dumps({"cat": ["A small feline."]}))
    cfg = DescribeConfig(provider="openai", per_class=3, overrides="over.json",
                         openai=make_cfg(srv, tmp_path))
    got = run_describe(cfg, context(CLASSES, tmp_path), tmp_path / "d.json")
    assert "cat" not in srv.classes_requested() and srv.count == len(CLASSES) - 1
    assert got["cat"] == ["A small feline."]


def test_config_validation():
    with pytest.raises(ValueError):
        OpenAIConfig(prompt="Describe {thing}")
    with pytest.raises(ValueError):
        OpenAIConfig(prompt="Describe a {classname} as JSON: {\"descriptions\": []}")
    with pytest.raises(ValueError):
        OpenAIConfig(api_key="sk-...")  # the key is never a parameter
    with pytest.raises(ValueError):
        OpenAIConfig(max_chars=301)  # over the cap the stage applies to every description
    with pytest.raises(ValueError):
        OpenAIConfig(progress=False)  # a runtime setting: DescribeContext.progress
    assert format_prompt("{n} {classname}{domain}", 2, "cat", None) == "2 cat"
    assert format_prompt("{n} {classname}{domain}", 2, "cat", "Hint.") == "2 cat Hint."
