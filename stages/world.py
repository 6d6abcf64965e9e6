"""Stage `world`: render the embedded synthetic world (params: world) into one folder."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    from drm.world import stage

    params, base, progress = cli.load(args, stage.Params)
    return "world", stage.run(params, out=base / args.out, progress=progress)


if __name__ == "__main__":
    cli.run(main)
