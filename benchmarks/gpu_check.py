"""GPU check: a ViT-B-16 CLIP (random initialisation, no download) at 224 px in bf16, a few
hundred training steps of erm, drm, flyp and drm_flyp through the real training loop
(drm.finetune.train.train: DataLoader workers, pinned memory, core estimates read per batch),
and zeroshot over 10k synthetic images (drm.zeroshot.run), printing images/s and peak GPU
memory for each. Run by benchmarks/gpu_check.sh; --tiny runs the same code on a CPU in a
minute (a smoke test of this script, not a measurement).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scale import SyntheticSource  # noqa: E402


def build(model_name: str, tiny: bool):
    import open_clip

    if tiny:
        from benchmarks.scale import TINY
        from drm.base.clip import build_clip

        torch.manual_seed(0)
        return build_clip(TINY), lambda t: open_clip.tokenize(t, context_length=32), 64
    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None)  # random weights: nothing to download
    return model, open_clip.get_tokenizer(model_name), model.visual.image_size[0] if isinstance(
        model.visual.image_size, (tuple, list)) else model.visual.image_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--images", type=int, default=10_000, help="zeroshot images; also the training split")
    p.add_argument("--classes", type=int, default=182, help="182: iWildCam's class count")
    p.add_argument("--descriptions", type=int, default=6, help="concept descriptions per class")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3, help="training epochs per method (images / batch steps each)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--methods", default="erm,drm,flyp,drm_flyp")
    p.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: check the script runs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.tiny:
        args.device, args.images, args.classes, args.epochs, args.workers = "cpu", 512, 8, 1, 0
    from drm.base.params import RuntimeConfig
    from drm.finetune.classifiers import DualHeadClassifier, TextTowerClassifier
    from drm.finetune.config import FinetuneConfig
    from drm.finetune.methods import DRM, ERM, FLYP
    from drm.finetune.train import load_core, train
    from drm.zeroshot.config import ZeroshotConfig
    from drm.zeroshot.heads import ClassTexts
    from drm.zeroshot.run import _logits_and_core, build_heads

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    clip, tokenizer, size = build(args.model, args.tiny)
    clip = clip.to(device).eval()
    source = SyntheticSource(args.images, args.classes, eval_n=0)
    source.splits = {"train": "train"}
    from benchmarks import scale

    scale_size = size
    orig_load = source.load

    def load(name, transform=None):  # synthetic images at the model's resolution
        split = orig_load(name, transform)
        split.dataset = scale.SyntheticImages(len(split.dataset), args.classes, size=scale_size)
        return split

    source.load = load
    texts = ClassTexts(df_texts=[[f"a photo of a class {c}.", f"a picture of a class {c}."] for c in range(args.classes)],
                       cd_texts=[[f"class {c} shows trait {k} of its kind." for k in range(args.descriptions)]
                                 for c in range(args.classes)])
    runtime = RuntimeConfig(device=args.device, num_workers=args.workers, checkpoint_steps=0, checkpoint_minutes=0)
    results = {"model": args.model, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
               "image_size": size, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as zs:
        from drm.base.distributed import World

        heads, _ = build_heads(clip, tokenizer, classnames=source.classnames, texts=texts, device=str(device))
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            _logits_and_core(clip, None, source=source, heads=heads, cfg=ZeroshotConfig(batch_size=512), out=Path(zs),
                             device=device, runtime=runtime, progress=False, truncated=0, world=World())
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        results["zeroshot"] = {"images_per_s": args.images / seconds,
                               "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
        print(f"zeroshot: {args.images} images in {seconds:.1f} s = {args.images / seconds:.0f} images/s"
              + (f", peak GPU memory {results['zeroshot']['peak_gpu_gb']:.1f} GiB" if cuda else ""), flush=True)
        split = source.load("train")
        clip = clip.cpu()
        methods = {"erm": ERM(), "drm": DRM(), "flyp": FLYP(), "drm_flyp": DRM(erm_term="flyp")}
        for name in args.methods.split(","):
            method = methods[name]
            import copy

            model = (TextTowerClassifier(clip=copy.deepcopy(clip), tokenizer=tokenizer, texts=texts)
                     if method.trains_text_tower else DualHeadClassifier(visual=copy.deepcopy(clip.visual), heads=heads))
            cfg = FinetuneConfig(methods=[name], epochs=args.epochs, batch_size=args.batch_size, lr=1e-5, wd=0.1,
                                 warmup_steps=10, precision="bf16")
            core = load_core(zs, split.meta)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            history = train(model, method=method, train_split=split, core=core, cfg=cfg, lr=cfg.lr, seed=0,
                            runtime=runtime, progress=False)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t
            steps = args.epochs * (args.images // args.batch_size)
            ips = steps * args.batch_size / seconds
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            results[name] = {"steps": steps, "images_per_s": ips, "peak_gpu_gb": peak, "final_loss": history[-1]["loss"]}
            print(f"{name}: {steps} steps of {args.batch_size} in {seconds:.1f} s = {ips:.0f} images/s (loading and "
                  "warm-up included)" + (f", peak GPU memory {peak:.1f} GiB" if cuda else "")
                  + f", final loss {history[-1]['loss']:.3f}", flush=True)
            core.close()
            del model
            if cuda:
                torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
