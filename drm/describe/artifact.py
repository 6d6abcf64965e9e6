"""The descriptions file (the describe stage's output) and its run-record sidecar.

    {
      "schema_version": 1,
      "classnames": ["circle", ...],                 # the dataset's class order
      "descriptions": {"circle": ["...", ...], ...}, # class name -> non-empty list of str
      "provenance": {"provider": "world", "counts": {...}, ...}
    }

The file holds only what shapes the descriptions, and is rewritten only when its bytes would
change: a rerun with the same result leaves it (a dependency of everything downstream, hashed
in dvc.lock) untouched. What one run did (requests, cache hits, tokens, seconds, when) goes to
the sidecar `<name>.run.json`, rewritten every run.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from drm.base.atomic import write_text
from drm.base.errors import DescriptionsError, require

SCHEMA_VERSION = 1


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


def render_descriptions(*, classnames: list[str], descriptions: dict[str, list[str]],
                        provenance: dict[str, Any]) -> str:
    """The file's exact text. No timestamp: the same descriptions give the same bytes on every
    machine (and the same hash in dvc.lock)."""
    validate_descriptions(descriptions, classnames)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "classnames": list(classnames),
        "descriptions": {c: list(descriptions[c]) for c in classnames},
        "provenance": provenance,
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write_if_changed(path, text: str) -> bool:
    """Write `text` to `path` atomically unless the file already holds exactly it (then its
    mtime stays too). Returns whether it wrote."""
    path = Path(path)
    if path.exists() and path.read_bytes() == text.encode("utf-8"):
        return False
    write_text(path, text)
    return True


def sidecar_path(path) -> Path:
    return Path(path).with_suffix(".run.json")


def write_run_record(path, stats: dict[str, Any], *, written: bool) -> Path:
    """The sidecar of the descriptions file at `path`: this run's statistics."""
    record = {**stats, "descriptions_file": "written" if written else "unchanged",
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    sidecar = sidecar_path(path)
    write_text(sidecar, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return sidecar


def load_descriptions(path, classnames: list[str] | None = None) -> dict[str, list[str]]:
    """Read a descriptions file written by the describe stage, validated against classnames."""
    try:
        doc = json.loads(require(path, "describe").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        from drm.base.atomic import shown

        raise DescriptionsError(f"{shown(path)} is unreadable ({e}): it is truncated or corrupt; rerun the stage "
                                "that makes it: `dvc repro describe`") from None
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DescriptionsError(f"{path}: unsupported schema_version {doc.get('schema_version')!r}")
    names = classnames if classnames is not None else doc["classnames"]
    validate_descriptions(doc["descriptions"], names)
    return {c: doc["descriptions"][c] for c in names}
