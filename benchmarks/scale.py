"""Scale benchmark: the four ratios of docs/scale.md, each measured in one run of this script
(these machines are noisy: a ratio of two timings taken side by side means more than either).

  (a) DRM step time / ERM step time on the same batch: the CE term (image tower + heads) and
      the FLYP term (whole CLIP), at 8 and 1000 classes, 1 and 6 descriptions per class;
  (b) zeroshot images/s / open_clip encode_image images/s: same model, batch, threads;
  (c) peak RSS of zeroshot and of finetune's data path at N and 5N images, 1000 classes
      (each in a fresh process);
  (d) 2-process gloo DDP step time / 1-process step time at the same global batch.

Usage: python benchmarks/scale.py [--only a,b,c,d] [--n 4000] [--steps 6]
Models are random open_clip CLIPs (no download), sized for a CPU; the ratios, not the times,
are the result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A small ViT CLIP: the image tower dominates a step, as it does at ViT-B/16 scale.
ARCH = {"embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 64, "patch_size": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}


# ---- shared pieces ------------------------------------------------------------------------------

class SyntheticImages(torch.utils.data.Dataset):
    """n images made from their index alone (no storage): what a data source serves."""

    def __init__(self, n: int, n_classes: int, size: int = 64):
        self.n, self.n_classes, self.size = n, n_classes, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        return torch.randn(3, self.size, self.size, generator=g), int(i) % self.n_classes


class SyntheticSource:
    """A DataSource: a train split of n images (and a small ood split), n_classes classes."""

    def __init__(self, n: int, n_classes: int, eval_n: int = 64):
        self.n, self.classnames, self.eval_n = n, [f"class {c}" for c in range(n_classes)], eval_n
        self.splits = {"train": "train", "test": "ood"}

    def load(self, name, transform=None):
        import pandas as pd

        from drm.datasets.base import Split

        n = self.n if name == "train" else self.eval_n
        ds = SyntheticImages(n, len(self.classnames))
        meta = pd.DataFrame({"id": [f"{name}-{i}" for i in range(n)], "y": [i % len(self.classnames) for i in range(n)]})
        return Split(name, self.splits[name], meta, ds)


def clip_model():
    from drm.base.clip import build_clip

    torch.manual_seed(0)
    return build_clip(ARCH).eval()


def tokenizer():
    import open_clip

    return lambda texts: open_clip.tokenize(texts, context_length=ARCH["text_cfg"]["context_length"])


def random_heads(n_classes: int):
    from drm.zeroshot.heads import ZeroShotHeads

    g = torch.Generator().manual_seed(1)
    d = ARCH["embed_dim"]
    return ZeroShotHeads(df_head=F.normalize(torch.randn(n_classes, d, generator=g), dim=-1),
                         cd_head=F.normalize(torch.randn(n_classes, d, generator=g), dim=-1), logit_scale=100.0)


def class_texts(n_classes: int, per_class: int):
    from drm.zeroshot.heads import ClassTexts

    return ClassTexts(df_texts=[[f"a photo of a class {c}."] for c in range(n_classes)],
                      cd_texts=[[f"class {c} has feature {k} of its kind." for k in range(per_class)]
                                for c in range(n_classes)])


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_now_mb() -> float:
    """Resident memory now, and from here on the peak counts only what follows: Linux resets
    the process's high-water mark (VmHWM) on `5` written to /proc/self/clear_refs, so the
    transient peak of importing torch (its CUDA libraries) does not mask the measured work."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_since_mb() -> float:
    """The peak resident memory since rss_now_mb() (VmHWM)."""
    return _status_mb("VmHWM")


# ---- (a) DRM step / ERM step ----------------------------------------------------------------

def step_time(model, method, batch, *, steps: int) -> float:
    """Median seconds of a full training step (forward, backward, AdamW) of method on batch."""
    from drm.finetune.train import TrainStep, param_groups

    step = TrainStep(model, method)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-5)
    model.train()
    times = []
    for k in range(steps + 1):  # the first step warms up allocators and kernels
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(batch).backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bench_a(steps: int, batch_size: int = 32) -> list[dict]:
    import copy

    from drm.finetune.classifiers import DualHeadClassifier, TextTowerClassifier
    from drm.finetune.methods import DRM, ERM, FLYP, Batch

    rows = []
    base = clip_model()
    x = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for n_classes in (8, 1000):
        y = torch.arange(batch_size) % n_classes
        soft = torch.softmax(torch.randn(batch_size, n_classes), -1)
        batch = Batch(images=x, y=y, core={"soft": soft, "df_soft": soft, "weighted": torch.ones(batch_size),
                                           "ratio": torch.ones(batch_size)},
                      text_generator=torch.Generator().manual_seed(0))
        # CE term: the heads are linear layers; descriptions only shape the cd head's init.
        model = DualHeadClassifier(visual=copy.deepcopy(base.visual), heads=random_heads(n_classes))
        pair = []
        for _ in range(2):  # interleaved: ERM, DRM, ERM, DRM; each ratio from the faster pair
            pair.append((step_time(model, ERM(), batch, steps=steps), step_time(model, DRM(), batch, steps=steps)))
        erm, drm = min(p[0] for p in pair), min(p[1] for p in pair)
        rows.append({"term": "CE", "classes": n_classes, "descriptions": "any", "erm_s": erm, "drm_s": drm})
        for per_class in (1, 6):
            model = TextTowerClassifier(clip=copy.deepcopy(base), tokenizer=tokenizer(),
                                        texts=class_texts(n_classes, per_class))
            few = max(1, steps // 3) if n_classes > 100 else steps
            flyp = step_time(model, FLYP(), batch, steps=few)
            drm = step_time(model, DRM(erm_term="flyp"), batch, steps=few)
            rows.append({"term": "FLYP", "classes": n_classes, "descriptions": per_class, "erm_s": flyp, "drm_s": drm})
    return rows


# ---- (b) zeroshot throughput -------------------------------------------------------------------

def bench_b(n: int, batch_size: int = 128) -> dict:
    from drm.base.distributed import World
    from drm.base.params import RuntimeConfig
    from drm.zeroshot.config import ZeroshotConfig
    from drm.zeroshot.run import _logits_and_core

    model = clip_model()
    source = SyntheticSource(n, 1000, eval_n=0)
    source.splits = {"train": "train"}
    heads = random_heads(1000)
    loader = torch.utils.data.DataLoader(SyntheticImages(n, 1000), batch_size=batch_size)
    raw, ours = [], []
    for _ in range(3):  # interleaved, best of three each
        t = time.perf_counter()
        with torch.no_grad():
            for x, _ in loader:
                model.encode_image(x)
        raw.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            _logits_and_core(model, None, source=source, heads=heads, cfg=ZeroshotConfig(batch_size=batch_size),
                             out=Path(out), device=torch.device("cpu"), runtime=RuntimeConfig(), progress=False,
                             truncated=0, world=World())
            ours.append(time.perf_counter() - t)
    return {"images": n, "encode_image_per_s": n / min(raw), "zeroshot_per_s": n / min(ours)}


# ---- (c) peak RSS at N and 5N ----------------------------------------------------------------

TINY = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def rss_zeroshot(n: int, out: str) -> float:
    """In a fresh process: zeroshot of n training images, 1000 classes, into `out`."""
    from drm.base.clip import build_clip
    from drm.base.distributed import World
    from drm.base.params import RuntimeConfig
    from drm.zeroshot.config import ZeroshotConfig
    from drm.zeroshot.run import _logits_and_core
    from drm.zeroshot.heads import ZeroShotHeads

    torch.manual_seed(0)
    model = build_clip(TINY).eval()
    base = rss_now_mb()
    g = torch.Generator().manual_seed(1)
    heads = ZeroShotHeads(df_head=F.normalize(torch.randn(1000, 32, generator=g), dim=-1),
                          cd_head=F.normalize(torch.randn(1000, 32, generator=g), dim=-1), logit_scale=100.0)
    _logits_and_core(model, None, source=SyntheticSource(n, 1000), heads=heads, cfg=ZeroshotConfig(batch_size=256),
                     out=Path(out), device=torch.device("cpu"), runtime=RuntimeConfig(), progress=False, truncated=0,
                     world=World())
    return f"{peak_since_mb()} {base}"


def rss_finetune_data(n: int, zs: str) -> float:
    """In a fresh process: one epoch of finetune's data path (images, labels, every core
    estimate of each batch) over n training images whose zeroshot files are in `zs`."""
    from drm.base.distributed import World
    from drm.finetune.train import EpochSampler, GlobalBatches, Indexed, load_core

    split = SyntheticSource(n, 1000).load("train")
    base = rss_now_mb()
    core = load_core(zs, split.meta)
    gen = torch.Generator().manual_seed(0)
    batches = GlobalBatches(EpochSampler(n, gen), batch_size=256, world=World())
    loader = torch.utils.data.DataLoader(Indexed(split.dataset), batch_sampler=batches, generator=gen)
    seen = 0
    for x, y, idx in loader:
        rows = core.rows(idx)
        seen += len(rows["soft"])
    assert seen == (n // 256) * 256
    return f"{peak_since_mb()} {base}"


def _fresh(fn: str, *args) -> tuple[float, float]:
    """(peak RSS MB, RSS MB before the measured work) of fn(*args) in a fresh interpreter."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = ['x']; "
            f"from benchmarks.scale import {fn}; print({fn}(*{list(args)!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    peak, base = r.stdout.strip().splitlines()[-1].split()
    return float(peak), float(base)


def bench_c(n: int) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, size in (("N", n), ("5N", 5 * n)):
            zs = Path(tmp) / k
            zs.mkdir()
            out[f"zeroshot_{k}_mb"], out[f"zeroshot_{k}_base_mb"] = _fresh("rss_zeroshot", size, str(zs))
            out[f"finetune_data_{k}_mb"], out[f"finetune_data_{k}_base_mb"] = _fresh("rss_finetune_data", size, str(zs))
            out[f"core_files_{k}_mb"] = sum(f.stat().st_size for f in zs.iterdir()) / 2**20
    out["n"] = n
    return out


# ---- (d) 2-process gloo DDP / 1 process --------------------------------------------------------

def _ddp_worker(rank: int, world_size: int, global_batch: int, steps: int, port: int, q) -> None:
    import torch.distributed as dist

    from drm.base.distributed import World
    from drm.finetune.classifiers import DualHeadClassifier
    from drm.finetune.methods import DRM, Batch
    from drm.finetune.train import param_groups, wrap_for_world

    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    world = World(rank=rank, world_size=world_size)
    model = DualHeadClassifier(visual=clip_model().visual, heads=random_heads(8))
    step = wrap_for_world(model, DRM(), world=world, device=torch.device("cpu"))
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-5)
    local = global_batch // world_size
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(local, 3, 64, 64, generator=g), torch.randint(8, (local,), generator=g)
    batch = Batch(images=x, y=y, core={"soft": torch.full((local, 8), 1 / 8)}, text_generator=None, world=world)
    model.train()
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        step(batch).backward()
        opt.step()
        if k:
            times.append(time.perf_counter() - t)
    if rank == 0:
        q.put(sorted(times)[len(times) // 2])
    if world_size > 1:
        dist.destroy_process_group()


def bench_d(steps: int, global_batch: int = 64) -> dict:
    import socket

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = {}
    for world_size in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        q = ctx.Queue()
        procs = [ctx.Process(target=_ddp_worker, args=(r, world_size, global_batch, steps, port, q))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        out[f"{world_size}_process_s"] = q.get()
        for p in procs:
            p.join()
    out["global_batch"] = global_batch
    return out


# ---- the table -----------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="a,b,c,d")
    p.add_argument("--n", type=int, default=20000, help="(c): N training images (5N: 100k by default)")
    p.add_argument("--n-throughput", type=int, default=1024, help="(b): images per timed pass")
    p.add_argument("--steps", type=int, default=6, help="(a), (d): timed steps per measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    parts = set(args.only.split(","))
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if "a" in parts:
        rows = bench_a(args.steps)
        result["a"] = rows
        print("(a) DRM step time / ERM step time, same batch of 32 (64 px ViT, 4 layers, width 192)")
        print("    term  classes  descriptions  ERM/FLYP s  DRM s   ratio  target")
        for r in rows:
            target = "<= 1.15" if r["term"] == "CE" else "(as it is)"
            print(f"    {r['term']:<5} {r['classes']:>7}  {str(r['descriptions']):>12}  {r['erm_s']:>10.3f}  "
                  f"{r['drm_s']:>5.3f}  {r['drm_s'] / r['erm_s']:>6.2f}  {target}")
    if "b" in parts:
        b = bench_b(args.n_throughput)
        result["b"] = b
        print(f"(b) zeroshot {b['zeroshot_per_s']:.0f} images/s / open_clip encode_image {b['encode_image_per_s']:.0f} "
              f"images/s = {b['zeroshot_per_s'] / b['encode_image_per_s']:.2f} (target >= 0.9; {b['images']} images, "
              "1000 classes, batch 128)")
    if "c" in parts:
        c = bench_c(args.n)
        result["c"] = c
        print(f"(c) peak RSS at N={c['n']} and 5N images, 1000 classes (core files {c['core_files_N_mb']:.0f} MB and "
              f"{c['core_files_5N_mb']:.0f} MB on disk)")
        for what in ("zeroshot", "finetune_data"):
            grow = [c[f"{what}_{k}_mb"] - c[f"{what}_{k}_base_mb"] for k in ("N", "5N")]
            print(f"    {what:<14} {c[f'{what}_N_mb']:>7.0f} MB -> {c[f'{what}_5N_mb']:>7.0f} MB: "
                  f"ratio {c[f'{what}_5N_mb'] / c[f'{what}_N_mb']:.2f} (target <= 1.2); above the imports: "
                  f"{grow[0]:.0f} MB -> {grow[1]:.0f} MB")
    if "d" in parts:
        d = bench_d(args.steps)
        result["d"] = d
        print(f"(d) 2-process gloo DDP step {d['2_process_s']:.3f} s / 1-process step {d['1_process_s']:.3f} s = "
              f"{d['2_process_s'] / d['1_process_s']:.2f} (global batch {d['global_batch']}, 1 thread per process; "
              "a sanity figure on CPU, not a speed claim)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
