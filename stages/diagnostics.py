"""Stage `diagnostics`: measure the embedded world's premises (reports/diagnostics.*)."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--zeroshot", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    p.add_argument("--out-md", required=True, type=Path)
    args = p.parse_args(argv)
    from drm.diagnostics import stage

    params, base, progress = cli.load(args, stage.Params)
    return "diagnostics", stage.run(params, base=base, zeroshot=base / args.zeroshot, out_json=base / args.out_json,
                                    out_md=base / args.out_md, progress=progress)


if __name__ == "__main__":
    cli.run(main)
