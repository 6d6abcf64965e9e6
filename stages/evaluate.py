"""Stage `evaluate`: df/cd/dual metrics for zero-shot and every run -> metrics/."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--zeroshot", default="data/zeroshot")
    p.add_argument("--runs", default="runs")
    p.add_argument("--out-csv", default="metrics/all.csv")
    p.add_argument("--out-json", default="metrics/evaluate.json")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "evaluate", steps.evaluate(params, base, args.zeroshot, args.runs, args.out_csv, args.out_json,
                                      cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
