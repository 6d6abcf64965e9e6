"""Stage `evaluate`: df/cd/dual metrics for zero-shot and every run -> metrics/."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--zeroshot", required=True, type=Path)
    p.add_argument("--runs", required=True, type=Path, help="the folder of run folders ({method}-s{seed})")
    p.add_argument("--out-csv", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    args = p.parse_args(argv)
    from drm.evaluate import stage

    params, base, progress = cli.load(args, stage.Params)
    return "evaluate", stage.run(params, base=base, zeroshot=base / args.zeroshot, runs=base / args.runs,
                                 out_csv=base / args.out_csv, out_json=base / args.out_json, progress=progress)


if __name__ == "__main__":
    cli.run(main)
