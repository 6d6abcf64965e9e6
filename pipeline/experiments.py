"""Compare runs with DVC's own experiments: choose a knob on the validation splits, and
measure the spread of the headline comparisons over pre-training seeds.

Experiments are DVC's: queue a grid, run the queue, then read the results back here through
`dvc exp show --json` (the table `dvc exp show` prints; metrics from metrics/evaluate.json):

    dvc exp run --queue -S '++methods.drm.lam=3,10,30'    # one experiment per value (++: add or override)
    dvc queue start && dvc queue status                    # run them (one worker; -j N for more)
    python -m pipeline.experiments select --method drm --param methods.drm.lam

    # pre-training seeds: the world and the embedded CLIP both change with the seed
    for s in 1 2; do dvc exp run --queue -n pre-s$s -S world.seed=$s -S pretrain.seed=$s; done
    dvc queue start
    python -m pipeline.experiments spread

`select` applies docs/selection.md's rule: among the settings whose ID-val accuracy is within
`--id-tolerance` points of ERM's (in the same experiment), the best OOD-val accuracy, for the
fine-tuned model (alpha 1) on `--head`. Only validation splits are read. `spread` takes, for
each experiment, the same-head differences DRM - ERM, DRM - distillation and DRM + WiSE-FT -
ERM + WiSE-FT (alpha 0.5) on the test splits, each a mean over that experiment's fine-tuning
seeds, groups the experiments by pre-training seed (world.seed, pretrain.seed) and prints the
mean and standard deviation over pre-training seeds. A comparison is "supported" only when
every pre-training seed gives it the same sign and mean +- std excludes zero.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

from drm.base.errors import DRMError

METRICS = "metrics/evaluate.json"
PARAMS = "params.yaml"
# The headline comparisons: (name, method, baseline), each on the same head.
HEADLINE = (("DRM - ERM", "drm", "erm"), ("DRM - distillation", "drm", "distill"),
            ("DRM+WiSE - ERM+WiSE", "drm+wise0.5", "erm+wise0.5"))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _file_data(data: dict, kind: str, path: str) -> dict:
    return _flatten(((data.get(kind) or {}).get(path) or {}).get("data") or {})


def experiments(repo: str = ".") -> list[dict]:
    """HEAD and every experiment derived from it, as {name, rev, params, metrics}, from
    `dvc exp show --json` (DVC reads each one's params from git and its metrics from the
    cache by the hash in its dvc.lock). Keys are flattened: `methods.drm.lam`,
    `drm.ood_val.dual`.

    Entries DVC could not read (a failed or still queued experiment, metrics not in the
    cache) are left out with a line on stderr saying which, never silently."""
    import json
    import subprocess
    from pathlib import Path

    dvc = Path(sys.executable).with_name("dvc")
    done = subprocess.run([str(dvc) if dvc.exists() else "dvc", "exp", "show", "--json", "--force"],
                          cwd=repo, capture_output=True, text=True)
    if done.returncode:
        raise DRMError(f"`dvc exp show --json` failed in {repo}: {done.stderr.strip()[-500:]}")
    entries = []
    for top in json.loads(done.stdout):
        if top.get("rev") == "workspace":  # uncommitted: the baseline's row, or work in progress
            continue
        entries.append((top.get("name") or top["rev"][:7], top, None))
        for group in top.get("experiments") or []:
            state = (group.get("executor") or {}).get("state")
            for entry in (group.get("revs") or [])[:1]:  # the experiment's own commit
                entries.append((group.get("name") or entry["rev"][:7], entry, state))
    rows = []
    for name, entry, state in entries:
        data = entry.get("data") or {}
        params, metrics = _file_data(data, "params", PARAMS), _file_data(data, "metrics", METRICS)
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if entry.get("error") or state not in (None, "success") or not metrics:
            print(f"experiments: {name} left out: state {state or 'committed'}, error "
                  f"{entry.get('error')}, {len(metrics)} metrics readable", file=sys.stderr)
            continue
        rows.append({"name": name, "rev": entry.get("rev"), "params": params, "metrics": metrics})
    if not rows:
        raise DRMError(f"no experiment with readable metrics in {repo}: run `dvc repro` (or "
                       "`dvc exp run`) first; a fresh clone needs `dvc pull` or a rerun for the cache")
    return rows


def accuracy(metrics: dict, method: str, split: str, head: str) -> float | None:
    return metrics.get(f"{method}.{split}.{head}")


def select(rows: list[dict], *, method: str, param: str, head: str = "dual",
           id_tolerance: float = 2.0, baseline: str = "erm") -> tuple[list[dict], dict | None]:
    """docs/selection.md rule 3 over experiments: each row gains id_val, ood_val and
    eligible; returns (table, chosen row or None)."""
    table = []
    for row in rows:
        m = row["metrics"]
        id_val, ood_val = accuracy(m, method, "id_val", head), accuracy(m, method, "ood_val", head)
        if id_val is None or ood_val is None:
            continue
        ref = accuracy(m, baseline, "id_val", head)
        eligible = ref is None or id_val >= ref - id_tolerance / 100
        table.append({"name": row["name"], param: row["params"].get(param), "id_val": id_val,
                      "ood_val": ood_val, f"{baseline}_id_val": ref, "eligible": eligible})
    pool = [r for r in table if r["eligible"]]
    return table, max(pool, key=lambda r: r["ood_val"]) if pool else None


def spread(rows: list[dict], *, head: str = "dual", splits=("id_test", "ood_test")) -> list[dict]:
    """Per comparison and split: the difference for each pre-training seed, mean, std and
    whether the conclusion holds across them."""
    by_seed: dict[tuple, dict] = {}
    for row in rows:
        key = (row["params"].get("world.seed"), row["params"].get("pretrain.seed"))
        if key in by_seed:
            print(f"experiments: {row['name']} repeats pre-training seed {key}; using "
                  f"{by_seed[key]['name']}", file=sys.stderr)
            continue
        by_seed[key] = row
    out = []
    for label, method, baseline in HEADLINE:
        for split in splits:
            diffs = {}
            for key, row in sorted(by_seed.items(), key=lambda kv: str(kv[0])):
                a = accuracy(row["metrics"], method, split, head)
                b = accuracy(row["metrics"], baseline, split, head)
                if a is not None and b is not None:
                    diffs[key] = 100 * (a - b)
            if not diffs:
                continue
            values = list(diffs.values())
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else math.nan
            same_sign = all(v > 0 for v in values) or all(v < 0 for v in values)
            supported = len(values) > 1 and same_sign and abs(mean) > std
            out.append({"comparison": label, "split": split, "head": head, "n_seeds": len(values),
                        "per_seed": diffs, "mean": mean, "std": std, "supported": supported})
    return out


def _markdown_select(table, chosen, param) -> str:
    lines = [f"| experiment | {param} | ID-val | OOD-val | ERM ID-val | eligible |", "|---|---|---|---|---|---|"]
    for r in table:
        mark = " (chosen)" if chosen is r else ""
        ref = "-" if r["erm_id_val"] is None else f"{100 * r['erm_id_val']:.1f}"
        lines.append(f"| {r['name']}{mark} | {r[param]} | {100 * r['id_val']:.1f} | {100 * r['ood_val']:.1f} "
                     f"| {ref} | {'yes' if r['eligible'] else 'no'} |")
    return "\n".join(lines)


def _markdown_spread(result) -> str:
    lines = ["| comparison | split | head | per pre-training seed (world, pretrain) | mean +- std | conclusion |",
             "|---|---|---|---|---|---|"]
    for r in result:
        seeds = ", ".join(f"{k[0]},{k[1]}: {v:+.1f}" for k, v in r["per_seed"].items())
        verdict = ("supported" if r["supported"] else "not supported")
        lines.append(f"| {r['comparison']} | {r['split']} | {r['head']} | {seeds} | "
                     f"{r['mean']:+.1f} +- {r['std']:.1f} | {verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", default=".")
    sub = ap.add_subparsers(dest="command", required=True)
    sel = sub.add_parser("select", help="choose a knob's value on the validation splits")
    sel.add_argument("--method", required=True, help="a methods.<name> entry, e.g. drm")
    sel.add_argument("--param", required=True, help="the swept param, e.g. methods.drm.lam")
    sel.add_argument("--head", default="dual", choices=["df", "cd", "dual"])
    sel.add_argument("--id-tolerance", type=float, default=2.0, help="points of ID-val below ERM allowed")
    spr = sub.add_parser("spread", help="headline comparisons over pre-training seeds")
    spr.add_argument("--head", default="dual", choices=["df", "cd", "dual"])
    args = ap.parse_args(argv)
    try:
        rows = experiments(args.repo)
        if args.command == "select":
            table, chosen = select(rows, method=args.method, param=args.param, head=args.head,
                                   id_tolerance=args.id_tolerance)
            if not table:
                raise DRMError(f"no experiment has validation metrics for {args.method!r}: is it in "
                               "finetune.methods, and are id_val/ood_val splits of the data?")
            print(_markdown_select(table, chosen, args.param))
            print(f"\nchosen: {chosen['name']} ({args.param} = {chosen[args.param]})" if chosen
                  else "\nchosen: none is within the ID tolerance")
        else:
            print(_markdown_spread(spread(rows, head=args.head)))
    except DRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
