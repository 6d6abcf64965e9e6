"""Stage `pretrain`: contrastively pre-train the embedded CLIP on the world's caption corpus."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--world", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="the model folder (open_clip local-dir)")
    p.add_argument("--run-info", required=True, type=Path, help="JSON with the loss and the time")
    p.add_argument("--live", required=True, type=Path, help="dvclive folder for the training curve")
    args = p.parse_args(argv)
    from drm.pretrain import stage

    params, base, progress = cli.load(args, stage.Params)
    return "pretrain", stage.run(params, world=base / args.world, out=base / args.out,
                                 run_info=base / args.run_info, live_dir=base / args.live, progress=progress)


if __name__ == "__main__":
    cli.run(main)
