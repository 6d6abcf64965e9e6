"""Resumable fine-tuning: a run killed (SIGKILL) after a checkpoint and rerun ends bit-identical
to a run never interrupted: weights, predictions and training curves (CPU, fixed seed). The
refusal rules (other method, params, architecture) and a full disk: tests/test_faults.py."""
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import copy_project, hang_env, kill_when_hung


def _finetune(proj, method, out, env, **popen):
    cmd = [sys.executable, "stages/finetune.py", "--method", method, "--seed", "0", "--zeroshot", "data/zeroshot",
           "--descriptions", "data/descriptions.json", "--out", out, "--checkpoints", "checkpoints"]
    return subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _done(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return err


def test_epoch_sampler_draws_exactly_as_a_shuffling_dataloader():
    """The sampler replaces DataLoader(shuffle=True, generator=g): same order every epoch and
    the same generator state after it (the default pipeline's numbers do not change)."""
    from drm.finetune.train import EpochSampler

    data = list(range(10))
    for batch_size in (3, 16):  # drop_last (n > batch) and one partial batch
        g_old, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        old = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=10 > batch_size, generator=g_old)
        new = DataLoader(data, batch_size=batch_size, sampler=EpochSampler(10, g_new), drop_last=10 > batch_size,
                         generator=g_new)
        for _ in range(3):
            assert [b.tolist() for b in old] == [b.tolist() for b in new]
            assert torch.equal(g_old.get_state(), g_new.get_state())


@pytest.mark.slow
def test_killed_run_resumes_bit_identical(zeroshot_project, tmp_path):
    """`dvc repro finetune@drm_flyp-0`, its stages/finetune.py process SIGKILLed by pid after a
    checkpoint, then `dvc repro` again: the run resumes and ends as one never interrupted."""
    src, env = zeroshot_project
    proj = copy_project(src, tmp_path / "proj")
    # The uninterrupted run trains meanwhile, in a copy of the project (its own checkpoints).
    other = copy_project(src, tmp_path / "other")
    uninterrupted = _finetune(other, "drm_flyp", "runs/drm_flyp-s0", env)
    # 6 steps (3 per epoch), a checkpoint every 2: killed while publishing the one at step 4, so
    # last.pt is the one at step 2, mid-epoch 0, and steps 3-4 are lost and redone.
    hung_env, marker = hang_env(tmp_path, "last.pt:2", env)
    killed = subprocess.Popen(["dvc", "repro", "finetune@drm_flyp-0"], cwd=proj, env=hung_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_when_hung(marker, killed)
    assert killed.returncode != 0
    ckpt = proj / "checkpoints" / "drm_flyp-s0"
    assert (ckpt / "last.pt").exists() and not (proj / "runs/drm_flyp-s0/model.safetensors").exists()
    status = subprocess.run(["dvc", "status", "finetune@drm_flyp-0"], cwd=proj, env=env, capture_output=True,
                            text=True)
    assert "finetune@drm_flyp-0" in status.stdout, status.stdout + status.stderr

    r = subprocess.run(["dvc", "repro", "finetune@drm_flyp-0"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = "finetune: resuming drm_flyp seed 0 from step 2 of 6 (checkpoints/drm_flyp-s0/last.pt)"
    assert line in r.stdout + r.stderr, r.stdout + r.stderr
    assert not ckpt.exists()  # removed once the run is complete
    _done(uninterrupted)
    assert not (other / "checkpoints" / "drm_flyp-s0").exists()

    from safetensors.torch import load_file

    run, ref = proj / "runs/drm_flyp-s0", other / "runs/drm_flyp-s0"
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert pq.read_table(ref / "predictions.parquet").equals(pq.read_table(run / "predictions.parquet"))
    # DVC deleted the curves (a plots output) before the rerun; they came back from the
    # checkpoint and continue where it was: no step lost or repeated
    curves = Path("live/plots/metrics/train/loss.tsv")
    assert (ref / curves).read_text() == (run / curves).read_text()
    assert len((run / curves).read_text().splitlines()) == 1 + 6
