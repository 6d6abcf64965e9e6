"""One function per pipeline stage: what `stages/*.py` (DVC) and `pipeline/flow.py` (Prefect)
both call. Each takes the validated Params, the project folder and explicit in/out paths,
and returns a small JSON-able summary. Paths are relative to `base`."""
from __future__ import annotations

import warnings
from pathlib import Path

from drm.config import Params
from drm.errors import ConfigError


def world(params: Params, base=".", out="data/world", progress=True) -> dict:
    from drm.world import generate

    meta = generate(params.world, Path(base) / out, progress=progress)
    return {"classes": len(meta["classnames"]), "out": str(out)}


def pretrain(params: Params, base=".", world_dir="data/world", out="models/pretrained",
             live_dir="runs/pretrain/live", progress=True, run_info="runs/pretrain/run.json") -> dict:
    from drm.datasets.world import WorldSource
    from drm.pretrain import pretrain as train
    from drm.tracking import live_logger

    source = WorldSource.open(Path(base) / world_dir)
    with live_logger(str(Path(base) / live_dir)) as live:
        return train(params.pretrain, source.load("pretrain"), Path(base) / out, source.image_size,
                     progress=progress, live=live, run_info=Path(base) / run_info)


def check_against_source(params: Params, source) -> None:
    """The evaluate and report settings that name splits or group columns, checked against
    the data before any training (evaluate and report check them again on the metrics)."""
    problems = []
    missing = [g for g in params.evaluate.group_by if g not in source.group_columns]
    if missing:
        problems.append(f"evaluate.group_by names {missing}, which this data has no column for; "
                        f"available: {sorted(source.group_columns)}")
    if params.evaluate.beta == "val":
        gone = [s for s in params.evaluate.select_splits if s not in source.splits]
        if gone:
            problems.append(f"evaluate.beta 'val' needs the splits evaluate.select_splits {gone}; "
                            f"this data has {list(source.splits)} (or set evaluate.beta to a number)")
    from drm.evaluate import OOD_MEAN

    known = list(source.splits) + ([OOD_MEAN] if len(source.ood_average) >= 2 else [])
    gone = [s for s in (params.report.id_split, params.report.ood_split) if s not in known]
    if gone:
        problems.append(f"report.id_split/ood_split name {gone}; this data has {known}")
    if problems:
        raise ConfigError("params do not fit the data (data.source "
                          f"{params.data.source!r}):\n  " + "\n  ".join(problems))


def _context(params: Params, base):
    from drm.datasets import open_source
    from drm.describe import DescribeContext

    source = open_source(params.data, base)
    return DescribeContext(source.classnames, source.core_traits, Path(base))


# The folder for description files users keep in git: a DVC dependency of `describe`.
DESCRIPTIONS_DIR = "descriptions"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def describe_inputs(params: Params) -> list[str]:
    """The description files the describe stage reads (relative to base), for cache keys."""
    return [v for v in (params.describe.file, params.describe.overrides) if v]


def describe(params: Params, base=".", out="data/descriptions.json", progress=True) -> dict:
    from drm.describe import run_describe

    if not progress:
        params.describe.openai.progress = False

    outside = [v for v in describe_inputs(params) if not _inside(Path(base) / v, Path(base) / DESCRIPTIONS_DIR)]
    if outside:
        warnings.warn(f"describe file(s) {outside} outside {DESCRIPTIONS_DIR}/: DVC does not see edits to them; "
                      f"after editing, rerun with `dvc repro -f -s describe`, or move them into {DESCRIPTIONS_DIR}/",
                      stacklevel=2)
    desc = run_describe(params.describe, _context(params, base), Path(base) / out)
    return {"classes": len(desc), "descriptions": sum(map(len, desc.values())), "out": str(out)}


def describe_plan(params: Params, base=".") -> str:
    """What describe would request (openai provider), without sending anything."""
    from drm.describe import PROVIDERS

    ctx = _context(params, base)
    provider = PROVIDERS[params.describe.provider](params.describe, ctx)
    if not hasattr(provider, "dry_run"):
        return f"describe: provider {params.describe.provider!r} sends no requests; nothing to plan"
    return provider.dry_run(ctx.classnames)


def zeroshot(params: Params, base=".", descriptions="data/descriptions.json", out="data/zeroshot",
             progress=True) -> dict:
    from drm.datasets import open_source
    from drm.describe import load_descriptions
    from drm.models import load_pretrained
    from drm.train_utils import resolve_device
    from drm.zeroshot import run_zeroshot

    source = open_source(params.data, base)
    check_against_source(params, source)
    desc = load_descriptions(Path(base) / descriptions, source.classnames)
    device = str(resolve_device(params.zeroshot.device))
    model, _, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained, device, base)
    return run_zeroshot(model, tokenizer, eval_tf, source, desc, params.zeroshot, Path(base) / out,
                        device, params.data.num_workers, progress)


def finetune(params: Params, method: str, seed: int, base=".", zeroshot_dir="data/zeroshot",
             out: str | None = None, progress=True, descriptions="data/descriptions.json") -> dict:
    from drm.datasets import open_source
    from drm.finetune import run_finetune
    from drm.models import load_pretrained
    from drm.zeroshot import load_heads

    if method not in params.methods:
        raise ConfigError(f"unknown method {method!r}; defined under `methods`: {sorted(params.methods)}")
    source = open_source(params.data, base)
    check_against_source(params, source)
    heads = load_heads(Path(base) / zeroshot_dir)
    model, train_tf, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained, "cpu", base)
    out = Path(base) / (out or f"runs/{method}-s{seed}")
    return run_finetune(model, heads, source, (train_tf, eval_tf), method, params.methods[method],
                        params.finetune, params.wise.alphas, seed, Path(base) / zeroshot_dir, out,
                        params.data.num_workers, progress, finetune_texts(params, source, base, descriptions),
                        tokenizer)


def finetune_texts(params: Params, source, base=".", descriptions="data/descriptions.json"):
    """(df_texts, cd_texts) per class, as the zeroshot stage builds its heads from them."""
    from drm.describe import load_descriptions
    from drm.heads import cd_texts, df_texts

    desc = load_descriptions(Path(base) / descriptions, source.classnames)
    return df_texts(source.classnames, params.zeroshot.templates), cd_texts(source.classnames, desc)


def evaluate(params: Params, base=".", zeroshot_dir="data/zeroshot", runs_dir="runs",
             out_csv="metrics/all.csv", out_json="metrics/evaluate.json", progress=True) -> dict:
    from drm.datasets import open_source
    from drm.evaluate import run_evaluate

    source = open_source(params.data, base)
    runs = {(m, s): Path(base) / runs_dir / f"{m}-s{s}" for m in params.finetune.methods for s in params.seeds}
    frame = run_evaluate(source, Path(base) / zeroshot_dir, runs, params.evaluate,
                         Path(base) / out_csv, Path(base) / out_json, progress)
    return {"rows": len(frame), "out": str(out_json)}


def report(params: Params, base=".", metrics="metrics/all.csv", out="reports/report.md",
           plot="reports/id_vs_ood.png", diagnostics="reports/diagnostics.md") -> dict:
    from drm.report import run_report

    from drm.diagnostics import problem_exists, problem_markdown

    extra = []
    if diagnostics and (Path(base) / diagnostics).exists():
        extra = [(Path(base) / diagnostics).read_text(), problem_markdown(problem_exists(Path(base) / metrics))]
    run_report(Path(base) / metrics, params.report, Path(base) / out, Path(base) / plot, extra)
    return {"report": str(out), "plot": str(plot)}


def diagnostics(params: Params, base=".", zeroshot_dir="data/zeroshot",
                out_json="reports/diagnostics.json", out_md="reports/diagnostics.md", progress=True) -> dict:
    """The world's premises, measured (embedded world only: it renders controlled pairs)."""
    from drm.datasets import open_source
    from drm.diagnostics import run_diagnostics
    from drm.models import load_pretrained
    from drm.zeroshot import load_heads

    if params.data.source != "world":  # the premises are measured on renders of the world
        import json

        note = f"diagnostics skipped: they render the embedded world, and data.source is {params.data.source!r}"
        for path, text in ((out_json, json.dumps({"skipped": note}) + "\n"), (out_md, f"_{note}_\n")):
            (Path(base) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(base) / path).write_text(text)
        return {"skipped": note}
    source = open_source(params.data, base)
    model, _, eval_tf, _ = load_pretrained(params.model.name, params.model.pretrained, "cpu", base)
    df, cd, _ = load_heads(Path(base) / zeroshot_dir)
    d = run_diagnostics(model, eval_tf, source, (df, cd), params.world, Path(base) / zeroshot_dir,
                        Path(base) / out_json, Path(base) / out_md, progress)
    return {"probe_ood_val": d["probe"]["ood_val"]["probe_accuracy"],
            "cd_more_core_than_df": d["swap"]["cd_more_core_than_df"]}
