"""Stage `describe`: concept descriptions per class (params: describe) -> data/descriptions.json."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/descriptions.json")
    p.add_argument("--dry-run", action="store_true",
                   help="openai provider: print what would be requested, send nothing")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    if args.dry_run:
        return "describe (dry run)", steps.describe_plan(params, base)
    return "describe", steps.describe(params, base, args.out, cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
