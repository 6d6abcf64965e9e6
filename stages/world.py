"""Stage `world`: render the embedded synthetic world (params: world) into data/world/."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/world")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "world", steps.world(params, base, args.out, cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
