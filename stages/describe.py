"""Stage `describe`: concept descriptions per class (params: describe) -> the descriptions file."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--out", type=Path, help="the descriptions file (required unless --dry-run)")
    p.add_argument("--tracked-dir", type=Path, default=Path("descriptions"),
                   help="the folder of description files DVC tracks for this stage")
    p.add_argument("--dry-run", action="store_true",
                   help="openai provider: print what would be requested, send nothing")
    args = p.parse_args(argv)
    from drm.describe import stage

    params, base, progress = cli.load(args, stage.Params)
    if args.dry_run:
        return "describe (dry run)", stage.plan(params, base=base)
    if args.out is None:
        p.error("--out is required (the descriptions file; dvc.yaml passes it)")
    return "describe", stage.run(params, base=base, out=base / args.out, tracked_dir=base / args.tracked_dir,
                                 progress=progress)


if __name__ == "__main__":
    cli.run(main)
