"""One run on many processes equals one process: 2 gloo workers, each with half of every
global batch, end with the same weights as 1 process with the whole batch, for erm, drm and
drm_flyp; sharded zeroshot writes the same files (byte for byte) as one process. erm and
drm_flyp run under the stage's own elastic launch (runtime.nproc_per_node: 2); drm as two
"nodes" of one process each, two `torchrun --nnodes 2` commands meeting at a c10d
rendezvous, as the README's multi-node command starts them.

The pre-trained model here is a tiny ViT: the embedded default's ResNet tower has BatchNorm,
whose batch statistics are per rank on CPU (SyncBatchNorm needs CUDA), so it is not
equivalent by construction; LayerNorm towers (every CLIP ViT) are."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import make_project, run_stages, tiny_params_dict

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["erm", "drm", "drm_flyp"]
TINY_VIT = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _stage_env(proj: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(proj), "DRM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _run(proj: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], cwd=proj, env=_stage_env(proj), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.fixture(scope="module")
def vit_project(tmp_path_factory):
    params = tiny_params_dict()
    params["world"].update({"n_pretrain": 256, "n_train": 64})
    params["pretrain"].update({"arch": TINY_VIT, "steps": 2, "warmup": 1, "batch_size": 64})
    # 2 epochs of 4 global batches of 16: 8 steps, the lr still high when they end
    params["finetune"].update({"methods": METHODS, "epochs": 2, "batch_size": 16, "warmup_steps": 1, "lr": 1e-3})
    params["runtime"].update({"threads": 1, "checkpoint_steps": 0, "checkpoint_minutes": 0})
    proj = make_project(tmp_path_factory.mktemp("ddp") / "proj", params, code=True)
    shutil.copytree(ROOT / "descriptions", proj / "descriptions", dirs_exist_ok=True)
    threads = torch.get_num_threads()
    try:
        run_stages(proj, ["world", "pretrain", "describe", "zeroshot"])
    finally:
        torch.set_num_threads(threads)
    two = yaml.safe_load((proj / "params.yaml").read_text())
    two["runtime"]["nproc_per_node"] = 2
    (proj / "params2.yaml").write_text(yaml.safe_dump(two))
    return proj


def test_sharded_zeroshot_writes_the_files_one_process_writes(vit_project):
    proj = vit_project
    r = _run(proj, "stages/zeroshot.py", "--params", "params2.yaml", "--descriptions", "data/descriptions.json",
             "--out", "data/zeroshot2")
    assert r.stdout.count("zeroshot: {") == 1, r.stdout  # rank 0 alone reports
    one, two = _digests(proj / "data/zeroshot"), _digests(proj / "data/zeroshot2")
    assert {"logits.parquet", "core.parquet", "core_soft.npy", "df_soft.npy", "heads.safetensors"} <= set(one)
    assert one == two


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _run_two_nodes(proj: Path, *args: str) -> None:
    """`torchrun --nnodes 2 --nproc-per-node 1` started twice, as on two nodes sharing the
    project folder: the c10d rendezvous gives them ranks 0 and 1."""
    from tests.flow_helpers import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "two-nodes",
           "--max-restarts", "0", *args]
    nodes = [subprocess.Popen(cmd, cwd=proj, env=_stage_env(proj), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n----\n".join(o[-4000:] for o in outs)


@pytest.mark.parametrize("method", METHODS)
def test_two_gloo_processes_train_the_weights_one_process_trains(vit_project, method):
    proj = vit_project
    common = ["--method", method, "--seed", "0", "--zeroshot", "data/zeroshot", "--descriptions",
              "data/descriptions.json"]
    _run(proj, "stages/finetune.py", *common, "--out", f"runs/one-{method}")
    if method == "drm":  # the multi-node launch (README: "Many GPUs"), here two nodes on one machine
        _run_two_nodes(proj, "stages/finetune.py", *common, "--out", f"runs/two-{method}")
    else:
        _run(proj, "stages/finetune.py", "--params", "params2.yaml", *common, "--out", f"runs/two-{method}")
    one, two = _weights(proj / f"runs/one-{method}/model.safetensors"), _weights(proj / f"runs/two-{method}/model.safetensors")
    start = _weights(proj / "models/pretrained/open_clip_model.safetensors")
    assert one.keys() == two.keys()
    moved = 0.0
    for k in one:
        # Float tolerance for AdamW: the two runs sum the same gradients in another order, and
        # where a gradient is zero in exact arithmetic (attention's key bias) Adam turns that
        # rounding noise into steps of up to ~lr x 1e-2 (|g| ~ 1e-10 against eps 1e-8): 8 steps at
        # lr 1e-3 stay below 2e-4. A wrong batch or an unsynchronised gradient moves weights by
        # the size of training itself (~5e-3 here; a per-rank augmentation stream gave 7e-3).
        assert torch.allclose(one[k], two[k], rtol=1e-3, atol=2e-4), (k, (one[k] - two[k]).abs().max())
        base = start.get(k.removeprefix("clip.")) if k.startswith("clip.") else start.get(k)
        if base is not None and base.shape == one[k].shape:
            moved = max(moved, float((one[k] - base).abs().max()))
    # training moved the weights far more than the tolerance: the comparison can fail
    assert moved > 1e-3
    import json

    info = json.loads((proj / f"runs/two-{method}/run.json").read_text())
    assert info["processes"] == 2
    import pyarrow.parquet as pq

    p1, p2 = pq.read_table(proj / f"runs/one-{method}/predictions.parquet"), pq.read_table(
        proj / f"runs/two-{method}/predictions.parquet")
    assert p1.column("id").equals(p2.column("id")) and p1.column("alpha").equals(p2.column("alpha"))
    d1 = torch.tensor(p1.column("df").combine_chunks().values.to_numpy())
    d2 = torch.tensor(p2.column("df").combine_chunks().values.to_numpy())
    assert torch.allclose(d1, d2, rtol=1e-3, atol=1e-3)


def test_accumulation_is_the_whole_batch_for_cross_entropy(vit_project):
    """erm with 2 micro-batches per step ends where erm with whole batches ends (the CE mean
    over the batch is the mean of the micro-batch means); the text-tower FLYP term is not
    covered by this (docs/scale.md)."""
    proj = vit_project
    acc = yaml.safe_load((proj / "params.yaml").read_text())
    acc["finetune"]["accum_steps"] = 2
    (proj / "params_acc.yaml").write_text(yaml.safe_dump(acc))
    common = ["--method", "erm", "--seed", "0", "--zeroshot", "data/zeroshot", "--descriptions",
              "data/descriptions.json"]
    if not (proj / "runs/one-erm/model.safetensors").exists():
        _run(proj, "stages/finetune.py", *common, "--out", "runs/one-erm")
    _run(proj, "stages/finetune.py", "--params", "params_acc.yaml", *common, "--out", "runs/acc-erm")
    one, acc = _weights(proj / "runs/one-erm/model.safetensors"), _weights(proj / "runs/acc-erm/model.safetensors")
    for k in one:
        assert torch.allclose(one[k], acc[k], rtol=1e-3, atol=2e-4), (k, (one[k] - acc[k]).abs().max())


def test_core_estimates_are_read_by_rows_in_meta_order(vit_project):
    """The streamed C-wide targets are the pre-trained softmax of logits.parquet's training
    rows, bit for bit, and CoreEstimates returns each sample's own rows when the training
    split's order differs from core.parquet's."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from drm.zeroshot.core import ratio_weights
    from drm.zeroshot.store import CoreEstimates

    zs = vit_project / "data/zeroshot"
    logits = pq.read_table(zs / "logits.parquet").to_pandas()
    train = logits[logits["split"] == "train"].reset_index(drop=True)
    cd = torch.tensor(np.stack(train["cd"].to_list()))
    df = torch.tensor(np.stack(train["df"].to_list()))
    y = torch.tensor(train["y"].to_numpy(), dtype=torch.long)
    meta = pd.DataFrame({"id": train["id"][::-1].to_list()})  # reversed order
    core = CoreEstimates.open(zs, meta)
    rows = core.rows(torch.arange(len(meta)))
    flip = torch.arange(len(meta) - 1, -1, -1)
    assert torch.equal(rows["soft"], cd.softmax(-1)[flip])
    assert torch.equal(rows["df_soft"], df.softmax(-1)[flip])
    assert torch.equal(rows["ratio"], ratio_weights(cd, df, y, 5.0)[flip])
    picked = core.rows(torch.tensor([3, 0, 3]))
    assert torch.equal(picked["soft"], cd.softmax(-1)[flip][[3, 0, 3]])
    core.close()
    with pytest.raises(Exception, match="lacks 1 training sample"):
        CoreEstimates.open(zs, pd.DataFrame({"id": ["not-a-sample"]}))


def test_killed_two_process_run_resumes_where_it_stopped(vit_project, tmp_path):
    """A 2-process drm_flyp run whose rank 0 is killed (SIGKILL, by its pid) before its second
    checkpoint: the elastic agent stops the other rank and the stage fails; the rerun resumes
    both ranks from rank 0's first checkpoint and ends with the weights of an uninterrupted
    2-process run."""
    from tests.conftest import hang_env, kill_when_hung

    proj = vit_project
    ck = yaml.safe_load((proj / "params2.yaml").read_text())
    ck["runtime"].update({"checkpoint_steps": 2, "checkpoint_minutes": 0})
    (proj / "params_ck.yaml").write_text(yaml.safe_dump(ck))
    common = ["--method", "drm_flyp", "--seed", "0", "--zeroshot", "data/zeroshot", "--descriptions",
              "data/descriptions.json"]
    if not (proj / "runs/two-drm_flyp/model.safetensors").exists():
        _run(proj, "stages/finetune.py", "--params", "params2.yaml", *common, "--out", "runs/two-drm_flyp")
    hung, marker = hang_env(tmp_path, "last.pt:2", _stage_env(proj))
    args = [sys.executable, "stages/finetune.py", "--params", "params_ck.yaml", *common, "--out", "runs/ck",
            "--checkpoints", "checkpoints"]
    with open(tmp_path / "killed.err", "w") as err:
        killed = subprocess.Popen(args, cwd=proj, env=hung, stdout=subprocess.DEVNULL, stderr=err, text=True)
        kill_when_hung(marker, killed)
    stderr = (tmp_path / "killed.err").read_text()
    assert killed.returncode == 2 and "error: worker rank 0 of 2 failed" in stderr, stderr[-2000:]
    assert (proj / "checkpoints/drm_flyp-s0/last.pt").exists() and not (proj / "runs/ck/model.safetensors").exists()
    r = _run(proj, *args[1:])
    assert "resuming drm_flyp seed 0 from step 2 of 8" in r.stderr, r.stderr[-2000:]
    assert r.stderr.count("resuming") == 1  # rank 0 says it; the other rank follows silently
    resumed, straight = _weights(proj / "runs/ck/model.safetensors"), _weights(proj / "runs/two-drm_flyp/model.safetensors")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), (k, (resumed[k] - straight[k]).abs().max())
    assert not (proj / "checkpoints/drm_flyp-s0").exists()
