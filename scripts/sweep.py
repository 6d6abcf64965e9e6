"""Validation sweep: fine-tune variants of a method and score them on the validation splits
only (id_val, ood_val). This is how the defaults in params.yaml were chosen (see
docs/selection.md); the test splits are never read here.

    python scripts/sweep.py --name lam --variant 'drm_l1={"loss":"drm","lam":1}' \
        --variant 'drm_l3={"loss":"drm","lam":3}' --seeds 0 1

Needs the upstream artifacts of `dvc repro zeroshot`. Writes sweeps/{name}/{variant}-s{seed}/
and prints (and saves as sweeps/{name}/summary.csv) val accuracy per head, mean over seeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True)
    ap.add_argument("--variant", action="append", required=True, help='NAME=JSON method config')
    ap.add_argument("--finetune", default="{}", help="JSON overrides of the finetune section")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--beta", default="0.5",
                    help="dual-inference beta for the table: a number (default 0.5), or val: chosen per "
                         "variant on the validation splits at alpha 1 as `evaluate` does (evaluate.beta_grid, "
                         "beta_id_tolerance)")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pydantic import TypeAdapter

    from drm.base.clip import load_pretrained
    from drm.datasets.registry import open_source
    from drm.describe import load_descriptions
    from drm.evaluate.run import evaluate_table
    from drm.finetune.config import FinetuneConfig
    from drm.finetune.methods import MethodSpec, Setup
    from drm.finetune.train import RunPaths, run_finetune
    from drm.params import load_params
    from drm.zeroshot.heads import ClassTexts
    from drm.zeroshot.run import load_heads

    params = load_params(args.params)
    ft = FinetuneConfig(**{**params.finetune.model_dump(), **json.loads(args.finetune)})
    source = open_source(params.data)
    val = {s: r for s, r in source.splits.items() if s in ("id_val", "ood_val")}
    source.splits = {s: r for s, r in source.splits.items() if r == "train" or s in val}
    metas = {s: source.load(s).meta for s in val}
    heads = load_heads("data/zeroshot")
    model, train_tf, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained)
    texts = ClassTexts.build(classnames=source.classnames, templates=params.zeroshot.templates,
                             descriptions=load_descriptions("data/descriptions.json", source.classnames))
    setup = Setup(pretrained=model, heads=heads, texts=texts, tokenizer=tokenizer, source=source,
                  train_split=next(s for s, r in source.splits.items() if r == "train"), eval_transform=eval_tf,
                  runtime=params.runtime, progress=False)
    out = Path("sweeps") / args.name
    from drm.evaluate.run import select_beta

    rows, betas = [], {}
    for spec in args.variant:
        name, cfg = spec.split("=", 1)
        method = TypeAdapter(MethodSpec).validate_python(json.loads(cfg))
        tables = {}
        for seed in args.seeds:
            run_dir = out / f"{name}-s{seed}"
            if not (run_dir / "predictions.parquet").exists():
                run_finetune(name=name, method=method, seed=seed, setup=setup, train_transform=train_tf, cfg=ft,
                             wise_alphas=[0.5, 1.0], zeroshot_dir=Path("data/zeroshot"), paths=RunPaths(run_dir))
            table = pq.read_table(run_dir / "predictions.parquet")
            tables[seed] = {a: table.filter(pa.array(table.column("alpha").to_numpy() == a)) for a in (0.5, 1.0)}
        if args.beta == "val":
            ev = params.evaluate
            betas[name] = select_beta([t[1.0] for t in tables.values()], ev.beta_grid, tuple(ev.select_splits),
                                      ev.beta_id_tolerance, source)
        else:
            betas[name] = float(args.beta)
        for seed, by_alpha in tables.items():
            for alpha, t in by_alpha.items():
                rows += evaluate_table(t, name, seed, alpha, source, metas, params.evaluate, beta=betas[name])
    frame = pd.DataFrame(rows)
    summary = (frame.pivot_table(index=["method", "alpha"], columns=["split", "head"], values="accuracy",
                                 aggfunc="mean") * 100).round(1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"variants": args.variant, "finetune": json.loads(args.finetune),
                                                  "seeds": args.seeds, "beta": args.beta}, indent=2))
    summary[("beta", "dual")] = [betas[m] for m, _ in summary.index]
    summary.to_csv(out / "summary.csv")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary)


if __name__ == "__main__":
    main()
