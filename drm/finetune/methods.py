"""Fine-tuning methods as types, selected by name (`loss` in params.yaml's methods section).

Each method is one class: its knobs with their defaults and validation (extra knobs are
rejected), the model it trains, an optional init step, and its loss on a batch. The
trainer (drm.finetune.train) knows nothing about any particular method. To add one:
write a class here with `@register` and a distinct `loss` literal, then name it in
params.yaml's `methods`.

- erm: CE(df_logits, y) on a DualHeadClassifier (image tower + linear df/cd heads).
- lpft (LP-FT): erm from a df head fitted as a linear probe on frozen features, at lr x lr_scale.
- distill (control): CE(df, y) + lam * CE(df, p_df of the pre-trained model).
- drm: L_ERM + lam * L_WRM(cd_logits) with the core estimates of drm.zeroshot.core; L_ERM
  is CE on the df head (erm_term ce) or FLYP's contrastive loss (erm_term flyp: the whole
  CLIP trains, heads rebuilt from its text tower).
- flyp (FLYP): the CLIP contrastive loss between images and one prompt of their class.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import Field, model_validator

from drm.base.params import Strict
from drm.finetune import losses


@dataclass
class Batch:
    """One training step's inputs: images, labels, the core estimates for them, and the
    generator for FLYP's random template choice. Under torch.distributed this rank's images
    are `part` of a global batch of `global_size` (drm.finetune.train.GlobalBatches), and the
    FLYP term gathers every rank's features (`gather`)."""

    images: torch.Tensor
    y: torch.Tensor
    core: dict[str, torch.Tensor]
    text_generator: torch.Generator | None
    world: Any = None  # drm.base.distributed.World; None: one process
    global_size: int | None = None  # None: len(y)
    part: slice = field(default_factory=lambda: slice(None))

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of t in global-batch order, gradients flowing back (one process: t)."""
        if self.world is None or not self.world.distributed:
            return t
        from drm.base.distributed import all_gather_rows, all_gather_with_grad

        return all_gather_with_grad(t, self.world) if t.is_floating_point() else all_gather_rows(t, self.world)


@dataclass
class Setup:
    """What a method needs to build its model and run its init step."""

    pretrained: torch.nn.Module  # the pre-trained open_clip model (left untouched)
    heads: Any  # drm.zeroshot.heads.ZeroShotHeads
    texts: Any  # drm.zeroshot.heads.ClassTexts
    tokenizer: Any
    source: Any  # the DataSource
    train_split: str  # its training split's name
    eval_transform: Any  # the pre-trained model's eval transform (LP-FT's probe features)
    runtime: Any  # drm.base.params.RuntimeConfig
    progress: bool = True


class Method(Strict):
    """Knobs every method has. Subclasses set `loss` (their registered name) and override
    `batch_loss`; the defaults build a DualHeadClassifier and do nothing before training."""

    loss: str
    lr_scale: float = Field(1.0, gt=0, le=100)  # this method's lr = finetune.lr * lr_scale

    @model_validator(mode="before")
    @classmethod
    def _own_knobs_only(cls, data):
        # A knob of another method would be silently ignored: say which knobs this one has.
        if isinstance(data, dict):
            extra = sorted(set(data) - set(cls.model_fields))
            if extra:
                knobs = sorted(k for k in cls.model_fields if k != "loss")
                raise ValueError(f"{extra} have no effect with loss {data.get('loss')!r} "
                                 f"(its knobs: {knobs}); remove them")
        return data

    @property
    def trains_text_tower(self) -> bool:
        return False

    @property
    def leaves_parameters_unused(self) -> bool:
        """Whether the loss leaves some of the model's parameters out (the cd head of a
        dual-head method that uses only the df logits): DDP must then look for them."""
        return not self.trains_text_tower

    def learning_rate(self, base_lr: float) -> float:
        return base_lr * self.lr_scale

    def build_model(self, setup: Setup) -> torch.nn.Module:
        from drm.finetune.classifiers import DualHeadClassifier, TextTowerClassifier

        if self.trains_text_tower:
            return TextTowerClassifier(clip=copy.deepcopy(setup.pretrained), tokenizer=setup.tokenizer,
                                       texts=setup.texts)
        return DualHeadClassifier(visual=copy.deepcopy(setup.pretrained.visual), heads=setup.heads)

    def prepare(self, model: torch.nn.Module, setup: Setup) -> None:
        """An init step before training (LP-FT's probe); none by default."""

    def batch_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    name = cls.model_fields["loss"].default
    METHODS[name] = cls
    return cls


def _dual_head_logits(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    df_logits, cd_logits = model(batch.images)
    return df_logits.float(), cd_logits.float()


def flyp_term(model, batch: Batch, features: torch.Tensor) -> torch.Tensor:
    """FLYP's contrastive loss over the global batch: one prompt per image (its class, a
    random template, drawn for the global batch so every rank draws what one process draws),
    every rank's image and text features gathered. Each rank's copy of this loss is the
    global one; DDP's average of the gradients is then exactly the one-process gradient."""
    text = model.prompt_features(batch.y, batch.text_generator, drawn=batch.global_size, part=batch.part)
    return losses.flyp_contrastive(batch.gather(features), batch.gather(text), batch.gather(batch.y),
                                   model.logit_scale)


@register
class ERM(Method):
    loss: Literal["erm"] = "erm"

    def batch_loss(self, model, batch):
        df_logits, _ = _dual_head_logits(model, batch)
        return losses.erm_loss(df_logits, batch.y)


@register
class LPFT(ERM):
    loss: Literal["lpft"] = "lpft"
    lr_scale: float = Field(0.1, gt=0, le=100)
    lp_c: float = Field(1.0, gt=0)  # inverse L2 strength of the logistic-regression probe

    def prepare(self, model, setup):
        from drm.finetune.train import linear_probe_head

        split = setup.source.load(setup.train_split, setup.eval_transform)
        with torch.no_grad():
            model.df.copy_(linear_probe_head(model, split, n_classes=len(setup.source.classnames), c=self.lp_c,
                                             num_workers=setup.runtime.num_workers, progress=setup.progress))


@register
class Distill(Method):
    loss: Literal["distill"] = "distill"
    lam: float = Field(3.0, ge=0)
    # targets softmax(pre-trained df logits / temperature); 1: the pre-trained p_df itself
    temperature: float = Field(1.0, gt=0, le=10)

    def batch_loss(self, model, batch):
        df_logits, _ = _dual_head_logits(model, batch)
        return losses.distill_loss(df_logits, batch.y, batch.core, lam=self.lam, temperature=self.temperature)


@register
class DRM(Method):
    loss: Literal["drm"] = "drm"
    lam: float = Field(30.0, ge=0)
    estimator: Literal["weighted", "soft", "ratio"] = "soft"  # drm.zeroshot.core
    # soft estimator: targets softmax(pre-trained cd logits / temperature)
    temperature: float = Field(1.0, gt=0, le=10)
    # the ERM term: cross-entropy on the df head (ce) or FLYP's contrastive loss (flyp)
    erm_term: Literal["ce", "flyp"] = "ce"

    @model_validator(mode="after")
    def _temperature_needs_soft(self):
        if self.estimator != "soft" and "temperature" in self.model_fields_set:
            raise ValueError(f"temperature has no effect with estimator {self.estimator!r} (only soft); remove it")
        return self

    @property
    def trains_text_tower(self) -> bool:
        return self.erm_term == "flyp"

    @property
    def leaves_parameters_unused(self) -> bool:
        return False  # both heads (or the whole CLIP) are in its loss

    def wrm(self, cd_logits, batch):
        return losses.wrm_loss(cd_logits, batch.y, batch.core, estimator=self.estimator,
                               temperature=self.temperature)

    def batch_loss(self, model, batch):
        if self.erm_term == "flyp":
            features = model.features(batch.images)
            return flyp_term(model, batch, features) + self.lam * self.wrm(model.cd_logits(features), batch)
        df_logits, cd_logits = _dual_head_logits(model, batch)
        return losses.erm_loss(df_logits, batch.y) + self.lam * self.wrm(cd_logits, batch)


@register
class FLYP(Method):
    loss: Literal["flyp"] = "flyp"

    @property
    def trains_text_tower(self) -> bool:
        return True

    def batch_loss(self, model, batch):
        return flyp_term(model, batch, model.features(batch.images))


# The params.yaml type of one entry under `methods`: the class whose `loss` matches.
MethodSpec = Annotated[Union[tuple(METHODS.values())], Field(discriminator="loss")]


def default_methods() -> dict[str, Method]:
    """One method of each kind with its defaults, keyed by kind (params without `methods`)."""
    return {name: cls() for name, cls in METHODS.items()}
