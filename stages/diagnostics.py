"""Stage `diagnostics`: measure the embedded world's premises (reports/diagnostics.*)."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--zeroshot", default="data/zeroshot")
    p.add_argument("--out-json", default="reports/diagnostics.json")
    p.add_argument("--out-md", default="reports/diagnostics.md")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "diagnostics", steps.diagnostics(params, base, args.zeroshot, args.out_json, args.out_md,
                                            cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
