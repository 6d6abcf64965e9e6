"""Stage `zeroshot`: df and cd heads, zero-shot logits and core estimates (streamed to disk: store.py)."""
