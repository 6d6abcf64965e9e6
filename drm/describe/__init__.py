"""Concept descriptions ("cd"): per class, sentences about the object's own core visual traits.

The describe stage: a provider, chosen by name from PROVIDERS, turns class names into
descriptions; `run_describe` screens them as untrusted text, applies the hand-written
overrides, and writes the descriptions file with the provenance that shapes it, plus this
run's statistics in a sidecar.

    text.py      untrusted text: escapes stripped, implausible descriptions rejected (rules there)
    artifact.py  the descriptions file (schema, byte-stable writes, loading) and its sidecar
    config.py    params: describe and describe.openai
    file.py      the `file` provider (published JSON files); overrides use its reader
    cache.py     the request cache of LLM providers (SQLite)
    openai/      the `openai` provider (any OpenAI-compatible chat server)
    stage.py     the stage's shell (params, context, dry run)
The `world` provider lives with the embedded world (drm.world.describe).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from drm.base.errors import DescriptionsError
from drm.describe.artifact import (SCHEMA_VERSION, load_descriptions, render_descriptions,  # noqa: F401
                                   validate_descriptions, write_if_changed, write_run_record)
from drm.describe.text import (MAX_DESCRIPTION_CHARS, Rejected, clean_descriptions,  # noqa: F401
                               screen_descriptions)


@dataclass
class DescribeResult:
    """What a provider returns, in three parts kept apart on purpose:

    provenance: only what shapes the descriptions (model, prompt hash, sampling settings...).
        It is saved in the descriptions file, so a rerun that gives the same descriptions
        must give the same provenance: no counters, timings or dates here.
    stats: what this run did (requests, cache hits, tokens, seconds...): saved to the sidecar.
    rejected: descriptions the provider already screened out (drm.describe.text), by class.
    """

    descriptions: dict[str, list[str]]
    provenance: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, list[Rejected]] = field(default_factory=dict)


class Provider(Protocol):
    name: str

    def describe(self, classnames: list[str]) -> DescribeResult: ...


@dataclass
class DescribeContext:
    """What a provider may need beyond its own config."""

    classnames: list[str]
    core_traits: dict[str, list[str]] | None = None  # from the data source (world only)
    base_dir: Path = Path(".")
    progress: bool = True  # a runtime setting: never part of the descriptions


def read_overrides(path, classnames: list[str]) -> dict[str, list[str]]:
    """Hand-edited overrides: JSON class name (or index) -> string or list of strings."""
    from drm.describe.file import read_class_mapping

    return read_class_mapping(path, classnames, require_all=False)


def _world(cfg, ctx):
    from drm.world.describe import WorldProvider  # the embedded world's own vocabulary

    return WorldProvider.from_config(cfg, ctx)


def _file(cfg, ctx):
    from drm.describe.file import FileProvider

    return FileProvider.from_config(cfg, ctx)


def _openai(cfg, ctx):
    from drm.describe.openai import OpenAIProvider

    return OpenAIProvider.from_config(cfg, ctx)


PROVIDERS: dict[str, Callable[[Any, DescribeContext], Provider]] = {
    "world": _world,
    "file": _file,
    "openai": _openai,
}


def run_describe(cfg, ctx: DescribeContext, out_path) -> dict[str, list[str]]:
    """The describe stage: provider -> screen -> overrides -> validate -> save (the file only
    when its content changes; the sidecar every run)."""
    if cfg.provider not in PROVIDERS:
        raise DescriptionsError(
            f"unknown describe.provider {cfg.provider!r}; choose one of {sorted(PROVIDERS)}")
    result = PROVIDERS[cfg.provider](cfg, ctx).describe(ctx.classnames)
    overrides = read_overrides(Path(ctx.base_dir) / cfg.overrides, ctx.classnames) if cfg.overrides else {}
    descriptions, rejected = _screen(ctx.classnames, result, overrides)
    _require_plausible(descriptions, rejected, sources={
        c: "describe.overrides" if c in overrides else _source(cfg) for c in ctx.classnames})
    provenance = {"provider": cfg.provider, **result.provenance}
    if overrides:
        provenance["overrides"] = {"path": str(cfg.overrides), "classes": sorted(overrides)}
    provenance["counts"] = {c: len(descriptions[c]) for c in ctx.classnames}
    provenance["rejected"] = {c: [r.as_dict() for r in rejected[c]] for c in ctx.classnames if rejected[c]}
    text = render_descriptions(classnames=ctx.classnames, descriptions=descriptions, provenance=provenance)
    written = write_if_changed(out_path, text)
    write_run_record(out_path, {"provider": cfg.provider, **result.stats}, written=written)
    return descriptions


def _screen(classnames, result: DescribeResult, overrides: dict[str, list[str]]):
    """Each class's descriptions (an override replaces the provider's) through
    screen_descriptions. Returns (kept by class, rejected by class): the provider's own
    rejections count only for classes whose descriptions it supplied."""
    descriptions: dict[str, list[str]] = {}
    rejected: dict[str, list[Rejected]] = {}
    for c in classnames:
        if c in overrides:
            screened, earlier = screen_descriptions(overrides[c]), []
        else:
            screened = screen_descriptions(result.descriptions.get(c, []))
            earlier = list(result.rejected.get(c, []))
        descriptions[c] = screened.kept
        rejected[c] = earlier + screened.rejected
    return descriptions, rejected


def _source(cfg) -> str:
    return f"describe.file {cfg.file}" if cfg.provider == "file" else f"the {cfg.provider} provider"


def _require_plausible(descriptions, rejected, *, sources: dict[str, str]) -> None:
    """A class left with nothing because every description was rejected fails here, naming
    the class and the rejected text, instead of being dropped or reported as merely empty."""
    bad = [c for c in descriptions if not descriptions[c] and rejected[c]]
    if not bad:
        return
    details = "; ".join(
        f"{c!r} (from {sources[c]}): " + ", ".join(r.describe() for r in rejected[c][:3])
        + (f", ... ({len(rejected[c]) - 3} more)" if len(rejected[c]) > 3 else "")
        for c in bad[:10])
    raise DescriptionsError(
        f"describe: every description of {len(bad)} class(es) was rejected as implausible text "
        f"(the rules are in drm/describe/text.py): {details}"
        + (f"; ... ({len(bad) - 10} more classes)" if len(bad) > 10 else "")
        + ". Fix the source, or give these classes sentences in describe.overrides (a JSON "
        "file in descriptions/: class name -> sentence or list of sentences).")
