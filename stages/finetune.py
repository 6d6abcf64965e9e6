"""Stage `finetune`: train one method with one seed; predict with each WiSE-FT alpha."""
from pathlib import Path

from drm.base import cli


def main(argv=None):
    p = cli.parser(__doc__)
    p.add_argument("--method", required=True, help="a name defined under `methods` in params.yaml")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--zeroshot", required=True, type=Path)
    p.add_argument("--descriptions", required=True, type=Path,
                   help="concept descriptions (the text-tower methods build their cd head from them)")
    p.add_argument("--out", required=True, type=Path, help="the run folder")
    p.add_argument("--checkpoints", type=Path, default=None,
                   help="the folder of resumable checkpoints (<method>-s<seed>/ inside; not a DVC output; "
                        "default: none, no resume)")
    args = p.parse_args(argv)
    from drm.finetune import stage

    params, base, progress = cli.load(args, stage.Params)
    if cli.relaunch(params.runtime.nproc_per_node, __file__, argv):
        return "finetune", None  # its workers ran it and printed the summary
    return "finetune", stage.run(params, base=base, method=args.method, seed=args.seed,
                                 zeroshot=base / args.zeroshot, descriptions=base / args.descriptions,
                                 out=base / args.out, progress=progress,
                                 checkpoints=base / args.checkpoints if args.checkpoints else None,
                                 script=Path(__file__).resolve())


if __name__ == "__main__":
    cli.run(main)
