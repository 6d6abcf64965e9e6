"""Faults: killed stages leave nothing that looks complete and rerun cleanly under DVC; bad
inputs and bad checkpoints fail (or are refused) with a message that says what and where."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from drm.base.errors import DRMError
from tests.conftest import copy_project, hang_env, kill_when_hung


def _dvc(args, proj, env, ok=True):
    r = subprocess.run(["dvc", *args], cwd=proj, env=env, capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, f"dvc {args}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _killed_repro(args, at, proj, env, tmp):
    """`dvc repro ARGS`, its stage process SIGKILLed by pid just before it publishes `at`."""
    hung_env, marker = hang_env(tmp, at, env)
    proc = subprocess.Popen(["dvc", "repro", *args], cwd=proj, env=hung_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid = kill_when_hung(marker, proc)
    assert proc.returncode != 0
    return pid


def _leftovers(proj):
    return [p for p in proj.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.slow
def test_killed_stages_are_seen_as_changed_and_rerun(zeroshot_project, tmp_path):
    """pretrain and zeroshot SIGKILLed under `dvc repro` while publishing their outputs (finetune:
    tests/test_resume.py); then a truncated core.parquet stops finetune with one clear line."""
    src, env = zeroshot_project
    proj = copy_project(src, tmp_path / "proj")
    killed = []

    # zeroshot killed with its heads and logits written: none of them is in data/zeroshot
    killed.append(_killed_repro(["-f", "-s", "zeroshot"], "zeroshot", proj, env, tmp_path))
    assert not (proj / "data/zeroshot").exists()
    # pretrain killed while publishing the model folder: no model folder at all
    killed.append(_killed_repro(["-f", "-s", "embedded/dvc.yaml:pretrain"], "pretrained", proj, env, tmp_path))
    assert not (proj / "models/pretrained").exists()
    status = _dvc(["status"], proj, env)
    assert "pretrain:" in status and "zeroshot:" in status, status

    _dvc(["repro", "zeroshot"], proj, env)
    assert "changed" not in _dvc(["status", "zeroshot"], proj, env)
    assert (proj / "data/zeroshot/core.parquet").exists() and (proj / "models/pretrained").is_dir()
    # What a killed writer leaves is only its hidden temporary sibling (DVC may restore a rerun
    # from its run cache without running the stage; the next real write removes it).
    assert {p.name.split(".tmp-")[1].split("-")[0] for p in _leftovers(proj)} <= {str(pid) for pid in killed}

    core = proj / "data/zeroshot/core.parquet"
    core.write_bytes(core.read_bytes()[: core.stat().st_size // 2])
    r = subprocess.run([sys.executable, "stages/finetune.py", "--method", "erm", "--seed", "0", "--zeroshot",
                        "data/zeroshot", "--descriptions", "data/descriptions.json", "--out", "runs/erm-s0",
                        "--checkpoints", "checkpoints"], cwd=proj, env=env, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: data/zeroshot/core.parquet is unreadable ("), r.stderr
    assert "it is truncated or corrupt; rerun the stage that makes it: `dvc repro zeroshot`" in r.stderr
    assert "Traceback" not in r.stderr


def test_truncated_parquet_names_the_file_and_the_stage(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from drm.finetune.train import load_core

    zs = tmp_path / "data/zeroshot"
    zs.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b"], "y": [0, 1]}), zs / "core.parquet")
    data = (zs / "core.parquet").read_bytes()
    (zs / "core.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DRMError) as err:
        load_core(zs, pd.DataFrame({"id": ["a", "b"], "y": [0, 1]}))
    msg = str(err.value)
    assert str(zs / "core.parquet") in msg and "truncated or corrupt" in msg and "`dvc repro zeroshot`" in msg


def _folder(root, split="train", images=1):
    from PIL import Image

    for c in ("cat", "dog"):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    return root


def test_corrupt_image_names_the_file(tmp_path):
    from drm.base.cli import message
    from drm.datasets.folder import ImageFolderSource

    root = _folder(tmp_path / "data")
    bad = root / "train/dog/0.png"
    bad.write_bytes(bad.read_bytes()[:30])  # truncated
    (root / "train/cat/1.jpg").write_bytes(b"not an image")
    from torchvision.transforms import ToTensor

    split = ImageFolderSource.open(root).load("train", ToTensor())
    with pytest.raises(DRMError, match="corrupt or truncated") as err:
        [split.dataset[i] for i in range(len(split.dataset))]
    assert "train/cat/1.jpg" in str(err.value) and "remove it" in str(err.value)
    with pytest.raises(DRMError, match="train/dog/0.png cannot be read .*: the file is corrupt or truncated"):
        split.dataset[2]
    # raised in a DataLoader worker it comes back wrapped with the worker's traceback: the user
    # still sees the one line naming the file
    from torch._utils import ExceptionWrapper

    try:
        split.dataset[1]
    except DRMError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DRMError) as err:
        wrapped.reraise()
    assert "Traceback" in str(err.value)
    assert message(err.value).startswith("image ") and message(err.value).endswith("then rerun")
    assert "train/cat/1.jpg cannot be read" in message(err.value) and "Traceback" not in message(err.value)


def test_empty_split_and_labels_outside_the_classes(tmp_path):
    from drm.datasets.base import DataSource, Split
    from drm.datasets.folder import ImageFolderSource

    root = _folder(tmp_path / "data")
    (root / "ood_test/cat").mkdir(parents=True)
    with pytest.raises(DRMError, match="holds no images"):
        ImageFolderSource.open(root).load("ood_test")

    class Labels(DataSource):
        def load(self, split, transform=None):
            meta = pd.DataFrame({"id": ["a", "b", "c"], "y": np.array([0, 2, -1])})
            return Split(split, "train", meta if split == "train" else meta.iloc[:0], None)

    src = Labels(root=tmp_path / "x", classnames=["cat", "dog"], splits={"train": "train", "id_val": "id"})
    with pytest.raises(DRMError) as err:
        src.load("train")
    assert "2 label(s) outside the 2 classes (0..1), e.g. b (y=2), c (y=-1)" in str(err.value)
    with pytest.raises(DRMError, match="split 'id_val' of data.root .* is empty"):
        src.load("id_val")


# ---- checkpoints --------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, width=3):
        super().__init__()
        self.lin = nn.Linear(2, width)


def _checkpoints(tmp_path, *, method="drm", loss="drm", params=None, core="c0"):
    from drm.finetune.checkpoint import Checkpoints, Identity

    script = tmp_path / "stages" / "finetune.py"  # a one-file "code base": quick to fingerprint
    script.parent.mkdir(exist_ok=True)
    script.write_text("x = 1\n")
    identity = Identity(method=method, loss=loss, seed=0, params=params or {"lr": 1e-3}, script=script,
                        inputs={"core": lambda: core})
    return Checkpoints(tmp_path / "ck" / f"{method}-s0", identity, every_steps=1)


def _state(model, step):
    return {"position": {"step": step, "total": 10, "epoch": 0, "batch": step, "per_epoch": 10},
            "model": model.state_dict(), "history": []}


def test_checkpoint_of_another_method_params_or_architecture_is_refused(tmp_path, capsys):
    model = Tiny()
    _checkpoints(tmp_path, method="drm").save(_state(model, 3))
    path = tmp_path / "ck/drm-s0/last.pt"

    # same run: resumed
    assert _checkpoints(tmp_path).load(Tiny())["position"]["step"] == 3
    assert f"finetune: resuming drm seed 0 from step 3 of 10 ({path})" in capsys.readouterr().err

    def refused(**kw):
        ck = _checkpoints(tmp_path, **{k: v for k, v in kw.items() if k != "model"})
        ck.path = path  # as if it were this run's own file
        assert ck.load(kw.get("model", Tiny())) is None
        line = capsys.readouterr().err.strip()
        assert line.startswith(f"finetune: not resuming {ck.identity.method} seed 0 from {path}: ")
        assert line.endswith("; starting fresh") and "\n" not in line
        return line

    assert "made by method 'drm' (loss 'drm'), not 'erm' (loss 'erm')" in refused(method="erm", loss="erm")
    assert "params changed since the checkpoint (lr)" in refused(params={"lr": 2e-3})
    assert "inputs changed since the checkpoint (core)" in refused(core="c1")
    assert "another architecture than this Tiny (other shapes: lin.bias [3] vs [4], lin.weight [3, 2] vs [4, 2])" \
        in refused(model=Tiny(width=4))
    path.write_bytes(path.read_bytes()[:100])
    assert "it is unreadable" in refused()


def test_checkpoint_loads_without_pickle(tmp_path, capsys):
    """A checkpoint is loaded with weights_only=True: a file that needs code to unpickle is refused."""
    from drm.finetune.checkpoint import FORMAT

    ck = _checkpoints(tmp_path)
    ck.folder.mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": FORMAT, "x": Evil()}, ck.path)
    assert ck.load(Tiny()) is None
    assert "it holds objects other than tensors and plain data" in capsys.readouterr().err


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    import drm.finetune.checkpoint as checkpoint

    ck = _checkpoints(tmp_path)
    ck.save(_state(Tiny(), 2))
    before = ck.path.read_bytes()

    def full(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", full)
    with pytest.raises(DRMError) as err:
        ck.save(_state(Tiny(), 4))
    msg = str(err.value)
    assert msg.startswith(f"disk full: no space left on the device holding {ck.folder} while writing {ck.path} "
                          "(the checkpoint at step 4)")
    assert "the previous checkpoint (step 2) is intact and the rerun resumes from it" in msg
    assert ck.path.read_bytes() == before
    assert [p.name for p in ck.folder.iterdir()] == ["last.pt"]


def test_code_fingerprint_covers_the_stage_import_closure():
    from drm.finetune.checkpoint import code_files
    from tests.test_dependencies import import_closure

    root = Path(__file__).resolve().parents[1]
    assert set(code_files(root / "stages/finetune.py")) == import_closure(root / "stages/finetune.py")


def test_truncated_world_split_and_model_weights_name_the_stage(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from drm.base.clip import build_clip, load_pretrained, save_model_folder
    from drm.pretrain.config import PretrainConfig
    from drm.world.source import WorldSource

    world = tmp_path / "data/world"
    world.mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"classnames": ["a"], "splits": {"train": "train"},
                                                  "group_columns": [], "core_traits": {}, "image_size": 2}))
    pq.write_table(pa.table({"id": ["x"], "y": [0], "image": [b"\0" * 12]}), world / "train.parquet")
    data = (world / "train.parquet").read_bytes()
    (world / "train.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(DRMError, match=r"split 'train' of data.root .*world cannot be read .*truncated or corrupt; "
                                       r"for the embedded world rerun the stage that makes it: `dvc repro embedded/dvc.yaml:world`"):
        WorldSource.open(world).load("train")

    folder = save_model_folder(build_clip(PretrainConfig().arch), PretrainConfig().arch, tmp_path / "models/pretrained",
                               32)
    weights = folder / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(DRMError, match=r"the weights in model folder .*models/pretrained are unreadable .*: the file "
                                       r"is truncated or corrupt; rerun the stage that makes it: `dvc repro embedded/dvc.yaml:pretrain`"):
        load_pretrained("local-dir:models/pretrained", base_dir=tmp_path)
