"""Stage `report`: methods side by side (markdown) and the ID-vs-OOD plot."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--metrics", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--plot", required=True, type=Path)
    p.add_argument("--diagnostics", type=Path, default=None, help="markdown to append, if present")
    args = p.parse_args(argv)
    from drm.report import stage

    params, base, _ = cli.load(args, stage.Params)
    diagnostics = base / args.diagnostics if args.diagnostics else None
    return "report", stage.run(params, metrics=base / args.metrics, out=base / args.out, plot=base / args.plot,
                               diagnostics=diagnostics)


if __name__ == "__main__":
    cli.run(main)
