"""Diagnostics measure what they claim on controlled inputs."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from drm.world.config import WorldConfig
from drm.diagnostics.probes import core_information, linear_probe, swap_pairs, swap_sensitivity, transfer_probe
from drm.diagnostics.problem import problem_exists


def test_swap_pairs_change_only_what_they_say():
    base, noncore, obj, y = swap_pairs(WorldConfig(), n=20, seed=0)
    assert base.shape == noncore.shape == obj.shape == (20, 32, 32, 3)
    # the object swap keeps the background: corner pixels agree (same noise draw)
    assert np.abs(base[:, 0, 0].astype(int) - obj[:, 0, 0].astype(int)).max() <= 1
    # the non-core swap changes the background colour
    assert (np.abs(base[:, 0, 0].astype(int) - noncore[:, 0, 0].astype(int)).sum(-1) > 20).mean() > 0.8


def test_swap_sensitivity_separates_a_colour_detector_from_a_shape_detector():
    """An encoder that only sees the corner (background) colour: its affinities move with
    the non-core swap and not with the object swap."""
    def encode(x):
        return x[:, :, 0, 0] + 0.01

    heads = (torch.nn.functional.normalize(torch.randn(8, 3), dim=-1),) * 2
    tf = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255)
    out = swap_sensitivity(encode, tf, heads, WorldConfig(), n=50)
    assert out["df"]["delta_noncore"] > 10 * out["df"]["delta_object"]


def test_linear_probe_finds_a_linear_signal():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 5))
    x[:, 0] += 4 * y
    assert linear_probe(x, y) > 0.9
    assert linear_probe(rng.normal(size=(300, 5)), y) < 0.6


def test_transfer_probe_scores_new_samples_and_handles_none():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 5))
    x[:, 0] += 4 * y
    assert transfer_probe(x[:200], y[:200], x[200:201], y[200:201]) in (0.0, 1.0)  # one sample is enough
    assert transfer_probe(x[:200], y[:200], x[200:], y[200:]) > 0.9
    assert transfer_probe(x[:200], y[:200], x[200:], (y[200:] + 1) % 3) < 0.2
    assert transfer_probe(x[:200], y[:200], x[:0], y[:0]) is None


def test_core_information_groups(tmp_path):
    ids = [f"s{i}" for i in range(4)]
    soft = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    pq.write_table(pa.table({
        "id": ids, "y": np.array([0, 1, 0, 1], np.int32), "weighted": np.array([1, 0.8, 0.4, 0.2], np.float32),
        "ratio": np.ones(4, np.float32)}), tmp_path / "core.parquet")
    from drm.zeroshot.store import RowsFile

    rows = RowsFile(tmp_path / "core_soft.npy", n=4, width=2)
    rows.append(soft)
    rows.close()
    # meta in another order than core.parquet: matched by id
    meta = pd.DataFrame({"id": ids[::-1], "bg_match": [False, False, True, True],
                         "clarity": ["small", "faint", "clear", "clear"]})
    out = core_information(tmp_path, meta)
    assert abs(out["bg_match"]["True"]["weighted"] - 0.9) < 1e-6
    assert abs(out["clear"]["False"]["soft_p_true"] - 0.65) < 1e-6
    assert abs(out["clear_minus_unclear"]["weighted"] - 0.6) < 1e-6


def test_problem_exists_reads_val_splits(tmp_path):
    rows = []
    for method, alpha, id_acc, ood_acc in (("zeroshot", 0.0, 0.9, 0.8), ("erm", 1.0, 0.95, 0.7)):
        for head in ("df", "dual"):
            rows += [{"method": method, "alpha": alpha, "split": "id_val", "head": head, "accuracy": id_acc},
                     {"method": method, "alpha": alpha, "split": "ood_val", "head": head, "accuracy": ood_acc},
                     {"method": method, "alpha": alpha, "split": "ood_test", "head": head, "accuracy": 1.0}]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    out = problem_exists(tmp_path / "m.csv")
    assert out["dual"]["erm_gains_id"] and out["dual"]["erm_loses_ood"]
    assert out["df"]["erm"]["ood_val"] == 0.7
