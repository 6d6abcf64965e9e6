"""The dry run: what `describe` would request, worked out from the request cache alone.

Nothing is sent and nothing is created (a missing cache is not opened). The same plan tells
a real run whether it needs a client (and so a key) at all, and which classes go first while
the output mode is probed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drm.describe.cache import RequestCache
from drm.describe.openai.client import OPENAI_API_URL, RequestBuilder, cached_answer, prompt_sha256
from drm.describe.text import clean_descriptions

# Rough token arithmetic (no tokenizer needed): about 4 characters a token.
_CHARS_PER_TOKEN = 4
_MESSAGE_OVERHEAD_TOKENS = 12


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


def make_plan(*, builder: RequestBuilder, cache_path: Path | None, names: list[str],
              skip: frozenset[str], modes: list[str]) -> DryRunPlan:
    """names: unique class names; skip: those describe.overrides covers; modes: the output
    modes whose cached answers count (client.lookup_modes)."""
    c = builder.config
    cache = RequestCache(cache_path) if cache_path is not None and cache_path.exists() else None
    cached, short, to_request = [], {}, {}
    try:
        for name in (n for n in names if n not in skip):
            have, pending = _from_cache(cache, builder, name, modes)
            if pending is not None:
                to_request[name] = pending
            elif have >= builder.per_class:
                cached.append(name)
            else:
                short[name] = builder.per_class - have
    finally:
        if cache is not None:
            cache.close()
    requests_min = len(to_request)
    return DryRunPlan(
        classes=len(names), overridden=sorted(n for n in names if n in skip), cached=cached,
        cached_short=short, to_request=to_request, requests_min=requests_min,
        requests_max=sum(c.max_attempts - a for a in to_request.values()),
        prompt_tokens=sum(_prompt_tokens(builder, n) for n in to_request),
        completion_tokens=requests_min * _completion_tokens(builder))


def _from_cache(cache: RequestCache | None, builder: RequestBuilder, name: str,
                modes: list[str]) -> tuple[int, int | None]:
    """(descriptions the cache holds for `name`, its first attempt the cache cannot answer or
    None), replaying the attempts a real run would make."""
    collected: list[str] = []
    for attempt in range(builder.config.max_attempts):
        if len(collected) >= builder.per_class:
            break
        hit = cached_answer(cache, builder, name, attempt=attempt, modes=modes)
        if hit is None:
            return len(collected), attempt
        collected = clean_descriptions(collected + hit[0].items, builder.config.max_chars)
    return len(collected), None


def _estimate_tokens(text: str) -> int:
    return max(1, (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN)


def _prompt_tokens(builder: RequestBuilder, name: str) -> int:
    return sum(_estimate_tokens(m["content"]) for m in builder.messages(name)) + _MESSAGE_OVERHEAD_TOKENS


def _completion_tokens(builder: RequestBuilder) -> int:
    per_description = _estimate_tokens("x" * min(builder.config.max_chars, 120))
    return builder.per_class * (per_description + 4) + 8  # + JSON punctuation


def dry_run_text(*, plan: DryRunPlan, builder: RequestBuilder, cache_path: Path | None,
                 key_state: str) -> str:
    """The printable plan. key_state: client.key_state (the key itself is never shown)."""
    c = builder.config
    key_line = {
        "set": f"${c.api_key_env} is set",
        "placeholder": f"${c.api_key_env} is not set: a placeholder key is sent "
                       "(fine for keyless local servers)",
        "missing": f"${c.api_key_env} is NOT set: describe would fail; export it first",
    }[key_state]
    if cache_path is None:
        cache_line = "none (describe.openai.cache_path is null)"
    elif cache_path.exists():
        cache_line = f"{cache_path}"
    else:
        cache_line = f"{cache_path} (does not exist yet)"
    lines = [
        "describe[openai] dry run: nothing is sent",
        f"  server:        {builder.base_url or OPENAI_API_URL + ' (OpenAI)'}",
        f"  model:         {c.model}   output_mode: {c.output_mode}   per_class: {builder.per_class}"
        f"   max_attempts: {c.max_attempts}   concurrency: {c.concurrency}",
        f"  prompt sha256: {prompt_sha256(c)[:16]}   domain hint: {c.domain_hint!r}",
        f"  API key:       {key_line}",
        f"  request cache: {cache_line}",
        f"  classes:       {plan.classes}"
        + (f" ({len(plan.overridden)} covered by describe.overrides, not requested)"
           if plan.overridden else ""),
        f"  cached:        {len(plan.cached)} class(es) complete in the cache"
        + (f"; {len(plan.cached_short)} cached but short (no more attempts): "
           f"{_names(list(plan.cached_short))}" if plan.cached_short else ""),
    ]
    if plan.to_request:
        extra = (" (+2 if the server rejects json_schema and json_object)"
                 if c.output_mode == "auto" else "")
        lines += [
            f"  to request:    {len(plan.to_request)} class(es) -> {plan.requests_min} request(s), "
            f"up to {plan.requests_max} if answers fall short{extra}",
            f"                 {_names(list(plan.to_request))}",
            f"  tokens (est.): ~{plan.prompt_tokens:,} prompt + ~{plan.completion_tokens:,} "
            f"completion for {plan.requests_min} request(s) (about 4 characters a token)",
        ]
    else:
        lines.append("  to request:    nothing: every class is answered by the cache (0 requests)")
    return "\n".join(lines)


def _names(names: list[str], limit: int = 20) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
