"""FLYP (the contrastive baseline) and DRM with the FLYP term: the loss, the whole-CLIP
model whose heads are rebuilt from its text tower, and WiSE-FT over both towers."""
import copy

import pytest
import torch
import torch.nn.functional as F

from drm.finetune.losses import flyp_contrastive, soft_cross_entropy
from drm.finetune.methods import DRM, ERM, FLYP, Batch
from drm.zeroshot.heads import ClassTexts, ZeroShotHeads

ARCH = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
CLASSES = ["circle", "square", "star"]
TEMPLATES = ["a photo of a {c}.", "a drawing of a {c}."]
DESCRIPTIONS = [["a round edge", "no corners"], ["four equal sides"], ["five spikes", "sharp tips", "a spiky outline"]]


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    import open_clip

    from drm.base.clip import build_clip

    torch.manual_seed(0)
    model = build_clip(ARCH).eval()
    return model, open_clip.tokenizer.SimpleTokenizer(context_length=16)


TEXTS = ClassTexts(df_texts=ClassTexts.build(classnames=CLASSES, templates=TEMPLATES,
                                             descriptions=dict(zip(CLASSES, DESCRIPTIONS))).df_texts,
                   cd_texts=DESCRIPTIONS)


def _tower(clip_and_tokenizer):
    from drm.finetune.classifiers import TextTowerClassifier

    clip, tok = clip_and_tokenizer
    return TextTowerClassifier(clip=copy.deepcopy(clip), tokenizer=tok, texts=TEXTS)


def test_flyp_contrastive_matches_the_symmetric_clip_loss_with_class_positives():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    got = flyp_contrastive(img, txt, y, torch.tensor(10.0))
    logits = 10 * img @ txt.t()
    # by hand: row i's target is uniform over the batch entries of class y_i
    loss_i = [-(logits[i].log_softmax(-1)[y == y[i]]).mean() for i in range(6)]
    loss_t = [-(logits.t()[j].log_softmax(-1)[y == y[j]]).mean() for j in range(6)]
    expected = 0.5 * (torch.stack(loss_i).mean() + torch.stack(loss_t).mean())
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # with one sample per class it is the plain CLIP loss (diagonal targets)
    y3 = torch.arange(6)
    plain = 0.5 * (F.cross_entropy(logits, y3) + F.cross_entropy(logits.t(), y3))
    assert flyp_contrastive(img, txt, y3, torch.tensor(10.0)).item() == pytest.approx(plain.item(), rel=1e-5)


def test_flyp_contrastive_rewards_images_aligned_with_their_class_text():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    txt = torch.eye(3)[y]
    aligned = flyp_contrastive(torch.eye(3)[y], txt, y, torch.tensor(10.0))
    shuffled = flyp_contrastive(torch.eye(3)[(y + 1) % 3], txt, y, torch.tensor(10.0))
    assert aligned < shuffled


def test_text_tower_model_starts_as_the_zero_shot_model(clip_and_tokenizer):
    """Its heads are built as the zeroshot stage builds them: same logits as a
    DualHeadClassifier over the zeroshot heads (so WiSE-FT alpha 0 = zero-shot)."""
    from drm.finetune.classifiers import DualHeadClassifier
    from drm.zeroshot.heads import text_head

    clip, tok = clip_and_tokenizer
    df, _ = text_head(clip, tok, TEXTS.df_texts)
    cd, _ = text_head(clip, tok, DESCRIPTIONS)
    heads = ZeroShotHeads(df_head=df, cd_head=cd, logit_scale=float(clip.logit_scale.detach().exp()))
    reference = DualHeadClassifier(visual=copy.deepcopy(clip.visual), heads=heads).eval()
    model = _tower(clip_and_tokenizer).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(model(x), reference(x)):
            assert torch.allclose(a, b, atol=1e-4)


def _batch(x, y, core):
    return Batch(images=x, y=y, core=core, text_generator=torch.Generator().manual_seed(0))


def _train_steps(model, method, steps=3):
    from drm.finetune.train import param_groups

    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 32, 32, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    core = {"soft": torch.full((6, 3), 1 / 3)}
    model.train()
    for _ in range(steps):
        loss = method.batch_loss(model, _batch(x, y, core))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x, loss


def test_flyp_trains_both_towers_and_the_temperature(clip_and_tokenizer):
    model = _tower(clip_and_tokenizer)
    before = copy.deepcopy(model.state_dict())
    model, x, _ = _train_steps(model, FLYP())
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert any(k.startswith("clip.visual.") for k in changed)
    assert any(k.startswith("clip.transformer.") for k in changed)  # the text tower trains
    assert "clip.logit_scale" in changed
    # heads follow the text tower: eval logits now differ from a model with the old text tower
    stale = _tower(clip_and_tokenizer)
    stale.clip.visual.load_state_dict(model.clip.visual.state_dict())
    stale.clip.logit_scale.data = model.clip.logit_scale.data.clone()
    with torch.no_grad():
        assert not torch.allclose(model(x)[0], stale.eval()(x)[0])


def test_drm_with_flyp_term_adds_the_core_risk_on_the_cd_head(clip_and_tokenizer):
    model = _tower(clip_and_tokenizer).train()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    target = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(3)), -1)
    core = {"soft": target}
    flyp = FLYP().batch_loss(model, _batch(x, y, core))
    drm = DRM(lam=2.0, estimator="soft", erm_term="flyp").batch_loss(model, _batch(x, y, core))
    f = model.features(x)
    expected_wrm = soft_cross_entropy(model.cd_logits(f), target)
    assert (drm - flyp).item() == pytest.approx(2.0 * expected_wrm.item(), rel=1e-4)


def test_prompt_features_embed_a_template_of_each_images_own_class(clip_and_tokenizer):
    clip, tok = clip_and_tokenizer
    model = _tower(clip_and_tokenizer).eval()
    y = torch.tensor([2, 0, 1, 2, 1])
    with torch.no_grad():
        got = model.prompt_features(y, torch.Generator().manual_seed(0))
        options = {c: F.normalize(clip.encode_text(tok([t.format(c=name) for t in TEMPLATES])), dim=-1)
                   for c, name in enumerate(CLASSES)}
    for i, c in enumerate(y.tolist()):
        # the embedding of one of its own class's prompts, and of no other class's
        assert min((got[i] - o).abs().max() for o in options[c]) < 1e-5
        assert all((got[i] - o).abs().max() > 1e-3 for k in options if k != c for o in options[k])


def test_wise_ft_of_the_text_tower_model_rebuilds_heads(clip_and_tokenizer):
    from drm.finetune.wise import wise_state
    from drm.zeroshot.heads import text_head

    zero = _tower(clip_and_tokenizer)
    zs_state = copy.deepcopy(zero.state_dict())
    model, x, _ = _train_steps(_tower(clip_and_tokenizer), FLYP())
    ft_state = copy.deepcopy(model.state_dict())
    m = _tower(clip_and_tokenizer).eval()
    with torch.no_grad():
        m.load_state_dict(wise_state(zs_state, ft_state, 0.0))
        z0 = m(x)
        m.load_state_dict(wise_state(zs_state, ft_state, 1.0))  # must drop the cached heads
        z1 = m(x)
        zero_logits, ft_logits = zero.eval()(x), model(x)
    assert torch.allclose(z0[0], zero_logits[0], atol=1e-5) and torch.allclose(z0[1], zero_logits[1], atol=1e-5)
    assert torch.allclose(z1[0], ft_logits[0], atol=1e-5) and torch.allclose(z1[1], ft_logits[1], atol=1e-5)
    # alpha 0.5: the heads are those the zeroshot stage would build from the interpolated CLIP
    with torch.no_grad():
        m.load_state_dict(wise_state(zs_state, ft_state, 0.5))
        half = m(x)
        _, tok = clip_and_tokenizer
        df, _ = text_head(m.clip, tok, TEXTS.df_texts)
        cd, _ = text_head(m.clip, tok, DESCRIPTIONS)
        f = m.features(x)
    assert torch.allclose(half[0], m.logit_scale * f @ df.t(), atol=1e-4)
    assert torch.allclose(half[1], m.logit_scale * f @ cd.t(), atol=1e-4)
    assert not torch.allclose(half[0], z1[0], atol=1e-3)


def test_predict_gives_each_wise_alpha_its_own_heads(clip_and_tokenizer, tmp_path):
    """finetune.predict on a trained text-tower model: alpha 1 = the trained model's logits,
    and alpha 0.5 differs from it (each alpha's heads rebuilt, not a stale cache)."""
    import pandas as pd

    from drm.datasets.base import Split
    from drm.finetune.wise import predict

    zero = _tower(clip_and_tokenizer)
    zs_state = copy.deepcopy(zero.state_dict())
    model, x, _ = _train_steps(_tower(clip_and_tokenizer), FLYP())
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    class Source:
        splits = {"train": "train", "ood_val": "ood"}
        classnames = ["a", "b", "c"]

        def load(self, name, transform=None):
            meta = pd.DataFrame({"id": [f"{name}{i}" for i in range(6)], "y": y.numpy()})
            return Split(name, self.splits[name], meta, torch.utils.data.TensorDataset(x, y))

    import pyarrow.parquet as pq

    predict(model, zeroshot_state=zs_state, source=Source(), transform=None, alphas=[0.5, 1.0],
            out_path=tmp_path / "all.parquet", batch_size=4, progress=False)
    table = pq.read_table(tmp_path / "all.parquet").to_pandas()
    # one model held at a time (runtime.wise_models_at_once: 1): the same predictions
    predict(model, zeroshot_state=zs_state, source=Source(), transform=None, alphas=[0.5, 1.0],
            out_path=tmp_path / "one.parquet", batch_size=4, progress=False, models_at_once=1)
    assert pq.read_table(tmp_path / "one.parquet").equals(pq.read_table(tmp_path / "all.parquet"))
    with torch.no_grad():
        ft_df = model.eval()(x)[0]
    import numpy as np

    got1 = torch.tensor(np.stack(table[table.alpha == 1.0].df.to_list()))
    got05 = torch.tensor(np.stack(table[table.alpha == 0.5].df.to_list()))
    assert torch.allclose(got1, ft_df, atol=1e-4)
    assert not torch.allclose(got05, got1, atol=1e-3)


def test_each_method_declares_only_its_own_knobs():
    from drm.finetune.methods import METHODS, Distill

    assert DRM(erm_term="flyp").trains_text_tower
    assert FLYP().trains_text_tower
    assert not DRM().trains_text_tower and not ERM().trains_text_tower
    with pytest.raises(ValueError, match="erm_term"):
        ERM(erm_term="flyp")
    with pytest.raises(ValueError, match="lam"):
        FLYP(lam=3.0)
    assert {"erm", "lpft", "distill", "drm", "flyp"} <= set(METHODS)
    assert set(Distill.model_fields) == {"loss", "lr_scale", "lam", "temperature"}


def test_the_trainer_has_no_per_method_branches():
    """Method names appear in drm/finetune/methods.py only: the loop asks the method."""
    from pathlib import Path

    import drm.finetune.train as train

    source = Path(train.__file__).read_text()
    for name in ('"erm"', '"drm"', '"lpft"', '"flyp"', '"distill"', "TextTowerClassifier)"):
        assert name not in source, name


def test_chunked_checkpointed_heads_give_the_same_loss_and_gradients(clip_and_tokenizer):
    """Many descriptions: the cd head is built in gradient-checkpointed chunks; the loss and
    every gradient equal those of the one-shot build."""
    grads = []
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for chunk in (1000, 2):
        model = _tower(clip_and_tokenizer).train()
        model.text_chunk = chunk
        loss = model.cd_logits(model.features(x)).logsumexp(-1).mean()
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (l1, g1), (l2, g2) = grads
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert g1.keys() == g2.keys() and any(k.startswith("clip.transformer.") for k in g1)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], atol=1e-5, rtol=1e-4), k
