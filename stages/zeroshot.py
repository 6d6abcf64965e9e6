"""Stage `zeroshot`: df/cd heads of the pre-trained model, logits for every split, core estimates."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--descriptions", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    from drm.zeroshot import stage

    params, base, progress = cli.load(args, stage.Params)
    if cli.relaunch(params.runtime.nproc_per_node, __file__, argv):
        return "zeroshot", None  # its workers ran it and printed the summary
    return "zeroshot", stage.run(params, base=base, descriptions=base / args.descriptions, out=base / args.out,
                                 progress=progress)


if __name__ == "__main__":
    cli.run(main)
