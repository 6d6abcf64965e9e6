"""Stage `describe`: concept descriptions per class (params: describe) -> data/descriptions.json."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/descriptions.json")
    p.add_argument("--dry-run", action="store_true",
                   help="openai provider: print what would be requested, send nothing")
    args = p.parse_args()
    from drm.config import load_params
    from drm.datasets import open_source
    from drm.describe import PROVIDERS, DescribeContext, run_describe

    params = load_params(args.params)
    source = open_source(params.data, cli.base_dir(args))
    ctx = DescribeContext(source.classnames, source.core_traits, cli.base_dir(args))
    if args.dry_run:
        provider = PROVIDERS[params.describe.provider](params.describe, ctx)
        if not hasattr(provider, "dry_run"):
            print(f"describe: provider {params.describe.provider!r} sends no requests; nothing to plan")
        else:
            print(provider.dry_run(source.classnames))
        return
    desc = run_describe(params.describe, ctx, args.out)
    print(f"describe: {sum(map(len, desc.values()))} descriptions for {len(desc)} classes -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
