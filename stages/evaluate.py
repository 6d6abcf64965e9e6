"""Stage `evaluate`: df/cd/dual metrics for zero-shot and every run -> metrics/."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--zeroshot", default="data/zeroshot")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out-csv", default="metrics/all.csv")
    p.add_argument("--out-json", default="metrics/evaluate.json")
    args = p.parse_args()
    from pathlib import Path

    from drm.config import load_params
    from drm.datasets import open_source
    from drm.evaluate import run_evaluate

    params = load_params(args.params)
    source = open_source(params.data, cli.base_dir(args))
    runs = {(m, s): Path(args.runs) / f"{m}-s{s}" for m in params.finetune.methods for s in params.seeds}
    frame = run_evaluate(source, args.zeroshot, runs, params.evaluate, args.out_csv, args.out_json)
    print(f"evaluate: {len(frame)} metric rows -> {args.out_csv}, {args.out_json}")


if __name__ == "__main__":
    cli.run(main)
