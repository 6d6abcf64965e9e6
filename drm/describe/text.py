"""Untrusted description text: normalise it, then keep only what is plausibly a sentence.

Descriptions come from LLMs and from files other people wrote, so every description the
describe stage saves passes `screen_descriptions` (the `openai` provider also screens each
answer, to know whether it still falls short).

Normalisation (changes text, never rejects it):
  - Unicode NFKC;
  - terminal escapes removed completely, parameters included: CSI (ESC [ ... final byte, or
    the 8-bit CSI 0x9b), OSC/DCS/APC/PM/SOS strings (ESC ] ... up to BEL or ESC \\), other
    two-byte ESC sequences, and CSI remnants whose ESC byte was lost on the way ("[31m",
    "[1;32m", "[2K", also after a literal "\\033" or "\\x1b"); "[m" without digits is left
    alone, it is too often ordinary text;
  - other control characters become spaces; a leading bullet or list number is dropped;
    whitespace is collapsed; surrounding quotes are removed;
  - truncation to `max_chars` at a word boundary.
  Empty results and case-insensitive duplicates are dropped silently: nothing to report.

Plausibility rules (a description that breaks one is rejected, and the reason recorded):
  - "markup tag": an HTML/XML tag, comment or processing instruction ("<script>", "</b>",
    "<!--"): CLIP would read it as words, and reports may render the file as HTML;
  - "no letters": nothing but digits, punctuation or symbols;
  - "one character repeated": one character is more than half of the non-space characters
    ("aaaa...", "!!!!!!!!"): a sampling failure, not a sentence;
  - "too few distinct words": fewer than 2 distinct words, or 8 or more words of which under
    a third are distinct ("word word word ..."); a word is a run of letters or digits.
These check that a description is text, not what it says: "ignore previous instructions"
passes. The descriptions are read by CLIP's text encoder, not by an LLM, so such text is
merely a bad description; people judge content, helped by the provenance (which lists what
was rejected and why) and correct it with describe.overrides.

Messages that show untrusted text use `printable` or `quote`: never a raw control character.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

MAX_DESCRIPTION_CHARS = 300
# Rejected text is recorded in the provenance; an excerpt is enough to recognise it.
REJECTED_EXCERPT_CHARS = 80

_CSI = r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
_STRING = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
_ESC_OTHER = r"\x1b[ -/]*[0-~]?"
_ESCAPE = re.compile(f"{_CSI}|{_STRING}|{_ESC_OTHER}")
# What is left of a CSI sequence whose ESC byte was stripped (or written out as text):
# digits are required, so "[mammal]" or "[A]" survive.
_CSI_REMNANT = re.compile(r"(?:\\(?:033|x1[bB]|u001[bB]|e))?\[\??\d{1,3}(?:;\d{1,3})*[A-HJKSTfhlmnsu]")
_OSC_REMNANT = re.compile(r"\]\d+;[^\x07]*\x07")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_MARKUP = re.compile(r"</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>|<!--|<!\[CDATA\[|<\?[A-Za-z]")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Rejected:
    """A description that is not plausible text: an excerpt of it (normalised) and why."""

    text: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"text": self.text, "reason": self.reason}

    def describe(self) -> str:
        """For messages: the excerpt repr-quoted (plain text), then the reason."""
        return f"{quote(self.text)} ({self.reason})"


@dataclass
class Screened:
    kept: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def strip_escapes(text: str) -> str:
    """`text` without terminal escape sequences or their remnants (module docstring)."""
    text = _ESCAPE.sub("", text)
    text = _OSC_REMNANT.sub("", text)
    return _CSI_REMNANT.sub("", text)


def normalise(text: str, max_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """One description, normalised (module docstring); "" when nothing is left."""
    text = strip_escapes(unicodedata.normalize("NFKC", text))
    text = _CONTROL.sub(" ", text)
    text = _BULLET.sub("", text)
    text = " ".join(text.split()).strip().strip('"').strip()
    if len(text) > max_chars:
        cut = text[:max_chars].rsplit(" ", 1)[0]
        text = (cut or text[:max_chars]).rstrip(",;: ")
    return text


def rejection_reason(text: str) -> str | None:
    """Why a normalised description is not plausible text (module docstring), else None."""
    if _MARKUP.search(text):
        return "markup tag"
    if not any(ch.isalpha() for ch in text):
        return "no letters"
    chars = [ch for ch in text.casefold() if not ch.isspace()]
    if Counter(chars).most_common(1)[0][1] * 2 > len(chars):
        return "one character repeated"
    words = _WORD.findall(text.casefold())
    distinct = len(set(words))
    if distinct < 2 or (len(words) >= 8 and distinct * 3 < len(words)):
        return "too few distinct words"
    return None


def screen_descriptions(items, max_chars: int = MAX_DESCRIPTION_CHARS) -> Screened:
    """Normalise untrusted descriptions and split them into kept (order kept, no empties, no
    case-insensitive duplicates) and rejected (with reasons). Non-strings are skipped."""
    if isinstance(items, str):
        items = [items]
    out, seen = Screened(), set()
    for item in items:
        if not isinstance(item, str):
            continue
        text = normalise(item, max_chars)
        key = text.casefold()
        if not text or key in seen:
            continue
        seen.add(key)
        reason = rejection_reason(text)
        if reason is None:
            out.kept.append(text)
        else:
            out.rejected.append(Rejected(_shorten(text, REJECTED_EXCERPT_CHARS), reason))
    return out


def clean_descriptions(items, max_chars: int = MAX_DESCRIPTION_CHARS) -> list[str]:
    """The descriptions of `items` that pass `screen_descriptions`."""
    return screen_descriptions(items, max_chars).kept


def printable(text, limit: int = 200) -> str:
    """`text` for a log line or an error message: whitespace collapsed, non-printable
    characters (escapes, controls) written as \\x.. escapes, at most `limit` characters."""
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(str(text).split()))
    return _shorten(text, limit)


def quote(text, limit: int = 60) -> str:
    """Untrusted `text` as a quoted Python literal (controls escaped), shortened."""
    return repr(_shorten(" ".join(str(text).split()), limit))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
