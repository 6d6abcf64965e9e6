"""The `openai` describe provider: concept descriptions from any OpenAI-compatible chat server.

Works with the OpenAI API and with local servers that speak its chat-completions protocol
(vLLM, Ollama, llama.cpp server, LM Studio, ...): set describe.openai.base_url. The official
`openai` client does the HTTP work, including retries with backoff on 429/5xx/timeouts
(describe.openai.max_retries). See docs/describe-openai.md.

    parse.py     untrusted answer text -> screened descriptions (and why an answer is unusable)
    client.py    what is sent (prompt, response_format, cache key), the API key and its
                 redaction, one chat call, reading and committing the request cache
    pool.py      the run: output-mode probe first, then the worker pool; retries per class
    plan.py      the dry run: what a run would request, from the cache alone
    results.py   outcomes, stable provenance vs run statistics, the summary and failure messages
    provider.py  OpenAIProvider, tying them together

The API key is read from the environment variable named by describe.openai.api_key_env and
handed to the client only: it is never stored in params, the cache, the descriptions file,
provenance, log lines or error messages.
"""
from drm.describe.openai.provider import OpenAIProvider

__all__ = ["OpenAIProvider"]
