"""The math, pinned on tiny tensors against direct computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drm.zeroshot.core import affinity_weights, ratio_weights, soft_targets
from drm.zeroshot.heads import text_head, zero_shot_logits
from drm.evaluate.metrics import (accuracy, dual_probs, group_accuracy, macro_f1, per_class_accuracy,
                                  worst_group_accuracy)
from drm.finetune.losses import distill_loss, erm_loss, wrm_loss
from drm.finetune.methods import DRM, Distill
from drm.finetune.wise import wise_state


def method_loss(df, cd, y, core, method):
    """A method's loss on a batch of (df, cd) logits, through the method itself."""
    class Logits(torch.nn.Module):
        def forward(self, _):
            return df, cd

    from drm.finetune.methods import Batch

    return method.batch_loss(Logits(), Batch(images=None, y=y, core=core, text_generator=None))


drm_loss = method_loss


class FakeTextModel:
    """encode_text maps token row -> a fixed vector, so heads can be computed by hand."""

    def __init__(self, table):
        self.table = table

    def encode_text(self, tokens):
        return torch.stack([self.table[int(t[0])] for t in tokens])


def fake_tokenizer(texts):
    return torch.tensor([[int(t.split()[-1])] for t in texts])


def test_text_head_normalises_averages_renormalises():
    table = {0: torch.tensor([3.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([1.0, 1.0])}
    head, truncated = text_head(FakeTextModel(table), fake_tokenizer, [["t 0", "t 1"], ["t 2"]])
    expected0 = F.normalize(F.normalize(table[0], dim=0) + F.normalize(table[1], dim=0), dim=0)
    assert torch.allclose(head[0], expected0)
    assert torch.allclose(head[1], F.normalize(table[2], dim=0))
    assert torch.allclose(head.norm(dim=1), torch.ones(2))
    assert truncated == [0, 0]


def test_zero_shot_logits_are_scaled_cosines():
    f = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    head = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    logits = zero_shot_logits(f, head, 10.0)
    assert torch.allclose(logits, torch.tensor([[10.0, 0.0], [10 / math.sqrt(2), 10 / math.sqrt(2)]]))


def test_affinity_normalisation_per_class_max_and_clamp():
    cd = torch.eye(2)
    feats = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.2], [0.0, 1.0], [0.5, 1.0]]), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1])
    w = affinity_weights(feats, cd, y)
    a = torch.tensor([feats[i] @ cd[y[i]] for i in range(5)])
    direct = []
    for i in range(5):
        best = max(a[j] for j in range(5) if y[j] == y[i])
        direct.append(min(max(float(a[i] / best), 0.0), 1.0))
    assert torch.allclose(w, torch.tensor(direct))
    assert w[2] == 0.0  # negative cosine clamps to 0
    assert w[0] == 1.0 and w[3] == 1.0  # the best of each class gets 1


def test_ratio_weights_and_clip():
    cd = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    df = torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 0])
    w = ratio_weights(cd, df, y, clip=5.0)
    p_c0 = math.exp(2) / (math.exp(2) + 1)
    assert w[0].item() == pytest.approx(p_c0 / 0.5, rel=1e-5)
    p_df1 = 1 / (1 + math.exp(5))
    assert w[1].item() == pytest.approx(min(0.5 / p_df1, 5.0))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    df = torch.randn(6, 4, generator=g)
    cd = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    core = {"weighted": torch.rand(6, generator=g), "ratio": torch.rand(6, generator=g) * 3,
            "soft": torch.softmax(torch.randn(6, 4, generator=g), -1),
            "df_soft": torch.softmax(torch.randn(6, 4, generator=g), -1)}
    return df, cd, y, core


def _ce(logits, y):
    return -np.log(np.exp(logits[y]) / np.exp(logits).sum())


def test_erm_is_cross_entropy_on_df(batch):
    df, cd, y, core = batch
    direct = np.mean([_ce(df[i].numpy().astype(float), y[i]) for i in range(6)])
    assert erm_loss(df, y).item() == pytest.approx(direct, rel=1e-5)


@pytest.mark.parametrize("estimator", ["weighted", "ratio"])
def test_drm_weighted_estimators(batch, estimator):
    df, cd, y, core = batch
    lam = 0.7
    erm = np.mean([_ce(df[i].numpy().astype(float), y[i]) for i in range(6)])
    wrm = np.mean([core[estimator][i].item() * _ce(cd[i].numpy().astype(float), y[i]) for i in range(6)])
    got = drm_loss(df, cd, y, core, DRM(lam=lam, estimator=estimator)).item()
    assert got == pytest.approx(erm + lam * wrm, rel=1e-5)


def test_drm_soft_estimator_targets_pretrained_cd_distribution(batch):
    df, cd, y, core = batch
    erm = np.mean([_ce(df[i].numpy().astype(float), y[i]) for i in range(6)])
    logp = torch.log_softmax(cd.double(), -1).numpy()
    wrm = np.mean([-(core["soft"][i].double().numpy() * logp[i]).sum() for i in range(6)])
    got = drm_loss(df, cd, y, core, DRM(lam=2.0, estimator="soft")).item()
    assert got == pytest.approx(erm + 2.0 * wrm, rel=1e-5)


def test_distill_uses_df_head_only(batch):
    df, cd, y, core = batch
    a = method_loss(df, cd, y, core, Distill(lam=1.0))
    b = method_loss(df, cd * 0 + 100, y, core, Distill(lam=1.0))
    assert a.item() == pytest.approx(b.item())
    logp = torch.log_softmax(df.double(), -1).numpy()
    kd = np.mean([-(core["df_soft"][i].double().numpy() * logp[i]).sum() for i in range(6)])
    erm = np.mean([_ce(df[i].numpy().astype(float), y[i]) for i in range(6)])
    assert a.item() == pytest.approx(erm + kd, rel=1e-5)


def test_soft_targets_are_softmax():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(soft_targets(logits), torch.softmax(logits, -1))


def test_dual_inference_mixture():
    df = torch.tensor([[4.0, 0.0], [0.0, 0.1]])
    cd = torch.tensor([[0.0, 1.0], [0.0, 6.0]])
    p = dual_probs(df, cd, 0.25)
    assert torch.allclose(p, 0.25 * df.softmax(-1) + 0.75 * cd.softmax(-1))
    assert torch.allclose(p.sum(-1), torch.ones(2))
    assert torch.equal(dual_probs(df, cd, 1.0).argmax(-1), df.argmax(-1))
    assert torch.equal(dual_probs(df, cd, 0.0).argmax(-1), cd.argmax(-1))


def test_metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 0, 3])  # class 3 predicted but absent from the truth
    assert accuracy(y, p) == pytest.approx(3 / 6)
    # macro-F1 over classes present in y only: F1 = 0.5, 0.8, 0 (class 3 not averaged in)
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert per_class_accuracy(y, p) == {0: 0.5, 1: 1.0, 2: 0.0}
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert group_accuracy(y, p, groups) == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}
    assert worst_group_accuracy(y, p, groups) == pytest.approx(1 / 3)


def test_wise_interpolates_floats_only():
    z = {"w": torch.zeros(3), "n": torch.tensor(1)}
    f = {"w": torch.ones(3) * 2, "n": torch.tensor(7)}
    out = wise_state(z, f, 0.25)
    assert torch.allclose(out["w"], torch.full((3,), 0.5))
    assert out["n"].item() == 7
    assert torch.allclose(wise_state(z, f, 0.0)["w"], z["w"])


def _logit_table(split, y, df, cd):

    from drm.base.tables import logits_table

    meta = __import__("pandas").DataFrame({"id": [f"{split}{i}" for i in range(len(y))], "y": y})
    return logits_table(split, meta, torch.tensor(df, dtype=torch.float32), torch.tensor(cd, dtype=torch.float32))


def test_select_beta_picks_the_mixture_best_on_validation():
    import pyarrow as pa

    from drm.evaluate.run import select_beta

    # id_val: df confidently right, cd mildly wrong; ood_val: df mildly wrong, cd confidently right.
    y = np.array([0, 1, 0, 1])
    right = np.eye(2)[y] * 6
    wrong = np.eye(2)[1 - y] * 1
    t = pa.concat_tables([_logit_table("id_val", y, right, wrong), _logit_table("ood_val", y, wrong, right)])
    assert select_beta([t], [0.0, 0.5, 1.0], ("id_val", "ood_val")) == 0.5  # both splits right
    # make the df head wrong everywhere: the best beta gives it no weight
    t2 = pa.concat_tables([_logit_table("id_val", y, wrong * 6, right), _logit_table("ood_val", y, wrong * 6, right)])
    assert select_beta([t2], [0.0, 0.5, 1.0], ("id_val", "ood_val")) == 0.0
    # cd is better on OOD but costs ID: the ID tolerance decides
    t3 = pa.concat_tables([_logit_table("id_val", y, right, np.eye(2)[[0, 1, 1, 1]] * 6),
                           _logit_table("ood_val", y, wrong, right)])
    assert select_beta([t3], [0.0, 1.0], ("id_val", "ood_val"), id_tolerance=1.0) == 1.0
    assert select_beta([t3], [0.0, 1.0], ("id_val", "ood_val"), id_tolerance=30.0) == 0.0


def test_linear_probe_head_reproduces_probe_logits():
    """LP-FT's head: logit_scale * f @ W.T ranks classes as the fitted probe does."""
    import pandas as pd

    from drm.datasets.base import Split
    from drm.finetune.train import linear_probe_head
    from drm.finetune.classifiers import DualHeadClassifier
    from drm.zeroshot.heads import ZeroShotHeads

    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 4, generator=g) * 0.3
    x[torch.arange(60), y] += 2.0  # class c lights up feature c
    ds = torch.utils.data.TensorDataset(x, y)
    split = Split("train", "train", pd.DataFrame({"id": [str(i) for i in range(60)], "y": y.numpy()}), ds)
    heads = ZeroShotHeads(df_head=torch.zeros(3, 4), cd_head=torch.zeros(3, 4), logit_scale=20.0)
    model = DualHeadClassifier(visual=torch.nn.Identity(), heads=heads)
    model.df.data = linear_probe_head(model, split, n_classes=3, c=10.0, progress=False)
    df, _ = model(x)
    assert (df.argmax(-1) == y).float().mean() > 0.95


def test_soft_targets_temperature_is_softmax_of_scaled_logits(batch):
    """temperature T: targets softmax(cd_pretrained / T), from the stored p_c; distill's
    control gets the same knob on p_df."""
    from drm.finetune.losses import sharpen, soft_cross_entropy

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    p = logits.softmax(-1)
    assert torch.allclose(sharpen(p, 0.5), (logits / 0.5).softmax(-1), atol=1e-6)
    assert torch.equal(sharpen(p, 1.0), p)
    df, cd, y, core = batch
    got = drm_loss(df, cd, y, core, DRM(lam=1.0, estimator="soft", temperature=0.25)).item()
    want = F.cross_entropy(df, y) + soft_cross_entropy(cd, sharpen(core["soft"], 0.25))
    assert got == pytest.approx(want.item(), rel=1e-5)
    assert got != pytest.approx(drm_loss(df, cd, y, core, DRM(estimator="soft")).item(), rel=1e-3)
    got = distill_loss(df, y, core, lam=1.0, temperature=0.25).item()
    want = F.cross_entropy(df, y) + soft_cross_entropy(df, sharpen(core["df_soft"], 0.25))
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_comparison_table_is_method_minus_baseline_per_head_and_alpha():
    import pandas as pd

    from drm.report.run import comparison_table

    rows = []
    for method, acc in (("drm", {"id_test": 0.90, "ood_test": 0.80}), ("erm", {"id_test": 0.95, "ood_test": 0.70})):
        for seed in (0, 1):
            for split, a in acc.items():
                for head in ("df", "cd", "dual"):
                    rows.append({"method": method, "seed": seed, "alpha": 1.0, "split": split, "head": head,
                                 "accuracy": a + (0.02 if seed else 0.0)})
    text = comparison_table(pd.DataFrame(rows), [["drm", "erm"], ["drm", "distill"]], "id_test", "ood_test")
    line = next(ln for ln in text.splitlines() if "| dual |" in ln)
    assert "| drm vs erm | 1 | dual | -5.0 | +10.0 | 91.0 vs 96.0 | 81.0 vs 71.0 |" == line
    assert "| 0.5 |" not in text  # no WiSE-FT rows in these metrics
    assert "Skipped (method not in this run): drm vs distill" in text
