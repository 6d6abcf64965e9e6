#!/usr/bin/env python
"""Benchmark the `openai` describe provider against the fake local server (no network).

    python scripts/bench_describe_openai.py [--classes 1000] [--concurrency 16] [--latency 0.02]
                                            [--in-process]

Starts tests/fake_llm_server.py on 127.0.0.1 with an artificial per-request latency (in its own
process by default, so that the server does not compete with the client for the GIL),
describes N synthetic class names, then runs again to show that the request cache answers
everything (0 requests).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from drm.describe.config import OpenAIConfig  # noqa: E402
from drm.describe.openai import OpenAIProvider  # noqa: E402


class _Server:
    """The fake server, in this process or in a child process; .url and .stats()."""

    def __init__(self, latency: float, in_process: bool):
        self.proc = self.srv = None
        if in_process:
            from fake_llm_server import FakeLLMServer

            self.srv = FakeLLMServer(latency=latency).start()
            self.url = self.srv.url
        else:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "fake_llm_server.py"), "--latency", str(latency)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.url = self.proc.stdout.readline().strip()

    def stats(self) -> dict:
        if self.srv is not None:
            return {"count": self.srv.count, "max_in_flight": self.srv.max_in_flight}
        root = self.url.rsplit("/v1", 1)[0]
        with urllib.request.urlopen(f"{root}/_stats", timeout=5) as r:
            return json.loads(r.read())

    def close(self) -> None:
        if self.srv is not None:
            self.srv.stop()
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--in-process", action="store_true", help="run the server in this process")
    args = ap.parse_args()

    names = [f"synthetic class {i:04d}" for i in range(args.classes)]
    server = _Server(args.latency, args.in_process)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = OpenAIConfig(base_url=server.url, model="bench",
                               cache_path=str(Path(tmp) / "c.sqlite"),
                               concurrency=args.concurrency, max_retries=0, timeout=30)
            import openai  # noqa: F401  (import time is not request time)

            t0 = time.perf_counter()
            res = OpenAIProvider(cfg, per_class=args.per_class, progress=False).describe(names)
            first = time.perf_counter() - t0
            stats1 = server.stats()
            assert all(len(res.descriptions[n]) == args.per_class for n in names)

            t0 = time.perf_counter()
            res2 = OpenAIProvider(cfg, per_class=args.per_class, progress=False).describe(names)
            second = time.perf_counter() - t0
            stats2 = server.stats()
            assert res2.descriptions == res.descriptions
    finally:
        server.close()

    sent = stats1["count"]
    ideal = args.concurrency / args.latency if args.latency else float("inf")
    print(f"server:              {'in process' if args.in_process else 'separate process'}, "
          f"latency {args.latency * 1000:.0f} ms")
    print(f"classes:             {args.classes} (per_class {args.per_class}), "
          f"concurrency {args.concurrency}")
    print(f"first run requests:  {sent} (run stats: {res.stats['requests']})")
    print(f"first run wall:      {first:.2f} s")
    print(f"requests/s:          {sent / first:.1f} (ideal {ideal:.0f} at this latency)")
    print(f"server max in-flight: {stats1['max_in_flight']}")
    print(f"second run requests: {stats2['count'] - sent} "
          f"(cache hits {res2.stats['cache_hits']})")
    print(f"second run wall:     {second:.2f} s")


if __name__ == "__main__":
    main()
