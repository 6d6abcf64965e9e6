"""Resumable fine-tuning: checkpoints of a run in progress, and when one may be resumed.

A run (method, seed) saves `last.pt` in its checkpoint folder (dvc.yaml: `paths.checkpoints`,
`checkpoints/<method>-s<seed>/`, not a DVC output, so it survives DVC deleting the outputs
before a rerun) every `runtime.checkpoint_steps` steps and/or `runtime.checkpoint_minutes`
minutes, and at the end of training. It holds the model, optimizer, scheduler and grad
scaler states, every RNG state (torch CPU and CUDA, numpy, python, the DataLoader's generator
as of the start of the epoch in progress, FLYP's text generator), the position (epoch, batch,
step), the epoch's data order, the loss history and the dvclive curves so far. It is written
atomically (drm.base.atomic) and read with `torch.load(weights_only=True)`: no pickled code.

A rerun resumes from it only if it was made by the same method and seed, for the same
architecture, with the same tracked params, the same code (the finetune stage's import
closure) and the same inputs (zeroshot heads and core estimates, descriptions, pre-trained
model folder, training split ids and labels); otherwise it says why in one line and starts
fresh. After a successful run the folder is removed. See docs/resume.md.
"""
from __future__ import annotations

import ast
import hashlib
import json
import pickle
import random
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from drm.base.atomic import DiskFullError, atomic_file, shown

FORMAT = 1
FILE = "last.pt"
PACKAGES = ("drm", "stages")


# ---- identity of a run: params, code, inputs ------------------------------------------------

def sha256_file(path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    out = set()
    for name in names:
        parts = name.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def code_files(script) -> dict[str, Path]:
    """The project source files running `script` can execute (its import closure, lazy imports
    inside functions included, as tests/test_dependencies.py computes it), keyed by their path
    relative to the project root."""
    import drm

    script = Path(script).resolve()
    roots = {"drm": Path(drm.__file__).resolve().parent.parent, "stages": script.parent.parent}
    seen: dict[Path, str] = {}
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        root = roots["stages"] if path.is_relative_to(script.parent) else roots["drm"]
        seen[path] = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        for module in _imported(path):
            top = module.split(".")[0]
            if top not in PACKAGES:
                continue
            base = roots[top].joinpath(*module.split("."))
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.exists():
                    todo.append(candidate.resolve())
                    break
    return {rel: p for p, rel in sorted(seen.items(), key=lambda kv: kv[1])}


class Identity:
    """What a checkpoint must match to be resumed. `inputs` maps a name to a callable giving
    its sha256 (hashed only when first needed: real inputs can be gigabytes)."""

    def __init__(self, *, method: str, loss: str, seed: int, params: dict, script,
                 inputs: dict[str, Callable[[], str]]):
        self.method, self.loss, self.seed = method, loss, seed
        self.params = json.loads(json.dumps(params, sort_keys=True, default=str))
        self.code = {rel: sha256_file(p) for rel, p in code_files(script).items()}
        self._inputs = dict(inputs)

    def add_input(self, name: str, digest: Callable[[], str]) -> None:
        self._inputs[name] = digest
        self.__dict__.pop("inputs", None)

    @cached_property
    def inputs(self) -> dict[str, str]:
        return {name: fn() for name, fn in self._inputs.items()}

    def params_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()

    def fingerprint(self) -> str:
        """sha256 over the tracked params JSON, the code files and the inputs."""
        h = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode())
        for rel, digest in self.code.items():
            h.update(f"{rel}={digest}".encode())
        for name, digest in self.inputs.items():
            h.update(f"{name}={digest}".encode())
        return h.hexdigest()

    def record(self) -> dict:
        return {"method": self.method, "loss": self.loss, "seed": self.seed, "params": json.dumps(self.params),
                "code": dict(self.code), "inputs": dict(self.inputs), "fingerprint": self.fingerprint()}


def file_digest(path) -> Callable[[], str]:
    return lambda: sha256_file(path)


def folder_digest(path) -> Callable[[], str]:
    """Every file of a folder (names and contents), e.g. a local open_clip model folder."""
    def digest():
        h = hashlib.sha256()
        root = Path(path)
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            h.update(p.relative_to(root).as_posix().encode())
            sha256_file(p, h)
        return h.hexdigest()
    return digest


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def mismatch(saved: dict, identity: Identity, model: torch.nn.Module, model_state: dict) -> str | None:
    """Why a checkpoint (its `identity` record and model state) may not be resumed, or None."""
    if saved.get("method") != identity.method or saved.get("loss") != identity.loss:
        return (f"it was made by method {saved.get('method')!r} (loss {saved.get('loss')!r}), "
                f"not {identity.method!r} (loss {identity.loss!r})")
    if saved.get("seed") != identity.seed:
        return f"it was made with seed {saved.get('seed')}, not {identity.seed}"
    here = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    there = {k: tuple(v.shape) for k, v in model_state.items()}
    if here != there:
        only_here, only_there = sorted(set(here) - set(there)), sorted(set(there) - set(here))
        shapes = [f"{k} {list(there[k])} vs {list(here[k])}" for k in sorted(set(here) & set(there))
                  if here[k] != there[k]]
        detail = "; ".join(x for x in (
            f"tensors only in the checkpoint: {_few(only_there)}" if only_there else "",
            f"tensors it lacks: {_few(only_here)}" if only_here else "",
            f"other shapes: {_few(shapes)}" if shapes else "") if x)
        return f"it was made for another architecture than this {type(model).__name__} ({detail})"
    try:
        old_params = json.loads(saved.get("params", "{}"))
    except (TypeError, ValueError):
        old_params = {}
    if old_params != identity.params:
        return f"params changed since the checkpoint ({_few(_changed_keys(old_params, identity.params))})"
    old_code = saved.get("code", {})
    if old_code != identity.code:
        return f"code changed since the checkpoint ({_few(_changed_keys(old_code, identity.code))})"
    old_inputs = saved.get("inputs", {})
    if old_inputs != identity.inputs:
        return f"inputs changed since the checkpoint ({_few(_changed_keys(old_inputs, identity.inputs))})"
    return None


# ---- RNG states -------------------------------------------------------------------------------

def rng_states(cuda: bool) -> dict:
    """The global RNG states (reading them draws nothing)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda and torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])


# ---- the checkpoint folder --------------------------------------------------------------------

def _write(state: dict, path) -> None:
    torch.save(state, path)


class Checkpoints:
    """One run's checkpoint folder: load (with the resume rules), save when due, remove."""

    def __init__(self, folder, identity: Identity, *, every_steps: int = 0, every_minutes: float = 0.0):
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self.identity = identity
        self.every_steps, self.every_minutes = every_steps, every_minutes
        self.saved_step: int | None = None  # the step of the checkpoint on disk that this run may resume
        self._last = time.monotonic()
        self.started = time.time()  # when this process's training began (run_finetune sets it)
        self.seconds_before = 0.0  # training seconds of the run this one resumes

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_minutes > 0

    def _say(self, line: str) -> None:
        print(f"finetune: {line}", file=sys.stderr, flush=True)

    def load(self, model: torch.nn.Module) -> dict | None:
        """The checkpoint's state if it may be resumed (saying so on stderr), else None (saying
        why, if there was one)."""
        if not self.path.exists():
            return None
        who = f"{self.identity.method} seed {self.identity.seed}"
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError(f"not a checkpoint of format {FORMAT}")
            reason = mismatch(state["identity"], self.identity, model, state["model"])
        except pickle.UnpicklingError:  # torch's advice (weights_only=False) is not for us to follow
            reason = "it holds objects other than tensors and plain data (checkpoints load with weights_only=True)"
            state = None
        except Exception as e:  # a truncated file, another program's file, an old format
            reason = f"it is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            state = None
        if reason is not None:
            self._say(f"not resuming {who} from {shown(self.path)}: {reason}; starting fresh")
            return None
        pos = state["position"]
        self._say(f"resuming {who} from step {pos['step']} of {pos['total']} ({shown(self.path)})")
        self.saved_step = pos["step"]
        return state

    def read(self) -> dict:
        """The checkpoint's state, unchecked: for the other ranks of a run whose rank 0 has
        checked it (load) and said to resume."""
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def due(self, step: int, total: int) -> bool:
        if not self.enabled:
            return False
        if step == total or (self.every_steps > 0 and step % self.every_steps == 0):
            return True
        return self.every_minutes > 0 and time.monotonic() - self._last >= self.every_minutes * 60

    def save(self, state: dict) -> None:
        step = state["position"]["step"]
        state = {"format": FORMAT, "identity": self.identity.record(), **state,
                 "train_seconds": self.seconds_before + time.time() - self.started}
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_file(self.path) as tmp:
                _write(state, tmp)
        except DiskFullError as e:
            previous = (f"the previous checkpoint (step {self.saved_step}) is intact and the rerun resumes from it"
                        if self.saved_step is not None else "no earlier checkpoint of this run exists")
            raise DiskFullError(self.path, what=f" (the checkpoint at step {step})", fix=(
                "free space there, or turn checkpoints off (runtime.checkpoint_steps: 0 and "
                f"runtime.checkpoint_minutes: 0 in params.yaml), and rerun; {previous}")) from e.__cause__
        self.saved_step = step
        self._last = time.monotonic()

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
