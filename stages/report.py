"""Stage `report`: methods side by side (reports/report.md) and the ID-vs-OOD plot."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--metrics", default="metrics/all.csv")
    p.add_argument("--out", default="reports/report.md")
    p.add_argument("--plot", default="reports/id_vs_ood.png")
    p.add_argument("--diagnostics", default="reports/diagnostics.md", help="markdown to append, if present")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "report", steps.report(params, base, args.metrics, args.out, args.plot, args.diagnostics)


if __name__ == "__main__":
    cli.run(main)
