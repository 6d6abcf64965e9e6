"""OpenAIProvider: the `openai` describe provider's face (see the package docstring)."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable

from drm.describe import DescribeResult
from drm.describe.cache import RequestCache
from drm.describe.config import OpenAIConfig
from drm.describe.openai.client import (PROVIDER_NAME, ChatClient, RequestBuilder, key_state,
                                        lookup_modes)
from drm.describe.openai.plan import DryRunPlan, dry_run_text, make_plan
from drm.describe.openai.pool import Collector
from drm.describe.openai.results import (Outcome, Provenance, RunStats, failure_error,
                                         summary_line)

log = logging.getLogger(__name__)


class OpenAIProvider:
    """Describe classes with an OpenAI-compatible chat model.

    The provider remembers the output mode that worked, so a second describe() with the
    same provider object does not probe again.
    """

    name = PROVIDER_NAME

    def __init__(self, config: OpenAIConfig, per_class: int = 5, base_dir=Path("."),
                 skip: Iterable[str] = (), progress: bool = True):
        self.config = config
        self.requests = RequestBuilder.for_config(config, per_class=per_class)
        self.base_dir = Path(base_dir)
        self.skip = frozenset(skip)  # classes an override replaces anyway: never requested
        self.progress = progress
        self._mode = "json_schema" if config.output_mode == "auto" else config.output_mode
        self._mode_known = config.output_mode != "auto"

    def __repr__(self) -> str:  # never show the key
        return (f"OpenAIProvider(model={self.config.model!r}, base_url={self.base_url!r}, "
                f"per_class={self.per_class})")

    @classmethod
    def from_config(cls, cfg, ctx) -> "OpenAIProvider":
        """cfg: drm.describe.config.DescribeConfig (uses .openai, .per_class, .overrides)."""
        skip: list[str] = []
        if cfg.overrides:
            from drm.describe import read_overrides

            skip = list(read_overrides(Path(ctx.base_dir) / cfg.overrides, ctx.classnames))
        return cls(cfg.openai, per_class=cfg.per_class, base_dir=ctx.base_dir, skip=skip,
                   progress=ctx.progress)

    @property
    def per_class(self) -> int:
        return self.requests.per_class

    @property
    def base_url(self) -> str | None:
        """The server without credentials (None: the OpenAI API)."""
        return self.requests.base_url

    @property
    def cache_path(self) -> Path | None:
        if self.config.cache_path is None:
            return None
        p = Path(self.config.cache_path)
        return p if p.is_absolute() else self.base_dir / p

    # -- dry run --------------------------------------------------------------------------
    def plan(self, classnames: list[str]) -> DryRunPlan:
        """What describe(classnames) would request, from the request cache alone."""
        return make_plan(builder=self.requests, cache_path=self.cache_path,
                         names=list(dict.fromkeys(classnames)), skip=self.skip,
                         modes=lookup_modes(self.config.output_mode, self._mode))

    def dry_run(self, classnames: list[str]) -> str:
        """A printable plan of what describe(classnames) would send. Sends nothing."""
        return dry_run_text(plan=self.plan(classnames), builder=self.requests,
                            cache_path=self.cache_path, key_state=key_state(self.config))

    # -- describe -------------------------------------------------------------------------
    def describe(self, classnames: list[str]) -> DescribeResult:
        start = time.monotonic()
        names = list(dict.fromkeys(classnames))
        plan = self.plan(names)
        outcomes, requests = self._collect([n for n in names if n not in self.skip], plan)
        prov = Provenance.of_run(builder=self.requests, outcomes=outcomes,
                                 overridden=plan.overridden, current_mode=self._mode)
        stats = RunStats.of_run(outcomes=outcomes, requests=requests,
                                seconds=time.monotonic() - start)
        rejected = {o.name: o.rejected for o in outcomes if o.rejected}
        self._report(summary_line(classes=len(outcomes), prov=prov, stats=stats,
                                  rejected=sum(map(len, rejected.values()))))
        if stats.failures:
            raise failure_error(config=self.config, outcomes=outcomes, stats=stats,
                                cache_where=self._cache_where())
        return DescribeResult(descriptions={o.name: o.descriptions for o in outcomes},
                              provenance=prov.as_dict(), stats=stats.as_dict(), rejected=rejected)

    def _collect(self, todo: list[str], plan: DryRunPlan) -> tuple[list[Outcome], int]:
        """Outcomes of `todo` (class order) and the HTTP requests sent. A client (and so a
        key) only when the plan has something to request; it is made before the cache is
        opened, so a missing key fails before anything is created."""
        with ExitStack() as stack:
            client = stack.enter_context(ChatClient(self.config)) if plan.to_request else None
            cache = (stack.enter_context(RequestCache(self.cache_path))
                     if self.cache_path is not None else None)
            collector = Collector(builder=self.requests, client=client, cache=cache,
                                  mode=self._mode, mode_known=self._mode_known,
                                  progress=self.progress)
            outcomes = collector.run(todo, to_request=list(plan.to_request))
            self._mode, self._mode_known = collector.mode, collector.mode_known
            return outcomes, client.requests_sent if client is not None else 0

    @staticmethod
    def _report(line: str) -> None:
        print(line, file=sys.stderr)
        log.debug(line)

    def _cache_where(self) -> str:
        if self.cache_path is None:
            return "no request cache (describe.openai.cache_path is null)"
        return f"the request cache {self.cache_path}"
