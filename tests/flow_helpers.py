"""Helpers for the orchestration tests (tests/test_flow.py, test_schedule.py, test_remote.py):
small projects, image folders, a Prefect server process, process-group cleanup."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ("world", "pretrain", "describe", "zeroshot")


def keep_stages(project, names) -> None:
    """Rewrite the project's pipeline as one dvc.yaml with only the named stages (a smaller
    pipeline): those of embedded/dvc.yaml move into it (their wdir and vars with them)."""
    path = Path(project) / "dvc.yaml"
    spec = yaml.safe_load(path.read_text())
    stages = dict(spec["stages"])
    embedded = Path(project) / "embedded" / "dvc.yaml"
    if embedded.exists():
        other = yaml.safe_load(embedded.read_text())
        for name, body in other["stages"].items():
            stages[name] = {k: v for k, v in body.items() if k != "wdir"}
        spec["vars"][0]["paths"].update(other["vars"][0]["paths"])
        embedded.unlink()
    missing = set(names) - set(stages)
    assert not missing, f"the pipeline has no stages {missing}"
    spec["stages"] = {k: v for k, v in stages.items() if k in names}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def copy_project(src, dst, drop=("runs",)) -> Path:
    """A copy of a project folder (outputs, .dvc) without the folders in `drop`, except the
    pre-training run folder (an output of an upstream stage)."""
    dst = Path(dst)
    shutil.copytree(src, dst, symlinks=True)
    for name in drop:
        target = dst / name
        if name == "runs" and target.exists():
            for run in target.iterdir():
                if run.name != "pretrain":
                    shutil.rmtree(run)
        elif target.exists():
            shutil.rmtree(target)
    return dst


def write_png(path, color, size=(16, 16), seed=0) -> None:
    """A small RGB PNG of one colour with a little deterministic noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color)[None, None, :] + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype("uint8"), "RGB").save(path, format="PNG")


IMAGE_CLASSES = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (30, 40, 200)}


def image_folder(root, per_split=None) -> Path:
    """root/{split}/{class}/NNN.png for drm.datasets.folder.ImageFolderSource (3 classes)."""
    root = Path(root)
    per_split = per_split or {"train": 6, "id_val": 2, "id_test": 2, "ood_val": 2, "ood_test": 2}
    seed = 0
    for split, n in per_split.items():
        for name, color in IMAGE_CLASSES.items():
            shade = (0.6, 0.6, 0.6) if split.startswith("ood") else (1, 1, 1)  # OOD: darker
            for k in range(n):
                seed += 1
                write_png(root / split / name / f"{k:03d}.png", [c * s for c, s in zip(color, shade)], seed=seed)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra) -> dict:
    """os.environ with this interpreter's bin folder first on PATH (python, dvc, prefect)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(DVC_NO_ANALYTICS="1", DRM_NO_PROGRESS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start(args, log, env, cwd=ROOT) -> subprocess.Popen:
    """A process in its own process group (so that `stop` ends it and its children), its
    output to the file `log`."""
    out = open(log, "ab")
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group of `proc` (started by `start`), then SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived their parent
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)


def wait_healthy(api_url: str, proc: subprocess.Popen, log, timeout: float = 120) -> None:
    """Wait until the Prefect server at api_url answers /health (fail if `proc` died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the Prefect server exited ({proc.returncode}):\n{Path(log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the Prefect server did not answer in {timeout} s:\n{Path(log).read_text()[-3000:]}")
