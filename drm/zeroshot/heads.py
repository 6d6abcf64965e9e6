"""Zero-shot text heads: df (default prompt templates) and cd (concept descriptions).

A head row is built as CLIP does: embed each text, L2-normalise, average over a class's
texts, renormalise. Texts longer than the model's context are truncated by the tokenizer;
we count them per class so the zeroshot stage can report it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def count_truncated(tokenizer, texts: list[str]) -> int:
    """How many texts exceed the tokenizer's context (start/end tokens included)."""
    inner = getattr(tokenizer, "encode", None)
    ctx = getattr(tokenizer, "context_length", None)
    if inner is None or ctx is None:
        return 0
    return sum(len(inner(t)) + 2 > ctx for t in texts)


@torch.no_grad()
def text_head(model, tokenizer, texts_per_class: list[list[str]], device="cpu", batch_size=256):
    """(weights [C, D] with unit rows, truncated-count per class)."""
    flat = [t for texts in texts_per_class for t in texts]
    owner = torch.tensor([c for c, texts in enumerate(texts_per_class) for _ in texts])
    embs = []
    for s in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[s:s + batch_size]).to(device)
        embs.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    embs = torch.cat(embs)
    C = len(texts_per_class)
    head = torch.zeros(C, embs.shape[1]).index_add_(0, owner, embs)
    head = F.normalize(head, dim=-1)
    truncated = [count_truncated(tokenizer, texts) for texts in texts_per_class]
    return head, truncated


@dataclass(frozen=True)
class ZeroShotHeads:
    """The two zero-shot heads of one model: unit rows [C, D] each, and the model's logit scale."""

    df_head: torch.Tensor
    cd_head: torch.Tensor
    logit_scale: float


@dataclass(frozen=True)
class ClassTexts:
    """Per class, the texts each head averages: df = the templates filled with the class name,
    cd = the class's concept descriptions."""

    df_texts: list[list[str]]
    cd_texts: list[list[str]]

    @classmethod
    def build(cls, *, classnames: list[str], templates: list[str], descriptions: dict[str, list[str]]):
        return cls(df_texts=[[t.format(c=c) for t in templates] for c in classnames],
                   cd_texts=[list(descriptions[c]) for c in classnames])


def zero_shot_logits(features: torch.Tensor, head: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """logit_scale * cos(image, class text): features and head rows are unit vectors."""
    return logit_scale * F.normalize(features, dim=-1) @ head.t()
