"""Stage `finetune`: train one method with one seed; predict with each WiSE-FT alpha."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--method", required=True, help="a name defined under `methods` in params.yaml")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--zeroshot", default="data/zeroshot")
    p.add_argument("--out", default=None, help="default: runs/{method}-s{seed}")
    p.add_argument("--descriptions", default="data/descriptions.json",
                   help="concept descriptions (the text-tower methods, e.g. flyp, build their cd head from them)")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "finetune", steps.finetune(params, args.method, args.seed, base, args.zeroshot, args.out,
                                      cli.progress_enabled(args), args.descriptions)


if __name__ == "__main__":
    cli.run(main)
