"""The `world` provider: descriptions from the embedded world's core-trait vocabulary.

Stands in for an LLM on the synthetic world: it knows each shape's own traits (the
core features) and never mentions background or rendering style.
"""
from __future__ import annotations

from dataclasses import dataclass

from drm.describe import DescribeContext, DescribeResult
from drm.base.errors import DescriptionsError


@dataclass
class WorldProvider:
    traits: dict[str, list[str]]
    per_class: int
    name: str = "world"

    @classmethod
    def from_config(cls, cfg, ctx: DescribeContext):
        if not ctx.core_traits:
            raise DescriptionsError(
                "describe.provider 'world' needs a data source with a core-trait vocabulary "
                "(data.source: world); use 'file' or 'openai' for real datasets")
        return cls(ctx.core_traits, cfg.per_class)

    def describe(self, classnames: list[str]) -> DescribeResult:
        out = {}
        for c in classnames:
            traits = self.traits.get(c, [])
            sentences = [f"a {c}, a shape with {t}." for t in traits]
            if len(traits) >= 2:
                sentences.append(f"a {c}: {traits[0]} and {traits[1]}.")
            out[c] = sentences[: self.per_class]
        return DescribeResult(out, {"per_class": self.per_class})
