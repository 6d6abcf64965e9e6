"""Parameters of the describe stage (params.yaml: describe) and its `openai` provider
(describe.openai).

Pure pydantic (no openai import) so that loading params stays fast.
The API key is never a parameter: `api_key_env` names the environment variable.
See docs/describe-openai.md for OpenAI, vLLM, Ollama and llama.cpp examples.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drm.base.params import Strict
from drm.describe.text import MAX_DESCRIPTION_CHARS

DEFAULT_SYSTEM_PROMPT = (
    "You are a visual taxonomy expert. You describe only what an object itself looks like: "
    "its shape, parts, texture and colour. You never mention background, surroundings, "
    "habitat, context, setting, location, or the photographic conditions."
)
DEFAULT_PROMPT = (
    "List {n} distinct short sentences, each describing core visual features of a "
    "{classname} that distinguish it from similar things: the object's own shape, parts, "
    "texture and colour.{domain} Do not mention background, habitat, surroundings, context "
    "or setting. Answer as JSON: {{\"descriptions\": [\"...\", ...]}}."
)
OUTPUT_MODES = ("auto", "json_schema", "json_object", "text")


def format_prompt(template: str, n: int, classname: str, domain_hint: str | None) -> str:
    """The user message for one class: `template` formatted with n, classname and domain
    (" " + domain_hint, or "" without a hint)."""
    domain = f" {domain_hint.strip()}" if domain_hint and domain_hint.strip() else ""
    return template.format(n=n, classname=classname, domain=domain)


class OpenAIConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: the OpenAI API; e.g. http://localhost:11434/v1 for Ollama
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)  # None: the server's default
    seed: int | None = None  # sent when set (OpenAI, vLLM, Ollama, llama.cpp honour it)
    max_tokens: int | None = Field(None, ge=1)  # cap on answer length; None: server default
    # each description is cut to this; the stage caps every description at MAX_DESCRIPTION_CHARS
    max_chars: int = Field(MAX_DESCRIPTION_CHARS, ge=10, le=MAX_DESCRIPTION_CHARS)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(4, ge=0, le=20)  # the openai client's own retries (429/5xx/timeouts)
    max_attempts: int = Field(3, ge=1, le=10)  # requests per class while answers fall short
    max_failures: int = Field(5, ge=1)  # stop sending after this many classes failed outright
    concurrency: int = Field(8, ge=1, le=256)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    prompt: str = DEFAULT_PROMPT
    domain_hint: str | None = None  # e.g. "The images are camera-trap photos."
    output_mode: str = Field("auto", pattern="^(auto|json_schema|json_object|text)$")
    cache_path: str | None = "cache/describe.sqlite"  # None: no request cache

    @model_validator(mode="after")
    def _template(self):
        if "{classname}" not in self.prompt:
            raise ValueError("describe.openai.prompt must contain {classname}")
        try:
            format_prompt(self.prompt, 5, "dog", self.domain_hint)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                "describe.openai.prompt is not a valid template: only {n}, {classname} and "
                f"{{domain}} may be used, literal braces must be doubled ({{{{ }}}}): {e!r}"
            ) from None
        if self.base_url is not None and not self.base_url.strip():
            raise ValueError("describe.openai.base_url must be a URL or null (the OpenAI API)")
        return self


class DescribeConfig(Strict):
    provider: str = "world"  # world | file | openai (drm.describe.PROVIDERS)
    per_class: int = Field(5, ge=1, le=100)  # at most this many per class (openai asks for this many)
    file: str | None = None  # provider file: a JSON file class index/name -> sentence(s)
    overrides: str | None = None  # hand-written sentences that replace a class's descriptions
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)

    @model_validator(mode="after")
    def _provider(self):
        from drm.describe import PROVIDERS

        if self.provider not in PROVIDERS:
            raise ValueError(f"describe.provider {self.provider!r} is unknown; choose one of {sorted(PROVIDERS)}")
        if self.provider == "file" and not self.file:
            raise ValueError("describe.provider 'file' needs describe.file (path to a JSON file)")
        return self

    def input_files(self) -> list[str]:
        """The description files the stage reads (relative to the project folder)."""
        return [v for v in (self.file, self.overrides) if v]
