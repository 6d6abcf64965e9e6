"""Reading a model's answer: untrusted text -> candidate descriptions -> screened descriptions.

`parse_answer` finds the candidates in whatever shape the answer came (structured output is
often ignored by local servers); `read_answer` also screens them (drm.describe.text) and says
why an answer is unusable.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from drm.describe.text import Rejected, quote, screen_descriptions

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\r?\n?(.*?)(?:```|\Z)", re.S)
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u2013]|\(?\d{1,3}[.):]|\(?[a-zA-Z][.)])\s+")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_NOTHING = object()
# How many '{' or '[' positions are tried when JSON follows prose: bounds the work on junk.
_MAX_JSON_STARTS = 20


@dataclass
class Reading:
    """One answer, read: usable descriptions, what was rejected, and why nothing was usable."""

    items: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    problem: str | None = None  # set when items is empty


def read_answer(text: str | None, max_chars: int) -> Reading:
    """Parse and screen one answer; an answer without a usable description has a problem."""
    raw, problem = parse_answer(text)
    if not raw:
        return Reading(problem=problem)
    screened = screen_descriptions(raw, max_chars)
    if screened.kept:
        return Reading(screened.kept, screened.rejected)
    if screened.rejected:
        return Reading([], screened.rejected, "every description was rejected: "
                       + ", ".join(r.describe() for r in screened.rejected[:3]))
    return Reading(problem="no usable descriptions")


def parse_answer(text: str | None) -> tuple[list[str], str | None]:
    """Pull candidate descriptions out of a model's answer text.

    Accepts a JSON object {"descriptions": [...]}, a bare JSON list of strings, either of those
    inside a ``` code fence or after a line of prose, or plain text with one description per
    (bulleted or numbered) line. Returns (items, problem): items are raw strings (screen them
    with drm.describe.text); problem says why nothing usable was found, else None.
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
    """The first JSON object/list embedded in `body`. With strict, only something that looks
    like our answer counts."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[{\[]", body)][:_MAX_JSON_STARTS]
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
            keys = ", ".join(quote(k, 30) for k in sorted(map(str, data))[:5])
            return [], f"JSON object without a \"descriptions\" key (keys: {keys})"
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
