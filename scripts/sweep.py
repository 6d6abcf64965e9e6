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

    from drm.config import FinetuneConfig, MethodConfig, load_params
    from drm.datasets import open_source
    from drm.evaluate import evaluate_table
    from drm.finetune import run_finetune
    from drm.models import load_pretrained
    from drm.steps import finetune_texts
    from drm.zeroshot import load_heads

    params = load_params(args.params)
    ft = FinetuneConfig(**{**params.finetune.model_dump(), **json.loads(args.finetune)})
    source = open_source(params.data)
    val = {s: r for s, r in source.splits.items() if s in ("id_val", "ood_val")}
    source.splits = {s: r for s, r in source.splits.items() if r == "train" or s in val}
    metas = {s: source.load(s).meta for s in val}
    heads = load_heads("data/zeroshot")
    model, train_tf, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained)
    texts = finetune_texts(params, source)
    out = Path("sweeps") / args.name
    from drm.evaluate import select_beta

    rows, betas = [], {}
    for spec in args.variant:
        name, cfg = spec.split("=", 1)
        method = MethodConfig(**json.loads(cfg))
        tables = {}
        for seed in args.seeds:
            run_dir = out / f"{name}-s{seed}"
            if not (run_dir / "predictions.parquet").exists():
                run_finetune(model, heads, source, (train_tf, eval_tf), name, method, ft, [0.5, 1.0],
                             seed, "data/zeroshot", run_dir, progress=False, texts=texts, tokenizer=tokenizer)
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
