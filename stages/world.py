"""Stage `world`: render the embedded synthetic world (params: world) into data/world/."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--out", default="data/world")
    args = p.parse_args()
    from drm.config import load_params
    from drm.world import generate

    params = load_params(args.params)
    generate(params.world, args.out, progress=cli.progress_enabled(args))
    print(f"world: wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
