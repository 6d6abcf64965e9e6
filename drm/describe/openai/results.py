"""What a run of the `openai` provider produced: per-class outcomes, the stable provenance,
the run's statistics, and the messages (the summary line, the failure error).

Provenance and RunStats are separate types on purpose: provenance is saved in the
descriptions file and must be reproduced exactly by a rerun from the request cache, so it
holds settings and facts derived from the answers used; anything counted or timed during a
run belongs to RunStats (the sidecar). A new counter goes in RunStats or Outcome.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from drm.base.errors import DescriptionsError
from drm.describe.config import OpenAIConfig
from drm.describe.openai.client import PROVIDER_NAME, RequestBuilder, prompt_sha256
from drm.describe.text import Rejected


@dataclass
class Outcome:
    """One class in one run: its descriptions, and what it took."""

    name: str
    descriptions: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)  # within the answers used
    modes: dict[str, int] = field(default_factory=dict)  # answers used, by output mode
    calls: int = 0  # chat calls made (each may involve client retries)
    cache_hits: int = 0
    received: int = 0  # answers received this run
    cached_now: int = 0  # answers committed to the cache this run
    prompt_tokens: int = 0
    completion_tokens: int = 0
    problems: list[str] = field(default_factory=list)  # one per unusable answer this run
    failure: str | None = None
    status: int | None = None
    hard: bool = False  # failed after the client's retries (HTTP error, timeout, connection)
    not_sent: bool = False  # the run stopped before this class's request was sent

    def used(self, mode: str) -> None:
        self.modes[mode] = self.modes.get(mode, 0) + 1


@dataclass(frozen=True)
class Provenance:
    """What shapes the descriptions (saved in the descriptions file)."""

    provider: str
    model: str
    base_url: str | None
    prompt_sha256: str
    domain_hint: str | None
    output_mode: str
    output_mode_used: str
    answers_by_mode: dict[str, int]
    per_class: int
    max_attempts: int
    max_chars: int
    temperature: float
    top_p: float | None
    seed: int | None
    max_tokens: int | None
    shortfalls: dict[str, int]  # class -> how many fewer than per_class it got
    overridden: list[str]  # classes describe.overrides replaces: never requested

    @classmethod
    def of_run(cls, *, builder: RequestBuilder, outcomes: list[Outcome], overridden: list[str],
               current_mode: str) -> "Provenance":
        """outcomes in class order."""
        c, n = builder.config, builder.per_class
        modes: dict[str, int] = {}
        for o in outcomes:
            for m, k in o.modes.items():
                modes[m] = modes.get(m, 0) + k
        return cls(
            provider=PROVIDER_NAME, model=c.model, base_url=builder.base_url,
            prompt_sha256=prompt_sha256(c), domain_hint=c.domain_hint, output_mode=c.output_mode,
            output_mode_used=max(modes, key=modes.get) if modes else current_mode,
            answers_by_mode=dict(sorted(modes.items())), per_class=n,
            max_attempts=c.max_attempts, max_chars=c.max_chars, temperature=c.temperature,
            top_p=c.top_p, seed=c.seed, max_tokens=c.max_tokens,
            shortfalls={o.name: n - len(o.descriptions) for o in outcomes
                        if o.descriptions and len(o.descriptions) < n},
            overridden=sorted(overridden))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunStats:
    """What one run did (saved to the sidecar, never to the descriptions file)."""

    requests: int  # HTTP requests sent, the client's retries included
    calls: int  # chat calls made
    cache_hits: int
    answers_received: int
    answers_cached: int  # committed to the request cache this run
    unusable_answers: dict[str, list[str]]  # class -> the problem of each unusable answer
    failures: dict[str, str]  # class -> why it got nothing
    tokens: dict[str, int]
    seconds: float

    @classmethod
    def of_run(cls, *, outcomes: list[Outcome], requests: int, seconds: float) -> "RunStats":
        """outcomes in class order."""
        return cls(
            requests=requests, calls=sum(o.calls for o in outcomes),
            cache_hits=sum(o.cache_hits for o in outcomes),
            answers_received=sum(o.received for o in outcomes),
            answers_cached=sum(o.cached_now for o in outcomes),
            unusable_answers={o.name: list(o.problems) for o in outcomes if o.problems},
            failures={o.name: o.failure for o in outcomes if o.failure is not None},
            tokens={"prompt": sum(o.prompt_tokens for o in outcomes),
                    "completion": sum(o.completion_tokens for o in outcomes)},
            seconds=round(seconds, 3))

    def as_dict(self) -> dict:
        return asdict(self)


def summary_line(*, classes: int, prov: Provenance, stats: RunStats, rejected: int) -> str:
    """The one line printed at the end of a run (no untrusted text in it)."""
    return (f"describe[openai]: {classes} class(es), {stats.requests} request(s) sent, "
            f"{stats.cache_hits} cache hit(s), tokens {stats.tokens['prompt']} prompt + "
            f"{stats.tokens['completion']} completion, {len(stats.failures)} failure(s), "
            f"{len(prov.shortfalls)} shortfall(s), {rejected} rejected description(s), "
            f"output mode {prov.output_mode_used}, {stats.seconds:.1f} s")


def failure_reason(problems: list[str]) -> str:
    """Why a class got no description at all, from the problem of each attempt."""
    distinct = list(dict.fromkeys(problems))
    if len(distinct) == 1:
        return f"{distinct[0]}, {len(problems)} time(s)"
    return "; ".join(f"attempt {i + 1}: {p}" for i, p in enumerate(problems))


def failure_error(*, config: OpenAIConfig, outcomes: list[Outcome], stats: RunStats,
                  cache_where: str) -> DescriptionsError:
    """The error of a run in which some class got nothing: each class with its reason, where
    the received answers are, and what to check. Carries .failures and .stats."""
    failed = [o for o in outcomes if o.failure is not None]
    hard = [o for o in failed if o.hard]
    soft = [o for o in failed if not o.hard and not o.not_sent]
    unsent = [o.name for o in failed if o.not_sent]
    parts = []
    if hard:
        parts.append(f"{len(hard)} class(es) failed after the openai client's retries "
                     f"(max_retries={config.max_retries}): " + _listing(hard))
    if soft:
        parts.append(f"{len(soft)} class(es) got no valid descriptions after "
                     f"{config.max_attempts} attempt(s): " + _listing(soft))
    if unsent:
        parts.append(f"{len(unsent)} class(es) were not requested because the run stopped "
                     f"early: {unsent[:10]}" + (" ..." if len(unsent) > 10 else ""))
    msg = ("describe.openai: " + "; ".join(parts) + ". "
           f"{stats.answers_cached} answer(s) received this run are committed to {cache_where}; "
           "a rerun requests only what is missing. " + _sentence("; ".join(_hints(config, hard, soft))))
    err = DescriptionsError(msg)
    err.failures = dict(stats.failures)
    err.stats = stats.as_dict()
    return err


def _hints(config: OpenAIConfig, hard: list[Outcome], soft: list[Outcome]) -> list[str]:
    statuses = {o.status for o in hard}
    hints = []
    if statuses & {401, 403}:
        hints.append(f"check the API key in ${config.api_key_env} and its permissions")
    if 404 in statuses:
        hints.append("check describe.openai.model and describe.openai.base_url "
                     "(it usually ends in /v1)")
    if hard and not statuses & {401, 403, 404}:
        hints.append("check that the server is up; raise describe.openai.timeout or "
                     "max_retries for a slow or busy server")
    if soft:
        hints.append("check the model and prompt (or try describe.openai.output_mode), or "
                     "give these classes descriptions in describe.overrides")
    return hints


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:] + ".") if text else ""


def _listing(outcomes: list[Outcome], limit: int = 10) -> str:
    items = [f"{o.name!r} ({o.failure})" for o in outcomes[:limit]]
    more = len(outcomes) - limit
    return ", ".join(items) + (f", ... ({more} more)" if more > 0 else "")
