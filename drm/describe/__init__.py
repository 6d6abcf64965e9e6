"""Concept descriptions ("cd"): per class, sentences about the object's own core visual traits.

The descriptions file (JSON, schema_version 1) is the `describe` stage's output:

    {
      "schema_version": 1,
      "classnames": ["circle", ...],                 # the dataset's class order
      "descriptions": {"circle": ["...", ...], ...}, # class name -> non-empty list of str
      "provenance": {"provider": "world", "counts": {...}, ...}
    }

Per-run statistics (requests, cache hits, tokens, seconds) go to a sidecar
`<name>.run.json`; the descriptions file is rewritten only when its content changes.

A provider turns class names into descriptions; providers are chosen by name from
PROVIDERS. LLM output is untrusted text: every description passes `clean_descriptions`.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

from drm.errors import DescriptionsError

SCHEMA_VERSION = 1
MAX_DESCRIPTION_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class DescribeResult:
    """What a provider returns: descriptions by class name and provider-specific provenance."""

    descriptions: dict[str, list[str]]
    provenance: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def describe(self, classnames: list[str]) -> DescribeResult: ...


@dataclass
class DescribeContext:
    """What a provider may need beyond its own config."""

    classnames: list[str]
    core_traits: dict[str, list[str]] | None = None  # from the data source (world only)
    base_dir: Path = Path(".")


def clean_descriptions(items, max_chars: int = MAX_DESCRIPTION_CHARS) -> list[str]:
    """Normalise untrusted text: strip, drop control characters and bullets, collapse
    whitespace, truncate to max_chars at a word boundary, drop empties and duplicates
    (case-insensitive), keep order."""
    if isinstance(items, str):
        items = [items]
    out, seen = [], set()
    for item in items:
        if not isinstance(item, str):
            continue
        text = unicodedata.normalize("NFKC", item)
        text = _CONTROL.sub(" ", text)
        text = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", "", text)
        text = " ".join(text.split()).strip().strip('"').strip()
        if len(text) > max_chars:
            cut = text[:max_chars].rsplit(" ", 1)[0]
            text = (cut or text[:max_chars]).rstrip(",;: ")
        key = text.lower()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def validate_descriptions(descriptions: dict[str, list[str]], classnames: list[str]) -> None:
    """Raise DescriptionsError unless every class has a non-empty list of non-empty strings."""
    missing = [c for c in classnames if c not in descriptions]
    if missing:
        raise DescriptionsError(
            f"descriptions are missing {len(missing)} class(es): {missing[:10]}"
            + (" ..." if len(missing) > 10 else "")
            + "; add them to the descriptions file or to describe.overrides"
        )
    empty = [c for c in classnames if not descriptions[c] or not all(
        isinstance(d, str) and d.strip() for d in descriptions[c])]
    if empty:
        raise DescriptionsError(
            f"empty description(s) for class(es) {empty[:10]}: every class needs at least one "
            "non-empty sentence; fix the source or add an override"
        )


def save_descriptions(path, classnames: list[str], descriptions: dict[str, list[str]],
                      provenance: dict[str, Any]) -> None:
    validate_descriptions(descriptions, classnames)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "classnames": list(classnames),
        "descriptions": {c: list(descriptions[c]) for c in classnames},
        "provenance": provenance,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_descriptions(path, classnames: list[str] | None = None) -> dict[str, list[str]]:
    """Read a descriptions file written by the describe stage, validated against classnames."""
    from drm.errors import require

    doc = json.loads(require(path, "describe").read_text())
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DescriptionsError(f"{path}: unsupported schema_version {doc.get('schema_version')!r}")
    names = classnames if classnames is not None else doc["classnames"]
    validate_descriptions(doc["descriptions"], names)
    return {c: doc["descriptions"][c] for c in names}


def read_overrides(path, classnames: list[str]) -> dict[str, list[str]]:
    """Hand-edited overrides: JSON class name (or index) -> string or list of strings."""
    from drm.describe.file import read_class_mapping

    return read_class_mapping(path, classnames, require_all=False)


def _world(cfg, ctx):
    from drm.describe.world import WorldProvider

    return WorldProvider.from_config(cfg, ctx)


def _file(cfg, ctx):
    from drm.describe.file import FileProvider

    return FileProvider.from_config(cfg, ctx)


def _openai(cfg, ctx):
    from drm.describe.openai_provider import OpenAIProvider

    return OpenAIProvider.from_config(cfg, ctx)


PROVIDERS: dict[str, Callable[[Any, DescribeContext], Provider]] = {
    "world": _world,
    "file": _file,
    "openai": _openai,
}


def run_describe(cfg, ctx: DescribeContext, out_path) -> dict[str, list[str]]:
    """The describe stage: provider -> clean -> overrides -> validate -> save (with provenance)."""
    if cfg.provider not in PROVIDERS:
        raise DescriptionsError(
            f"unknown describe.provider {cfg.provider!r}; choose one of {sorted(PROVIDERS)}")
    provider = PROVIDERS[cfg.provider](cfg, ctx)
    result = provider.describe(ctx.classnames)
    descriptions = {c: clean_descriptions(result.descriptions.get(c, [])) for c in ctx.classnames}
    provenance = {"provider": cfg.provider, **result.provenance}
    if cfg.overrides:
        over = read_overrides(Path(ctx.base_dir) / cfg.overrides, ctx.classnames)
        for c, items in over.items():
            descriptions[c] = clean_descriptions(items)
        provenance["overrides"] = {"path": str(cfg.overrides), "classes": sorted(over)}
    provenance["counts"] = {c: len(descriptions[c]) for c in ctx.classnames}
    # Per-run statistics go to a sidecar, so a rerun that yields the same descriptions
    # leaves the descriptions file (a dependency of everything downstream) byte-identical.
    run_info = {k: provenance.pop(k) for k in VOLATILE_PROVENANCE if k in provenance}
    run_info["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out_path = Path(out_path)
    # No timestamp in the file itself: the same descriptions give the same bytes on every
    # machine (and the same hash in dvc.lock); when it was written is in the sidecar.
    if not _same_content(out_path, ctx.classnames, descriptions, provenance):
        save_descriptions(out_path, ctx.classnames, descriptions, provenance)
        run_info["descriptions_file"] = "written"
    else:
        run_info["descriptions_file"] = "unchanged"
    sidecar = out_path.with_suffix(".run.json")
    sidecar.write_text(json.dumps(run_info, indent=2) + "\n")
    return descriptions


VOLATILE_PROVENANCE = ("requests", "cache_hits", "tokens", "seconds", "created")


def _same_content(path: Path, classnames, descriptions, provenance) -> bool:
    if not path.exists():
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    old_prov = {k: v for k, v in old.get("provenance", {}).items() if k != "created"}
    return (old.get("classnames") == list(classnames) and old.get("descriptions") == descriptions
            and old_prov == json.loads(json.dumps(provenance)))
